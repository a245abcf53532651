//! The gRPC contract between Capstan's roles: the generated tonic/prost code
//! for every service (`capstan.<svc>.v1`) and the closed error-code set
//! carried as structured status detail.

pub mod access;
pub mod bulk;
pub mod direct;
pub mod error;
pub mod metrics;

/// Shared messages: the closed error-code set.
pub mod common {
    #[allow(clippy::all, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("capstan.common.v1");
    }
}

/// svc-blob: content-addressed bytes and resumable uploads.
pub mod blob {
    #[allow(clippy::all, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("capstan.blob.v1");
    }
}

/// svc-meta: repositories, manifests, tags, referrers, blob links.
pub mod meta {
    #[allow(clippy::all, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("capstan.meta.v1");
    }
}

/// svc-auth: identities, sessions, keys, tokens, policies.
pub mod auth {
    #[allow(clippy::all, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("capstan.auth.v1");
    }
}

/// svc-sync: mirroring and pull-through.
pub mod sync {
    #[allow(clippy::all, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("capstan.sync.v1");
    }
}

pub use error::ServiceError;
