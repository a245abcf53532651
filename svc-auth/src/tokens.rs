//! The token service's signing side: a P-256 key (ES256), its public half as
//! a JWKS document and as a self-signed certificate (what CNCF distribution's
//! `auth.token.rootcertbundle` wants), and signing of registry tokens.
//!
//! The key id is the libtrust fingerprint of the public key, the form
//! distribution matches a token's `kid` against its certificate bundle.

use crate::error::AuthError;
use capstan_proto::access::TokenClaims;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};

/// File names under the auth data directory.
const KEY_FILE: &str = "token-signing-key.pem";
const CERT_FILE: &str = "token-signing-cert.pem";

#[derive(Debug)]
pub struct Signer {
    key: EncodingKey,
    kid: String,
    jwks: String,
    cert_path: PathBuf,
}

/// distribution's (libtrust) key id: the first 240 bits of the SHA-256 of
/// the DER public key, base32, in groups of four separated by `:`.
pub fn libtrust_key_id(spki_der: &[u8]) -> String {
    let digest = Sha256::digest(spki_der);
    let b32 = data_encoding::BASE32_NOPAD.encode(&digest[..30]);
    b32.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).expect("base32 is ascii"))
        .collect::<Vec<_>>()
        .join(":")
}

fn signing(e: impl std::fmt::Display) -> AuthError {
    AuthError::Signing(e.to_string())
}

impl Signer {
    /// Load the key at `key_path`, or (when `None`) the one under `dir`,
    /// generating and storing it there on first start.
    pub fn load_or_create(key_path: Option<&Path>, dir: &Path) -> Result<Self, AuthError> {
        let pem = match key_path {
            Some(p) => std::fs::read_to_string(p)?,
            None => {
                let p = dir.join(KEY_FILE);
                match std::fs::read_to_string(&p) {
                    Ok(pem) => pem,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                            .map_err(signing)?;
                        let pem = kp.serialize_pem();
                        write_private(&p, &pem)?;
                        tracing::info!(file = %p.display(), "token signing key generated");
                        pem
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let kp = rcgen::KeyPair::from_pem(&pem).map_err(signing)?;
        if !kp.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256) {
            return Err(AuthError::Signing(
                "the token signing key must be an ECDSA P-256 key (PKCS#8 PEM)".into(),
            ));
        }
        let kid = libtrust_key_id(&kp.public_key_der());
        let key = EncodingKey::from_ec_pem(pem.as_bytes()).map_err(signing)?;
        let mut jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::ES256).map_err(signing)?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        let jwks = serde_json::to_string(&jsonwebtoken::jwk::JwkSet { keys: vec![jwk] })
            .expect("jwks json");
        // The certificate only carries the public key for distribution;
        // regenerated when missing or when the key changed.
        let cert_path = dir.join(CERT_FILE);
        let params = rcgen::CertificateParams::new(vec!["capstan-token-signer".to_string()])
            .map_err(signing)?;
        let cert = params.self_signed(&kp).map_err(signing)?;
        let tmp = cert_path.with_extension("tmp");
        std::fs::write(&tmp, cert.pem())?;
        std::fs::rename(&tmp, &cert_path)?;
        Ok(Self {
            key,
            kid,
            jwks,
            cert_path,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// `{"keys":[…]}` with the one public key.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// The self-signed certificate of the public key (PEM file).
    pub fn certificate_path(&self) -> &Path {
        &self.cert_path
    }

    pub fn sign(&self, claims: &TokenClaims) -> Result<String, AuthError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).map_err(signing)
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_proto::access::TokenAccess;
    use jsonwebtoken::{DecodingKey, Validation, jwk::JwkSet};

    fn claims() -> TokenClaims {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        TokenClaims {
            iss: "capstan".into(),
            sub: "alice".into(),
            aud: "registry".into(),
            exp: now + 300,
            nbf: now,
            iat: now,
            jti: "1".into(),
            access: vec![TokenAccess {
                kind: "repository".into(),
                name: "a/b".into(),
                actions: vec!["pull".into()],
            }],
        }
    }

    #[test]
    fn signs_tokens_the_published_keys_verify() {
        let dir = tempfile::tempdir().unwrap();
        let s = Signer::load_or_create(None, dir.path()).unwrap();
        let sent = claims();
        let token = s.sign(&sent).unwrap();
        let set: JwkSet = serde_json::from_str(s.jwks()).unwrap();
        let jwk = set.find(s.kid()).expect("kid in jwks");
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&["registry"]);
        v.set_issuer(&["capstan"]);
        let got =
            jsonwebtoken::decode::<TokenClaims>(&token, &DecodingKey::from_jwk(jwk).unwrap(), &v)
                .unwrap();
        assert_eq!(got.claims, sent);
        assert_eq!(got.header.kid.as_deref(), Some(s.kid()));
        // A token for another audience does not verify.
        v.set_audience(&["elsewhere"]);
        assert!(
            jsonwebtoken::decode::<TokenClaims>(&token, &DecodingKey::from_jwk(jwk).unwrap(), &v)
                .is_err()
        );
    }

    #[test]
    fn the_key_persists_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = Signer::load_or_create(None, dir.path()).unwrap();
        let b = Signer::load_or_create(None, dir.path()).unwrap();
        assert_eq!(a.kid(), b.kid());
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "key file mode {mode:o}");
        let cert = std::fs::read_to_string(a.certificate_path()).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        // An explicit key file is used as is.
        let other = tempfile::tempdir().unwrap();
        let c = Signer::load_or_create(Some(&dir.path().join(KEY_FILE)), other.path()).unwrap();
        assert_eq!(c.kid(), a.kid());
    }

    #[test]
    fn key_ids_have_the_libtrust_shape() {
        let kid = libtrust_key_id(b"some der bytes");
        assert_eq!(kid.len(), 48 + 11);
        assert!(kid.split(':').all(|g| g.len() == 4));
        assert!(
            kid.bytes()
                .all(|b| b == b':' || b.is_ascii_uppercase() || b.is_ascii_digit())
        );
    }
}
