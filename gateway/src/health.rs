//! Active health checks of the backend roles' replicas over gRPC health
//! (`grpc.health.v1`), every [`CHECK_EVERY`]. They serve two ends:
//! - the gateway's probes, as zot names them: `/livez` (the process
//!   answers), `/startupz` (it has started) and `/readyz` (every role it
//!   needs has a replica that answers "serving", else 503);
//! - the pools of [`crate::backends`], which stop sending calls to a
//!   replica whose last check failed, and take it back once one succeeds.

use capstan_runtime::Shutdown;
use capstan_runtime::grpc::{Peer, Transport};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Time between two checks of a replica.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
/// A check unanswered for this long has failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

const UNKNOWN: u8 = 0;
const SERVING: u8 = 1;
const DOWN: u8 = 2;

/// One replica of a role, as its checks last found it.
#[derive(Debug)]
pub struct Replica {
    /// Its URL (or `in-process:<role>`), for logs.
    pub uri: String,
    pub peer: Peer,
    state: AtomicU8,
}

impl Replica {
    pub fn new(peer: &Peer) -> Arc<Self> {
        Arc::new(Self {
            uri: peer.name(),
            peer: peer.clone(),
            state: AtomicU8::new(UNKNOWN),
        })
    }

    /// Worth sending a call to: serving, or not checked yet.
    pub fn usable(&self) -> bool {
        self.state.load(Ordering::Relaxed) != DOWN
    }

    /// Its last check answered "serving".
    pub fn serving(&self) -> bool {
        self.state.load(Ordering::Relaxed) == SERVING
    }

    /// A call to it failed on the way (connection refused, reset): take it
    /// out of turn at once; its next successful check brings it back.
    pub fn failed(&self) {
        self.set(false);
    }

    fn set(&self, serving: bool) {
        let new = if serving { SERVING } else { DOWN };
        let old = self.state.swap(new, Ordering::Relaxed);
        if old != new {
            if serving {
                tracing::info!(replica = %self.uri, "backend replica serving");
            } else {
                tracing::warn!(replica = %self.uri, "backend replica not serving: calls go to the others");
            }
        }
    }
}

/// The replicas of one role and the gRPC service their checks ask about.
#[derive(Debug, Clone)]
pub struct Role {
    pub name: &'static str,
    pub service: &'static str,
    pub replicas: Vec<Arc<Replica>>,
}

/// What `/readyz` says of one role.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RoleState {
    pub role: &'static str,
    pub serving: usize,
    pub replicas: usize,
}

/// Every role the gateway needs.
#[derive(Debug, Clone, Default)]
pub struct Health {
    pub roles: Vec<Role>,
}

impl Health {
    /// Each role's serving replicas.
    pub fn states(&self) -> Vec<RoleState> {
        self.roles
            .iter()
            .map(|r| RoleState {
                role: r.name,
                serving: r.replicas.iter().filter(|x| x.serving()).count(),
                replicas: r.replicas.len(),
            })
            .collect()
    }

    /// Every role has a serving replica.
    pub fn ready(&self) -> bool {
        self.states().iter().all(|s| s.serving > 0)
    }

    /// Check every replica until `shutdown`.
    pub fn spawn_checks(&self, shutdown: &Shutdown) {
        for role in &self.roles {
            for replica in &role.replicas {
                tokio::spawn(check_periodically(
                    replica.clone(),
                    role.service,
                    shutdown.clone(),
                ));
            }
        }
    }
}

/// Ask `replica` about `service` every [`CHECK_EVERY`].
async fn check_periodically(replica: Arc<Replica>, service: &'static str, shutdown: Shutdown) {
    let client = match replica.peer.transport() {
        Ok(t) => HealthClient::<Transport>::new(t),
        Err(e) => {
            tracing::warn!(replica = %replica.uri, error = %e, "cannot check replica");
            replica.set(false);
            return;
        }
    };
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        let mut c = client.clone();
        let asked = c.check(HealthCheckRequest {
            service: service.to_string(),
        });
        let serving = matches!(
            tokio::time::timeout(CHECK_TIMEOUT, asked).await,
            Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32
        );
        replica.set(serving);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_is_ready_with_one_serving_replica() {
        let secrets = capstan_runtime::grpc::Secrets::none();
        let (a, b) = (
            Replica::new(&Peer::remote("http://a", &secrets)),
            Replica::new(&Peer::remote("http://b", &secrets)),
        );
        let health = Health {
            roles: vec![Role {
                name: "blob",
                service: "s",
                replicas: vec![a.clone(), b.clone()],
            }],
        };
        // Not checked yet: usable, not ready.
        assert!(a.usable() && !a.serving());
        assert!(!health.ready());
        a.set(false);
        b.set(true);
        assert!(!a.usable());
        assert!(health.ready());
        assert_eq!(
            health.states(),
            [RoleState {
                role: "blob",
                serving: 1,
                replicas: 2
            }]
        );
        b.set(false);
        assert!(!health.ready());
    }
}
