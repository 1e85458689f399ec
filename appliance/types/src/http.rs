//! The error body of every HTTP route of the appliance except `/graphql`
//! (whose errors are GraphQL's own `errors` list): one JSON object with a
//! stable machine-readable code and a one-line message,
//!
//! ```json
//! {"error": {"code": "NOT_FOUND", "message": "no such worker call"}}
//! ```
//!
//! and one table from code to HTTP status ([`ErrorCode::status`]). Each error
//! type of the server picks a code for each of its variants; the status
//! follows from the code. The worker reads the message of refusals from it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What went wrong, for programs. Stable: clients may match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The request is malformed (a path segment, a header, the body).
    BadRequest,
    /// No credentials, or ones that are invalid, expired or revoked.
    Unauthenticated,
    /// The credentials do not open this.
    Forbidden,
    NotFound,
    MethodNotAllowed,
    /// The request contradicts what is stored (a different chunk under a taken number).
    Conflict,
    /// What was asked for is over (a run's log after its grace period).
    Gone,
    PayloadTooLarge,
    UnsupportedMediaType,
    /// The state is locked by someone else.
    Locked,
    /// Too many attempts: wait and try again.
    TooManyRequests,
    /// Something the appliance needs (the database, the object store) cannot
    /// be reached: try again.
    Unavailable,
    /// A fault of the appliance; its log has the details.
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Conflict,
        ErrorCode::Gone,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::Locked,
        ErrorCode::TooManyRequests,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The HTTP status of an answer with this code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::Gone => 410,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::Locked => 423,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }

    /// The code of an error whose own crate answers with a status (the VCS
    /// crate's webhook refusals); [`ErrorCode::Internal`] for any other.
    pub fn for_status(status: u16) -> ErrorCode {
        ErrorCode::ALL.into_iter().find(|c| c.status() == status).unwrap_or(ErrorCode::Internal)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::Gone => "GONE",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            ErrorCode::Locked => "LOCKED",
            ErrorCode::TooManyRequests => "TOO_MANY_REQUESTS",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// One line a person can read as it is.
    pub message: String,
}

impl ErrorBody {
    /// A body with `message` made one line.
    pub fn new(code: ErrorCode, message: &str) -> ErrorBody {
        let message = message.replace(['\r', '\n'], " ");
        ErrorBody { error: ErrorDetail { code, message } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_one_documented_shape() {
        let body = ErrorBody::new(ErrorCode::NotFound, "no such\nworker call");
        let json = serde_json::to_string(&body).unwrap();
        assert_eq!(json, r#"{"error":{"code":"NOT_FOUND","message":"no such worker call"}}"#);
        assert_eq!(serde_json::from_str::<ErrorBody>(&json).unwrap(), body);
    }

    #[test]
    fn codes_and_statuses_are_one_table() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::for_status(code.status()), code);
            let quoted = serde_json::to_string(&code).unwrap();
            assert_eq!(quoted, format!("\"{}\"", code.as_str()));
        }
        assert_eq!(ErrorCode::for_status(418), ErrorCode::Internal);
    }
}
