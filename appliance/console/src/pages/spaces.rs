//! The Spaces pages: the tree of spaces the viewer sees, with their role in
//! each; and one space with its stacks, and for its admins its grants (to
//! give and take back) and the spaces below it to create. Everything goes
//! through the API (`spaces`, `space`, `grantSpaceRole`, …), as a script would.

use askama::Template;
use serde_json::{Value, json};
use warp::http::StatusCode;
use warp::reply::Response;

use super::{Req, Session, html, not_found, op_error, see_other, urlencode};
use crate::Console;
use crate::view::{Frame, Viewer};

pub(crate) struct SpaceLine {
    pub(crate) slug: String,
    pub(crate) name: String,
    pub(crate) depth: usize,
    pub(crate) role: String,
    pub(crate) stacks: usize,
}

pub(crate) struct GrantLine {
    pub(crate) who: String,
    /// The e-mail a revoke names, for a user's grant; `None` for an API key's.
    pub(crate) user: Option<String>,
    pub(crate) key_id: Option<String>,
    pub(crate) role: String,
    pub(crate) by: String,
}

#[derive(Template)]
#[template(path = "spaces.html")]
struct SpacesPage {
    frame: Frame,
    spaces: Vec<SpaceLine>,
}

#[derive(Template)]
#[template(path = "space.html")]
struct SpacePage {
    frame: Frame,
    viewer: Viewer,
    slug: String,
    name: String,
    description: String,
    parent: Option<String>,
    role: String,
    stacks: Vec<String>,
    children: Vec<String>,
    /// The grants made here; `None` when the viewer is not an admin of the space.
    grants: Option<Vec<GrantLine>>,
    roles: [&'static str; 3],
}

const LIST: &str = "{ spaces { slug name parent { slug } myRole stacks { slug } } }";
const ONE: &str = "query($s: String!) { space(slug: $s) { slug name description parent { slug } myRole stacks { slug } } spaces { slug parent { slug } } }";
const GRANTS: &str = "query($s: String!) { space(slug: $s) { grants { user apiKeyId apiKeyName role grantedBy } } }";

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// The spaces in tree order with their depth; a space whose parent is not
/// seen starts a tree of its own.
fn tree(all: &[Value]) -> Vec<(usize, &Value)> {
    fn walk<'a>(all: &'a [Value], parent: &str, depth: usize, out: &mut Vec<(usize, &'a Value)>) {
        for s in all.iter().filter(|s| text(&s["parent"]["slug"]) == parent) {
            out.push((depth, s));
            walk(all, &text(&s["slug"]), depth + 1, out);
        }
    }
    let seen: std::collections::HashSet<String> = all.iter().map(|s| text(&s["slug"])).collect();
    let mut out = Vec::new();
    for top in all.iter().filter(|s| !seen.contains(&text(&s["parent"]["slug"]))) {
        out.push((0, top));
        walk(all, &text(&top["slug"]), 1, &mut out);
    }
    out
}

pub(super) async fn list(c: &Console, s: &Session) -> Response {
    match c.backend.execute(Some(&s.token), LIST, json!({})).await {
        Ok(d) => {
            let all = d["spaces"].as_array().cloned().unwrap_or_default();
            let spaces = tree(&all)
                .into_iter()
                .map(|(depth, sp)| SpaceLine {
                    slug: text(&sp["slug"]),
                    name: text(&sp["name"]),
                    depth,
                    role: text(&sp["myRole"]).to_lowercase(),
                    stacks: sp["stacks"].as_array().map_or(0, Vec::len),
                })
                .collect();
            html(StatusCode::OK, &SpacesPage { frame: Frame::new("Spaces", "spaces", Some(s.viewer.clone())), spaces })
        }
        Err(e) => op_error(&s.viewer, &e),
    }
}

pub(super) async fn show(c: &Console, s: &Session, slug: &str) -> Response {
    let d = match c.backend.execute(Some(&s.token), ONE, json!({ "s": slug })).await {
        Ok(d) => d,
        Err(e) => return op_error(&s.viewer, &e),
    };
    let sp = &d["space"];
    if sp.is_null() {
        return not_found(Some(&s.viewer));
    }
    let role = text(&sp["myRole"]);
    let grants = if role == "ADMIN" {
        match c.backend.execute(Some(&s.token), GRANTS, json!({ "s": slug })).await {
            Ok(g) => Some(
                g["space"]["grants"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|g| {
                        let key = g["apiKeyName"].as_str().map(str::to_string);
                        GrantLine {
                            who: match &key {
                                Some(k) => format!("{} (API key {k})", text(&g["user"])),
                                None => text(&g["user"]),
                            },
                            user: key.is_none().then(|| text(&g["user"])),
                            key_id: g["apiKeyId"].as_str().map(str::to_string),
                            role: text(&g["role"]).to_lowercase(),
                            by: text(&g["grantedBy"]),
                        }
                    })
                    .collect(),
            ),
            Err(e) => return op_error(&s.viewer, &e),
        }
    } else {
        None
    };
    let children = d["spaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["parent"]["slug"] == sp["slug"])
        .map(|c| text(&c["slug"]))
        .collect();
    let page = SpacePage {
        frame: Frame::new(format!("Space {}", text(&sp["name"])), "spaces", Some(s.viewer.clone())),
        viewer: s.viewer.clone(),
        slug: text(&sp["slug"]),
        name: text(&sp["name"]),
        description: text(&sp["description"]),
        parent: sp["parent"]["slug"].as_str().map(str::to_string),
        role: role.to_lowercase(),
        stacks: sp["stacks"].as_array().into_iter().flatten().map(|x| text(&x["slug"])).collect(),
        children,
        grants,
        roles: ["READER", "WRITER", "ADMIN"],
    };
    html(StatusCode::OK, &page)
}

async fn operate(c: &Console, s: &Session, query: &str, vars: Value, then: &str) -> Response {
    match c.backend.execute(Some(&s.token), query, vars).await {
        Ok(_) => see_other(then),
        Err(e) => op_error(&s.viewer, &e),
    }
}

/// `POST /spaces`: a space below `parent`.
pub(super) async fn create(c: &Console, s: &Session, req: &Req) -> Response {
    let slug = req.field("slug").unwrap_or_default().trim().to_string();
    let name = req.field("name").unwrap_or_default().trim().to_string();
    let parent = req.field("parent").unwrap_or_default().trim().to_string();
    let name = if name.is_empty() { slug.clone() } else { name };
    let q = "mutation($s: String!, $n: String!, $p: String) { createSpace(slug: $s, name: $n, parent: $p) { slug } }";
    let then = format!("/spaces/{}", urlencode(&slug));
    operate(c, s, q, json!({ "s": slug, "n": name, "p": Some(parent).filter(|p| !p.is_empty()) }), &then).await
}

/// `POST /spaces/{slug}/{grant|revoke|delete}`.
pub(super) async fn act(c: &Console, s: &Session, req: &Req, slug: &str, action: &str) -> Response {
    let here = format!("/spaces/{}", urlencode(slug));
    let user = req.field("user").map(str::trim).filter(|u| !u.is_empty()).map(str::to_string);
    let key = req.field("api_key").map(str::trim).filter(|k| !k.is_empty()).map(str::to_string);
    match action {
        "grant" => {
            let role = req.field("role").unwrap_or("READER").to_string();
            let q = "mutation($s: String!, $u: String, $k: ID, $r: UserRole!) { grantSpaceRole(space: $s, user: $u, apiKey: $k, role: $r) { slug } }";
            operate(c, s, q, json!({ "s": slug, "u": user, "k": key, "r": role }), &format!("{here}#grants")).await
        }
        "revoke" => {
            let q = "mutation($s: String!, $u: String, $k: ID) { revokeSpaceRole(space: $s, user: $u, apiKey: $k) }";
            operate(c, s, q, json!({ "s": slug, "u": user, "k": key }), &format!("{here}#grants")).await
        }
        _ => operate(c, s, "mutation($s: String!) { deleteSpace(slug: $s) }", json!({ "s": slug }), "/spaces").await,
    }
}
