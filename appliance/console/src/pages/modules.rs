//! The private module registry's page: every module with its versions, where
//! each came from, and the `source` line a configuration names. Publishing
//! is done with `hangar module publish` or the API (`publishModule`).

use askama::Template;
use warp::http::StatusCode;
use warp::reply::Response;

use super::{Session, html, unavailable};
use crate::Console;
use crate::view::{Frame, When};

pub(crate) struct VersionView {
    pub(crate) version: String,
    pub(crate) tag: String,
    pub(crate) commit: String,
    pub(crate) size: i64,
    pub(crate) by: String,
    pub(crate) when: When,
}

pub(crate) struct ModuleView {
    pub(crate) source: String,
    /// `MAJOR.MINOR` of the highest version: the example's `~>` constraint.
    pub(crate) constraint: String,
    pub(crate) repository: String,
    pub(crate) versions: Vec<VersionView>,
}

#[derive(Template)]
#[template(path = "modules.html")]
struct ModulesPage {
    frame: Frame,
    host: String,
    modules: Vec<ModuleView>,
}

/// `host[:port]` of the public URL: what a module source begins with.
fn host_of(public_url: &str) -> String {
    let rest = public_url.split_once("://").map_or(public_url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_string()
}

pub(super) async fn list(c: &Console, s: &Session) -> Response {
    let mut conn = match c.db.get().await {
        Ok(c) => c,
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let all = match hangar_store::modules::list(&mut conn).await {
        Ok(all) => all,
        Err(e) => return unavailable(Some(&s.viewer), &e),
    };
    let host = host_of(&c.public_url);
    let modules = all
        .into_iter()
        .map(|(m, mut versions)| {
            versions.sort_by_cached_key(|v| std::cmp::Reverse(semver::Version::parse(&v.version).ok()));
            ModuleView {
                source: format!("{host}/{}/{}/{}", m.namespace, m.name, m.system),
                constraint: versions
                    .first()
                    .and_then(|v| semver::Version::parse(&v.version).ok())
                    .map(|v| format!("{}.{}", v.major, v.minor))
                    .unwrap_or_default(),
                repository: versions.first().map(|v| v.repository.clone()).unwrap_or_default(),
                versions: versions
                    .into_iter()
                    .map(|v| VersionView {
                        commit: v.commit_sha.chars().take(12).collect(),
                        version: v.version,
                        tag: v.tag,
                        size: v.size,
                        by: v.published_by,
                        when: When::at(v.published_at),
                    })
                    .collect(),
            }
        })
        .collect();
    html(StatusCode::OK, &ModulesPage { frame: Frame::new("Modules", "modules", Some(s.viewer.clone())), host, modules })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_begin_with_the_public_host() {
        assert_eq!(host_of("https://hangar.example.com:1983/"), "hangar.example.com:1983");
        assert_eq!(host_of("https://hangar.example.com"), "hangar.example.com");
    }
}
