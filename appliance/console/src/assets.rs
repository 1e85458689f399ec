//! The console's static files, embedded in the binary and served under names
//! that carry their content hash (`console.3f9a0c1b2d.css`), so a browser may
//! keep them for a year and a new release is fetched at once.

use std::sync::OnceLock;

use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::{Reply, Response};

struct Source {
    stem: &'static str,
    ext: &'static str,
    mime: &'static str,
    body: &'static [u8],
}

const SOURCES: [Source; 3] = [
    Source { stem: "console", ext: "css", mime: "text/css; charset=utf-8", body: include_bytes!("../assets/console.css") },
    Source { stem: "console", ext: "js", mime: "text/javascript; charset=utf-8", body: include_bytes!("../assets/console.js") },
    Source { stem: "icon", ext: "svg", mime: "image/svg+xml", body: include_bytes!("../assets/icon.svg") },
];

/// One embedded file under its hashed name.
#[derive(Debug)]
pub(crate) struct Asset {
    /// `/assets/console.3f9a0c1b2d.css`
    pub(crate) path: String,
    mime: &'static str,
    body: &'static [u8],
    etag: String,
}

/// The hashed paths, for templates.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AssetPaths {
    pub(crate) css: &'static str,
    pub(crate) js: &'static str,
    pub(crate) icon: &'static str,
}

fn all() -> &'static [Asset] {
    static ALL: OnceLock<Vec<Asset>> = OnceLock::new();
    ALL.get_or_init(|| {
        SOURCES
            .iter()
            .map(|s| {
                let digest = ring::digest::digest(&ring::digest::SHA256, s.body);
                let hash = hex::encode(&digest.as_ref()[..5]);
                Asset {
                    path: format!("/assets/{}.{hash}.{}", s.stem, s.ext),
                    mime: s.mime,
                    body: s.body,
                    etag: format!("\"{}\"", hex::encode(&digest.as_ref()[..16])),
                }
            })
            .collect()
    })
}

pub(crate) fn paths() -> AssetPaths {
    static PATHS: OnceLock<AssetPaths> = OnceLock::new();
    *PATHS.get_or_init(|| {
        let a = all();
        AssetPaths { css: leak(&a[0].path), js: leak(&a[1].path), icon: leak(&a[2].path) }
    })
}

fn leak(s: &str) -> &'static str {
    // Three short strings, made once per process.
    Box::leak(s.to_string().into_boxed_str())
}

/// The asset named `name` (under `/assets/`), with long cache headers; `None`
/// for any other name, an old hash included.
pub(crate) fn serve(name: &str, if_none_match: Option<&str>) -> Option<Response> {
    let asset = all().iter().find(|a| a.path.strip_prefix("/assets/") == Some(name))?;
    let mut r = if if_none_match == Some(asset.etag.as_str()) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Response::new(asset.body.into());
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.mime));
        r
    };
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    if let Ok(v) = HeaderValue::from_str(&asset.etag) {
        h.insert(header::ETAG, v);
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_content_hash() {
        let p = paths();
        assert!(p.css.starts_with("/assets/console.") && p.css.ends_with(".css"), "{}", p.css);
        assert_eq!(p.css.len(), "/assets/console.0123456789.css".len());
        let r = serve(p.css.trim_start_matches("/assets/"), None).expect("served");
        assert_eq!(r.status(), 200);
        assert!(r.headers()[header::CACHE_CONTROL].to_str().unwrap().contains("immutable"));
        assert!(serve("console.0000000000.css", None).is_none(), "an old hash is not found");
        assert!(serve("../Cargo.toml", None).is_none());
    }

    #[test]
    fn the_script_never_writes_html() {
        let js = std::str::from_utf8(SOURCES[1].body).unwrap();
        for sink in ["innerHTML =", "outerHTML", "insertAdjacentHTML", "document.write", "eval("] {
            assert!(!js.contains(sink), "console.js uses {sink}");
        }
    }
}
