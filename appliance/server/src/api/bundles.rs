//! `applyBundle`: a staged tools or worker bundle applied to the tools area
//! from GraphQL, the same apply as `POST /api/v1/bundles/{id}/apply`
//! (`crate::bundles`); `upgradeAppliance`: the appliance upgraded to a staged
//! appliance bundle, as `POST /api/v1/bundles/{id}/upgrade`. For admins.

use async_graphql::{Context, ID, Object, SimpleObject};
use hangar_types::Role;
use hangar_types::http::ErrorCode;

use super::{ApiError, app, require};
use crate::bundles::UploadError;

/// What an apply did, by the bundle's paths.
#[derive(SimpleObject)]
pub struct BundleApplied {
    /// The staged bundle.
    id: ID,
    kind: String,
    version: String,
    /// Installed now.
    installed: Vec<String>,
    /// In place already with the same SHA-256.
    unchanged: Vec<String>,
    /// With no place in the tools area (a mirror's JSON documents, a worker
    /// bundle's other files).
    skipped: Vec<String>,
}

/// An upgrade asked for: the installer's upgrade agent takes it up.
#[derive(SimpleObject)]
pub struct ApplianceUpgrade {
    /// The request's id.
    id: ID,
    /// The staged bundle.
    bundle: ID,
    version: String,
    /// `requested`, `running`, `completed`, `rolled-back`, `refused` or `failed`.
    state: String,
    requested_by: String,
    requested_at: String,
}

#[derive(Default)]
pub struct BundlesMutation;

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> Self {
        match (e.code(), e) {
            (_, UploadError::NoBundle(id)) => ApiError::not_found("staged bundle", id),
            (ErrorCode::Unauthenticated, _) => ApiError::Unauthenticated,
            (ErrorCode::Forbidden, _) => ApiError::Forbidden { needed: Role::Admin },
            (ErrorCode::Conflict, e) => ApiError::Conflict(e.to_string()),
            (ErrorCode::Internal, e) => ApiError::Internal(e.to_string()),
            (ErrorCode::Unavailable, e) => ApiError::Unavailable(e.to_string()),
            (_, e) => ApiError::Refused(e.to_string()),
        }
    }
}

#[Object]
impl BundlesMutation {
    /// Applies a staged tools bundle (its Terraform/OpenTofu versions and
    /// providers) or worker bundle (its hangar-worker) to the tools area.
    /// Applying one twice changes nothing; a file installed with other
    /// bytes refuses the bundle whole.
    async fn apply_bundle(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<BundleApplied> {
        let caller = require(ctx, Role::Admin)?.clone();
        let done = crate::bundles::apply_bundle(app(ctx), &caller, id.as_str())
            .await
            .map_err(ApiError::from)?;
        Ok(BundleApplied {
            id,
            kind: done.bundle.kind,
            version: done.bundle.version,
            installed: done.applied.installed,
            unchanged: done.applied.unchanged,
            skipped: done.applied.skipped,
        })
    }

    /// Upgrades the appliance to a staged appliance bundle: the installer's
    /// upgrade agent backs up, switches, migrates and checks health, and
    /// rolls back by itself on failure. The answer comes at once; the
    /// upgrade's progress is in the staged bundles' list and on the System
    /// page (this server stops and starts again on the way).
    async fn upgrade_appliance(&self, ctx: &Context<'_>, bundle: ID) -> async_graphql::Result<ApplianceUpgrade> {
        let caller = require(ctx, Role::Admin)?.clone();
        let (_, u) = crate::bundles::request_upgrade(app(ctx), &caller, bundle.as_str())
            .await
            .map_err(ApiError::from)?;
        Ok(ApplianceUpgrade {
            id: ID(u.id),
            bundle,
            version: u.version,
            state: u.state,
            requested_by: u.requested_by,
            requested_at: u.requested_at,
        })
    }
}
