//! The crate's error type and its one mapping onto Capstan's closed code set.

use capstan_oci::{Digest, ErrorCode};
use capstan_proto::ServiceError;
use std::path::PathBuf;

/// Why a [`crate::BlobStore`] operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} is unknown")]
    BlobUnknown(Digest),
    /// Not a canonical upload id, or no such session (never started,
    /// committed, cancelled or expired).
    #[error("blob upload unknown")]
    UploadUnknown,
    #[error("invalid digest: {0}")]
    DigestInvalid(String),
    #[error("content digest is {actual}, not {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    /// A byte range that cannot be served.
    #[error("{0}")]
    RangeInvalid(String),
    /// A write that claims an offset other than the upload's current one.
    #[error("upload is at offset {actual}, not {expected}")]
    OffsetMismatch { expected: u64, actual: u64 },
    /// Another request is writing or committing the same upload right now.
    #[error("upload is being written by another request")]
    UploadBusy,
    /// The caller's byte stream failed before its end.
    #[error("upload stream failed: {0}")]
    Stream(String),
    /// A storage operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The storage backend cannot be reached right now (retry later).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// More bytes than the backend can take in one blob this way.
    #[error("{0}")]
    TooLarge(String),
    /// Inconsistent stored state or a failed internal task.
    #[error("{0}")]
    Internal(String),
}

impl BlobError {
    /// The code this error carries across the gRPC boundary.
    pub fn code(&self) -> ErrorCode {
        match self {
            BlobError::BlobUnknown(_) => ErrorCode::BlobUnknown,
            BlobError::UploadUnknown => ErrorCode::BlobUploadUnknown,
            BlobError::DigestInvalid(_) | BlobError::DigestMismatch { .. } => {
                ErrorCode::DigestInvalid
            }
            BlobError::RangeInvalid(_) | BlobError::OffsetMismatch { .. } => {
                ErrorCode::RangeInvalid
            }
            BlobError::UploadBusy | BlobError::Stream(_) => ErrorCode::BlobUploadInvalid,
            BlobError::Unavailable(_) => ErrorCode::Unavailable,
            BlobError::TooLarge(_) => ErrorCode::SizeInvalid,
            BlobError::Io { .. } | BlobError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// A closure turning an `io::Error` on `path` into [`BlobError::Io`].
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> BlobError {
        let path = path.into();
        move |source| BlobError::Io { op, path, source }
    }
}

impl From<BlobError> for ServiceError {
    fn from(e: BlobError) -> Self {
        let code = e.code();
        let message = match &e {
            // Storage paths stay in the logs; the caller learns what failed.
            BlobError::Io { op, source, .. } => format!("storage failure: cannot {op}: {source}"),
            other => other.to_string(),
        };
        ServiceError::new(code, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_oci::Algorithm;

    #[test]
    fn codes_follow_the_contract() {
        let d = Digest::of(Algorithm::Sha256, b"x");
        assert_eq!(
            BlobError::BlobUnknown(d.clone()).code(),
            ErrorCode::BlobUnknown
        );
        assert_eq!(
            BlobError::UploadUnknown.code(),
            ErrorCode::BlobUploadUnknown
        );
        assert_eq!(
            BlobError::DigestMismatch {
                expected: d.clone(),
                actual: d
            }
            .code(),
            ErrorCode::DigestInvalid
        );
        assert_eq!(
            BlobError::OffsetMismatch {
                expected: 1,
                actual: 2
            }
            .code(),
            ErrorCode::RangeInvalid
        );
    }

    #[test]
    fn io_errors_become_internal_without_the_path() {
        let e = BlobError::io("write upload data", "/secret/root/uploads/x/data")(
            std::io::Error::other("disk full"),
        );
        let s = ServiceError::from(e);
        assert_eq!(s.code, ErrorCode::Internal);
        assert!(s.message.contains("disk full"), "{}", s.message);
        assert!(!s.message.contains("/secret"), "{}", s.message);
    }
}
