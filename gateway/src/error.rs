//! The one table from Capstan's closed error-code set to HTTP: status,
//! extra headers and the spec's JSON body `{"errors":[{code,message,detail}]}`.

use capstan_oci::ErrorCode;
use capstan_proto::ServiceError;

/// An error answered to the HTTP client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub detail: Option<serde_json::Value>,
    /// Extra response headers (e.g. `Content-Range` on 416).
    pub headers: Vec<(&'static str, String)>,
    /// Overrides the table's status (only for answers outside the code set,
    /// such as an unknown path).
    pub status: Option<u16>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            detail: None,
            headers: Vec::new(),
            status: None,
        }
    }

    /// The spec's message for `code`.
    pub fn code(code: ErrorCode) -> Self {
        Self::new(code, code.message())
    }

    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn not_found_route() -> Self {
        let mut e = Self::new(ErrorCode::Unsupported, "no such endpoint");
        e.status = Some(404);
        e
    }

    pub fn http_status(&self) -> u16 {
        self.status.unwrap_or_else(|| status_of(self.code))
    }

    /// The JSON body of the spec.
    pub fn body(&self) -> Vec<u8> {
        let mut entry = serde_json::json!({
            "code": self.code.as_str(),
            "message": self.message,
        });
        if let Some(d) = &self.detail {
            entry["detail"] = d.clone();
        }
        serde_json::to_vec(&serde_json::json!({ "errors": [entry] })).expect("json")
    }
}

/// THE mapping from code to HTTP status.
pub fn status_of(code: ErrorCode) -> u16 {
    use ErrorCode::*;
    match code {
        BlobUnknown | BlobUploadUnknown | ManifestUnknown | NameUnknown | NotFound => 404,
        BlobUploadInvalid
        | DigestInvalid
        | ManifestBlobUnknown
        | ManifestInvalid
        | NameInvalid
        | SizeInvalid
        | PaginationNumberInvalid
        | TagInvalid
        | RequestInvalid => 400,
        Unauthorized => 401,
        Denied => 403,
        ManifestConflict => 409,
        Unsupported => 405,
        ManifestTooLarge => 413,
        RangeInvalid => 416,
        TooManyRequests => 429,
        Internal => 500,
        Unavailable => 503,
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let detail = (!e.detail_json.is_empty())
            .then(|| serde_json::from_str(&e.detail_json).ok())
            .flatten();
        Self {
            code: e.code,
            message: e.message,
            detail,
            headers: Vec::new(),
            status: None,
        }
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        ServiceError::from_status(&s).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_to_a_4xx_or_5xx() {
        for c in ErrorCode::ALL {
            let s = status_of(*c);
            assert!((400..600).contains(&s), "{c:?} -> {s}");
            let server_side = matches!(c, ErrorCode::Internal | ErrorCode::Unavailable);
            assert_eq!(s >= 500, server_side, "{c:?}");
        }
        assert_eq!(status_of(ErrorCode::RangeInvalid), 416);
        assert_eq!(status_of(ErrorCode::ManifestTooLarge), 413);
        assert_eq!(status_of(ErrorCode::ManifestUnknown), 404);
    }

    #[test]
    fn body_follows_the_spec_shape() {
        let e =
            ApiError::code(ErrorCode::BlobUnknown).with_detail(serde_json::json!({"digest": "x"}));
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["errors"][0]["code"], "BLOB_UNKNOWN");
        assert_eq!(v["errors"][0]["message"], "blob unknown to registry");
        assert_eq!(v["errors"][0]["detail"]["digest"], "x");
    }

    #[test]
    fn structured_service_errors_keep_their_code() {
        let status: tonic::Status =
            ServiceError::new(ErrorCode::ManifestBlobUnknown, "missing").into();
        let e = ApiError::from(status);
        assert_eq!(e.code, ErrorCode::ManifestBlobUnknown);
        assert_eq!(e.http_status(), 400);
    }
}
