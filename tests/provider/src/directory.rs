//! `hangartest_directory`: a directory on the host with its mode. Removed
//! only when empty: what others put in it is not this resource's to delete.

use std::path::Path;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tf_provider::schema::{AttributeConstraint, Block, Description, Schema};
use tf_provider::value::{Value, ValueEmpty, ValueString};
use tf_provider::{AttributePath, Diagnostics, Resource, map};

use crate::file::{check_config, known};
use crate::{DEFAULT_DIR_MODE, check, error, host, report, string_attribute};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct DirectoryState<'a> {
    #[serde(borrow = "'a")]
    pub id: ValueString<'a>,
    #[serde(borrow = "'a")]
    pub path: ValueString<'a>,
    #[serde(borrow = "'a")]
    pub mode: ValueString<'a>,
}

impl<'a> DirectoryState<'a> {
    fn seen(path: &str, mode: u32) -> DirectoryState<'a> {
        DirectoryState { id: known(path.to_string()), path: known(path.to_string()), mode: known(check::format_mode(mode)) }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct DirectoryResource;

/// Path and mode to apply, from the configuration (the plan's mode when the
/// configuration has none).
fn applied(diags: &mut Diagnostics, planned: &DirectoryState, config: &DirectoryState) -> Option<(String, u32)> {
    let Value::Value(path) = &config.path else {
        error(diags, "the path must be known when a hangartest_directory is applied", "", AttributePath::root());
        return None;
    };
    let mode_text = match (&config.mode, &planned.mode) {
        (Value::Value(m), _) | (Value::Null, Value::Value(m)) => m.to_string(),
        _ => DEFAULT_DIR_MODE.to_string(),
    };
    if !check_config(diags, &config.path, &known(mode_text.clone())) {
        return None;
    }
    Some((path.to_string(), check::mode(&mode_text).ok()?))
}

#[async_trait]
impl Resource for DirectoryResource {
    type State<'a> = DirectoryState<'a>;
    type PrivateState<'a> = ValueEmpty;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        Some(Schema {
            version: 1,
            block: Block {
                version: 1,
                description: Description::plain(
                    "A directory on the host that runs Terraform, removed only when empty. Import with its absolute path.",
                ),
                attributes: map! {
                    "id" => string_attribute("The directory's path.", AttributeConstraint::Computed),
                    "path" => string_attribute("Absolute path of the directory; its parent must exist. A new path replaces the directory.", AttributeConstraint::Required),
                    "mode" => string_attribute(format!("Permission bits as four octal digits; {DEFAULT_DIR_MODE} when not set."), AttributeConstraint::OptionalComputed),
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
            error(diags, "the state of a hangartest_directory has no path", "", AttributePath::root());
            return Some((state, private_state));
        };
        match host::read_dir_mode(Path::new(path.as_ref())) {
            Ok(None) => None,
            Ok(Some(mode)) => Some((DirectoryState::seen(path, mode), private_state)),
            Err(e) => {
                report(diags, &e, AttributePath::new("path"));
                Some((state, private_state))
            }
        }
    }

    async fn plan_create<'a>(
        &self,
        diags: &mut Diagnostics,
        mut proposed: Self::State<'a>,
        config: Self::State<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        if !check_config(diags, &config.path, &config.mode) {
            return None;
        }
        if config.mode.is_null() {
            proposed.mode = known(DEFAULT_DIR_MODE);
        }
        proposed.id = proposed.path.clone();
        Some((proposed, Default::default()))
    }

    async fn plan_update<'a>(
        &self,
        diags: &mut Diagnostics,
        prior: Self::State<'a>,
        mut proposed: Self::State<'a>,
        config: Self::State<'a>,
        private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>, Vec<AttributePath>)> {
        if !check_config(diags, &config.path, &config.mode) {
            return None;
        }
        if config.mode.is_null() {
            proposed.mode = known(DEFAULT_DIR_MODE);
        }
        proposed.id = proposed.path.clone();
        let replace = if proposed.path != prior.path { vec![AttributePath::new("path")] } else { vec![] };
        Some((proposed, private_state, replace))
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
        let (path, mode) = applied(diags, &planned, &config)?;
        if let Err(e) = host::create_dir(Path::new(&path), mode) {
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
        Some((DirectoryState::seen(&path, mode), private_state))
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
        let (path, mode) = applied(diags, &planned, &config)?;
        let dir = Path::new(&path);
        // Removed since the plan: made again, as the plan's outcome is a directory.
        let result = match host::read_dir_mode(dir) {
            Ok(Some(_)) => host::set_mode(dir, mode),
            Ok(None) => host::create_dir(dir, mode),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            report(diags, &e, AttributePath::new("path"));
            return None;
        }
        Some((DirectoryState::seen(&path, mode), private_state))
    }

    async fn destroy<'a>(
        &self,
        diags: &mut Diagnostics,
        prior: Self::State<'a>,
        _private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<()> {
        let Value::Value(path) = &prior.path else {
            error(diags, "the state of a hangartest_directory has no path", "", AttributePath::root());
            return None;
        };
        if let Err(e) = host::remove_dir(Path::new(path.as_ref())) {
            report(diags, &e, AttributePath::new("path"));
            return None;
        }
        Some(())
    }

    async fn import<'a>(&self, diags: &mut Diagnostics, id: String) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        if let Err(e) = check::path(&id) {
            error(diags, "cannot import a hangartest_directory", format!("the id is the directory's path: {e}"), AttributePath::root());
            return None;
        }
        match host::read_dir_mode(Path::new(&id)) {
            Ok(Some(mode)) => Some((DirectoryState::seen(&id, mode), Default::default())),
            Ok(None) => {
                error(diags, format!("cannot import a hangartest_directory: {id} is not a directory"), "", AttributePath::root());
                None
            }
            Err(e) => {
                error(diags, format!("cannot import a hangartest_directory: {e}"), e.causes(), AttributePath::root());
                None
            }
        }
    }
}
