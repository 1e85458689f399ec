//! VCS integrations through the API: admins create, change and delete them
//! (the API token and webhook secret are write-only: answers say only whether
//! one is set, audit events the same); writers link stacks to them; readers see
//! the webhook delivery log, which is where "my push did nothing" is answered.

use async_graphql::{Context, Enum, ID, InputObject, Object, SimpleObject};
use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use hangar_store::access::Op;
use hangar_vcs::{Secret, StatusClient, StatusClientConfig, Verifier};
use serde_json::json;

use super::stacks::check_slug;
use super::types::Stack;
use super::{ApiError, app, caller, check_in, check_usable, conn, space_for, stack_for};
use hangar_store::users::Caller;
use hangar_types::Role;
use hangar_store::stacks as stack_store;
use hangar_store::vcs::{self as store, DeliveryRow, IntegrationChanges, IntegrationRow, Kind, NewIntegration};
use hangar_store::audit;

/// What an integration talks to.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum VcsKind {
    /// GitHub Enterprise Server.
    Github,
    /// GitLab self-managed.
    Gitlab,
    /// Gitea or Forgejo.
    Gitea,
    /// Bitbucket Data Center.
    Bitbucket,
    /// A plain git server, polled with `git ls-remote` (no webhooks, no statuses).
    Git,
}

impl From<VcsKind> for Kind {
    fn from(k: VcsKind) -> Kind {
        use hangar_vcs::Vendor;
        match k {
            VcsKind::Github => Kind::Vendor(Vendor::Github),
            VcsKind::Gitlab => Kind::Vendor(Vendor::Gitlab),
            VcsKind::Gitea => Kind::Vendor(Vendor::Gitea),
            VcsKind::Bitbucket => Kind::Vendor(Vendor::Bitbucket),
            VcsKind::Git => Kind::PlainGit,
        }
    }
}

impl From<Kind> for VcsKind {
    fn from(k: Kind) -> VcsKind {
        use hangar_vcs::Vendor;
        match k {
            Kind::Vendor(Vendor::Github) => VcsKind::Github,
            Kind::Vendor(Vendor::Gitlab) => VcsKind::Gitlab,
            Kind::Vendor(Vendor::Gitea) => VcsKind::Gitea,
            Kind::Vendor(Vendor::Bitbucket) => VcsKind::Bitbucket,
            Kind::PlainGit => VcsKind::Git,
        }
    }
}

#[derive(InputObject)]
pub struct VcsIntegrationInput {
    /// Lowercase name, part of the webhook URL `/webhooks/{kind}/{name}`.
    pub name: String,
    pub kind: VcsKind,
    /// The git server's web address (`https://git.example.com`), for its API.
    pub base_url: String,
    /// The user name for git over HTTPS with the token (plain git polling).
    pub username: Option<String>,
    /// An API token allowed to set commit statuses (and to read repositories).
    pub token: Option<String>,
    /// The webhook secret (GitLab: the secret token, or a `whsec_` signing token).
    /// Required for every kind but plain git.
    pub webhook_secret: Option<String>,
    /// PEM certificates to trust for this git server.
    pub ca_pem: Option<String>,
    /// The space the integration belongs to, by slug (the root when absent).
    pub space: Option<String>,
}

/// Changes: absent fields stay; an empty string clears a token, secret or CA.
#[derive(InputObject)]
pub struct VcsIntegrationUpdate {
    pub base_url: Option<String>,
    pub username: Option<String>,
    pub token: Option<String>,
    pub webhook_secret: Option<String>,
    pub ca_pem: Option<String>,
}

/// A VCS integration. Its secrets are never shown.
pub struct VcsIntegration {
    row: IntegrationRow,
    has_token: bool,
    has_webhook_secret: bool,
}

#[Object]
impl VcsIntegration {
    async fn id(&self) -> ID {
        ID(self.row.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.row.name
    }
    async fn kind(&self) -> VcsKind {
        self.row.kind().into()
    }
    async fn base_url(&self) -> &str {
        &self.row.base_url
    }
    async fn username(&self) -> Option<&str> {
        self.row.username.as_deref()
    }
    async fn has_token(&self) -> bool {
        self.has_token
    }
    async fn has_webhook_secret(&self) -> bool {
        self.has_webhook_secret
    }
    /// Where the git server sends webhooks (under the server's public URL);
    /// absent for plain git, which is polled.
    async fn webhook_path(&self) -> Option<String> {
        self.row.kind().vendor().map(|v| format!("/webhooks/{v}/{}", self.row.name))
    }
    async fn ca_pem(&self) -> Option<&str> {
        self.row.ca_pem.as_deref()
    }
    /// Slugs of the stacks linked to this integration.
    async fn stacks(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<String>> {
        let caller = caller(ctx)?;
        let mut c = conn(ctx).await?;
        let mut out = Vec::new();
        for slug in store::linked_stacks(&mut c, self.row.id).await.map_err(ApiError::from)? {
            let stack = stack_store::stack_by_slug(&mut c, &slug).await.map_err(ApiError::from)?;
            if stack.is_some_and(|s| caller.sees(s.space_id)) {
                out.push(slug);
            }
        }
        Ok(out)
    }
    /// The space the integration belongs to.
    async fn space(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<super::spaces::Space>> {
        super::spaces::space_object(ctx, self.row.space_id).await
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.row.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.row.updated_at
    }
}

/// What became of a delivery.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum DeliveryOutcome {
    /// Accepted, waiting for the drain.
    Queued,
    /// At least one run was created.
    RunsCreated,
    /// Nothing to do: `detail` says why.
    Ignored,
    /// The delivery could not be read: `error` says why.
    Failed,
}

#[derive(SimpleObject)]
pub struct WebhookDelivery {
    pub id: ID,
    /// The vendor's id of the delivery (the same on a redelivery).
    pub delivery_id: String,
    /// The vendor's event name (`push`, `Merge Request Hook`, `pr:opened`, `poll`).
    pub event: String,
    pub received_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
    pub outcome: DeliveryOutcome,
    /// One line per event of the delivery: what was done, or why nothing was.
    pub detail: Option<String>,
    pub run_ids: Vec<ID>,
    pub error: Option<String>,
}

impl From<DeliveryRow> for WebhookDelivery {
    fn from(d: DeliveryRow) -> Self {
        let outcome = match d.outcome.as_str() {
            "runs_created" => DeliveryOutcome::RunsCreated,
            "ignored" => DeliveryOutcome::Ignored,
            "failed" => DeliveryOutcome::Failed,
            _ => DeliveryOutcome::Queued,
        };
        WebhookDelivery {
            id: ID(d.id.to_string()),
            delivery_id: d.delivery_id,
            event: d.event,
            received_at: d.received_at,
            processed_at: d.processed_at,
            outcome,
            detail: d.detail,
            run_ids: d.run_ids.into_iter().map(|r| ID(r.to_string())).collect(),
            error: d.error,
        }
    }
}

async fn object(c: &mut diesel_async::AsyncPgConnection, row: IntegrationRow) -> Result<VcsIntegration, ApiError> {
    let (has_token, has_webhook_secret) = store::has_secrets(c, row.id).await?;
    Ok(VcsIntegration { row, has_token, has_webhook_secret })
}

/// The integration `name`, when `caller` holds `needed` in its space.
async fn integration_id(
    c: &mut diesel_async::AsyncPgConnection,
    caller: &Caller,
    name: &str,
    needed: Role,
) -> Result<IntegrationRow, ApiError> {
    super::gate(caller, needed)?;
    let row = store::by_name(c, name).await?.ok_or_else(|| ApiError::not_found("VCS integration", name))?;
    check_in(caller, row.space_id, needed, "VCS integration", name)?;
    Ok(row)
}

fn check_secret_text(field: &'static str, value: &str) -> Result<(), ApiError> {
    if value.len() > 4096 || value.chars().any(|c| c.is_control()) {
        return Err(ApiError::invalid(field, "must be at most 4096 characters without control characters"));
    }
    Ok(())
}

fn check_username(name: &str) -> Result<(), ApiError> {
    let ok = (1..=128).contains(&name.len()) && !name.contains(':') && !name.chars().any(|c| c.is_control());
    if ok { Ok(()) } else { Err(ApiError::invalid("username", "must be 1-128 characters without ':' or control characters")) }
}

fn check_ca(pem: &str) -> Result<(), ApiError> {
    if pem.len() > 256 * 1024 {
        return Err(ApiError::invalid("caPem", "is larger than 256 KiB"));
    }
    hangar_certs::tls::roots_from_pem(pem.as_bytes())
        .map(|_| ())
        .map_err(|e| ApiError::invalid("caPem", format!("holds no usable certificate ({})", hangar_types::error_chain(&e))))
}

/// Checks the base URL (and, for vendors, that a status client can be made
/// with it), and the webhook secret the way the webhook path will use it.
fn check_vendor_settings(
    kind: Kind,
    base_url: &str,
    webhook_secret: Option<&Secret>,
    ca_pem: Option<&str>,
) -> Result<(), ApiError> {
    if base_url.len() > 2048 || base_url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ApiError::invalid("baseUrl", "must be a URL of at most 2048 characters"));
    }
    let Kind::Vendor(vendor) = kind else {
        return Ok(());
    };
    let probe = StatusClientConfig {
        vendor,
        base_url: base_url.to_string(),
        token: Secret::new("probe"),
        ca_pem: ca_pem.map(|p| p.as_bytes().to_vec()),
        timeout: std::time::Duration::from_secs(10),
    };
    StatusClient::new(probe).map_err(|e| ApiError::invalid("baseUrl", e.to_string()))?;
    match webhook_secret {
        None => Err(ApiError::invalid("webhookSecret", "is required: Hangar accepts only authenticated deliveries")),
        Some(s) => Verifier::new(vendor, s).map(|_| ()).map_err(|e| ApiError::invalid("webhookSecret", e.to_string())),
    }
}

/// `Some("")` clears, `Some(v)` sets, `None` keeps.
fn change(v: Option<String>) -> Option<Option<String>> {
    v.map(|s| if s.is_empty() { None } else { Some(s) })
}

#[derive(Default)]
pub struct VcsQuery;

#[Object]
impl VcsQuery {
    /// Every VCS integration, by name.
    async fn vcs_integrations(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<VcsIntegration>> {
        let caller = caller(ctx)?;
        super::gate(caller, Op::ListVcs.role())?;
        let mut c = conn(ctx).await?;
        let mut out = Vec::new();
        for row in store::list(&mut c).await.map_err(ApiError::from)? {
            if caller.may(row.space_id, Op::ListVcs.role()) {
                out.push(object(&mut c, row).await?);
            }
        }
        Ok(out)
    }

    /// The newest deliveries of an integration (at most `limit`, up to 200),
    /// with what each led to.
    async fn webhook_deliveries(
        &self,
        ctx: &Context<'_>,
        integration: String,
        #[graphql(default = 20)] limit: i32,
    ) -> async_graphql::Result<Vec<WebhookDelivery>> {
        let caller = caller(ctx)?;
        if !(1..=200).contains(&limit) {
            return Err(ApiError::invalid("limit", "must be between 1 and 200").into());
        }
        let mut c = conn(ctx).await?;
        let row = integration_id(&mut c, caller, &integration, Op::Read.role()).await?;
        let rows = store::deliveries(&mut c, row.id, i64::from(limit)).await.map_err(ApiError::from)?;
        Ok(rows.into_iter().map(WebhookDelivery::from).collect())
    }
}

#[derive(Default)]
pub struct VcsMutation;

#[Object]
impl VcsMutation {
    async fn create_vcs_integration(&self, ctx: &Context<'_>, input: VcsIntegrationInput) -> async_graphql::Result<VcsIntegration> {
        let caller = caller(ctx)?.clone();
        check_slug("name", &input.name)?;
        let kind: Kind = input.kind.into();
        for (field, v) in [("token", &input.token), ("webhookSecret", &input.webhook_secret)] {
            if let Some(v) = v {
                check_secret_text(field, v)?;
            }
        }
        if let Some(u) = &input.username {
            check_username(u)?;
        }
        if let Some(p) = &input.ca_pem {
            check_ca(p)?;
        }
        let token = input.token.filter(|t| !t.is_empty()).map(Secret::new);
        let webhook_secret = input.webhook_secret.filter(|t| !t.is_empty()).map(Secret::new);
        check_vendor_settings(kind, &input.base_url, webhook_secret.as_ref(), input.ca_pem.as_deref())?;
        let space = {
            let mut c = conn(ctx).await?;
            space_for(&mut c, &caller, input.space.as_deref(), Op::ManageVcs.role()).await?
        };
        let new = NewIntegration {
            space_id: space.id,
            name: input.name,
            kind,
            base_url: input.base_url,
            username: input.username,
            token,
            webhook_secret,
            ca_pem: input.ca_pem,
        };
        let app = app(ctx);
        let mut c = conn(ctx).await?;
        let out = c
            .transaction::<_, ApiError, _>(async move |c| {
                let row = store::insert(c, &app.secrets, &new).await?;
                audit::record(
                    c,
                    &caller.actor(),
                    "vcs_integration.create",
                    &format!("vcs_integration:{}", row.name),
                    json!({
                        "kind": row.kind, "base_url": row.base_url, "username": row.username,
                        "token_set": new.token.is_some(), "webhook_secret_set": new.webhook_secret.is_some(),
                        "ca_set": row.ca_pem.is_some(), "space": space.slug,
                    }),
                )
                .await?;
                object(c, row).await
            })
            .await?;
        Ok(out)
    }

    async fn update_vcs_integration(
        &self,
        ctx: &Context<'_>,
        name: String,
        input: VcsIntegrationUpdate,
    ) -> async_graphql::Result<VcsIntegration> {
        let caller = caller(ctx)?.clone();
        for (field, v) in [("token", &input.token), ("webhookSecret", &input.webhook_secret)] {
            if let Some(v) = v {
                check_secret_text(field, v)?;
            }
        }
        if let Some(u) = input.username.as_deref().filter(|u| !u.is_empty()) {
            check_username(u)?;
        }
        if let Some(p) = input.ca_pem.as_deref().filter(|p| !p.is_empty()) {
            check_ca(p)?;
        }
        let changes = IntegrationChanges {
            base_url: input.base_url,
            username: change(input.username),
            token: change(input.token).map(|t| t.map(Secret::new)),
            webhook_secret: change(input.webhook_secret).map(|t| t.map(Secret::new)),
            ca_pem: change(input.ca_pem),
        };
        let app = app(ctx);
        let mut c = conn(ctx).await?;
        let out = c
            .transaction::<_, ApiError, _>(async move |c| {
                let current = integration_id(c, &caller, &name, Op::ManageVcs.role()).await?;
                let kind = current.kind();
                // The settings as they will be, checked as a whole.
                let opened = store::open(c, &app.secrets, current.id).await?;
                let secret = match &changes.webhook_secret {
                    Some(s) => s.clone(),
                    None => opened.webhook_secret,
                };
                let base_url = changes.base_url.clone().unwrap_or_else(|| current.base_url.clone());
                let ca = match &changes.ca_pem {
                    Some(c) => c.clone(),
                    None => current.ca_pem.clone(),
                };
                check_vendor_settings(kind, &base_url, secret.as_ref(), ca.as_deref())?;
                let row = store::update(c, &app.secrets, current.id, &changes).await?;
                audit::record(
                    c,
                    &caller.actor(),
                    "vcs_integration.update",
                    &format!("vcs_integration:{}", row.name),
                    json!({
                        "base_url": changes.base_url, "username": changes.username,
                        "token": changes.token.as_ref().map(|t| if t.is_some() { "set" } else { "cleared" }),
                        "webhook_secret": changes.webhook_secret.as_ref().map(|t| if t.is_some() { "set" } else { "cleared" }),
                        "ca": changes.ca_pem.as_ref().map(|t| if t.is_some() { "set" } else { "cleared" }),
                    }),
                )
                .await?;
                object(c, row).await
            })
            .await?;
        Ok(out)
    }

    /// Deletes an integration; its stacks stay, unlinked, and its delivery log goes.
    async fn delete_vcs_integration(&self, ctx: &Context<'_>, name: String) -> async_graphql::Result<bool> {
        let caller = caller(ctx)?.clone();
        let mut c = conn(ctx).await?;
        Ok(c.transaction::<_, ApiError, _>(async move |c| {
            let row = integration_id(c, &caller, &name, Op::ManageVcs.role()).await?;
            store::delete(c, row.id).await?;
            audit::record(c, &caller.actor(), "vcs_integration.delete", &format!("vcs_integration:{name}"), json!({}))
                .await?;
            Ok(true)
        })
        .await?)
    }

    /// Links a stack to an integration, whose events then trigger its runs and
    /// which receives its commit statuses; no `integration` unlinks it.
    async fn link_stack_to_vcs(
        &self,
        ctx: &Context<'_>,
        stack: String,
        integration: Option<String>,
    ) -> async_graphql::Result<Stack> {
        let caller = caller(ctx)?.clone();
        let mut c = conn(ctx).await?;
        let row = c
            .transaction::<_, ApiError, _>(async move |c| {
                let s = stack_for(c, &caller, &stack, Op::Write.role()).await?;
                let target = match integration.as_deref() {
                    None | Some("") => None,
                    Some(name) => {
                        // Its deliveries will start this stack's runs: only
                        // an integration of the stack's space or above may.
                        let i = integration_id(c, &caller, name, Role::Reader).await?;
                        check_usable(c, "VCS integration", name, i.space_id, s.space_id).await?;
                        Some(i.id)
                    }
                };
                store::link_stack(c, s.id, target).await?;
                audit::record(
                    c,
                    &caller.actor(),
                    "stack.link_vcs",
                    &format!("stack:{stack}"),
                    json!({ "integration": integration }),
                )
                .await?;
                stack_store::stack_by_id(c, s.id).await?.ok_or_else(|| ApiError::not_found("stack", &stack))
            })
            .await?;
        Ok(Stack(row))
    }
}
