//! Errors as they cross the gRPC boundary.
//!
//! A service returns [`ServiceError`]; it becomes a `tonic::Status` whose
//! details hold a prost-encoded [`ErrorDetail`]. The receiving side decodes it
//! back with [`ServiceError::from_status`], so no caller ever parses a message
//! string. A status without Capstan detail (a transport failure, a panic in a
//! peer) becomes `UNAVAILABLE` or `INTERNAL`.

use crate::common::v1::{ErrorCode as WireCode, ErrorDetail};
use capstan_oci::ErrorCode;
use prost::Message;

/// One failed call: a code from the closed set, a human message and an
/// optional JSON detail for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ServiceError {
    pub code: ErrorCode,
    pub message: String,
    /// JSON text placed in the OCI error body's `detail`; empty for none.
    pub detail_json: String,
}

impl ServiceError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            detail_json: String::new(),
        }
    }

    /// Same error with a JSON `detail` (serialised `value`).
    pub fn with_detail(mut self, value: &serde_json::Value) -> Self {
        self.detail_json = value.to_string();
        self
    }

    /// An error carrying the spec's default message for `code`.
    pub fn code(code: ErrorCode) -> Self {
        Self::new(code, code.message())
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// Recover the structured error from a status received over gRPC.
    pub fn from_status(status: &tonic::Status) -> Self {
        if let Ok(detail) = ErrorDetail::decode(status.details())
            && let Some(code) = from_wire(detail.code())
        {
            return Self {
                code,
                message: detail.message,
                detail_json: detail.detail_json,
            };
        }
        // No Capstan detail: the peer did not answer (a refused or broken
        // connection comes as UNKNOWN "transport error"), not a service's
        // verdict on the request.
        let code = match status.code() {
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown => ErrorCode::Unavailable,
            tonic::Code::ResourceExhausted => ErrorCode::TooManyRequests,
            _ => ErrorCode::Internal,
        };
        Self::new(code, status.message().to_string())
    }
}

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        let grpc = grpc_code(e.code);
        let detail = ErrorDetail {
            code: to_wire(e.code) as i32,
            message: e.message.clone(),
            detail_json: e.detail_json,
        };
        tonic::Status::with_details(grpc, e.message, detail.encode_to_vec().into())
    }
}

impl From<tonic::Status> for ServiceError {
    fn from(s: tonic::Status) -> Self {
        Self::from_status(&s)
    }
}

fn grpc_code(code: ErrorCode) -> tonic::Code {
    use ErrorCode::*;
    match code {
        BlobUnknown | BlobUploadUnknown | ManifestUnknown | NameUnknown | NotFound => {
            tonic::Code::NotFound
        }
        Unauthorized => tonic::Code::Unauthenticated,
        ManifestConflict => tonic::Code::FailedPrecondition,
        Denied => tonic::Code::PermissionDenied,
        Unsupported => tonic::Code::Unimplemented,
        TooManyRequests => tonic::Code::ResourceExhausted,
        Unavailable => tonic::Code::Unavailable,
        Internal => tonic::Code::Internal,
        RangeInvalid => tonic::Code::OutOfRange,
        _ => tonic::Code::InvalidArgument,
    }
}

/// Every domain code has exactly one wire code and back.
pub fn to_wire(code: ErrorCode) -> WireCode {
    use ErrorCode::*;
    match code {
        BlobUnknown => WireCode::BlobUnknown,
        BlobUploadInvalid => WireCode::BlobUploadInvalid,
        BlobUploadUnknown => WireCode::BlobUploadUnknown,
        DigestInvalid => WireCode::DigestInvalid,
        ManifestBlobUnknown => WireCode::ManifestBlobUnknown,
        ManifestInvalid => WireCode::ManifestInvalid,
        ManifestUnknown => WireCode::ManifestUnknown,
        NameInvalid => WireCode::NameInvalid,
        NameUnknown => WireCode::NameUnknown,
        SizeInvalid => WireCode::SizeInvalid,
        Unauthorized => WireCode::Unauthorized,
        Denied => WireCode::Denied,
        Unsupported => WireCode::Unsupported,
        TooManyRequests => WireCode::Toomanyrequests,
        RangeInvalid => WireCode::RangeInvalid,
        Unavailable => WireCode::Unavailable,
        Internal => WireCode::Internal,
        ManifestTooLarge => WireCode::ManifestTooLarge,
        PaginationNumberInvalid => WireCode::PaginationNumberInvalid,
        TagInvalid => WireCode::TagInvalid,
        RequestInvalid => WireCode::RequestInvalid,
        NotFound => WireCode::NotFound,
        ManifestConflict => WireCode::ManifestConflict,
    }
}

/// Inverse of [`to_wire`]; `None` for the unspecified value.
pub fn from_wire(code: WireCode) -> Option<ErrorCode> {
    ErrorCode::ALL.iter().copied().find(|c| to_wire(*c) == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_survives_a_round_trip_through_a_status() {
        for code in ErrorCode::ALL {
            let err = ServiceError::new(*code, "boom").with_detail(&serde_json::json!({"x": 1}));
            let status: tonic::Status = err.clone().into();
            assert_eq!(ServiceError::from_status(&status), err, "{code:?}");
        }
    }

    #[test]
    fn a_status_without_detail_becomes_unavailable_or_internal() {
        let s = tonic::Status::unavailable("connection refused");
        assert_eq!(ServiceError::from_status(&s).code, ErrorCode::Unavailable);
        // tonic's word for a connection that broke or was refused.
        let s = tonic::Status::unknown("transport error");
        assert_eq!(ServiceError::from_status(&s).code, ErrorCode::Unavailable);
        let s = tonic::Status::internal("h2 protocol error");
        assert_eq!(ServiceError::from_status(&s).code, ErrorCode::Internal);
        let s = tonic::Status::unauthenticated("no shared secret");
        assert_eq!(ServiceError::from_status(&s).code, ErrorCode::Internal);
    }
}
