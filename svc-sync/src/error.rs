//! The crate's error type and its one conversion to the wire error.

use capstan_oci::ErrorCode;
use capstan_proto::ServiceError;

/// What syncing an image can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SyncError {
    /// The upstream does not have it (or no upstream is configured for it).
    #[error("not found upstream: {0}")]
    NotFound(String),
    /// `onlySigned` is on and the image carries no signature.
    #[error("not signed upstream: {0}")]
    Unsigned(String),
    /// The upstream refused our credentials.
    #[error("upstream refused access: {0}")]
    Denied(String),
    /// The upstream cannot be reached, fails, or rate-limits.
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    /// The upstream served something that is not a valid image.
    #[error("invalid content from upstream: {0}")]
    Invalid(String),
    /// Storing into svc-blob or svc-meta failed.
    #[error("storing: {0}")]
    Store(ServiceError),
}

impl From<tonic::Status> for SyncError {
    fn from(s: tonic::Status) -> Self {
        SyncError::Store(ServiceError::from_status(&s))
    }
}

impl From<SyncError> for ServiceError {
    fn from(e: SyncError) -> Self {
        match e {
            SyncError::NotFound(m) | SyncError::Unsigned(m) => {
                ServiceError::new(ErrorCode::ManifestUnknown, m)
            }
            SyncError::Invalid(m) => ServiceError::new(ErrorCode::ManifestInvalid, m),
            SyncError::Denied(m) | SyncError::Unavailable(m) => {
                ServiceError::new(ErrorCode::Unavailable, m)
            }
            SyncError::Store(e) => e,
        }
    }
}

impl From<SyncError> for tonic::Status {
    fn from(e: SyncError) -> Self {
        ServiceError::from(e).into()
    }
}
