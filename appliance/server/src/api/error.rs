//! Errors the API returns. Each maps to one GraphQL error code through one
//! exhaustive match; internal causes are logged with an id and never sent.

use async_graphql::ErrorExtensions;
use hangar_types::Role;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("authentication required")]
    Unauthenticated,
    #[error("this needs the {needed} role")]
    Forbidden { needed: Role },
    #[error("{what} {key:?} does not exist")]
    NotFound { what: &'static str, key: String },
    #[error("{field} {problem}")]
    Invalid { field: &'static str, problem: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Refused(String),
    #[error("login failed: unknown email or wrong password")]
    LoginFailed,
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated | ApiError::LoginFailed => "UNAUTHENTICATED",
            ApiError::Forbidden { .. } => "FORBIDDEN",
            ApiError::NotFound { .. } => "NOT_FOUND",
            ApiError::Invalid { .. } => "BAD_USER_INPUT",
            ApiError::Conflict(_) => "CONFLICT",
            ApiError::Refused(_) => "REFUSED",
            ApiError::Unavailable(_) => "UNAVAILABLE",
            ApiError::Internal(_) => "INTERNAL",
        }
    }

    pub fn not_found(what: &'static str, key: impl Into<String>) -> ApiError {
        ApiError::NotFound { what, key: key.into() }
    }

    pub fn invalid(field: &'static str, problem: impl Into<String>) -> ApiError {
        ApiError::Invalid { field, problem: problem.into() }
    }
}

impl From<ApiError> for async_graphql::Error {
    fn from(e: ApiError) -> Self {
        let message = match &e {
            ApiError::Internal(detail) => {
                let reference = rand::random::<u32>();
                tracing::error!(reference, error = %detail, "API request failed");
                format!("internal error (reference {reference})")
            }
            ApiError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "API request failed: a dependency is unavailable");
                "service unavailable: the database cannot be reached".to_string()
            }
            other => other.to_string(),
        };
        let code = e.code();
        async_graphql::Error::new(message).extend_with(|_, ext| ext.set("code", code))
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind as K, Error as E};
        match &e {
            E::DatabaseError(K::UniqueViolation, info) => {
                ApiError::Conflict(format!("already exists ({})", info.constraint_name().unwrap_or("unique key")))
            }
            E::DatabaseError(K::CheckViolation, info) => ApiError::Invalid {
                field: "input",
                problem: format!("is refused by the database ({})", info.constraint_name().unwrap_or("check")),
            },
            E::DatabaseError(K::ForeignKeyViolation, info) => {
                ApiError::Conflict(format!("is still referenced ({})", info.constraint_name().unwrap_or("foreign key")))
            }
            E::DatabaseError(K::ClosedConnection, _) => ApiError::Unavailable(e.to_string()),
            E::NotFound => ApiError::Internal("row not found".into()),
            _ => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<hangar_db::DbError> for ApiError {
    fn from(e: hangar_db::DbError) -> Self {
        match e {
            hangar_db::DbError::Query(q) => q.into(),
            hangar_db::DbError::Pool { .. } | hangar_db::DbError::Connect { .. } => {
                ApiError::Unavailable(hangar_types::error_chain(&e))
            }
            other => ApiError::Internal(hangar_types::error_chain(&other)),
        }
    }
}

impl From<hangar_store::StoreError> for ApiError {
    fn from(e: hangar_store::StoreError) -> Self {
        match e {
            hangar_store::StoreError::Query(q) => q.into(),
            hangar_store::StoreError::Db(d) => d.into(),
            other => ApiError::Internal(hangar_types::error_chain(&other)),
        }
    }
}
