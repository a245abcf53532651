//! Capstan's pure OCI domain: digests (sha256, sha512), the repository-name
//! and tag grammar of the distribution spec, manifest references, media
//! types, manifest and index parsing with the validation a registry applies on
//! push, repository access rules (actions and globs), and the closed set of error codes with the spec's messages. No I/O:
//! every other crate builds on these types.

pub mod access;
pub mod digest;
pub mod error;
pub mod manifest;
pub mod media;
pub mod name;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use error::ErrorCode;
pub use manifest::{ManifestError, ManifestKind, ParsedManifest};
pub use name::{NameError, Reference, validate_repository, validate_tag};
