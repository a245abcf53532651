//! svc-auth owns authentication (htpasswd, LDAP, OIDC), sessions, API keys, tokens and access-control decisions. It writes only through the
//! gRPC contract in `proto/`. In the registry core it serves the contract's
//! `Info` call and the standard health service; the auth issue fills it in.

use capstan_proto::auth::v1::{
    InfoRequest, InfoResponse,
    auth_service_server::{AuthService, AuthServiceServer},
};
use capstan_runtime::{Config, Shutdown, grpc};
use tokio::net::TcpListener;

/// The AuthService implementation.
#[derive(Debug, Default)]
pub struct AuthServiceImpl {
    methods: Vec<String>,
}

#[tonic::async_trait]
impl AuthService for AuthServiceImpl {
    async fn info(
        &self,
        _req: tonic::Request<InfoRequest>,
    ) -> Result<tonic::Response<InfoResponse>, tonic::Status> {
        Ok(tonic::Response::new(InfoResponse {
            methods: self.methods.clone(),
        }))
    }
}

/// Serve the role on `listener` until `shutdown`.
pub async fn serve(
    config: &Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let svc = AuthServiceImpl {
        methods: configured_methods(config),
    };
    let health = grpc::health_service(&["capstan.auth.v1.AuthService"]).await;
    let router = grpc::server()
        .add_service(health)
        .add_service(AuthServiceServer::new(svc));
    tracing::info!(addr = %listener.local_addr()?, "auth service listening");
    grpc::serve(router, listener, shutdown).await?;
    Ok(())
}

/// The authentication methods named under `http.auth`.
fn configured_methods(config: &Config) -> Vec<String> {
    let mut methods: Vec<String> = config
        .http
        .auth
        .as_ref()
        .and_then(|a| a.as_object())
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    methods.sort();
    methods
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_configured_methods() {
        let mut cfg = Config::default();
        cfg.http.auth = Some(serde_json::json!({"htpasswd": {"path": "/x"}, "apikey": true}));
        assert_eq!(configured_methods(&cfg), vec!["apikey", "htpasswd"]);
        assert!(configured_methods(&Config::default()).is_empty());
    }
}
