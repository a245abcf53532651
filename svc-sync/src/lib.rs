//! svc-sync owns mirroring from and pull-through caching of upstream registries. It writes only through the
//! gRPC contract in `proto/`. In the registry core it serves the contract's
//! `Info` call and the standard health service; the sync issue fills it in.

use capstan_proto::sync::v1::{
    InfoRequest, InfoResponse,
    sync_service_server::{SyncService, SyncServiceServer},
};
use capstan_runtime::{Config, Shutdown, grpc};
use tokio::net::TcpListener;

/// The SyncService implementation.
#[derive(Debug, Default)]
pub struct SyncServiceImpl {
    upstreams: Vec<String>,
}

#[tonic::async_trait]
impl SyncService for SyncServiceImpl {
    async fn info(
        &self,
        _req: tonic::Request<InfoRequest>,
    ) -> Result<tonic::Response<InfoResponse>, tonic::Status> {
        Ok(tonic::Response::new(InfoResponse {
            upstreams: self.upstreams.clone(),
        }))
    }
}

/// Serve the role on `listener` until `shutdown`.
pub async fn serve(
    config: &Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let svc = SyncServiceImpl {
        upstreams: configured_upstreams(config),
    };
    let health = grpc::health_service(&["capstan.sync.v1.SyncService"]).await;
    let router = grpc::server()
        .add_service(health)
        .add_service(SyncServiceServer::new(svc));
    tracing::info!(addr = %listener.local_addr()?, "sync service listening");
    grpc::serve(router, listener, shutdown).await?;
    Ok(())
}

/// The upstream URLs named under `extensions.sync.registries[].urls`.
fn configured_upstreams(config: &Config) -> Vec<String> {
    config
        .extensions
        .as_ref()
        .and_then(|e| e.sync.as_ref())
        .map(|s| s.registries.iter().flat_map(|r| r.urls.clone()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_configured_upstreams() {
        let cfg = Config::from_value(
            serde_json::json!({"extensions": {"sync": {"registries": [
                {"urls": ["https://a", "https://b"]}, {"urls": ["https://c"]}
            ]}}}),
            Vec::<(String, String)>::new(),
        )
        .unwrap()
        .config;
        assert_eq!(
            configured_upstreams(&cfg),
            vec!["https://a", "https://b", "https://c"]
        );
        assert!(configured_upstreams(&Config::default()).is_empty());
    }
}
