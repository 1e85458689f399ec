//! A Terraform provider for Hangar's tests and benchmarks: its resources are
//! real things on the host that runs Terraform (files and directories with
//! their content and mode) and its data source reads a file, so a run's
//! plan, apply, refresh and destroy can be seen to act. It speaks Terraform's
//! plugin protocol 6 through the `tf-provider` crate. Never shipped.

pub mod check;
pub mod data;
pub mod directory;
pub mod file;
pub mod host;

use std::borrow::Cow;
use std::collections::HashMap;

use async_trait::async_trait;
use tf_provider::schema::{Attribute, AttributeConstraint, AttributeType, Block, Description, Schema};
use tf_provider::value::ValueEmpty;
use tf_provider::{AttributePath, Diagnostic, Diagnostics, DynamicDataSource, DynamicResource, Provider, map};

/// The provider's type name: resources are `hangartest_file` and
/// `hangartest_directory`, the data source `hangartest_file`.
pub const TYPE: &str = "hangartest";
/// The mode of a file whose configuration sets none.
pub const DEFAULT_FILE_MODE: &str = "0644";
/// The mode of a directory whose configuration sets none.
pub const DEFAULT_DIR_MODE: &str = "0755";

/// The value of `TF_PLUGIN_MAGIC_COOKIE` with which Terraform starts every
/// provider (go-plugin's handshake): how the binary tells that it was not
/// started by hand.
pub const MAGIC_COOKIE: (&str, &str) =
    ("TF_PLUGIN_MAGIC_COOKIE", "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2");

#[derive(Debug, Default, Clone, Copy)]
pub struct HangarTestProvider;

#[async_trait]
impl Provider for HangarTestProvider {
    type Config<'a> = ValueEmpty;
    type MetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        Some(Schema {
            version: 1,
            block: Block {
                description: Description::plain("Files and directories on the host that runs Terraform (tests only)."),
                ..Default::default()
            },
        })
    }

    fn get_resources(&self, _diags: &mut Diagnostics) -> Option<HashMap<String, Box<dyn DynamicResource>>> {
        Some(map! {
            "file" => file::FileResource,
            "directory" => directory::DirectoryResource,
        })
    }

    fn get_data_sources(&self, _diags: &mut Diagnostics) -> Option<HashMap<String, Box<dyn DynamicDataSource>>> {
        Some(map! {
            "file" => data::FileDataSource,
        })
    }
}

/// Serves the provider to the Terraform that started it, until Terraform
/// stops it.
pub async fn serve() -> anyhow::Result<()> {
    tf_provider::serve(TYPE, HangarTestProvider).await
}

/// A string attribute with `description`.
pub(crate) fn string_attribute(description: impl ToString, constraint: AttributeConstraint) -> Attribute {
    Attribute {
        attr_type: AttributeType::String,
        description: Description::plain(description),
        constraint,
        ..Default::default()
    }
}

/// Adds an error diagnostic. Built field by field: the crate's constructors
/// append a backtrace to the detail whenever `RUST_BACKTRACE` is set, and
/// Terraform takes the `panic::` frames of such a backtrace, printed among its
/// own diagnostics, for a crash of its own.
pub(crate) fn error(
    diags: &mut Diagnostics,
    summary: impl Into<Cow<'static, str>>,
    detail: impl Into<Cow<'static, str>>,
    attribute: AttributePath,
) {
    diags.add_error(Diagnostic { summary: summary.into(), detail: detail.into(), attribute });
}

/// A host failure as a diagnostic: what failed and where in the summary, its
/// causes in the detail.
pub(crate) fn report(diags: &mut Diagnostics, e: &host::HostError, at: AttributePath) {
    error(diags, e.to_string(), e.causes(), at);
}
