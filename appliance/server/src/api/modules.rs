//! The private module registry through the API: publishing a version from a
//! tag of a git repository (writers and above), listing modules with their
//! versions and the `source` line to use, and deleting a version (admins).
//! The registry protocol Terraform speaks is `crate::registry::serve`.

use async_graphql::{Context, Object, SimpleObject};
use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use hangar_store::access::Op;
use hangar_store::modules::{self as store, ModuleRow, ModuleVersionRow};
use hangar_store::audit;
use hangar_types::Role;
use serde_json::json;

use super::{ApiError, app, conn, require};
use crate::git;
use crate::registry::publish::{Publication, PublishError, publish};
use crate::registry::{Address, parse_version, registry_host, version_of_tag};

/// One published version of a module.
#[derive(SimpleObject, Debug, Clone)]
pub struct ModuleVersion {
    pub version: String,
    /// The repository and tag it was published from, and the tag's commit then.
    pub repository: String,
    pub tag: String,
    pub commit_sha: String,
    /// SHA-256 (hex) and size in bytes of the stored `.tar.gz`.
    pub sha256: String,
    pub size: i64,
    pub published_by: String,
    pub published_at: DateTime<Utc>,
}

impl From<ModuleVersionRow> for ModuleVersion {
    fn from(v: ModuleVersionRow) -> Self {
        ModuleVersion {
            version: v.version,
            repository: v.repository,
            tag: v.tag,
            commit_sha: v.commit_sha,
            sha256: v.sha256,
            size: v.size,
            published_by: v.published_by,
            published_at: v.published_at,
        }
    }
}

/// A module of the registry.
#[derive(SimpleObject, Debug, Clone)]
pub struct Module {
    pub namespace: String,
    pub name: String,
    pub system: String,
    /// What a configuration names: `source = "<this>"`, with a `version` constraint.
    pub source: String,
    /// Highest first (semver precedence).
    pub versions: Vec<ModuleVersion>,
}

fn module(host: &str, m: ModuleRow, versions: Vec<ModuleVersionRow>) -> Module {
    let mut versions: Vec<ModuleVersionRow> = versions;
    versions.sort_by_cached_key(|v| std::cmp::Reverse(semver::Version::parse(&v.version).ok()));
    Module {
        source: format!("{host}/{}/{}/{}", m.namespace, m.name, m.system),
        namespace: m.namespace,
        name: m.name,
        system: m.system,
        versions: versions.into_iter().map(Into::into).collect(),
    }
}

fn address(namespace: &str, name: &str, system: &str) -> Result<Address, ApiError> {
    Address::parse(namespace, name, system).map_err(|field| match field {
        "system" => ApiError::invalid("system", "must be 1-64 of a-z and 0-9"),
        other => ApiError::Invalid {
            field: if other == "namespace" { "namespace" } else { "name" },
            problem: "must be 1-64 of a-z, 0-9, '-' and '_', beginning and ending with a letter or digit".into(),
        },
    })
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::NoSuchTag { .. }
            | PublishError::Unreachable { .. }
            | PublishError::Timeout { .. }
            | PublishError::TooLarge { .. } => ApiError::Refused(e.to_string()),
            PublishError::Rewrite { .. } => ApiError::Conflict(e.to_string()),
            PublishError::Store(s) => s.into(),
            PublishError::Unavailable(detail) => ApiError::Unavailable(detail),
            PublishError::Git { .. } | PublishError::Spawn(_) | PublishError::Objects(_) => {
                ApiError::Internal(hangar_types::error_chain(&e))
            }
        }
    }
}

#[derive(Default)]
pub struct ModulesQuery;

#[Object]
impl ModulesQuery {
    /// Every module of the private registry with its versions.
    async fn modules(&self, ctx: &Context<'_>) -> Result<Vec<Module>, ApiError> {
        // The registry belongs to no space: whoever sees any space reads it.
        if !super::caller(ctx)?.access.best().allows(Op::Read.role()) {
            return Err(ApiError::Forbidden { needed: Op::Read.role() });
        }
        let host = registry_host(&app(ctx).workers.public_url);
        let mut c = conn(ctx).await?;
        Ok(store::list(&mut c).await?.into_iter().map(|(m, vs)| module(&host, m, vs)).collect())
    }
}

#[derive(Default)]
pub struct ModulesMutation;

#[Object]
impl ModulesMutation {
    /// Publishes `tag` of `repository` as a version of module
    /// `namespace/name/system`: the tag's commit's tree, as a `.tar.gz`. The
    /// version defaults to the tag without a leading `v` and must be semver.
    /// Publishing a version again from the same tree answers the recorded
    /// version; from another tree it is refused.
    // One Rust argument per GraphQL argument: what `hangar module publish` sends.
    #[allow(clippy::too_many_arguments)]
    async fn publish_module(
        &self,
        ctx: &Context<'_>,
        namespace: String,
        name: String,
        system: String,
        repository: String,
        tag: String,
        version: Option<String>,
    ) -> Result<ModuleVersion, ApiError> {
        let caller = require(ctx, Op::Write.role())?;
        let address = address(&namespace, &name, &system)?;
        if !git::valid_repository(&repository) {
            return Err(ApiError::invalid("repository", "must be an https, http or ssh git URL"));
        }
        if !git::valid_branch(&tag) {
            return Err(ApiError::invalid("tag", "is not a valid git tag name"));
        }
        let version = version.unwrap_or_else(|| version_of_tag(&tag).to_string());
        let version = parse_version(&version)
            .ok_or_else(|| ApiError::invalid("version", "must be semver (1.2.0, 2.0.0-rc.1) without build metadata"))?
            .to_string();
        let actor = caller.actor();
        let p = Publication { address: &address, version: &version, repository: &repository, tag: &tag, actor: &actor };
        Ok(publish(app(ctx), &p).await?.into())
    }

    /// Deletes a version of a module, its archive with it (admins). Runs that
    /// resolved it already keep what they downloaded.
    async fn delete_module_version(
        &self,
        ctx: &Context<'_>,
        namespace: String,
        name: String,
        system: String,
        version: String,
    ) -> Result<bool, ApiError> {
        let caller = require(ctx, Role::Admin)?;
        let address = address(&namespace, &name, &system)?;
        let version = parse_version(&version)
            .ok_or_else(|| ApiError::invalid("version", "must be semver without build metadata"))?
            .to_string();
        let actor = caller.actor();
        let mut c = conn(ctx).await?;
        let m = store::find(&mut c, &address.namespace, &address.name, &address.system)
            .await?
            .ok_or_else(|| ApiError::not_found("module", address.to_string()))?;
        let target = format!("module:{address}");
        let deleted = c
            .transaction::<_, ApiError, _>(async |c| {
                let Some(row) = store::delete_version(c, m.id, &version).await? else { return Ok(None) };
                audit::record(c, &actor, "module.delete_version", &target, json!({ "version": row.version, "sha256": row.sha256 }))
                    .await?;
                Ok(Some(row))
            })
            .await?
            .ok_or_else(|| ApiError::not_found("module version", format!("{address} {version}")))?;
        // The row is gone first: an object left behind by a failure here is
        // unreachable, never a version without its archive.
        if let Err(e) = app(ctx).objects.delete(&deleted.object_key).await {
            tracing::warn!(error = %hangar_types::error_chain(&e), object = %deleted.object_key, "a deleted module version's archive stays in the object store");
        }
        Ok(true)
    }
}
