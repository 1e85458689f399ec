//! The `hangartest_file` data source: reads a file that exists on the host
//! (whoever made it), its content, mode and hash.

use std::path::Path;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tf_provider::schema::{AttributeConstraint, Block, Description, Schema};
use tf_provider::value::{Value, ValueEmpty, ValueString};
use tf_provider::{AttributePath, DataSource, Diagnostics, map};

use crate::file::{check_config, known};
use crate::{check, error, host, report, string_attribute};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct FileDataState<'a> {
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

#[derive(Debug, Default, Clone, Copy)]
pub struct FileDataSource;

#[async_trait]
impl DataSource for FileDataSource {
    type State<'a> = FileDataState<'a>;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        Some(Schema {
            version: 1,
            block: Block {
                version: 1,
                description: Description::plain("Reads a regular file on the host that runs Terraform."),
                attributes: map! {
                    "id" => string_attribute("The file's path.", AttributeConstraint::Computed),
                    "path" => string_attribute("Absolute path of the file.", AttributeConstraint::Required),
                    "content" => string_attribute("The file's content (text; bytes that are not UTF-8 read as U+FFFD).", AttributeConstraint::Computed),
                    "mode" => string_attribute("Permission bits as four octal digits.", AttributeConstraint::Computed),
                    "sha256" => string_attribute("SHA-256 of the content, hex.", AttributeConstraint::Computed),
                },
                ..Default::default()
            },
        })
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: Self::State<'a>) -> Option<()> {
        check_config(diags, &config.path, &Value::Null);
        Some(())
    }

    async fn read<'a>(
        &self,
        diags: &mut Diagnostics,
        config: Self::State<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<Self::State<'a>> {
        if !check_config(diags, &config.path, &Value::Null) {
            return None;
        }
        let Value::Value(path) = &config.path else {
            error(diags, "the path must be known when the hangartest_file data source is read", "", AttributePath::root());
            return None;
        };
        match host::read_existing_file(Path::new(path.as_ref())) {
            Ok(seen) => Some(FileDataState {
                id: known(path.to_string()),
                path: known(path.to_string()),
                sha256: known(host::sha256(&seen.content)),
                content: known(seen.content),
                mode: known(check::format_mode(seen.mode)),
            }),
            Err(e) => {
                report(diags, &e, AttributePath::new("path"));
                None
            }
        }
    }
}
