//! The git servers Hangar integrates with, named as they appear in webhook URLs
//! (`/webhooks/{vendor}/{integration}`) and in the database.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A git server product whose webhooks and APIs Hangar speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    /// GitHub Enterprise Server (and github.com, which speaks the same).
    Github,
    /// GitLab self-managed.
    Gitlab,
    /// Gitea and Forgejo.
    Gitea,
    /// Bitbucket Data Center (formerly Bitbucket Server).
    Bitbucket,
}

impl Vendor {
    pub const ALL: [Vendor; 4] = [Vendor::Github, Vendor::Gitlab, Vendor::Gitea, Vendor::Bitbucket];

    /// The lowercase name used in URLs and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Vendor::Github => "github",
            Vendor::Gitlab => "gitlab",
            Vendor::Gitea => "gitea",
            Vendor::Bitbucket => "bitbucket",
        }
    }

    /// The product name for messages an operator reads.
    pub fn product(self) -> &'static str {
        match self {
            Vendor::Github => "GitHub",
            Vendor::Gitlab => "GitLab",
            Vendor::Gitea => "Gitea",
            Vendor::Bitbucket => "Bitbucket Data Center",
        }
    }
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A vendor name Hangar does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown VCS kind {name:?} (expected github, gitlab, gitea or bitbucket)")]
pub struct UnknownVendor {
    pub name: String,
}

impl FromStr for Vendor {
    type Err = UnknownVendor;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "github" => Ok(Vendor::Github),
            "gitlab" => Ok(Vendor::Gitlab),
            // Forgejo sends Gitea's headers and payloads as well as its own.
            "gitea" | "forgejo" => Ok(Vendor::Gitea),
            "bitbucket" => Ok(Vendor::Bitbucket),
            other => Err(UnknownVendor { name: other.chars().take(64).collect() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for v in Vendor::ALL {
            assert_eq!(v.as_str().parse::<Vendor>().unwrap(), v);
        }
        assert_eq!("forgejo".parse::<Vendor>().unwrap(), Vendor::Gitea);
        let e = "GitHub".parse::<Vendor>().unwrap_err();
        assert_eq!(e.to_string(), "unknown VCS kind \"GitHub\" (expected github, gitlab, gitea or bitbucket)");
    }
}
