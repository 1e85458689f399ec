//! GraphQL calls from the client: one query or mutation per call, its
//! `errors` turned into [`ClientError::GraphQl`] with the server's code.

use reqwest::Method;
use serde_json::{Value, json};

use crate::{Client, ClientError};

impl Client {
    /// Runs `query` with `variables` and returns its `data`.
    pub async fn graphql(&self, query: &str, variables: Value) -> Result<Value, ClientError> {
        let body = json!({ "query": query, "variables": variables });
        let answer: Value = self.call(Method::POST, "/graphql", Some(&body)).await?;
        if let Some(first) = answer
            .get("errors")
            .and_then(Value::as_array)
            .and_then(|e| e.first())
        {
            let message = first
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("an error without a message")
                .to_string();
            let code = first
                .pointer("/extensions/code")
                .and_then(Value::as_str)
                .unwrap_or("ERROR")
                .to_string();
            return Err(ClientError::GraphQl {
                operation: operation_name(query),
                code,
                message,
            });
        }
        match answer.get("data") {
            Some(data) if !data.is_null() => Ok(data.clone()),
            _ => Err(ClientError::Protocol {
                path: "/graphql".into(),
                problem: "neither data nor errors".into(),
            }),
        }
    }
}

/// The first field of a query (`triggerRun`, `stacks`): what the error line names.
fn operation_name(query: &str) -> String {
    let body = query.split_once('{').map_or(query, |(_, rest)| rest);
    body.trim_start()
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .next()
        .unwrap_or("graphql")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::operation_name;

    #[test]
    fn the_operation_is_the_first_field() {
        assert_eq!(
            operation_name("mutation($s: String!) { triggerRun(stack: $s) { id } }"),
            "triggerRun"
        );
        assert_eq!(operation_name("{ stacks { slug } }"), "stacks");
    }
}
