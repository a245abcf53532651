//! The gateway's probes, as zot names them: `/livez` (the process
//! answers), `/startupz` (it has started) and `/readyz` (every role it
//! needs has a replica that answers "serving", else 503). What they report
//! comes from the pools of [`crate::backends`], whose health checks (gRPC
//! health, every two seconds) also take failed replicas out of turn.

use capstan_runtime::grpc::Pool;
use serde::Serialize;
use std::sync::Arc;

pub use capstan_runtime::grpc::pool::REFRESH_EVERY as CHECK_EVERY;

/// One role the gateway needs, and how to count its replicas.
#[derive(Clone)]
pub struct Role {
    pub name: &'static str,
    /// (serving, known) replicas now.
    count: Arc<dyn Fn() -> (usize, usize) + Send + Sync>,
}

impl std::fmt::Debug for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Role").field("name", &self.name).finish()
    }
}

impl Role {
    /// The role `pool` reaches.
    pub fn of<C: Clone + Send + Sync + 'static>(pool: &Pool<C>) -> Self {
        let pool = pool.clone();
        Self {
            name: pool.role(),
            count: Arc::new(move || pool.serving()),
        }
    }
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
            .map(|r| {
                let (serving, replicas) = (r.count)();
                RoleState {
                    role: r.name,
                    serving,
                    replicas,
                }
            })
            .collect()
    }

    /// Every role has a serving replica.
    pub fn ready(&self) -> bool {
        self.states().iter().all(|s| s.serving > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &'static str, serving: usize, replicas: usize) -> Role {
        Role {
            name,
            count: Arc::new(move || (serving, replicas)),
        }
    }

    #[test]
    fn ready_when_every_role_has_a_serving_replica() {
        let health = Health {
            roles: vec![role("meta", 1, 2), role("blob", 1, 1)],
        };
        assert!(health.ready());
        assert_eq!(
            health.states()[0],
            RoleState {
                role: "meta",
                serving: 1,
                replicas: 2
            }
        );
        let health = Health {
            roles: vec![role("meta", 1, 2), role("blob", 0, 3)],
        };
        assert!(!health.ready());
        // A role none of whose replicas is known is not ready either.
        let health = Health {
            roles: vec![role("meta", 0, 0)],
        };
        assert!(!health.ready());
    }
}
