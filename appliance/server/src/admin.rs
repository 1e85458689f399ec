//! Administration tasks run from the command line (`hangar admin ...`) rather
//! than through the API: the installer's first admin user, and master-key
//! rotation. Each writes an audit event like an API mutation does.

use diesel_async::{AsyncConnection, AsyncPgConnection};
use hangar_crypto::MasterKey;
use hangar_types::Role;
use serde_json::json;

use crate::ServerError;
use hangar_store::{audit, users};

/// How command-line changes are named in the audit trail.
pub const CLI_ACTOR: &str = "hangar admin (command line)";

/// What `create_user` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserOutcome {
    Created,
    Updated,
}

/// A plausible email address (what the API accepts as well).
pub fn valid_email(email: &str) -> bool {
    let parts: Vec<&str> = email.split('@').collect();
    email.len() <= 254
        && parts.len() == 2
        && !parts[0].is_empty()
        && parts[1].contains('.')
        && !parts[1].starts_with('.')
        && !parts[1].ends_with('.')
        && email.chars().all(|c| c.is_ascii_graphic() && !"<>()[]\\,;:\"".contains(c))
}

/// Creates a user, or with `update` sets the role and password of an existing
/// one (re-enabling it and ending its sessions). Without `update`, an existing
/// user is an error, so a repeated install never silently changes a password.
pub async fn create_user(
    conn: &mut AsyncPgConnection,
    email: &str,
    name: &str,
    role: Role,
    password: &str,
    update: bool,
) -> Result<UserOutcome, ServerError> {
    let problem = |p: String| ServerError::User { email: email.to_string(), problem: p };
    if !valid_email(email) {
        return Err(problem("is not a valid email address".into()));
    }
    hangar_crypto::check_password_strength(password, email).map_err(|e| problem(e.to_string()))?;
    let pw = password.to_string();
    let hash = tokio::task::spawn_blocking(move || hangar_crypto::hash_password(&pw))
        .await
        .map_err(|e| problem(format!("hashing failed: {e}")))?
        .map_err(|e| problem(e.to_string()))?;
    let (email, name) = (email.to_string(), name.to_string());
    conn.transaction::<_, ServerError, _>(async move |c| {
        match users::find_for_login(c, &email).await? {
            Some((existing, _)) if !update => Err(ServerError::User {
                email: existing.email,
                problem: "already exists (pass --update to set its role and password)".into(),
            }),
            Some((existing, _)) => {
                users::set_password(c, existing.id, &hash).await?;
                let changes = users::UserChanges {
                    name: (!name.is_empty()).then(|| name.clone()),
                    role: Some(role.as_str().into()),
                    disabled: Some(false),
                };
                users::update_user(c, existing.id, &changes).await?;
                users::revoke_sessions_of(c, existing.id, None).await?;
                audit::record(
                    c,
                    CLI_ACTOR,
                    "user.update",
                    &format!("user:{}", existing.email),
                    json!({ "role": role.as_str(), "password": "changed", "disabled": false }),
                )
                .await?;
                Ok(UserOutcome::Updated)
            }
            None => {
                users::insert_user(c, &email, &name, role, &hash).await?;
                audit::record(c, CLI_ACTOR, "user.create", &format!("user:{email}"), json!({ "role": role.as_str() })).await?;
                Ok(UserOutcome::Created)
            }
        }
    })
    .await
}

/// Re-wraps every data key from `old` to `new` in one transaction, with its
/// audit event; returns how many data keys were re-wrapped.
pub async fn rotate_master_key(
    conn: &mut AsyncPgConnection,
    old: &MasterKey,
    new: &MasterKey,
) -> Result<usize, ServerError> {
    let (old, new) = (old.clone(), new.clone());
    conn.transaction::<_, ServerError, _>(async move |c| {
        let n = hangar_store::secrets::rotate_master_key(c, &old, &new).await?;
        audit::record(
            c,
            CLI_ACTOR,
            "secrets.rotate_master_key",
            "master_key",
            json!({ "from": old.id(), "to": new.id(), "data_keys": n }),
        )
        .await?;
        Ok(n)
    })
    .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn emails() {
        for ok in ["ops@example.com", "a.b+c@x.io"] {
            assert!(super::valid_email(ok), "{ok}");
        }
        for bad in ["", "x", "a@b", "a@@b.c", "a b@c.d", "a@.c", "<a>@b.c", "a@b.c;DROP"] {
            assert!(!super::valid_email(bad), "{bad}");
        }
    }
}
