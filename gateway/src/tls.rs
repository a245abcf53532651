//! TLS termination: the server certificate, HTTP/2, and mutual TLS. With
//! `http.tls.cacert` clients present certificates signed by that CA; the
//! CommonName of a verified certificate is the caller's identity for access
//! control. Certificates are required unless another way to log in
//! (`http.auth.htpasswd`, …) is configured, in which case they are optional.

use async_trait::async_trait;
use capstan_runtime::config::{Config, TlsConfig};
use pingora::listeners::TlsAccept;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::tls::TlsRef;
use std::any::Any;
use std::sync::Arc;

/// The CommonName of the client certificate a connection's TLS verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCn(pub String);

/// Reads the verified client certificate once per connection.
struct ClientIdentity;

#[async_trait]
impl TlsAccept for ClientIdentity {
    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let cn = common_name(ssl.peer_certificate_der()?)?;
        Some(Arc::new(ClientCn(cn)))
    }
}

/// The subject CommonName of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    (!cn.is_empty()).then(|| cn.to_string())
}

/// Listener settings for `tls`.
pub fn settings(config: &Config, tls: &TlsConfig) -> anyhow::Result<TlsSettings> {
    let cert = tls
        .cert
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("http.tls.cert is not UTF-8"))?;
    let key = tls
        .key
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("http.tls.key is not UTF-8"))?;
    let mut settings = match &tls.cacert {
        None => {
            TlsSettings::intermediate(cert, key).map_err(|e| anyhow::anyhow!("http.tls: {e}"))?
        }
        Some(ca) => {
            let mut s = TlsSettings::with_callbacks(Box::new(ClientIdentity))
                .map_err(|e| anyhow::anyhow!("http.tls: {e}"))?;
            s.set_certificate_chain_file(cert)
                .map_err(|e| anyhow::anyhow!("http.tls.cert: {e}"))?;
            s.set_private_key_file(key)
                .map_err(|e| anyhow::anyhow!("http.tls.key: {e}"))?;
            pingora::tls::install_default_crypto_provider();
            let mut roots = pingora::tls::RootCertStore::empty();
            pingora::tls::load_ca_file_into_store(ca, &mut roots)
                .map_err(|e| anyhow::anyhow!("http.tls.cacert {}: {e}", ca.display()))?;
            let builder = pingora::tls::WebPkiClientVerifier::builder(Arc::new(roots));
            let optional = config
                .http
                .auth
                .as_ref()
                .is_some_and(|a| a.has_credentials());
            let verifier = if optional {
                builder.allow_unauthenticated().build()
            } else {
                builder.build()
            }
            .map_err(|e| anyhow::anyhow!("http.tls.cacert: {e}"))?;
            s.set_client_cert_verifier(verifier);
            s
        }
    };
    settings.enable_h2();
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_names_come_from_the_subject() {
        let mut params = rcgen::CertificateParams::new(vec!["client.example".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()).as_deref(), Some("alice"));
        assert_eq!(common_name(b"not a certificate"), None);
    }
}
