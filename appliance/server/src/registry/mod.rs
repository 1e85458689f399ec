//! The private module registry: modules published from a tag of a git
//! repository ([`publish`]) and served to stock Terraform by its module
//! registry protocol ([`serve`]), so that
//! `source = "<appliance host>/<namespace>/<name>/<system>"` with a `version`
//! constraint resolves on a worker with no other network.
//!
//! Addresses follow what Terraform 1.0's source parser accepts, made
//! lowercase so that one module has one address: a namespace and a name are
//! 1-64 of `a-z`, `0-9`, `-` and `_`, beginning and ending with a letter or
//! digit; a system (Terraform calls it the provider) is 1-64 of `a-z0-9`.
//! Versions are semver without build metadata (`1.2.0`, `2.0.0-rc.1`).

pub(crate) mod publish;
pub(crate) mod serve;

/// Longest namespace, name or system.
const MAX_SEGMENT: usize = 64;

/// Longest version string accepted anywhere.
const MAX_VERSION: usize = 64;

/// Whether `s` is a valid namespace or module name.
pub(crate) fn name_ok(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=MAX_SEGMENT).contains(&b.len())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// Whether `s` is a valid system (the provider part of a module address).
pub(crate) fn system_ok(s: &str) -> bool {
    (1..=MAX_SEGMENT).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// A module's address in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Address {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) system: String,
}

impl Address {
    /// The address, when every part is valid; otherwise which part is not.
    pub(crate) fn parse(namespace: &str, name: &str, system: &str) -> Result<Address, &'static str> {
        if !name_ok(namespace) {
            return Err("namespace");
        }
        if !name_ok(name) {
            return Err("name");
        }
        if !system_ok(system) {
            return Err("system");
        }
        Ok(Address { namespace: namespace.into(), name: name.into(), system: system.into() })
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.name, self.system)
    }
}

/// A module version: semver without build metadata, in its canonical form.
pub(crate) fn parse_version(s: &str) -> Option<semver::Version> {
    if s.is_empty() || s.len() > MAX_VERSION {
        return None;
    }
    let v = semver::Version::parse(s).ok()?;
    // Build metadata does not take part in precedence: `1.0.0+a` and
    // `1.0.0+b` would be two versions Terraform cannot tell apart.
    (v.build.is_empty() && v.to_string() == s).then_some(v)
}

/// The version a tag stands for: the tag without a leading `v`.
pub(crate) fn version_of_tag(tag: &str) -> &str {
    tag.strip_prefix('v').unwrap_or(tag)
}

/// `host:port` of the appliance's public URL: what a module source begins with.
pub(crate) fn registry_host(public_url: &str) -> String {
    match url::Url::parse(public_url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => public_url.to_string(),
        },
        Err(_) => public_url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_terraform_and_are_lowercase() {
        for ok in ["acme", "a", "net-work", "files_2", "0x"] {
            assert!(name_ok(ok), "{ok}");
        }
        let long = "a".repeat(65);
        for bad in ["", "Acme", "-x", "x-", "_x", "a/b", "..", "a.b", "a b", "é", long.as_str()] {
            assert!(!name_ok(bad), "{bad}");
        }
        assert!(system_ok("hangartest") && system_ok("aws2"));
        for bad in ["", "a-b", "a_b", "AWS", "../x"] {
            assert!(!system_ok(bad), "{bad}");
        }
        assert_eq!(Address::parse("acme", "files", "x-y"), Err("system"));
        assert_eq!(Address::parse("acme", "..", "x"), Err("name"));
        assert_eq!(Address::parse("acme", "files", "aws").unwrap().to_string(), "acme/files/aws");
    }

    #[test]
    fn versions_are_canonical_semver_without_build_metadata() {
        assert_eq!(parse_version("1.1.0").unwrap().to_string(), "1.1.0");
        assert!(parse_version("2.0.0-rc.1").is_some());
        for bad in ["", "1", "1.0", "v1.0.0", "01.0.0", "1.0.0+build", "1.0.0 ", "../1.0.0", "1.0.0/download"] {
            assert!(parse_version(bad).is_none(), "{bad}");
        }
        assert!(parse_version(&format!("1.0.0-{}", "a".repeat(100))).is_none());
        assert_eq!(version_of_tag("v1.2.3"), "1.2.3");
        assert_eq!(version_of_tag("1.2.3"), "1.2.3");
    }

    #[test]
    fn the_registry_host_is_the_public_urls() {
        assert_eq!(registry_host("https://hangar.example.com"), "hangar.example.com");
        assert_eq!(registry_host("https://127.0.0.1:1983/"), "127.0.0.1:1983");
    }
}
