//! `hangar module …`: the appliance's private module registry from any
//! machine — publish a version from a git tag, list modules with the
//! `source` line a configuration names, delete a version (admins).

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::commands::Common;
use crate::{Client, ClientError};

#[derive(Debug, Args)]
pub struct ModuleArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: ModuleCommand,
}

#[derive(Debug, Subcommand)]
pub enum ModuleCommand {
    /// Publish the tree of a tag of a git repository as a module version
    /// (the version is the tag without a leading `v` unless given).
    Publish {
        /// The module: NAMESPACE/NAME/SYSTEM, e.g. `acme/network/aws`.
        module: String,
        /// The git repository (https, http or ssh URL).
        #[arg(long)]
        repository: String,
        /// The tag to publish.
        #[arg(long)]
        tag: String,
        /// The version (semver), when it is not the tag's.
        #[arg(long)]
        version: Option<String>,
    },
    /// List the modules with their versions and `source` lines.
    List,
    /// Delete a version of a module (admins).
    Delete {
        /// The module: NAMESPACE/NAME/SYSTEM.
        module: String,
        version: String,
    },
}

/// `NAMESPACE/NAME/SYSTEM` in three parts.
fn parts(module: &str) -> Result<(&str, &str, &str), ClientError> {
    let mut it = module.split('/');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(ns), Some(name), Some(system), None) => Ok((ns, name, system)),
        _ => Err(ClientError::Config(format!("module {module:?} is not NAMESPACE/NAME/SYSTEM"))),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Runs `hangar module …`.
pub async fn module(args: ModuleArgs) -> Result<(), ClientError> {
    let client = Client::new(args.common.connect.resolve()?)?;
    let json_out = args.common.json;
    match args.command {
        ModuleCommand::Publish { module, repository, tag, version } => {
            let (ns, name, system) = parts(&module)?;
            let q = "mutation($ns: String!, $n: String!, $s: String!, $r: String!, $t: String!, $v: String) { \
                     publishModule(namespace: $ns, name: $n, system: $s, repository: $r, tag: $t, version: $v) \
                     { version tag commitSha sha256 size publishedBy publishedAt } }";
            let vars = json!({ "ns": ns, "n": name, "s": system, "r": repository, "t": tag, "v": version });
            let d = client.graphql(q, vars).await?;
            let v = &d["publishModule"];
            if json_out {
                println!("{}", serde_json::to_string_pretty(v).expect("serializes"));
            } else {
                println!(
                    "{module} {} from {} (commit {}, {} bytes, published by {})",
                    text(&v["version"]),
                    text(&v["tag"]),
                    text(&v["commitSha"]).chars().take(12).collect::<String>(),
                    v["size"],
                    text(&v["publishedBy"]),
                );
            }
        }
        ModuleCommand::List => {
            let d = client.graphql("query { modules { source versions { version publishedAt } } }", json!({})).await?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&d["modules"]).expect("serializes"));
                return Ok(());
            }
            let list = d["modules"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no modules published");
            }
            for m in list {
                let versions: Vec<String> =
                    m["versions"].as_array().into_iter().flatten().map(|v| text(&v["version"])).collect();
                println!("{}  {}", text(&m["source"]), versions.join(", "));
            }
        }
        ModuleCommand::Delete { module, version } => {
            let (ns, name, system) = parts(&module)?;
            let q = "mutation($ns: String!, $n: String!, $s: String!, $v: String!) { \
                     deleteModuleVersion(namespace: $ns, name: $n, system: $s, version: $v) }";
            client.graphql(q, json!({ "ns": ns, "n": name, "s": system, "v": version })).await?;
            if json_out {
                println!("{}", json!({ "deleted": { "module": module, "version": version } }));
            } else {
                println!("deleted {module} {version}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_have_three_parts() {
        assert_eq!(parts("acme/files/aws").unwrap(), ("acme", "files", "aws"));
        assert!(parts("acme/files").is_err());
        assert!(parts("host/acme/files/aws").is_err());
    }
}
