//! Outputs of a stack's dependencies passed to its runs: each output a
//! dependency names is read from that dependency's latest state version
//! when a worker claims the run, and given to Terraform as `TF_VAR_<input>`
//! (a string as it is, any other value as JSON, which Terraform reads as
//! HCL for lists, maps and objects). A sensitive output stays secret: it is
//! masked in the run's logs like a secret variable.
//!
//! These variables are the most specific wiring a stack has, so they win
//! over the stack's own variables and its contexts'. A run whose
//! dependency has no state yet, or no such output, fails with that reason
//! instead of running with a value missing.

use diesel_async::AsyncPgConnection;
use hangar_store::dependencies;
use hangar_types::worker::EnvVar;

use crate::App;
use crate::state::{StateError, read_version, store as state_store};

/// Why a dependency's outputs could not be given to a run.
#[derive(Debug)]
pub(crate) enum InputsError {
    /// The run cannot have them: fail it with this reason.
    Missing(String),
    /// The state could not be read now (the object store, the database):
    /// the claim is tried again later.
    Unavailable(String),
}

/// The `TF_VAR_…` variables `stack`'s dependencies give its runs.
pub(crate) async fn inputs(app: &App, c: &mut AsyncPgConnection, stack: i64) -> Result<Vec<EnvVar>, InputsError> {
    let unavailable = |e: &dyn std::error::Error| InputsError::Unavailable(hangar_types::error_chain(e));
    let mut out = Vec::new();
    for dep in dependencies::dependencies_of(c, stack).await.map_err(|e| unavailable(&e))? {
        if dep.outputs.is_empty() {
            continue;
        }
        let slug = &dep.on.slug;
        let version = state_store::latest_version(c, dep.on.id).await.map_err(|e| unavailable(&e))?.ok_or_else(|| {
            InputsError::Missing(format!("dependency {slug} has no state yet: its outputs cannot be passed"))
        })?;
        let state = read_version(app, c, &version).await.map_err(|e| match e {
            StateError::Unavailable(m) => InputsError::Unavailable(m),
            e => InputsError::Missing(format!("the state of dependency {slug} cannot be read: {e}")),
        })?;
        let state: serde_json::Value = serde_json::from_slice(&state)
            .map_err(|e| InputsError::Missing(format!("the state of dependency {slug} is not JSON: {e}")))?;
        for r in &dep.outputs {
            let (value, sensitive) = output_value(&state, &r.output).ok_or_else(|| {
                InputsError::Missing(format!(
                    "dependency {slug} has no output {:?} in its latest state (serial {})",
                    r.output, version.serial
                ))
            })?;
            out.push(EnvVar { name: format!("TF_VAR_{}", r.input), value, secret: sensitive });
        }
    }
    Ok(out)
}

/// Output `name` of a Terraform state: its value as a `TF_VAR_` value, and
/// whether it is sensitive.
pub(crate) fn output_value(state: &serde_json::Value, name: &str) -> Option<(String, bool)> {
    let output = state.get("outputs")?.get(name)?;
    let value = output.get("value")?;
    let text = match value {
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    Some((text, output.get("sensitive").and_then(|s| s.as_bool()).unwrap_or(false)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outputs_become_variable_values() {
        let state = json!({ "version": 4, "outputs": {
            "path": { "value": "/srv/net", "type": "string" },
            "ports": { "value": [80, 443], "type": ["list", "number"] },
            "key": { "value": "s3cr3t", "type": "string", "sensitive": true },
            "broken": { "type": "string" },
        }});
        assert_eq!(output_value(&state, "path"), Some(("/srv/net".into(), false)));
        assert_eq!(output_value(&state, "ports"), Some(("[80,443]".into(), false)));
        assert_eq!(output_value(&state, "key"), Some(("s3cr3t".into(), true)));
        assert_eq!(output_value(&state, "broken"), None);
        assert_eq!(output_value(&state, "nope"), None);
        assert_eq!(output_value(&json!({}), "path"), None);
    }
}
