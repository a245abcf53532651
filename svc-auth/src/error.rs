//! The crate's error type and its one conversion to the wire error.

use capstan_oci::ErrorCode;
use capstan_proto::ServiceError;

/// Everything authentication, sessions, keys and tokens can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong, unknown, expired or revoked credentials. The message is for
    /// logs; clients only ever see `UNAUTHORIZED`.
    #[error("authentication failed: {0}")]
    Unauthenticated(&'static str),
    /// A request the caller may not make (someone else's key).
    #[error("{0}")]
    Denied(String),
    /// Malformed input (bad label, bad scope, bad date).
    #[error("{0}")]
    Invalid(String),
    /// The API key does not exist (for its owner).
    #[error("API key not found")]
    KeyNotFound,
    /// The feature is switched off in the configuration.
    #[error("{0} is not enabled in the configuration")]
    Disabled(&'static str),
    /// A backing store (Redis, the database) cannot be reached. Sessions
    /// are refused rather than treated as anonymous.
    #[error("{what} unavailable: {message}")]
    Unavailable { what: &'static str, message: String },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("token signing: {0}")]
    Signing(String),
}

impl AuthError {
    pub fn redis(e: redis::RedisError) -> Self {
        AuthError::Unavailable {
            what: "session store (redis)",
            message: e.to_string(),
        }
    }
}

impl From<AuthError> for ServiceError {
    fn from(e: AuthError) -> Self {
        let code = match &e {
            AuthError::Unauthenticated(_) => ErrorCode::Unauthorized,
            AuthError::Denied(_) => ErrorCode::Denied,
            AuthError::Invalid(_) => ErrorCode::RequestInvalid,
            AuthError::Disabled(_) => ErrorCode::Unsupported,
            AuthError::KeyNotFound => ErrorCode::NotFound,
            AuthError::Unavailable { .. } => ErrorCode::Unavailable,
            AuthError::Database(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)) => {
                ErrorCode::Unavailable
            }
            AuthError::Database(_)
            | AuthError::Migrate(_)
            | AuthError::Io(_)
            | AuthError::Signing(_) => ErrorCode::Internal,
        };
        let message = match code {
            // Never tell a client why its credentials failed.
            ErrorCode::Unauthorized => code.message().to_string(),
            _ => e.to_string(),
        };
        ServiceError::new(code, message)
    }
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> Self {
        ServiceError::from(e).into()
    }
}
