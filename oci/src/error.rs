//! The closed error-code set: the distribution spec's codes plus the few
//! Capstan needs beyond them (range errors, unavailable dependencies,
//! internal faults). HTTP status mapping lives in the gateway, not here.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    /// A byte range or upload offset that cannot be satisfied.
    RangeInvalid,
    /// A dependency (another role, the database, storage) is unreachable.
    Unavailable,
    /// A bug or an unexpected failure.
    Internal,
    /// A manifest over the size limit.
    ManifestTooLarge,
    /// A bad `n` or `last` pagination parameter.
    PaginationNumberInvalid,
    /// A tag that does not match the tag grammar.
    TagInvalid,
    /// A malformed request outside the distribution API (bad JSON body,
    /// missing parameter, several `Authorization` headers).
    RequestInvalid,
    /// An object outside the distribution API that does not exist (an API key).
    NotFound,
    /// Deleting a manifest by digest that several tags still name, for a
    /// caller with `detectManifestCollision` (zot's 409).
    ManifestConflict,
}

impl ErrorCode {
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::BlobUnknown,
        ErrorCode::BlobUploadInvalid,
        ErrorCode::BlobUploadUnknown,
        ErrorCode::DigestInvalid,
        ErrorCode::ManifestBlobUnknown,
        ErrorCode::ManifestInvalid,
        ErrorCode::ManifestUnknown,
        ErrorCode::NameInvalid,
        ErrorCode::NameUnknown,
        ErrorCode::SizeInvalid,
        ErrorCode::Unauthorized,
        ErrorCode::Denied,
        ErrorCode::Unsupported,
        ErrorCode::TooManyRequests,
        ErrorCode::RangeInvalid,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::ManifestTooLarge,
        ErrorCode::PaginationNumberInvalid,
        ErrorCode::TagInvalid,
        ErrorCode::RequestInvalid,
        ErrorCode::NotFound,
        ErrorCode::ManifestConflict,
    ];

    /// The code string of the OCI error body.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BlobUnknown => "BLOB_UNKNOWN",
            BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            DigestInvalid => "DIGEST_INVALID",
            ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ManifestInvalid => "MANIFEST_INVALID",
            ManifestUnknown => "MANIFEST_UNKNOWN",
            NameInvalid => "NAME_INVALID",
            NameUnknown => "NAME_UNKNOWN",
            SizeInvalid => "SIZE_INVALID",
            Unauthorized => "UNAUTHORIZED",
            Denied => "DENIED",
            Unsupported => "UNSUPPORTED",
            TooManyRequests => "TOOMANYREQUESTS",
            RangeInvalid => "RANGE_INVALID",
            Unavailable => "UNAVAILABLE",
            Internal => "INTERNAL_ERROR",
            ManifestTooLarge => "MANIFEST_INVALID",
            PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            TagInvalid => "TAG_INVALID",
            RequestInvalid => "REQUEST_INVALID",
            NotFound => "NOT_FOUND",
            ManifestConflict => "MANIFEST_INVALID",
        }
    }

    /// The spec's message for the code.
    pub fn message(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BlobUnknown => "blob unknown to registry",
            BlobUploadInvalid => "blob upload invalid",
            BlobUploadUnknown => "blob upload unknown to registry",
            DigestInvalid => "provided digest did not match uploaded content",
            ManifestBlobUnknown => "manifest references a manifest or blob unknown to registry",
            ManifestInvalid => "manifest invalid",
            ManifestUnknown => "manifest unknown to registry",
            NameInvalid => "invalid repository name",
            NameUnknown => "repository name not known to registry",
            SizeInvalid => "provided length did not match content length",
            Unauthorized => "authentication required",
            Denied => "requested access to the resource is denied",
            Unsupported => "the operation is unsupported",
            TooManyRequests => "too many requests",
            RangeInvalid => "requested range not satisfiable",
            Unavailable => "service unavailable",
            Internal => "internal server error",
            ManifestTooLarge => "manifest exceeds the size limit",
            PaginationNumberInvalid => "invalid number of results requested",
            TagInvalid => "invalid tag",
            RequestInvalid => "the request is malformed",
            NotFound => "not found",
            ManifestConflict => "manifest is referenced by several tags",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
