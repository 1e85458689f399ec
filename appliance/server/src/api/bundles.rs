//! `applyBundle`: a staged tools or worker bundle applied to the tools area
//! from GraphQL, the same apply as `POST /api/v1/bundles/{id}/apply`
//! (`crate::bundles`), for admins.

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
}
