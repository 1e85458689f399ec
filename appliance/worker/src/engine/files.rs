//! The files a run writes for Terraform: the backend override, the backend
//! configuration (with the run's credential, 0600, outside the source tree) and
//! the CLI configuration that allows provider installation from the appliance's
//! network mirror only.

use std::path::Path;

use super::{EngineError, Mirror};

/// Name of the override file dropped into the project root. Terraform merges
/// `*_override.tf` files over the configuration, so the stack's own backend
/// block (if any) is replaced by the appliance's.
pub(crate) const BACKEND_OVERRIDE: &str = "hangar_backend_override.tf";

/// Terraform's name for the state a failed write leaves behind.
pub const ERRORED_STATE: &str = "errored.tfstate";

/// An HCL string literal for `s`.
pub(crate) fn hcl_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Template sequences would be interpreted: escape them.
            '$' | '%' if chars.peek() == Some(&'{') => {
                out.push(c);
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub(crate) fn backend_override() -> &'static str {
    "# Written by hangar-worker: state lives in the appliance's HTTP backend.\nterraform {\n  backend \"http\" {}\n}\n"
}

/// `-backend-config` file contents for the appliance's HTTP state backend.
pub(crate) fn backend_config(state_url: &str, run_token: &str) -> String {
    let mut s = String::new();
    for (k, v) in [
        ("address", state_url),
        ("lock_address", state_url),
        ("unlock_address", state_url),
        ("lock_method", "LOCK"),
        ("unlock_method", "UNLOCK"),
        ("username", "run"),
        ("password", run_token),
    ] {
        s.push_str(&format!("{k} = {}\n", hcl_string(v)));
    }
    // Terraform gives up on the backend after 2 retries by default, so a
    // network blip of a few seconds would fail the run while its lease still
    // holds; these retries (1, 2, 4, then 5 s apart) ride out about a minute.
    s.push_str("retry_max = 12\nretry_wait_min = 1\nretry_wait_max = 5\n");
    s
}

/// The CLI configuration: providers only from `mirror` (no direct installs; no
/// mirror at all means no provider can be installed), the run token as the
/// mirror host's credentials, and a plugin cache shared between runs.
pub(crate) fn cli_config(
    mirror: Option<&Mirror>,
    plugin_cache: &Path,
) -> Result<String, EngineError> {
    let mut s = String::new();
    s.push_str("# Written by hangar-worker for one run.\n");
    s.push_str("disable_checkpoint = true\n");
    s.push_str(&format!(
        "plugin_cache_dir = {}\n",
        hcl_string(&plugin_cache.display().to_string())
    ));
    s.push_str("provider_installation {\n");
    if let Some(m) = mirror {
        s.push_str(&format!(
            "  network_mirror {{\n    url = {}\n  }}\n",
            hcl_string(&m.url)
        ));
    }
    s.push_str("}\n");
    if let Some(m) = mirror {
        let url =
            url::Url::parse(&m.url).map_err(|_| EngineError::BadUrl { url: m.url.clone() })?;
        let host = url
            .host_str()
            .ok_or_else(|| EngineError::BadUrl { url: m.url.clone() })?;
        let host = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        s.push_str(&format!(
            "credentials {} {{\n  token = {}\n}}\n",
            hcl_string(&host),
            hcl_string(&m.token)
        ));
    }
    Ok(s)
}

/// Counts a `terraform show -json` plan's changes: resources to add, change and
/// destroy (a replacement counts as one add and one destroy), and outputs.
pub(crate) fn plan_changes(
    json: &[u8],
) -> Result<hangar_types::worker::Changes, serde_json::Error> {
    let v: serde_json::Value = serde_json::from_slice(json)?;
    let mut c = hangar_types::worker::Changes::default();
    let actions = |change: &serde_json::Value| -> Vec<String> {
        change
            .get("actions")
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    for rc in v
        .get("resource_changes")
        .and_then(|r| r.as_array())
        .into_iter()
        .flatten()
    {
        let acts = rc.get("change").map(actions).unwrap_or_default();
        let has = |a: &str| acts.iter().any(|x| x == a);
        if has("create") {
            c.add += 1;
        }
        if has("delete") {
            c.destroy += 1;
        }
        if has("update") {
            c.change += 1;
        }
    }
    if let Some(outputs) = v.get("output_changes").and_then(|o| o.as_object()) {
        c.outputs = outputs
            .values()
            .filter(|o| actions(o).iter().any(|a| a != "no-op"))
            .count() as u32;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hcl_strings_cannot_break_out() {
        assert_eq!(hcl_string("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(
            hcl_string("${file(\"/etc/passwd\")}"),
            r#""$${file(\"/etc/passwd\")}""#
        );
        assert_eq!(hcl_string("%{ if }"), r#""%%{ if }""#);
        assert_eq!(hcl_string("line\nnext"), r#""line\nnext""#);
    }

    #[test]
    fn plan_json_is_counted() {
        let json = br#"{"resource_changes":[
            {"change":{"actions":["create"]}},
            {"change":{"actions":["delete","create"]}},
            {"change":{"actions":["update"]}},
            {"change":{"actions":["no-op"]}},
            {"change":{"actions":["read"]}}],
          "output_changes":{"a":{"actions":["create"]},"b":{"actions":["no-op"]}}}"#;
        let c = plan_changes(json).unwrap();
        assert_eq!((c.add, c.change, c.destroy, c.outputs), (2, 1, 1, 1));
        assert!(plan_changes(b"not json").is_err());
    }

    #[test]
    fn cli_config_names_only_the_mirror() {
        let m = Mirror {
            url: "https://appliance.example:1983/v1/providers/".into(),
            token: "tok\"en".into(),
        };
        let s = cli_config(Some(&m), Path::new("/cache/plugins")).unwrap();
        assert!(s.contains("network_mirror"));
        assert!(!s.contains("direct"));
        assert!(s.contains(r#"credentials "appliance.example:1983""#));
        assert!(s.contains(r#"token = "tok\"en""#));
    }
}
