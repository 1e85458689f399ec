//! `hangartest_file`: a regular file on the host with its content and mode.
//! A refresh reads the file back, so a change made outside Terraform shows as
//! drift and a removed file as a resource to create again; content and mode
//! change in place, a new path replaces the file.

use std::borrow::Cow;
use std::path::Path;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tf_provider::schema::{Attribute, AttributeConstraint, AttributeType, Block, Description, Schema};
use tf_provider::value::{Value, ValueEmpty, ValueString};
use tf_provider::{AttributePath, Diagnostics, Resource, map};

use crate::host::{self, FileSeen};
use crate::{DEFAULT_FILE_MODE, check, error, report, string_attribute};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct FileState<'a> {
    #[serde(borrow = "'a")]
    pub id: ValueString<'a>,
    #[serde(borrow = "'a")]
    pub path: ValueString<'a>,
    #[serde(borrow = "'a")]
    pub content: ValueString<'a>,
    #[serde(borrow = "'a")]
    pub mode: ValueString<'a>,
    #[serde(borrow = "'a")]
    pub sha256: ValueString<'a>,
}

/// A known string.
pub(crate) fn known<'a>(s: impl Into<Cow<'a, str>>) -> ValueString<'a> {
    Value::Value(s.into())
}

impl<'a> FileState<'a> {
    /// The state of the file `seen` at `path`.
    fn seen(path: &str, seen: FileSeen) -> FileState<'a> {
        FileState {
            id: known(path.to_string()),
            path: known(path.to_string()),
            sha256: known(host::sha256(&seen.content)),
            content: known(seen.content),
            mode: known(check::format_mode(seen.mode)),
        }
    }
}

/// Checks the known values of a configuration; unknown ones are checked when
/// the plan knows them.
pub(crate) fn check_config(diags: &mut Diagnostics, path: &ValueString, mode: &ValueString) -> bool {
    let mut ok = true;
    if let Value::Value(p) = path
        && let Err(e) = check::path(p)
    {
        error(diags, e, "", AttributePath::new("path"));
        ok = false;
    }
    if let Value::Value(m) = mode
        && let Err(e) = check::mode(m)
    {
        error(diags, e, "", AttributePath::new("mode"));
        ok = false;
    }
    ok
}

#[derive(Debug, Default, Clone, Copy)]
pub struct FileResource;

#[async_trait]
impl Resource for FileResource {
    type State<'a> = FileState<'a>;
    type PrivateState<'a> = ValueEmpty;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        Some(Schema {
            version: 1,
            block: Block {
                version: 1,
                description: Description::plain(
                    "A regular file on the host that runs Terraform. Import with the file's absolute path.",
                ),
                attributes: map! {
                    "id" => string_attribute("The file's path.", AttributeConstraint::Computed),
                    "path" => string_attribute("Absolute path of the file; its directory must exist. A new path replaces the file.", AttributeConstraint::Required),
                    "content" => string_attribute("The file's content (text).", AttributeConstraint::Required),
                    "mode" => string_attribute(format!("Permission bits as four octal digits; {DEFAULT_FILE_MODE} when not set."), AttributeConstraint::OptionalComputed),
                    "sha256" => Attribute {
                        attr_type: AttributeType::String,
                        description: Description::plain("SHA-256 of the content, hex."),
                        constraint: AttributeConstraint::Computed,
                        ..Default::default()
                    },
                },
                ..Default::default()
            },
        })
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: Self::State<'a>) -> Option<()> {
        check_config(diags, &config.path, &config.mode);
        Some(())
    }

    async fn read<'a>(
        &self,
        diags: &mut Diagnostics,
        state: Self::State<'a>,
        private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let Value::Value(path) = &state.path else {
            error(diags, "the state of a hangartest_file has no path", "", AttributePath::root());
            return Some((state, private_state));
        };
        match host::read_file(Path::new(path.as_ref())) {
            // Gone (or no longer a regular file): Terraform plans to create it again.
            Ok(None) => None,
            Ok(Some(seen)) => Some((FileState::seen(path, seen), private_state)),
            Err(e) => {
                report(diags, &e, AttributePath::new("path"));
                Some((state, private_state))
            }
        }
    }

    async fn plan_create<'a>(
        &self,
        diags: &mut Diagnostics,
        proposed: Self::State<'a>,
        config: Self::State<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        if !check_config(diags, &config.path, &config.mode) {
            return None;
        }
        Some((planned(proposed, &config), Default::default()))
    }

    async fn plan_update<'a>(
        &self,
        diags: &mut Diagnostics,
        prior: Self::State<'a>,
        proposed: Self::State<'a>,
        config: Self::State<'a>,
        private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>, Vec<AttributePath>)> {
        if !check_config(diags, &config.path, &config.mode) {
            return None;
        }
        let mut replace = Vec::new();
        if proposed.path != prior.path {
            replace.push(AttributePath::new("path"));
        }
        Some((planned(proposed, &config), private_state, replace))
    }

    async fn plan_destroy<'a>(
        &self,
        _diags: &mut Diagnostics,
        _prior: Self::State<'a>,
        private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<Self::PrivateState<'a>> {
        Some(private_state)
    }

    async fn create<'a>(
        &self,
        diags: &mut Diagnostics,
        planned: Self::State<'a>,
        config: Self::State<'a>,
        private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let (path, content, mode) = applied(diags, &planned, &config)?;
        if let Err(e) = host::create_file(Path::new(&path), &content, mode) {
            if matches!(e, host::HostError::Exists { .. }) {
                error(diags, 
                    e.to_string(),
                    format!("import it (`terraform import ADDRESS {path}`) or remove it first"),
                    AttributePath::new("path"),
                );
            } else {
                report(diags, &e, AttributePath::new("path"));
            }
            return None;
        }
        Some((FileState::seen(&path, FileSeen { content, mode }), private_state))
    }

    async fn update<'a>(
        &self,
        diags: &mut Diagnostics,
        _prior: Self::State<'a>,
        planned: Self::State<'a>,
        config: Self::State<'a>,
        private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let (path, content, mode) = applied(diags, &planned, &config)?;
        let file = Path::new(&path);
        // A change of mode alone is a chmod: the file keeps its inode.
        let result = match host::read_file(file) {
            Ok(Some(seen)) if seen.content == content => host::set_mode(file, mode),
            Ok(_) => host::replace_file(file, &content, mode),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            report(diags, &e, AttributePath::new("path"));
            return None;
        }
        Some((FileState::seen(&path, FileSeen { content, mode }), private_state))
    }

    async fn destroy<'a>(
        &self,
        diags: &mut Diagnostics,
        prior: Self::State<'a>,
        _private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<()> {
        let Value::Value(path) = &prior.path else {
            error(diags, "the state of a hangartest_file has no path", "", AttributePath::root());
            return None;
        };
        if let Err(e) = host::remove_file(Path::new(path.as_ref())) {
            report(diags, &e, AttributePath::new("path"));
            return None;
        }
        Some(())
    }

    async fn import<'a>(&self, diags: &mut Diagnostics, id: String) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        if let Err(e) = check::path(&id) {
            error(diags, "cannot import a hangartest_file", format!("the id is the file's path: {e}"), AttributePath::root());
            return None;
        }
        match host::read_existing_file(Path::new(&id)) {
            Ok(seen) => Some((FileState::seen(&id, seen), Default::default())),
            Err(e) => {
                error(diags, format!("cannot import a hangartest_file: {e}"), e.causes(), AttributePath::root());
                None
            }
        }
    }
}

/// The planned state: what is configured, the default mode when none is,
/// and what follows from them (the id is the path, the hash the content's).
fn planned<'a>(mut proposed: FileState<'a>, config: &FileState<'a>) -> FileState<'a> {
    if config.mode.is_null() {
        proposed.mode = known(DEFAULT_FILE_MODE);
    }
    proposed.id = proposed.path.clone();
    proposed.sha256 = match &proposed.content {
        Value::Value(c) => known(host::sha256(c)),
        _ => Value::Unknown,
    };
    proposed
}

/// Path, content and mode to apply: from the configuration, whose values are
/// all known by now, the mode from the plan when the configuration has none.
fn applied(diags: &mut Diagnostics, planned: &FileState, config: &FileState) -> Option<(String, String, u32)> {
    let (Value::Value(path), Value::Value(content)) = (&config.path, &config.content) else {
        error(diags, "path and content must be known when a hangartest_file is applied", "", AttributePath::root());
        return None;
    };
    let mode_text = match (&config.mode, &planned.mode) {
        (Value::Value(m), _) | (Value::Null, Value::Value(m)) => m.to_string(),
        _ => DEFAULT_FILE_MODE.to_string(),
    };
    let mode = match check::mode(&mode_text) {
        Ok(m) => m,
        Err(e) => {
            error(diags, e, "", AttributePath::new("mode"));
            return None;
        }
    };
    if let Err(e) = check::path(path) {
        error(diags, e, "", AttributePath::new("path"));
        return None;
    }
    Some((path.to_string(), content.to_string(), mode))
}
