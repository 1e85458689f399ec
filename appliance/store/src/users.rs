//! Users, login sessions and API keys: creation, lookup of a presented bearer
//! token, and revocation. Tokens are stored only as SHA-256 hashes; passwords
//! only as argon2id PHC strings.

use std::sync::OnceLock;

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use hangar_crypto::{IssuedToken, new_token, token_matches, token_parts};
use hangar_db::schema::{api_keys, sessions, users};
use hangar_types::Role;

use crate::StoreError;

/// Token kinds (the text before the first `_`).
pub const SESSION_KIND: &str = "hss";
pub const API_KEY_KIND: &str = "hak";

/// Last-seen times are written at most this often per token, so reading the
/// API does not turn every request into a write.
const TOUCH_EVERY: Duration = Duration::seconds(60);

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = users)]
pub struct UserRow {
    pub id: i64,
    pub email: String,
    pub name: String,
    pub role: String,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl UserRow {
    pub fn role(&self) -> Role {
        // The column's CHECK allows only the four names.
        self.role.parse().unwrap_or(Role::NoAccess)
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = api_keys)]
pub struct ApiKeyRow {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub prefix: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKeyRow {
    pub fn role(&self) -> Role {
        self.role.parse().unwrap_or(Role::NoAccess)
    }
}

/// How a caller authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    Session { id: i64 },
    ApiKey { id: i64, name: String },
}

/// Who is making a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: i64,
    pub email: String,
    /// The role held in the root space, and so everywhere; for an API key,
    /// the lower of the key's and its owner's.
    pub role: Role,
    pub via: Via,
    /// The role in each space, with the grants counted.
    pub access: std::sync::Arc<crate::spaces::SpaceAccess>,
}

impl Caller {
    /// How this caller is named in audit events and run histories.
    /// Whether the caller may do what needs `needed` in `space`.
    pub fn may(&self, space: i64, needed: Role) -> bool {
        self.access.may(space, needed)
    }

    /// Whether anything of `space` may be seen.
    pub fn sees(&self, space: i64) -> bool {
        self.access.sees(space)
    }

    /// The role held in the root space: global operations (users, the audit
    /// trail, upgrades) need it.
    pub fn global(&self) -> Role {
        self.role
    }

    pub fn actor(&self) -> String {
        match &self.via {
            Via::Session { .. } => self.email.clone(),
            Via::ApiKey { name, .. } => format!("{} (API key {name})", self.email),
        }
    }
}

/// Why a presented token was refused. Never told to the client in detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    Malformed,
    Unknown,
    Expired,
    Revoked,
    UserDisabled,
}

impl TokenRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRefusal::Malformed => "malformed",
            TokenRefusal::Unknown => "unknown",
            TokenRefusal::Expired => "expired",
            TokenRefusal::Revoked => "revoked",
            TokenRefusal::UserDisabled => "user disabled",
        }
    }
}

/// A session row as checked on each request: id, hash, expiry, revocation,
/// last use, its user, and the generation of spaces and grants.
type SessionLookup = (i64, String, DateTime<Utc>, Option<DateTime<Utc>>, Option<DateTime<Utc>>, UserRow, i64);

/// Resolves a bearer token to its caller.
pub async fn resolve_token(
    conn: &mut AsyncPgConnection,
    token: &str,
) -> Result<Result<Caller, TokenRefusal>, StoreError> {
    let Some((kind, id)) = token_parts(token) else { return Ok(Err(TokenRefusal::Malformed)) };
    let now = Utc::now();
    match kind {
        SESSION_KIND => {
            let found: Option<SessionLookup> =
                sessions::table
                    .inner_join(users::table)
                    .filter(sessions::token_id.eq(id))
                    .select((
                        sessions::id,
                        sessions::token_hash,
                        sessions::expires_at,
                        sessions::revoked_at,
                        sessions::last_seen_at,
                        UserRow::as_select(),
                        crate::spaces::generation_column(),
                    ))
                    .first(conn)
                    .await
                    .optional()?;
            let Some((sid, hash, expires, revoked, seen, user, generation)) = found else { return Ok(Err(TokenRefusal::Unknown)) };
            if !token_matches(token, &hash) {
                return Ok(Err(TokenRefusal::Unknown));
            }
            if revoked.is_some() {
                return Ok(Err(TokenRefusal::Revoked));
            }
            if expires <= now {
                return Ok(Err(TokenRefusal::Expired));
            }
            if user.disabled {
                return Ok(Err(TokenRefusal::UserDisabled));
            }
            if seen.is_none_or(|s| now - s > TOUCH_EVERY) {
                diesel::update(sessions::table.find(sid)).set(sessions::last_seen_at.eq(now)).execute(conn).await?;
            }
            let access = crate::spaces::user_access_at(conn, generation, user.id, user.role()).await?;
            Ok(Ok(Caller { user_id: user.id, email: user.email.clone(), role: user.role(), via: Via::Session { id: sid }, access }))
        }
        API_KEY_KIND => {
            let found: Option<(String, ApiKeyRow, UserRow, i64)> = api_keys::table
                .inner_join(users::table)
                .filter(api_keys::prefix.eq(id))
                .select((api_keys::secret_hash, ApiKeyRow::as_select(), UserRow::as_select(), crate::spaces::generation_column()))
                .first(conn)
                .await
                .optional()?;
            let Some((hash, key, user, generation)) = found else { return Ok(Err(TokenRefusal::Unknown)) };
            if !token_matches(token, &hash) {
                return Ok(Err(TokenRefusal::Unknown));
            }
            if key.revoked_at.is_some() {
                return Ok(Err(TokenRefusal::Revoked));
            }
            if key.expires_at.is_some_and(|e| e <= now) {
                return Ok(Err(TokenRefusal::Expired));
            }
            if user.disabled {
                return Ok(Err(TokenRefusal::UserDisabled));
            }
            if key.last_used_at.is_none_or(|s| now - s > TOUCH_EVERY) {
                diesel::update(api_keys::table.find(key.id)).set(api_keys::last_used_at.eq(now)).execute(conn).await?;
            }
            let access =
                crate::spaces::key_access_at(conn, generation, (user.id, user.role()), (key.id, key.role())).await?;
            Ok(Ok(Caller {
                user_id: user.id,
                email: user.email.clone(),
                role: key.role().min(user.role()),
                via: Via::ApiKey { id: key.id, name: key.name.clone() },
                access,
            }))
        }
        _ => Ok(Err(TokenRefusal::Malformed)),
    }
}

diesel::define_sql_function! {
    /// SQL `lower()`: emails are unique and matched without regard to case.
    fn lower(x: diesel::sql_types::Text) -> diesel::sql_types::Text;
}

/// A user with its password hash, for login.
pub async fn find_for_login(
    conn: &mut AsyncPgConnection,
    email: &str,
) -> Result<Option<(UserRow, String)>, StoreError> {
    Ok(users::table
        .filter(lower(users::email).eq(lower(email)))
        .select((UserRow::as_select(), users::password_hash))
        .first(conn)
        .await
        .optional()?)
}

/// A PHC string that matches no password, verified when the account does not
/// exist so that a failed login takes as long either way.
pub fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        let t = new_token("decoy");
        hangar_crypto::hash_password(t.token.expose()).unwrap_or_default()
    })
}

pub async fn create_session(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    ttl: Duration,
) -> Result<(IssuedToken, DateTime<Utc>), StoreError> {
    let token = new_token(SESSION_KIND);
    let expires = Utc::now() + ttl;
    diesel::insert_into(sessions::table)
        .values((
            sessions::user_id.eq(user_id),
            sessions::token_id.eq(&token.id),
            sessions::token_hash.eq(&token.hash),
            sessions::expires_at.eq(expires),
        ))
        .execute(conn)
        .await?;
    Ok((token, expires))
}

pub async fn revoke_session(conn: &mut AsyncPgConnection, id: i64) -> Result<bool, StoreError> {
    let n = diesel::update(sessions::table.find(id).filter(sessions::revoked_at.is_null()))
        .set(sessions::revoked_at.eq(diesel::dsl::now))
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// Ends every session of a user (disabled, or password changed).
pub async fn revoke_sessions_of(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    except: Option<i64>,
) -> Result<usize, StoreError> {
    Ok(diesel::update(
        sessions::table
            .filter(sessions::user_id.eq(user_id))
            .filter(sessions::revoked_at.is_null())
            .filter(sessions::id.ne(except.unwrap_or(-1))),
    )
    .set(sessions::revoked_at.eq(diesel::dsl::now))
    .execute(conn)
    .await?)
}

pub async fn get_user(conn: &mut AsyncPgConnection, id: i64) -> Result<Option<UserRow>, StoreError> {
    Ok(users::table.find(id).select(UserRow::as_select()).first(conn).await.optional()?)
}

pub async fn list_users(conn: &mut AsyncPgConnection) -> Result<Vec<UserRow>, StoreError> {
    Ok(users::table.order(users::id.asc()).select(UserRow::as_select()).load(conn).await?)
}

pub async fn password_hash(conn: &mut AsyncPgConnection, id: i64) -> Result<String, StoreError> {
    Ok(users::table.find(id).select(users::password_hash).first(conn).await?)
}

pub async fn insert_user(
    conn: &mut AsyncPgConnection,
    email: &str,
    name: &str,
    role: Role,
    password_hash: &str,
) -> Result<UserRow, StoreError> {
    Ok(diesel::insert_into(users::table)
        .values((
            users::email.eq(email),
            users::name.eq(name),
            users::role.eq(role.as_str()),
            users::password_hash.eq(password_hash),
        ))
        .returning(UserRow::as_returning())
        .get_result(conn)
        .await?)
}

pub async fn set_password(conn: &mut AsyncPgConnection, id: i64, hash: &str) -> Result<(), StoreError> {
    Ok(diesel::update(users::table.find(id))
        .set((users::password_hash.eq(hash), users::updated_at.eq(diesel::dsl::now)))
        .execute(conn)
        .await
        .map(|_| ())?)
}

/// Changes of a user an admin may make.
#[derive(Debug, Default, Clone, AsChangeset)]
#[diesel(table_name = users)]
pub struct UserChanges {
    pub name: Option<String>,
    pub role: Option<String>,
    pub disabled: Option<bool>,
}

pub async fn update_user(
    conn: &mut AsyncPgConnection,
    id: i64,
    changes: &UserChanges,
) -> Result<Option<UserRow>, StoreError> {
    Ok(diesel::update(users::table.find(id))
        .set((changes, users::updated_at.eq(diesel::dsl::now)))
        .returning(UserRow::as_returning())
        .get_result(conn)
        .await
        .optional()?)
}

/// How many enabled admins remain (the last one may not be demoted or disabled).
pub async fn enabled_admins(conn: &mut AsyncPgConnection) -> Result<i64, StoreError> {
    Ok(users::table
        .filter(users::role.eq(Role::Admin.as_str()))
        .filter(users::disabled.eq(false))
        .count()
        .get_result(conn)
        .await?)
}

pub async fn create_api_key(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    name: &str,
    role: Role,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(IssuedToken, ApiKeyRow), StoreError> {
    let token = new_token(API_KEY_KIND);
    let row = diesel::insert_into(api_keys::table)
        .values((
            api_keys::user_id.eq(user_id),
            api_keys::name.eq(name),
            api_keys::prefix.eq(&token.id),
            api_keys::secret_hash.eq(&token.hash),
            api_keys::role.eq(role.as_str()),
            api_keys::expires_at.eq(expires_at),
        ))
        .returning(ApiKeyRow::as_returning())
        .get_result(conn)
        .await?;
    Ok((token, row))
}

pub async fn list_api_keys(
    conn: &mut AsyncPgConnection,
    user_id: Option<i64>,
) -> Result<Vec<ApiKeyRow>, StoreError> {
    let mut q = api_keys::table.order(api_keys::id.asc()).select(ApiKeyRow::as_select()).into_boxed();
    if let Some(u) = user_id {
        q = q.filter(api_keys::user_id.eq(u));
    }
    Ok(q.load(conn).await?)
}

pub async fn get_api_key(conn: &mut AsyncPgConnection, id: i64) -> Result<Option<ApiKeyRow>, StoreError> {
    Ok(api_keys::table.find(id).select(ApiKeyRow::as_select()).first(conn).await.optional()?)
}

pub async fn revoke_api_key(conn: &mut AsyncPgConnection, id: i64) -> Result<Option<ApiKeyRow>, StoreError> {
    Ok(diesel::update(api_keys::table.find(id))
        .set(api_keys::revoked_at.eq(diesel::dsl::now))
        .returning(ApiKeyRow::as_returning())
        .get_result(conn)
        .await
        .optional()?)
}

/// Forgets login sessions that expired or were revoked before `before`;
/// returns how many.
pub async fn prune_sessions(conn: &mut AsyncPgConnection, before: DateTime<Utc>) -> Result<usize, StoreError> {
    Ok(diesel::delete(sessions::table.filter(sessions::expires_at.lt(before).or(sessions::revoked_at.lt(before))))
        .execute(conn)
        .await?)
}

/// The user with `email` (matched without regard to case).
pub async fn user_by_email(conn: &mut AsyncPgConnection, email: &str) -> Result<Option<UserRow>, StoreError> {
    Ok(users::table
        .filter(lower(users::email).eq(email.to_lowercase()))
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional()?)
}
