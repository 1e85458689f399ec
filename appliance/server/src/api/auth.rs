//! Login and logout, users, passwords and API keys.

use async_graphql::{Context, ID, Object, SimpleObject};
use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use hangar_store::access::Op;
use hangar_types::Role;
use serde_json::json;

use super::types::{ApiKey, User, UserRole};
use super::{ApiError, app, caller, conn, require};
use crate::admin::valid_email;
use hangar_store::audit;
use hangar_store::users::{self, Via};

/// Failed logins are counted over this window, across every server process
/// (they are audit events).
const LOGIN_WINDOW: chrono::Duration = chrono::Duration::minutes(15);
/// Failed logins one address may have within the window, whatever the
/// accounts: past it, that address is refused before any password is hashed.
const SOURCE_FAILURES: i64 = 10;
/// Failed logins an account may have within the window from everywhere. Past
/// it, only the addresses that have failed on it are refused: guessing from
/// many addresses is slowed, and nobody can lock out an account they do not
/// own, since its user's address has no failures on it.
const ACCOUNT_FAILURES: i64 = 50;

/// Request data: whether this request has used its one login. Logins are
/// what the throttle counts, so a request holding a thousand aliased `login`
/// fields gets one attempt, not a thousand.
#[derive(Debug, Default)]
pub struct LoginGate(std::sync::atomic::AtomicBool);

/// Request data: the address the request came from, when the listener knows
/// it.
#[derive(Debug, Clone, Copy)]
pub struct Source(pub Option<std::net::IpAddr>);

impl Source {
    fn label(&self) -> String {
        self.0.map(|ip| ip.to_string()).unwrap_or_else(|| "unknown".into())
    }
}

fn throttled(what: &str) -> ApiError {
    ApiError::Refused(format!("too many failed logins {what}; try again in {} minutes", LOGIN_WINDOW.num_minutes()))
}

#[derive(SimpleObject)]
pub struct LoginResult {
    /// The session token, shown this once: send it as `Authorization: Bearer <token>`.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    pub user: User,
}

#[derive(SimpleObject)]
pub struct CreatedApiKey {
    /// The whole key, shown this once; only its hash is kept.
    pub key: String,
    pub api_key: ApiKey,
}

#[derive(Default)]
pub struct AuthQuery;

#[Object]
impl AuthQuery {
    /// The caller.
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<User> {
        let caller = caller(ctx)?;
        let mut c = conn(ctx).await?;
        let user = users::get_user(&mut c, caller.user_id).await.map_err(ApiError::from)?;
        Ok(user.map(User::from).ok_or_else(|| ApiError::not_found("user", caller.email.clone()))?)
    }

    /// Every user (admin).
    async fn users(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<User>> {
        require(ctx, Op::ListUsers.role())?;
        let mut c = conn(ctx).await?;
        Ok(users::list_users(&mut c).await.map_err(ApiError::from)?.into_iter().map(User::from).collect())
    }

    /// The caller's API keys; every user's with `all` (admin).
    async fn api_keys(&self, ctx: &Context<'_>, #[graphql(default = false)] all: bool) -> async_graphql::Result<Vec<ApiKey>> {
        let caller = if all { require(ctx, Op::ListUsers.role())? } else { caller(ctx)? };
        let mut c = conn(ctx).await?;
        let rows = users::list_api_keys(&mut c, (!all).then_some(caller.user_id)).await.map_err(ApiError::from)?;
        Ok(rows.into_iter().map(ApiKey::from).collect())
    }
}

#[derive(Default)]
pub struct AuthMutation;

fn check_name(field: &'static str, name: &str, max: usize) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > max || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(field, format!("must be 1 to {max} characters without control characters")));
    }
    Ok(())
}

/// A refused password, worded for the field it came in.
fn weak(field: &'static str, e: hangar_crypto::PasswordError) -> ApiError {
    match e {
        hangar_crypto::PasswordError::Weak(why) => ApiError::invalid(field, format!("is too weak: {why}")),
        other => ApiError::Internal(other.to_string()),
    }
}

async fn hash_password(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || hangar_crypto::hash_password(&password))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))
}

async fn verify_password(password: String, hash: String) -> Result<bool, ApiError> {
    tokio::task::spawn_blocking(move || hangar_crypto::verify_password(&password, &hash))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))
}

#[Object]
impl AuthMutation {
    /// Exchanges an email and password for a session token. One login per
    /// request; failed logins are throttled per address and per account.
    async fn login(&self, ctx: &Context<'_>, email: String, password: String) -> async_graphql::Result<LoginResult> {
        let app = app(ctx);
        if ctx.data_opt::<LoginGate>().is_some_and(|g| g.0.swap(true, std::sync::atomic::Ordering::SeqCst)) {
            return Err(ApiError::Refused("a request may attempt one login".into()).into());
        }
        let source = ctx.data_opt::<Source>().copied().unwrap_or(Source(None)).label();
        let mut c = conn(ctx).await?;
        let from_source =
            audit::recent_login_failures_from(&mut c, &source, None, LOGIN_WINDOW).await.map_err(ApiError::from)?;
        if from_source >= SOURCE_FAILURES {
            tracing::warn!(source = %source, failures = from_source, "login throttled: address");
            audit::record(&mut c, "anonymous", "user.login_throttled", "user:(any)", json!({ "source": source, "by": "address" }))
                .await
                .map_err(ApiError::from)?;
            return Err(throttled("from this address").into());
        }
        // Oversized input is refused like a wrong password, after the same work.
        let plausible = email.len() <= 254 && password.len() <= 4096;
        let found = if plausible { users::find_for_login(&mut c, &email).await.map_err(ApiError::from)? } else { None };
        if let Some((user, _)) = &found {
            let failures =
                audit::recent_login_failures(&mut c, &user.email, LOGIN_WINDOW).await.map_err(ApiError::from)?;
            let here = if failures >= ACCOUNT_FAILURES {
                audit::recent_login_failures_from(&mut c, &source, Some(&user.email), LOGIN_WINDOW)
                    .await
                    .map_err(ApiError::from)?
            } else {
                0
            };
            if here > 0 {
                tracing::warn!(account = %user.email, source = %source, failures, "login throttled: account");
                audit::record(
                    &mut c,
                    "anonymous",
                    "user.login_throttled",
                    &format!("user:{}", user.email),
                    json!({ "source": source, "by": "account" }),
                )
                .await
                .map_err(ApiError::from)?;
                return Err(throttled("for this account from this address").into());
            }
        }
        let hash = found.as_ref().map(|(_, h)| h.clone()).unwrap_or_else(|| users::decoy_hash().to_string());
        let matches = verify_password(password, hash).await?;
        let user = match found {
            Some((user, _)) if matches && !user.disabled && plausible => user,
            other => {
                // Text typed into the email field of an unknown account is kept
                // out of logs and the audit trail: it may be a password.
                let (reason, target) = match &other {
                    None => ("unknown email", "user:(unknown)".to_string()),
                    Some((u, _)) if u.disabled && matches => ("user disabled", format!("user:{}", u.email)),
                    Some((u, _)) => ("wrong password", format!("user:{}", u.email)),
                };
                audit::record(&mut c, "anonymous", "user.login_failed", &target, json!({ "reason": reason, "source": source }))
                    .await
                    .map_err(ApiError::from)?;
                tracing::info!(account = %target, reason, source = %source, "login refused");
                return Err(ApiError::LoginFailed.into());
            }
        };
        let ttl = app.session_ttl;
        let u = user.clone();
        let (token, expires_at) = c
            .transaction::<_, ApiError, _>(async move |c| {
                let issued = users::create_session(c, u.id, ttl).await?;
                audit::record(c, &u.email, "user.login", &format!("user:{}", u.email), json!({})).await?;
                Ok(issued)
            })
            .await?;
        tracing::info!(user = %user.email, "login");
        Ok(LoginResult { token: token.token.expose().to_string(), expires_at, user: user.into() })
    }

    /// Ends the caller's session.
    async fn logout(&self, ctx: &Context<'_>) -> async_graphql::Result<bool> {
        let caller = caller(ctx)?.clone();
        let Via::Session { id: session } = caller.via else {
            return Err(ApiError::Refused("logout ends a session; an API key is revoked with revokeApiKey".into()).into());
        };
        let mut c = conn(ctx).await?;
        let actor = caller.actor();
        c.transaction::<_, ApiError, _>(async move |c| {
            users::revoke_session(c, session).await?;
            audit::record(c, &actor, "user.logout", &format!("user:{}", caller.email), json!({})).await?;
            Ok(())
        })
        .await?;
        Ok(true)
    }

    /// Changes the caller's own password; their other sessions end.
    async fn change_password(
        &self,
        ctx: &Context<'_>,
        current_password: String,
        new_password: String,
    ) -> async_graphql::Result<bool> {
        let caller = caller(ctx)?.clone();
        let mut c = conn(ctx).await?;
        let stored = users::password_hash(&mut c, caller.user_id).await.map_err(ApiError::from)?;
        if current_password.len() > 4096 || !verify_password(current_password, stored).await? {
            return Err(ApiError::invalid("currentPassword", "is wrong").into());
        }
        hangar_crypto::check_password_strength(&new_password, &caller.email).map_err(|e| weak("newPassword", e))?;
        let hash = hash_password(new_password).await?;
        let keep = match caller.via {
            Via::Session { id } => Some(id),
            Via::ApiKey { .. } => None,
        };
        let actor = caller.actor();
        c.transaction::<_, ApiError, _>(async move |c| {
            users::set_password(c, caller.user_id, &hash).await?;
            users::revoke_sessions_of(c, caller.user_id, keep).await?;
            audit::record(c, &actor, "user.password_change", &format!("user:{}", caller.email), json!({})).await?;
            Ok(())
        })
        .await?;
        Ok(true)
    }

    /// Creates a user (admin).
    async fn create_user(
        &self,
        ctx: &Context<'_>,
        email: String,
        #[graphql(default)] name: String,
        role: UserRole,
        password: String,
    ) -> async_graphql::Result<User> {
        let caller = require(ctx, Op::ManageUsers.role())?.clone();
        if !valid_email(&email) {
            return Err(ApiError::invalid("email", "is not a valid email address").into());
        }
        if name.chars().count() > 200 || name.chars().any(char::is_control) {
            return Err(ApiError::invalid("name", "must be at most 200 characters without control characters").into());
        }
        hangar_crypto::check_password_strength(&password, &email).map_err(|e| weak("password", e))?;
        let hash = hash_password(password).await?;
        let role: Role = role.into();
        let mut c = conn(ctx).await?;
        let actor = caller.actor();
        let user = c
            .transaction::<_, ApiError, _>(async move |c| {
                let u = users::insert_user(c, &email, &name, role, &hash).await?;
                audit::record(c, &actor, "user.create", &format!("user:{email}"), json!({ "role": role.as_str() })).await?;
                Ok(u)
            })
            .await?;
        Ok(user.into())
    }

    /// Changes a user's name, role or disabled flag (admin). Disabling ends the
    /// user's sessions; the last enabled admin cannot be demoted or disabled.
    async fn update_user(
        &self,
        ctx: &Context<'_>,
        id: ID,
        name: Option<String>,
        role: Option<UserRole>,
        disabled: Option<bool>,
    ) -> async_graphql::Result<User> {
        let caller = require(ctx, Op::ManageUsers.role())?.clone();
        let uid = super::id(&id, "id")?;
        if let Some(n) = &name {
            check_name("name", n, 200)?;
        }
        let role: Option<Role> = role.map(Into::into);
        let mut c = conn(ctx).await?;
        let actor = caller.actor();
        let user = c
            .transaction::<_, ApiError, _>(async move |c| {
                let before = users::get_user(c, uid).await?.ok_or_else(|| ApiError::not_found("user", uid.to_string()))?;
                let loses_admin = before.role() == Role::Admin
                    && !before.disabled
                    && (role.is_some_and(|r| r != Role::Admin) || disabled == Some(true));
                if loses_admin && users::enabled_admins(c).await? <= 1 {
                    return Err(ApiError::Refused(format!("{} is the last enabled admin", before.email)));
                }
                let changes = users::UserChanges {
                    name: name.clone(),
                    role: role.map(|r| r.as_str().to_string()),
                    disabled,
                };
                let after = users::update_user(c, uid, &changes).await?.ok_or_else(|| ApiError::not_found("user", uid.to_string()))?;
                if disabled == Some(true) {
                    users::revoke_sessions_of(c, uid, None).await?;
                }
                audit::record(
                    c,
                    &actor,
                    "user.update",
                    &format!("user:{}", after.email),
                    json!({ "name": name, "role": role.map(|r| r.as_str()), "disabled": disabled }),
                )
                .await?;
                Ok(after)
            })
            .await?;
        Ok(user.into())
    }

    /// Creates an API key for the caller, with at most the caller's role. The
    /// key is in the answer this once.
    async fn create_api_key(
        &self,
        ctx: &Context<'_>,
        name: String,
        role: Option<UserRole>,
        expires_in_days: Option<i32>,
    ) -> async_graphql::Result<CreatedApiKey> {
        let caller = caller(ctx)?.clone();
        check_name("name", &name, 100)?;
        // A key's role caps what it may do in every space, under its owner's
        // roles there: at most the highest role the caller holds anywhere.
        let best = caller.access.best();
        let role: Role = role.map(Into::into).unwrap_or(best);
        if !best.allows(role) {
            return Err(ApiError::Forbidden { needed: role }.into());
        }
        let expires_at = match expires_in_days {
            None => None,
            Some(d) if (1..=3650).contains(&d) => Some(Utc::now() + chrono::Duration::days(i64::from(d))),
            Some(_) => return Err(ApiError::invalid("expiresInDays", "must be between 1 and 3650").into()),
        };
        let mut c = conn(ctx).await?;
        let actor = caller.actor();
        let (token, row) = c
            .transaction::<_, ApiError, _>(async move |c| {
                let made = users::create_api_key(c, caller.user_id, &name, role, expires_at).await?;
                audit::record(
                    c,
                    &actor,
                    "api_key.create",
                    &format!("api_key:{}", made.1.id),
                    json!({ "name": name, "role": role.as_str(), "expires_at": expires_at }),
                )
                .await?;
                Ok(made)
            })
            .await?;
        Ok(CreatedApiKey { key: token.token.expose().to_string(), api_key: row.into() })
    }

    /// Revokes an API key: the caller's own, or anyone's for an admin.
    async fn revoke_api_key(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<ApiKey> {
        let caller = caller(ctx)?.clone();
        let kid = super::id(&id, "id")?;
        let mut c = conn(ctx).await?;
        let actor = caller.actor();
        let row = c
            .transaction::<_, ApiError, _>(async move |c| {
                let key = users::get_api_key(c, kid).await?.ok_or_else(|| ApiError::not_found("API key", kid.to_string()))?;
                if key.user_id != caller.user_id && !Op::ManageUsers.allowed(caller.role) {
                    // Others' keys are not even confirmed to exist.
                    return Err(ApiError::not_found("API key", kid.to_string()));
                }
                let revoked = users::revoke_api_key(c, kid).await?.ok_or_else(|| ApiError::not_found("API key", kid.to_string()))?;
                audit::record(c, &actor, "api_key.revoke", &format!("api_key:{kid}"), json!({ "name": revoked.name })).await?;
                Ok(revoked)
            })
            .await?;
        Ok(row.into())
    }
}
