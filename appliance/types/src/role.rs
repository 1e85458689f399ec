//! What a user or API key may do.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Roles, from least to most privileged. A user's or API key's own role is
/// its role in the root space, and so in every space; grants raise it in a
/// space and the spaces below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// As an own role only: nothing outside the spaces granted. Never needed
    /// by an operation and never granted.
    #[serde(rename = "none")]
    NoAccess,
    /// Reads everything except secret values; changes nothing.
    Reader,
    /// Also manages stacks, contexts and environment variables, and runs.
    Writer,
    /// Also manages users, API keys of others, worker pools and workers.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::NoAccess => "none",
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }

    /// True when this role includes `needed`.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Role::NoAccess),
            "reader" => Ok(Role::Reader),
            "writer" => Ok(Role::Writer),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?} (expected none, reader, writer or admin)")),
        }
    }
}
