//! `hangar space …`: the tree of spaces and the roles granted in them, from
//! any machine — list the spaces the caller sees (with their role in each),
//! show one with its stacks and grants, create and delete spaces, grant and
//! revoke roles for users and API keys.

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::commands::Common;
use crate::{Client, ClientError};

#[derive(Debug, Args)]
pub struct SpaceArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: SpaceCommand,
}

#[derive(Debug, Subcommand)]
pub enum SpaceCommand {
    /// The spaces you see, as a tree, with your role in each.
    List,
    /// One space: its parent, its stacks, and (for its admins) its grants.
    Show { space: String },
    /// Create a space below PARENT (the root when not given); needs the admin
    /// role in the parent.
    Create {
        slug: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long)]
        parent: Option<String>,
    },
    /// Delete an empty space; needs the admin role in its parent.
    Delete { space: String },
    /// Grant a role in SPACE (and every space below) to a user or an API key.
    Grant {
        space: String,
        #[arg(long, value_enum)]
        role: GrantRole,
        /// The user, by e-mail.
        #[arg(long, conflicts_with = "api_key", required_unless_present = "api_key")]
        user: Option<String>,
        /// The API key, by id.
        #[arg(long)]
        api_key: Option<String>,
    },
    /// Take back a grant in SPACE (grants above it still hold).
    Revoke {
        space: String,
        #[arg(long, conflicts_with = "api_key", required_unless_present = "api_key")]
        user: Option<String>,
        #[arg(long)]
        api_key: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GrantRole {
    Reader,
    Writer,
    Admin,
}

impl GrantRole {
    fn api(self) -> &'static str {
        match self {
            GrantRole::Reader => "READER",
            GrantRole::Writer => "WRITER",
            GrantRole::Admin => "ADMIN",
        }
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializes"));
}

/// The spaces in tree order (each after its parent), with their depth; a
/// space whose parent is not seen starts a tree of its own.
fn tree(spaces: &[Value]) -> Vec<(usize, &Value)> {
    let seen: std::collections::HashSet<String> = spaces.iter().map(|s| text(&s["slug"])).collect();
    let mut out = Vec::new();
    fn walk<'a>(all: &'a [Value], parent: &str, depth: usize, out: &mut Vec<(usize, &'a Value)>) {
        for s in all.iter().filter(|s| text(&s["parent"]["slug"]) == parent) {
            out.push((depth, s));
            walk(all, &text(&s["slug"]), depth + 1, out);
        }
    }
    for top in spaces.iter().filter(|s| !seen.contains(&text(&s["parent"]["slug"]))) {
        out.push((0, top));
        walk(spaces, &text(&top["slug"]), 1, &mut out);
    }
    out
}

pub async fn space(args: SpaceArgs) -> Result<(), ClientError> {
    let client: Client = Client::new(args.common.connect.resolve()?)?;
    let json_out = args.common.json;
    match args.command {
        SpaceCommand::List => {
            let d = client.graphql("{ spaces { slug name parent { slug } myRole } }", json!({})).await?;
            if json_out {
                print_json(&d["spaces"]);
                return Ok(());
            }
            let all = d["spaces"].as_array().cloned().unwrap_or_default();
            for (depth, s) in tree(&all) {
                let name = format!("{}{}", "  ".repeat(depth), text(&s["slug"]));
                println!("{name:<32} {:<8} {}", text(&s["myRole"]).to_lowercase(), text(&s["name"]));
            }
        }
        SpaceCommand::Show { space } => {
            let d = client
                .graphql(
                    "query($s: String!) { space(slug: $s) { slug name description parent { slug } myRole stacks { slug } } }",
                    json!({ "s": space }),
                )
                .await?;
            let s = &d["space"];
            if s.is_null() {
                return Err(ClientError::GraphQl {
                    operation: "space".into(),
                    code: "NOT_FOUND".into(),
                    message: format!("space {space:?} does not exist"),
                });
            }
            // Grants are for the space's admins only; others see the rest.
            let grants = if s["myRole"] == "ADMIN" {
                let g = client
                    .graphql(
                        "query($s: String!) { space(slug: $s) { grants { user apiKeyId apiKeyName role grantedBy } } }",
                        json!({ "s": space }),
                    )
                    .await?;
                g["space"]["grants"].clone()
            } else {
                Value::Null
            };
            if json_out {
                let mut all = s.clone();
                all["grants"] = grants;
                print_json(&all);
                return Ok(());
            }
            println!("{} ({})", text(&s["slug"]), text(&s["name"]));
            if !text(&s["description"]).is_empty() {
                println!("  {}", text(&s["description"]));
            }
            println!("  parent   {}", if s["parent"].is_null() { "-".into() } else { text(&s["parent"]["slug"]) });
            println!("  my role  {}", text(&s["myRole"]).to_lowercase());
            for st in s["stacks"].as_array().into_iter().flatten() {
                println!("  stack    {}", text(&st["slug"]));
            }
            for g in grants.as_array().into_iter().flatten() {
                let who = match g["apiKeyName"].as_str() {
                    Some(k) => format!("{} (API key {k}, id {})", text(&g["user"]), text(&g["apiKeyId"])),
                    None => text(&g["user"]),
                };
                println!("  grant    {:<7} {who} (by {})", text(&g["role"]).to_lowercase(), text(&g["grantedBy"]));
            }
        }
        SpaceCommand::Create { slug, name, description, parent } => {
            let d = client
                .graphql(
                    "mutation($s: String!, $n: String!, $d: String!, $p: String) { createSpace(slug: $s, name: $n, description: $d, parent: $p) { slug parent { slug } } }",
                    json!({ "s": slug, "n": name.unwrap_or_else(|| slug.clone()), "d": description, "p": parent }),
                )
                .await?;
            if json_out {
                print_json(&d["createSpace"]);
            } else {
                println!("space {} created below {}", text(&d["createSpace"]["slug"]), text(&d["createSpace"]["parent"]["slug"]));
            }
        }
        SpaceCommand::Delete { space } => {
            client.graphql("mutation($s: String!) { deleteSpace(slug: $s) }", json!({ "s": space })).await?;
            if json_out {
                print_json(&json!({ "deleted": space }));
            } else {
                println!("space {space} deleted");
            }
        }
        SpaceCommand::Grant { space, role, user, api_key } => {
            client
                .graphql(
                    "mutation($s: String!, $u: String, $k: ID, $r: UserRole!) { grantSpaceRole(space: $s, user: $u, apiKey: $k, role: $r) { slug } }",
                    json!({ "s": space, "u": user, "k": api_key, "r": role.api() }),
                )
                .await?;
            let who = user.unwrap_or_else(|| format!("API key {}", api_key.unwrap_or_default()));
            if json_out {
                print_json(&json!({ "space": space, "grantee": who, "role": role.api() }));
            } else {
                println!("{who} is {} in {space} and every space below", role.api().to_lowercase());
            }
        }
        SpaceCommand::Revoke { space, user, api_key } => {
            client
                .graphql(
                    "mutation($s: String!, $u: String, $k: ID) { revokeSpaceRole(space: $s, user: $u, apiKey: $k) }",
                    json!({ "s": space, "u": user, "k": api_key }),
                )
                .await?;
            let who = user.unwrap_or_else(|| format!("API key {}", api_key.unwrap_or_default()));
            if json_out {
                print_json(&json!({ "space": space, "revoked": who }));
            } else {
                println!("{who} no longer has a grant in {space}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_puts_each_space_after_its_parent() {
        let spaces = vec![
            json!({ "slug": "team", "parent": { "slug": "org" } }),
            json!({ "slug": "org", "parent": { "slug": "root" } }),
            json!({ "slug": "sub", "parent": { "slug": "team" } }),
            json!({ "slug": "lone", "parent": { "slug": "hidden" } }),
        ];
        let order: Vec<(usize, String)> = tree(&spaces).into_iter().map(|(d, s)| (d, text(&s["slug"]))).collect();
        assert_eq!(order, vec![(0, "org".into()), (1, "team".into()), (2, "sub".into()), (0, "lone".into())]);
    }
}
