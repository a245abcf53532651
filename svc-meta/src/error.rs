//! The crate's error type and its one conversion to the wire error.

use capstan_oci::{Digest, DigestError, ErrorCode, ManifestError, NameError, Reference};
use capstan_proto::ServiceError;

/// Everything a namespace operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("invalid repository name {name:?}: {source}")]
    NameInvalid { name: String, source: NameError },
    #[error("repository {0:?} is not known")]
    NameUnknown(String),
    #[error("invalid digest {value:?}: {source}")]
    DigestInvalid { value: String, source: DigestError },
    #[error("digest {reference} does not match the content digest {actual}")]
    DigestMismatch { reference: Digest, actual: Digest },
    #[error("invalid tag {value:?}: {source}")]
    TagInvalid { value: String, source: NameError },
    #[error("manifest of {0} bytes exceeds the size limit")]
    ManifestTooLarge(usize),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("manifest references {digest}, which is unknown to the repository")]
    ManifestBlobUnknown { digest: Digest },
    #[error("manifest unknown to the repository")]
    ManifestUnknown,
    #[error("manifest {digest} is named by {tags} tags; delete the tags first")]
    ManifestConflict { digest: Digest, tags: i64 },
    #[error("blob unknown to the repository")]
    BlobUnknown,
    /// The push would set tags its caller may not (see [`crate::store::TagRule`]).
    #[error("this push {0}")]
    TagRuleRefused(&'static str),
    #[error("blob size {0} is out of range")]
    SizeInvalid(u64),
    #[error("unsupported database url scheme {0:?} (sqlite: or postgres://)")]
    UnsupportedDatabase(String),
    #[error("cannot create database directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A request this service does not take (an unknown mark kind, a grant
    /// it cannot read).
    #[error("{0}")]
    Unsupported(String),
}

impl MetaError {
    /// `DIGEST_INVALID` for an unparsable digest string.
    pub fn digest(value: &str) -> Result<Digest, MetaError> {
        Digest::parse(value).map_err(|source| MetaError::DigestInvalid {
            value: value.to_string(),
            source,
        })
    }

    /// `DIGEST_INVALID` or `TAG_INVALID` for a bad manifest reference.
    /// `value` as a tag, or why it is not one.
    pub fn tag(value: &str) -> Result<(), MetaError> {
        capstan_oci::validate_tag(value).map_err(|source| MetaError::TagInvalid {
            value: value.to_string(),
            source,
        })
    }

    pub fn reference(value: &str) -> Result<Reference, MetaError> {
        Reference::parse(value).map_err(|e| match e {
            NameError::Digest(source) => MetaError::DigestInvalid {
                value: value.to_string(),
                source,
            },
            source => MetaError::TagInvalid {
                value: value.to_string(),
                source,
            },
        })
    }

    /// The code from the closed set this error travels as.
    pub fn code(&self) -> ErrorCode {
        use MetaError::*;
        match self {
            NameInvalid { .. } => ErrorCode::NameInvalid,
            NameUnknown(_) => ErrorCode::NameUnknown,
            DigestInvalid { .. } | DigestMismatch { .. } => ErrorCode::DigestInvalid,
            TagInvalid { .. } => ErrorCode::TagInvalid,
            ManifestTooLarge(_) => ErrorCode::ManifestTooLarge,
            Manifest(e) => e.code(),
            ManifestBlobUnknown { .. } => ErrorCode::ManifestBlobUnknown,
            ManifestUnknown => ErrorCode::ManifestUnknown,
            ManifestConflict { .. } => ErrorCode::ManifestConflict,
            BlobUnknown => ErrorCode::BlobUnknown,
            TagRuleRefused(_) => ErrorCode::Denied,
            SizeInvalid(_) => ErrorCode::SizeInvalid,
            Unsupported(_) => ErrorCode::Unsupported,
            Database(e) if is_unavailable(e) => ErrorCode::Unavailable,
            UnsupportedDatabase(_) | Io(_) | Database(_) | Migrate(_) | Corrupt(_) => {
                ErrorCode::Internal
            }
        }
    }
}

/// A database that is locked or busy beyond the timeout, or unreachable.
fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => {
            let Some(code) = db.code() else {
                return false;
            };
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // Extended result codes keep the primary code in the low byte:
                // SQLITE_BUSY (5) and SQLITE_LOCKED (6).
                code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
            } else {
                // Postgres: lock_not_available, serialization_failure,
                // deadlock_detected, cannot_connect_now.
                matches!(&*code, "55P03" | "40001" | "40P01" | "57P03")
            }
        }
        _ => false,
    }
}

/// The one place a crate error becomes a wire error. Failures that are not
/// the caller's fault are logged at warn here and reach the client without
/// database details.
impl From<MetaError> for ServiceError {
    fn from(e: MetaError) -> Self {
        let code = e.code();
        match &e {
            MetaError::ManifestBlobUnknown { digest } => ServiceError::new(code, e.to_string())
                .with_detail(&serde_json::json!({ "digest": digest.to_string() })),
            _ if matches!(code, ErrorCode::Internal | ErrorCode::Unavailable) => {
                tracing::warn!(error = %e, code = %code, "metadata request failed");
                ServiceError::code(code)
            }
            _ => ServiceError::new(code, e.to_string()),
        }
    }
}

impl From<MetaError> for tonic::Status {
    fn from(e: MetaError) -> Self {
        ServiceError::from(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_digest_and_tag_errors() {
        assert_eq!(
            MetaError::reference("sha256:abc").unwrap_err().code(),
            ErrorCode::DigestInvalid
        );
        assert_eq!(
            MetaError::reference("-bad").unwrap_err().code(),
            ErrorCode::TagInvalid
        );
        assert!(matches!(
            MetaError::reference("v1"),
            Ok(Reference::Tag(t)) if t == "v1"
        ));
        assert_eq!(
            MetaError::digest("md5:00").unwrap_err().code(),
            ErrorCode::DigestInvalid
        );
    }

    #[test]
    fn internal_errors_hide_details_and_blob_unknown_carries_the_digest() {
        let e: ServiceError = MetaError::Corrupt("secret table layout".into()).into();
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(!e.message.contains("secret"), "{}", e.message);

        let digest = Digest::of(capstan_oci::Algorithm::Sha256, b"x");
        let e: ServiceError = MetaError::ManifestBlobUnknown {
            digest: digest.clone(),
        }
        .into();
        assert_eq!(e.code, ErrorCode::ManifestBlobUnknown);
        let detail: serde_json::Value = serde_json::from_str(&e.detail_json).unwrap();
        assert_eq!(detail["digest"], digest.to_string());
    }

    #[test]
    fn pool_exhaustion_is_unavailable() {
        assert_eq!(
            MetaError::Database(sqlx::Error::PoolTimedOut).code(),
            ErrorCode::Unavailable
        );
        assert_eq!(
            MetaError::Database(sqlx::Error::RowNotFound).code(),
            ErrorCode::Internal
        );
    }
}
