//! A stack's project root and the question the drain asks of every push: does
//! it touch anything under that root?

use std::fmt;

/// A normalized directory inside a repository: no leading or trailing `/`, no
/// `.` or empty components, no `..`. The empty root is the whole repository.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ProjectRoot(String);

/// A project root that cannot be one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("project root {root:?} is invalid: {problem}")]
pub struct InvalidProjectRoot {
    pub root: String,
    pub problem: &'static str,
}

impl ProjectRoot {
    /// Normalizes `root`: `""`, `"."`, `"/"` and `"./"` all mean the whole
    /// repository; `"/infra/"`, `"./infra"` and `"infra//"` mean `infra`.
    pub fn new(root: &str) -> Result<ProjectRoot, InvalidProjectRoot> {
        let invalid = |problem| InvalidProjectRoot { root: root.chars().take(256).collect(), problem };
        if root.len() > 1024 {
            return Err(invalid("is longer than 1024 bytes"));
        }
        if root.chars().any(|c| c.is_control()) {
            return Err(invalid("contains a control character"));
        }
        if root.contains('\\') {
            return Err(invalid("contains a backslash (paths in git use /)"));
        }
        let mut parts = Vec::new();
        for part in root.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err(invalid("climbs out of the repository with ..")),
                p => parts.push(p),
            }
        }
        Ok(ProjectRoot(parts.join("/")))
    }

    /// The whole repository.
    pub fn whole_repository() -> ProjectRoot {
        ProjectRoot(String::new())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_whole_repository(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the repository path `path` (as a vendor lists it) lies under this
    /// root. Matching is by whole components: root `infra` holds `infra/main.tf`
    /// and `infra` itself, not `infrastructure/x`.
    pub fn contains(&self, path: &str) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let path = normalize_path(path);
        match path.strip_prefix(self.0.as_str()) {
            Some("") => true,
            Some(rest) => rest.starts_with('/'),
            None => false,
        }
    }
}

impl fmt::Display for ProjectRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() { f.write_str("/") } else { f.write_str(&self.0) }
    }
}

/// A vendor's changed-path entry, normalized the way roots are (`./a//b` → `a/b`).
pub(crate) fn normalize_path(path: &str) -> String {
    // Vendors send normal paths; only odd ones are rebuilt.
    let odd = path.starts_with('/') || path.ends_with('/') || path.starts_with("./") || path == "."
        || path.contains("//") || path.contains("/./") || path.ends_with("/.");
    if !odd {
        return path.to_string();
    }
    let mut out = String::with_capacity(path.len());
    for part in path.split('/') {
        if part.is_empty() || part == "." {
            continue;
        }
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(part);
    }
    out
}

/// Whether a push touches a project root, as far as the delivery can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touches {
    /// A changed path lies under the root (or the root is the whole repository).
    Yes,
    /// The vendor listed every changed path and none lies under the root.
    No,
    /// The vendor's list is truncated or absent and nothing listed lies under
    /// the root: ask git (`git diff --name-only before after`) before deciding.
    Unknown,
}

pub(crate) fn touches<'a>(
    paths: impl IntoIterator<Item = &'a String>,
    complete: bool,
    root: &ProjectRoot,
) -> Touches {
    if root.is_whole_repository() {
        return Touches::Yes;
    }
    if paths.into_iter().any(|p| root.contains(p)) {
        Touches::Yes
    } else if complete {
        Touches::No
    } else {
        Touches::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_normalize_and_the_empty_root_is_everything() {
        for whole in ["", ".", "/", "./", "//", "./."] {
            assert!(ProjectRoot::new(whole).unwrap().is_whole_repository(), "{whole:?}");
        }
        for infra in ["infra", "/infra", "infra/", "./infra", "infra//", "/./infra/."] {
            assert_eq!(ProjectRoot::new(infra).unwrap().as_str(), "infra", "{infra:?}");
        }
        assert_eq!(ProjectRoot::new("a//b/./c/").unwrap().as_str(), "a/b/c");
        assert_eq!(ProjectRoot::new("").unwrap().to_string(), "/");
    }

    #[test]
    fn hostile_roots_are_refused() {
        for bad in ["..", "infra/../..", "a/../b", "a\0b", "a\nb", "a\\b"] {
            let e = ProjectRoot::new(bad).unwrap_err();
            assert!(e.to_string().starts_with("project root"), "{e}");
        }
        assert!(ProjectRoot::new(&"a/".repeat(600)).is_err());
    }

    #[test]
    fn containment_is_by_whole_components() {
        let root = ProjectRoot::new("infra/prod").unwrap();
        assert!(root.contains("infra/prod/main.tf"));
        assert!(root.contains("infra/prod"));
        assert!(root.contains("./infra//prod/modules/x.tf"));
        assert!(!root.contains("infra/production/main.tf"));
        assert!(!root.contains("infra/main.tf"));
        assert!(!root.contains("other/infra/prod/main.tf"));
        assert!(!root.contains(""));
        // Case matters in git.
        assert!(!root.contains("Infra/prod/main.tf"));
    }

    #[test]
    fn touches_distinguishes_no_from_unknown() {
        let root = ProjectRoot::new("infra").unwrap();
        let paths = vec!["README.md".to_string(), "docs/x.md".to_string()];
        assert_eq!(touches(&paths, true, &root), Touches::No);
        assert_eq!(touches(&paths, false, &root), Touches::Unknown);
        let mut with = paths.clone();
        with.push("infra/main.tf".into());
        assert_eq!(touches(&with, false, &root), Touches::Yes);
        assert_eq!(touches(&[], true, &ProjectRoot::whole_repository()), Touches::Yes);
    }
}
