//! Typed access to a delivery's JSON that turns every absence or wrong type into
//! a [`ParseError`] naming the field by its path (`pull_request.head.sha`), and
//! the checks on values that later reach git (commit ids, ref names).

use serde_json::Value;

use super::ParseError;
use crate::Vendor;

pub(crate) struct Ctx<'e> {
    pub vendor: Vendor,
    pub event: &'e str,
}

impl Ctx<'_> {
    pub fn missing(&self, field: &str) -> ParseError {
        ParseError::Missing { vendor: self.vendor, event: self.event.to_string(), field: field.to_string() }
    }

    pub fn wrong_type(&self, field: &str, expected: &'static str) -> ParseError {
        ParseError::WrongType {
            vendor: self.vendor,
            event: self.event.to_string(),
            field: field.to_string(),
            expected,
        }
    }

    pub fn invalid(&self, field: &str, problem: &'static str) -> ParseError {
        ParseError::Invalid {
            vendor: self.vendor,
            event: self.event.to_string(),
            field: field.to_string(),
            problem,
        }
    }
}

/// One step from a parent to a child.
#[derive(Clone, Copy)]
enum Step<'p> {
    Key(&'p str),
    Index(usize),
}

/// A place in the document, present or not. Its path (`commits[1].added`) is
/// only spelled out for an error message, by walking back to the root: reading
/// a valid delivery allocates nothing for paths.
pub(crate) struct J<'a, 'p> {
    value: Option<&'a Value>,
    parent: Option<&'p J<'a, 'p>>,
    step: Option<Step<'p>>,
}

impl<'a, 'p> J<'a, 'p> {
    pub fn root(value: &'a Value) -> J<'a, 'a> {
        J { value: Some(value), parent: None, step: None }
    }

    /// The path from the root, for messages.
    pub fn path(&self) -> String {
        let mut steps = Vec::new();
        let mut at = Some(self);
        while let Some(j) = at {
            if let Some(s) = j.step {
                steps.push(s);
            }
            at = j.parent;
        }
        let mut out = String::new();
        for s in steps.into_iter().rev() {
            match s {
                Step::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Step::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        if out.is_empty() { "(body)".to_string() } else { out }
    }

    /// The member `key` of this object (absent when this is absent or null).
    pub fn at<'s>(&'s self, key: &'s str) -> J<'a, 's> {
        J { value: self.value.and_then(|v| v.get(key)), parent: Some(self), step: Some(Step::Key(key)) }
    }

    /// The elements of this array, none if absent or null.
    pub fn opt_items(&self, ctx: &Ctx) -> Result<Option<Vec<J<'a, '_>>>, ParseError> {
        Ok(self.opt_array(ctx)?.map(|items| {
            items
                .iter()
                .enumerate()
                .map(|(i, v)| J { value: Some(v), parent: Some(self), step: Some(Step::Index(i)) })
                .collect()
        }))
    }

    pub fn items(&self, ctx: &Ctx) -> Result<Vec<J<'a, '_>>, ParseError> {
        self.opt_items(ctx)?.ok_or_else(|| ctx.missing(&self.path()))
    }

    /// Present and not null.
    pub fn exists(&self) -> bool {
        matches!(self.value, Some(v) if !v.is_null())
    }

    fn present(&self) -> Option<&'a Value> {
        self.value.filter(|v| !v.is_null())
    }

    pub fn str(&self, ctx: &Ctx) -> Result<&'a str, ParseError> {
        self.opt_str(ctx)?.ok_or_else(|| ctx.missing(&self.path()))
    }

    pub fn opt_str(&self, ctx: &Ctx) -> Result<Option<&'a str>, ParseError> {
        match self.present() {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ctx.wrong_type(&self.path(), "a string")),
        }
    }

    /// A non-empty string, or none.
    pub fn opt_text(&self, ctx: &Ctx) -> Result<Option<String>, ParseError> {
        Ok(self.opt_str(ctx)?.filter(|s| !s.is_empty()).map(str::to_string))
    }

    pub fn u64(&self, ctx: &Ctx) -> Result<u64, ParseError> {
        self.opt_u64(ctx)?.ok_or_else(|| ctx.missing(&self.path()))
    }

    pub fn opt_u64(&self, ctx: &Ctx) -> Result<Option<u64>, ParseError> {
        match self.present() {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| ctx.wrong_type(&self.path(), "a non-negative integer")),
        }
    }

    pub fn opt_bool(&self, ctx: &Ctx) -> Result<Option<bool>, ParseError> {
        match self.present() {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ctx.wrong_type(&self.path(), "true or false")),
        }
    }

    pub fn array(&self, ctx: &Ctx) -> Result<&'a [Value], ParseError> {
        self.opt_array(ctx)?.ok_or_else(|| ctx.missing(&self.path()))
    }

    pub fn opt_array(&self, ctx: &Ctx) -> Result<Option<&'a [Value]>, ParseError> {
        match self.present() {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(_) => Err(ctx.wrong_type(&self.path(), "an array")),
        }
    }

    /// This place, required to be an object.
    pub fn object(&self, ctx: &Ctx) -> Result<&Self, ParseError> {
        match self.present() {
            None => Err(ctx.missing(&self.path())),
            Some(Value::Object(_)) => Ok(self),
            Some(_) => Err(ctx.wrong_type(&self.path(), "an object")),
        }
    }

    /// This place if it is an object, none if absent or null.
    pub fn opt_object(&self, ctx: &Ctx) -> Result<Option<&Self>, ParseError> {
        match self.present() {
            None => Ok(None),
            Some(Value::Object(_)) => Ok(Some(self)),
            Some(_) => Err(ctx.wrong_type(&self.path(), "an object")),
        }
    }

    /// A commit id (40 or 64 hex digits, lowercased). The all-zero id vendors
    /// use for "no commit" (a created or deleted ref) is `None`.
    pub fn commit(&self, ctx: &Ctx) -> Result<Option<String>, ParseError> {
        let s = self.str(ctx)?;
        commit_id(ctx, &self.path(), s)
    }

    /// A commit id that must name a commit.
    pub fn required_commit(&self, ctx: &Ctx) -> Result<String, ParseError> {
        self.commit(ctx)?.ok_or_else(|| ctx.invalid(&self.path(), "is the all-zero commit id"))
    }
}

pub(crate) fn commit_id(ctx: &Ctx, field: &str, s: &str) -> Result<Option<String>, ParseError> {
    if !(s.len() == 40 || s.len() == 64) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ctx.invalid(field, "is not a commit id of 40 or 64 hexadecimal digits"));
    }
    if s.bytes().all(|b| b == b'0') {
        return Ok(None);
    }
    Ok(Some(s.to_ascii_lowercase()))
}

/// The rules of `git check-ref-format` that matter for a name that will reach a
/// git command line or a ref path: no control characters, spaces or `~^:?*[\`,
/// no `..` or `@{`, no component starting with `.` or ending with `.lock`, not
/// starting with `-` or `/`, not ending with `/` or `.`.
pub(crate) fn valid_ref_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 1024 || name == "@" {
        return false;
    }
    if name.starts_with('-') || name.starts_with('/') || name.ends_with('/') || name.ends_with('.') {
        return false;
    }
    if name.contains("..") || name.contains("@{") || name.contains("//") {
        return false;
    }
    if name
        .chars()
        .any(|c| c.is_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
    {
        return false;
    }
    name.split('/')
        .all(|part| !part.starts_with('.') && !part.starts_with('-') && !part.ends_with(".lock"))
}

/// A full ref (`refs/...`) that git would accept; `field` is where it was read.
pub(crate) fn check_ref(ctx: &Ctx, field: &J, git_ref: &str) -> Result<(), ParseError> {
    if !git_ref.starts_with("refs/") || !valid_ref_name(git_ref) {
        return Err(ctx.invalid(&field.path(), "is not a valid git ref"));
    }
    Ok(())
}

/// A branch name (without `refs/heads/`) that git would accept.
pub(crate) fn check_branch(ctx: &Ctx, field: &J, name: &str) -> Result<(), ParseError> {
    if name.starts_with("refs/") || !valid_ref_name(name) {
        return Err(ctx.invalid(&field.path(), "is not a valid branch name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_names_follow_git_rules() {
        for ok in ["main", "feature/x", "refs/heads/release-1.2", "a.b", "user@host", "ünïcode"] {
            assert!(valid_ref_name(ok), "{ok}");
        }
        for bad in [
            "", "-rf", "/x", "x/", "x.", "a..b", "a@{1}", "a b", "a~1", "a^", "a:b", "a?", "a*", "a[", "a\\b",
            "a\nb", "a\0b", ".hidden", "x/.y", "x.lock", "a//b", "@", "refs/heads/-x",
        ] {
            assert!(!valid_ref_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn commit_ids_are_checked_and_zero_means_none() {
        let ctx = Ctx { vendor: Vendor::Github, event: "push" };
        assert_eq!(commit_id(&ctx, "f", &"0".repeat(40)).unwrap(), None);
        assert_eq!(commit_id(&ctx, "f", &"AB".repeat(20)).unwrap().unwrap(), "ab".repeat(20));
        assert!(commit_id(&ctx, "f", &"a".repeat(64)).unwrap().is_some());
        for bad in ["", "abc", &"g".repeat(40), &"a".repeat(41), "--upload-pack=x"] {
            let e = commit_id(&ctx, "after", bad).unwrap_err();
            assert_eq!(e.to_string(), "github push delivery: field after is invalid: is not a commit id of 40 or 64 hexadecimal digits");
        }
    }
}
