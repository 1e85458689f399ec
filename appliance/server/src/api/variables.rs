//! Variable values coerced to the types their operation declares, as the
//! GraphQL specification's CoerceVariableValues says, before the operation
//! runs: a `$v: Int!` given `"s1"` is a request error, not a string that
//! reaches a resolver through a position that would take it.
//!
//! async-graphql checks that a variable's declared type fits where it is used
//! and converts values when a resolver reads them, but never checks a value
//! against its declared type. The input types are read once from the schema's
//! own SDL.

use std::collections::HashMap;

use async_graphql::parser::types::{
    BaseType, DocumentOperations, ExecutableDocument, OperationDefinition, ServiceDocument, Type, TypeKind,
    TypeSystemDefinition,
};
use serde_json::Value;

/// What a named input type accepts.
#[derive(Debug, Clone)]
enum Input {
    Int,
    Float,
    String,
    Boolean,
    Id,
    /// A scalar of the schema's own (`DateTime`): its resolver parses it.
    Custom,
    Enum(Vec<String>),
    /// Fields with their types and whether they have a default.
    Object(Vec<(String, Type, bool)>),
}

/// The schema's input types by name.
#[derive(Debug, Clone, Default)]
pub(crate) struct InputTypes(HashMap<String, Input>);

impl InputTypes {
    /// From the schema's SDL. Output-only types are left out: a variable of
    /// such a type is refused by validation.
    pub(crate) fn from_sdl(sdl: &str) -> InputTypes {
        let mut map = HashMap::new();
        for (name, input) in [
            ("Int", Input::Int),
            ("Float", Input::Float),
            ("String", Input::String),
            ("Boolean", Input::Boolean),
            ("ID", Input::Id),
        ] {
            map.insert(name.to_string(), input);
        }
        let doc: ServiceDocument = match async_graphql::parser::parse_schema(sdl) {
            Ok(d) => d,
            Err(e) => {
                // The SDL is the schema's own; a parser that cannot read it
                // leaves only the built-in scalars checked.
                tracing::error!(error = %e, "cannot read the schema's SDL: variables of its own types go unchecked");
                return InputTypes(map);
            }
        };
        for def in doc.definitions {
            let TypeSystemDefinition::Type(t) = def else { continue };
            let name = t.node.name.node.to_string();
            let input = match t.node.kind {
                TypeKind::Scalar if !map.contains_key(&name) => Input::Custom,
                TypeKind::Enum(e) => Input::Enum(e.values.into_iter().map(|v| v.node.value.node.to_string()).collect()),
                TypeKind::InputObject(o) => Input::Object(
                    o.fields
                        .into_iter()
                        .map(|f| (f.node.name.node.to_string(), f.node.ty.node, f.node.default_value.is_some()))
                        .collect(),
                ),
                _ => continue,
            };
            map.insert(name, input);
        }
        InputTypes(map)
    }

    /// Checks `variables` against the operation `doc` will run (the named one,
    /// or the only one). Nothing is checked when that operation cannot be
    /// chosen: execution reports that.
    pub(crate) fn check(
        &self,
        doc: &ExecutableDocument,
        operation: Option<&str>,
        variables: &serde_json::Map<String, Value>,
    ) -> Result<(), String> {
        let op: &OperationDefinition = match (&doc.operations, operation) {
            (DocumentOperations::Single(op), _) => &op.node,
            (DocumentOperations::Multiple(ops), Some(name)) => match ops.iter().find(|(n, _)| n.as_str() == name) {
                Some((_, op)) => &op.node,
                None => return Ok(()),
            },
            (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => match ops.values().next() {
                Some(op) => &op.node,
                None => return Ok(()),
            },
            _ => return Ok(()),
        };
        for def in &op.variable_definitions {
            let name = def.node.name.node.as_str();
            let ty = &def.node.var_type.node;
            match variables.get(name) {
                None if def.node.default_value.is_some() || ty.nullable => {}
                None => return Err(format!("variable ${name} of required type {ty} was not provided")),
                Some(Value::Null) if !ty.nullable => {
                    return Err(format!("variable ${name} of non-null type {ty} must not be null"));
                }
                Some(value) => {
                    self.coerce(value, ty).map_err(|why| format!("variable ${name} got invalid value {}: {why}", shown(value)))?;
                }
            }
        }
        Ok(())
    }

    fn coerce(&self, value: &Value, ty: &Type) -> Result<(), String> {
        if value.is_null() {
            return if ty.nullable { Ok(()) } else { Err(format!("expected a {ty}, found null")) };
        }
        match &ty.base {
            BaseType::List(item) => match value {
                Value::Array(items) => {
                    for (i, v) in items.iter().enumerate() {
                        self.coerce(v, item).map_err(|why| format!("at [{i}]: {why}"))?;
                    }
                    Ok(())
                }
                // A single value stands for a list of one.
                other => self.coerce(other, item),
            },
            BaseType::Named(name) => {
                // An unknown type is validation's to report.
                let Some(input) = self.0.get(name.as_str()) else { return Ok(()) };
                self.coerce_named(value, name, input)
            }
        }
    }

    fn coerce_named(&self, value: &Value, name: &str, input: &Input) -> Result<(), String> {
        let fits = match input {
            Input::Int => is_int(value),
            Input::Float => value.is_number(),
            Input::String => value.is_string(),
            Input::Boolean => value.is_boolean(),
            Input::Id => value.is_string() || is_int(value),
            Input::Custom => true,
            Input::Enum(values) => value.as_str().is_some_and(|v| values.iter().any(|e| e == v)),
            Input::Object(fields) => {
                let Value::Object(given) = value else {
                    return Err(format!("{name} is an input object"));
                };
                if let Some(unknown) = given.keys().find(|k| !fields.iter().any(|(f, _, _)| f == *k)) {
                    return Err(format!("field {unknown:?} is not defined by {name}"));
                }
                for (field, ty, has_default) in fields {
                    match given.get(field) {
                        None if *has_default || ty.nullable => {}
                        None => return Err(format!("field {name}.{field} of required type {ty} was not provided")),
                        Some(v) => self.coerce(v, ty).map_err(|why| format!("field {name}.{field}: {why}"))?,
                    }
                }
                true
            }
        };
        if fits {
            Ok(())
        } else {
            Err(match input {
                Input::Int => format!("{name} is a whole number between -2147483648 and 2147483647"),
                Input::Enum(values) => format!("{} is not a value of {name} ({})", shown(value), values.join(", ")),
                _ => format!("{name} cannot represent {}", kind(value)),
            })
        }
    }
}

/// A whole number within 32 bits (the specification's Int); `3.0` counts.
fn is_int(v: &Value) -> bool {
    let Value::Number(n) = v else { return false };
    if let Some(i) = n.as_i64() {
        return i32::try_from(i).is_ok();
    }
    n.as_f64().is_some_and(|f| f.fract() == 0.0 && f >= f64::from(i32::MIN) && f <= f64::from(i32::MAX))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A value for a message: short, and never a long secret in full.
fn shown(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 40 { format!("{}…", text.chars().take(40).collect::<String>()) } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDL: &str = r#"
        scalar DateTime
        enum Tool { TERRAFORM OPENTOFU }
        input StackInput { slug: String! name: String! labels: [String!] = [] tool: Tool! when: DateTime retries: Int }
        type Query { stack(slug: String!): String }
    "#;

    fn check(query: &str, vars: Value) -> Result<(), String> {
        let types = InputTypes::from_sdl(SDL);
        let doc = async_graphql::parser::parse_query(query).unwrap();
        types.check(&doc, None, vars.as_object().unwrap())
    }

    #[test]
    fn scalars_follow_the_specification() {
        let q = "query($v: Int!) { stack(slug: $v) }";
        assert_eq!(
            check(q, serde_json::json!({ "v": "s1" })).unwrap_err(),
            "variable $v got invalid value \"s1\": Int is a whole number between -2147483648 and 2147483647"
        );
        check(q, serde_json::json!({ "v": 3 })).unwrap();
        check(q, serde_json::json!({ "v": 3.0 })).unwrap();
        for bad in [serde_json::json!(3.5), serde_json::json!(2147483648u64), serde_json::json!(true)] {
            assert!(check(q, serde_json::json!({ "v": bad })).is_err(), "{bad}");
        }
        assert_eq!(check(q, serde_json::json!({})).unwrap_err(), "variable $v of required type Int! was not provided");
        assert_eq!(check(q, serde_json::json!({ "v": null })).unwrap_err(), "variable $v of non-null type Int! must not be null");
        let s = "query($v: String) { stack(slug: $v) }";
        check(s, serde_json::json!({})).unwrap();
        check(s, serde_json::json!({ "v": null })).unwrap();
        assert!(check(s, serde_json::json!({ "v": 5 })).unwrap_err().ends_with("String cannot represent a number"));
        let id = "query($v: ID!) { stack(slug: $v) }";
        check(id, serde_json::json!({ "v": 5 })).unwrap();
        check(id, serde_json::json!({ "v": "5" })).unwrap();
        assert!(check(id, serde_json::json!({ "v": 5.5 })).is_err());
        let b = "query($v: Boolean! = true) { stack(slug: \"x\") }";
        check(b, serde_json::json!({})).unwrap();
        assert!(check(b, serde_json::json!({ "v": "true" })).is_err());
    }

    #[test]
    fn lists_enums_and_input_objects() {
        let q = "query($i: StackInput!) { stack(slug: \"x\") }";
        let ok = serde_json::json!({ "i": { "slug": "a", "name": "A", "tool": "OPENTOFU", "labels": ["x"], "when": "2026-01-01T00:00:00Z" } });
        check(q, ok).unwrap();
        // A single value stands for a list of one.
        check(q, serde_json::json!({ "i": { "slug": "a", "name": "A", "tool": "TERRAFORM", "labels": "x" } })).unwrap();
        for (bad, why) in [
            (serde_json::json!({ "slug": "a", "name": "A", "tool": "PULUMI" }), "field StackInput.tool: \"PULUMI\" is not a value of Tool (TERRAFORM, OPENTOFU)"),
            (serde_json::json!({ "slug": "a", "tool": "TERRAFORM" }), "field StackInput.name of required type String! was not provided"),
            (serde_json::json!({ "slug": "a", "name": "A", "tool": "TERRAFORM", "x": 1 }), "field \"x\" is not defined by StackInput"),
            (serde_json::json!({ "slug": "a", "name": "A", "tool": "TERRAFORM", "labels": [1] }), "field StackInput.labels: at [0]: String cannot represent a number"),
            (serde_json::json!({ "slug": "a", "name": "A", "tool": "TERRAFORM", "labels": [null] }), "field StackInput.labels: at [0]: expected a String!, found null"),
            (serde_json::json!({ "slug": "a", "name": "A", "tool": "TERRAFORM", "retries": "3" }), "field StackInput.retries: Int is a whole number between -2147483648 and 2147483647"),
            (serde_json::json!("a"), "StackInput is an input object"),
        ] {
            let e = check(q, serde_json::json!({ "i": bad })).unwrap_err();
            assert!(e.ends_with(why), "{e}");
        }
    }

    #[test]
    fn long_values_are_shortened_in_messages() {
        let e = check("query($v: Int) { stack(slug: \"x\") }", serde_json::json!({ "v": "s".repeat(500) })).unwrap_err();
        assert!(e.len() < 200, "{e}");
    }
}
