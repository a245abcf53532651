//! The connection to the Redis that holds sessions, shaped as zot's
//! `sessionDriver` describes it: one server, a Redis Cluster, or the master
//! of a Redis Sentinel group, followed across failovers.
//!
//! Every kind connects on first use, so the auth service starts while Redis
//! is down, and calls are bounded by the configured timeouts (a few of
//! them at most, as a cluster retries or a Sentinel group is asked for its
//! master again): a Redis that cannot be reached makes calls fail, and
//! sessions unavailable, rather than hang. Sessions are read from masters
//! only, so a deleted key is seen at once. (Replication is asynchronous: a
//! write a master acknowledged but had not passed on when it failed over is
//! lost, so is a logout, which then lasts only until the session's TTL.)

use capstan_runtime::config::auth::SessionDriverConfig;
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, FromRedisValue, IntoConnectionInfo, Pipeline,
    ProtocolVersion, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};
use std::time::Duration;

/// Default time to open a connection (zot's `dial_timeout`).
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Default time to wait for an answer (zot's `read_timeout`).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Default retries of a cluster call (redirections and failed nodes).
const CLUSTER_RETRIES: u32 = 2;

/// Which Redis the options describe, before anything is connected.
#[derive(Debug, Clone)]
pub enum Topology {
    /// One server.
    Single(ConnectionInfo),
    /// A Redis Cluster reached through these nodes.
    Cluster(Vec<ConnectionInfo>),
    /// The master `master` of the Sentinel group at `sentinels`.
    Sentinel {
        sentinels: Vec<ConnectionInfo>,
        master: String,
        /// Credentials and database of the master.
        node: redis::RedisConnectionInfo,
    },
}

/// Connection settings read from the options.
#[derive(Debug, Clone)]
pub struct Options {
    pub topology: Topology,
    pub dial_timeout: Duration,
    pub response_timeout: Duration,
    pub max_retries: Option<u32>,
    pub min_retry_backoff: Option<Duration>,
    pub max_retry_backoff: Option<Duration>,
    pub max_redirects: Option<u32>,
}

fn invalid(key: &str, message: impl std::fmt::Display) -> String {
    format!("http.auth.sessionDriver.{key}: {message}")
}

/// `host:port` (port 6379 when absent) as a TCP address.
fn tcp(addr: &str, key: &str) -> Result<ConnectionInfo, String> {
    let (host, port) = match addr.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => (
            h.trim_start_matches('[').trim_end_matches(']'),
            p.parse::<u16>()
                .map_err(|_| invalid(key, format!("{addr:?} has no valid port")))?,
        ),
        _ if !addr.is_empty() => (addr, 6379),
        _ => return Err(invalid(key, "an empty address")),
    };
    ConnectionAddr::Tcp(host.to_string(), port)
        .into_connection_info()
        .map_err(|e| invalid(key, e))
}

impl Options {
    /// Read the options of a `redis` session driver; the message of an
    /// error names the key at fault.
    pub fn from_config(d: &SessionDriverConfig) -> Result<Self, String> {
        let topology = match &d.url {
            Some(url) => Self::from_url(url)?,
            None => Self::from_keys(d)?,
        };
        // With a URL, zot reads nothing else (they are reported ignored).
        let keys = d.url.is_none();
        let pick = |v: Option<Duration>| if keys { v } else { None };
        let response_timeout = match (pick(d.read_timeout), pick(d.write_timeout)) {
            (None, None) => RESPONSE_TIMEOUT,
            (r, w) => r.unwrap_or_default().max(w.unwrap_or_default()),
        };
        let o = Options {
            topology,
            dial_timeout: pick(d.dial_timeout).unwrap_or(DIAL_TIMEOUT),
            response_timeout,
            max_retries: d.max_retries.filter(|_| keys),
            min_retry_backoff: pick(d.min_retry_backoff),
            max_retry_backoff: pick(d.max_retry_backoff),
            max_redirects: d.max_redirects.filter(|_| keys),
        };
        if o.dial_timeout.is_zero() {
            return Err(invalid("dial_timeout", "must be more than 0"));
        }
        if o.response_timeout.is_zero() {
            return Err(invalid("read_timeout", "must be more than 0"));
        }
        if let (Some(lo), Some(hi)) = (o.min_retry_backoff, o.max_retry_backoff)
            && lo > hi
        {
            return Err(invalid(
                "min_retry_backoff",
                "is larger than max_retry_backoff",
            ));
        }
        Ok(o)
    }

    /// A URL names one server, or with `addr=` parameters a cluster (zot's
    /// cluster URL: the URL's own host is one node, each `addr` another,
    /// all with the URL's credentials).
    fn from_url(url: &str) -> Result<Topology, String> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut addrs = Vec::new();
        let mut rest = Vec::new();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            if k == "addr" {
                addrs.push(v.into_owned());
            } else {
                rest.push(format!(
                    "{}={}",
                    form_urlencoded::byte_serialize(k.as_bytes()).collect::<String>(),
                    form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
                ));
            }
        }
        let kept = if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let first = kept.as_str().into_connection_info().map_err(|_| {
            invalid(
                "url",
                "must be a redis:// or redis+unix:// URL (redis://host:port/db)",
            )
        })?;
        if addrs.is_empty() {
            return Ok(Topology::Single(first));
        }
        if !matches!(first.addr(), ConnectionAddr::Tcp(..)) {
            return Err(invalid(
                "url",
                "a cluster URL needs redis://host:port nodes",
            ));
        }
        if first.redis_settings().db() != 0 {
            return Err(invalid("url", "a Redis Cluster has only database 0"));
        }
        let mut nodes = vec![first.clone()];
        for a in &addrs {
            let n = tcp(a, "url")?;
            nodes.push(n.set_redis_settings(first.redis_settings().clone()));
        }
        Ok(Topology::Cluster(nodes))
    }

    /// zot's separate keys: `master_name` selects Sentinel, otherwise one
    /// `addr` is one server and several are a cluster.
    fn from_keys(d: &SessionDriverConfig) -> Result<Topology, String> {
        let addrs = d.addr.as_ref().map(|a| a.to_vec()).unwrap_or_default();
        if addrs.is_empty() {
            return Err(invalid(
                "url",
                "the redis driver needs a `url` or an `addr` (host:port, or a list)",
            ));
        }
        let mut settings = redis::RedisConnectionInfo::default();
        if let Some(u) = &d.username {
            settings = settings.set_username(u);
        }
        if let Some(p) = &d.password {
            settings = settings.set_password(p);
        }
        settings = settings.set_protocol(match d.protocol {
            None | Some(2) => ProtocolVersion::RESP2,
            Some(3) => ProtocolVersion::RESP3,
            Some(n) => return Err(invalid("protocol", format!("{n} is not 2 or 3"))),
        });
        if let Some(db) = d.db {
            if db < 0 {
                return Err(invalid("db", "must be 0 or more"));
            }
            settings = settings.set_db(db);
        }
        let nodes = addrs
            .iter()
            .map(|a| tcp(a, "addr").map(|n| n.set_redis_settings(settings.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(master) = &d.master_name {
            if master.is_empty() {
                return Err(invalid("master_name", "must not be empty"));
            }
            // The sentinels have their own credentials.
            let mut sentinel = redis::RedisConnectionInfo::default();
            if let Some(u) = &d.sentinel_username {
                sentinel = sentinel.set_username(u);
            }
            if let Some(p) = &d.sentinel_password {
                sentinel = sentinel.set_password(p);
            }
            let sentinels = nodes
                .into_iter()
                .map(|n| n.set_redis_settings(sentinel.clone()))
                .collect();
            return Ok(Topology::Sentinel {
                sentinels,
                master: master.clone(),
                node: settings,
            });
        }
        if d.sentinel_username.is_some() || d.sentinel_password.is_some() {
            return Err(invalid(
                "master_name",
                "sentinel_username/sentinel_password need master_name (Redis Sentinel)",
            ));
        }
        if nodes.len() == 1 {
            return Ok(Topology::Single(nodes.into_iter().next().expect("one")));
        }
        if d.db.is_some_and(|db| db != 0) {
            return Err(invalid(
                "db",
                "several `addr` make a Redis Cluster, which has only database 0",
            ));
        }
        Ok(Topology::Cluster(nodes))
    }
}

/// One live connection of any kind.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Node(MultiplexedConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Node(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Node(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Node(c) => c.get_db(),
        }
    }
}

/// The master of a Sentinel group: asked of the sentinels when there is no
/// connection, and asked again when the connection fails or the node it
/// reaches has become a replica (`READONLY`).
struct SentinelMaster {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    /// The connection to the master, and a number that changes with each
    /// new connection (so a failed call forgets only the one it used).
    current: parking_lot::Mutex<(Option<MultiplexedConnection>, u64)>,
    config: redis::AsyncConnectionConfig,
    /// Bound on finding the master and connecting to it.
    connect_limit: Duration,
}

impl SentinelMaster {
    async fn connection(&self) -> RedisResult<(MultiplexedConnection, u64)> {
        if let (Some(c), n) = &*self.current.lock() {
            return Ok((c.clone(), *n));
        }
        let mut sentinel = self.sentinel.lock().await;
        // Another call may have connected while this one waited.
        if let (Some(c), n) = &*self.current.lock() {
            return Ok((c.clone(), *n));
        }
        let connect = async {
            let client = sentinel.async_get_client().await?;
            client
                .get_multiplexed_async_connection_with_config(&self.config)
                .await
        };
        let c = tokio::time::timeout(self.connect_limit, connect)
            .await
            .map_err(|_| {
                RedisError::from((
                    ErrorKind::Io,
                    "no Redis master found through the sentinels in time",
                ))
            })??;
        let mut current = self.current.lock();
        current.1 += 1;
        current.0 = Some(c.clone());
        tracing::debug!("connected to the Redis master named by the sentinels");
        Ok((c, current.1))
    }

    /// Drop connection number `n`, unless a newer one replaced it.
    fn forget(&self, n: u64) {
        let mut current = self.current.lock();
        if current.1 == n {
            current.0 = None;
        }
    }
}

/// Whether an error means the connection (or the node's role) is no longer
/// good, so the master must be looked up again.
fn needs_new_master(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
}

enum Kind {
    Single(ConnectionManager),
    Cluster {
        client: ClusterClient,
        conn: tokio::sync::OnceCell<ClusterConnection>,
        connect_limit: Duration,
    },
    Sentinel(SentinelMaster),
}

/// A Redis for sessions, of whichever kind the options name.
pub struct RedisStore {
    kind: Kind,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Single(_) => "single",
            Kind::Cluster { .. } => "cluster",
            Kind::Sentinel(_) => "sentinel",
        };
        f.debug_struct("RedisStore").field("kind", &kind).finish()
    }
}

impl RedisStore {
    /// Prepare the connection; nothing is connected until the first call.
    pub fn new(o: &Options) -> RedisResult<Self> {
        let connect_limit = o.dial_timeout * 4 + o.response_timeout;
        let kind = match &o.topology {
            Topology::Single(info) => {
                let client = redis::Client::open(info.clone())?;
                let mut config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(o.dial_timeout))
                    .set_response_timeout(Some(o.response_timeout))
                    .set_number_of_retries(o.max_retries.unwrap_or(1) as usize)
                    .set_max_delay(o.max_retry_backoff.unwrap_or(Duration::from_millis(200)));
                if let Some(min) = o.min_retry_backoff {
                    config = config.set_min_delay(min);
                }
                Kind::Single(ConnectionManager::new_lazy_with_config(client, config)?)
            }
            Topology::Cluster(nodes) => {
                let mut b = ClusterClient::builder(nodes.clone())
                    .connection_timeout(o.dial_timeout)
                    .response_timeout(o.response_timeout);
                let first = nodes[0].redis_settings();
                if let Some(u) = first.username() {
                    b = b.username(u);
                }
                if let Some(p) = first.password() {
                    b = b.password(p);
                }
                // redis-rs retries a failed call 16 times by default, over
                // tens of seconds; a session check must fail fast.
                b = b
                    .use_protocol(first.protocol())
                    .retries(o.max_redirects.unwrap_or(CLUSTER_RETRIES));
                Kind::Cluster {
                    client: b.build()?,
                    conn: tokio::sync::OnceCell::new(),
                    connect_limit,
                }
            }
            Topology::Sentinel {
                sentinels,
                master,
                node,
            } => {
                let node_info =
                    SentinelNodeConnectionInfo::default().set_redis_connection_info(node.clone());
                let client = SentinelClient::build(
                    sentinels.clone(),
                    master.clone(),
                    Some(node_info),
                    SentinelServerType::Master,
                )?;
                Kind::Sentinel(SentinelMaster {
                    sentinel: tokio::sync::Mutex::new(client),
                    current: parking_lot::Mutex::new((None, 0)),
                    config: redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(o.dial_timeout))
                        .set_response_timeout(Some(o.response_timeout)),
                    connect_limit,
                })
            }
        };
        Ok(RedisStore { kind })
    }

    /// A connection, and for Sentinel the number of the master connection.
    async fn conn(&self) -> RedisResult<(Conn, u64)> {
        match &self.kind {
            Kind::Single(c) => Ok((Conn::Single(c.clone()), 0)),
            Kind::Cluster {
                client,
                conn,
                connect_limit,
            } => {
                let c = conn
                    .get_or_try_init(|| async {
                        tokio::time::timeout(*connect_limit, client.get_async_connection())
                            .await
                            .map_err(|_| {
                                RedisError::from((
                                    ErrorKind::Io,
                                    "no cluster node answered in time",
                                ))
                            })?
                    })
                    .await?;
                Ok((Conn::Cluster(c.clone()), 0))
            }
            Kind::Sentinel(s) => {
                let (c, n) = s.connection().await?;
                Ok((Conn::Node(c), n))
            }
        }
    }

    /// Run one command that may safely run twice (see [`RedisStore::run`]).
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        self.run(true, |mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    /// Run one command that must not run twice (`GETDEL`): never retried.
    pub async fn query_once<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        self.run(false, |mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    /// Run a pipeline of commands that may safely run twice.
    pub async fn query_pipe<T: FromRedisValue>(&self, pipe: &Pipeline) -> RedisResult<T> {
        self.run(true, |mut c| async move { pipe.query_async(&mut c).await })
            .await
    }

    /// Call `op` on a connection. With Sentinel, a call whose connection
    /// turned out dead or read-only forgets it, so the next call asks the
    /// sentinels again; a call that may `retry` is then made once more on
    /// the master they name now.
    async fn run<T, F, Fut>(&self, retry: bool, op: F) -> RedisResult<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        let (c, n) = self.conn().await?;
        let first = op(c).await;
        let Kind::Sentinel(s) = &self.kind else {
            return first;
        };
        match first {
            Err(e) if needs_new_master(&e) => {
                tracing::debug!(error = %e, "redis master lost; asking the sentinels again");
                s.forget(n);
                if !retry {
                    return Err(e);
                }
                let (c, n) = self.conn().await?;
                let r = op(c).await;
                if r.as_ref().is_err_and(needs_new_master) {
                    s.forget(n);
                }
                r
            }
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_runtime::config::auth::OneOrMany;

    fn driver(v: serde_json::Value) -> SessionDriverConfig {
        serde_json::from_value(v).unwrap()
    }

    fn opts(v: serde_json::Value) -> Result<Options, String> {
        Options::from_config(&driver(v))
    }

    #[test]
    fn a_url_is_one_server_and_addr_parameters_make_a_cluster() {
        let o = opts(serde_json::json!({"name": "redis", "url": "redis://u:p@h1:7000/2"})).unwrap();
        let Topology::Single(info) = &o.topology else {
            panic!("{:?}", o.topology)
        };
        assert_eq!(info.addr(), &ConnectionAddr::Tcp("h1".into(), 7000));
        assert_eq!(info.redis_settings().db(), 2);
        assert_eq!(info.redis_settings().password(), Some("p"));
        assert_eq!(o.dial_timeout, DIAL_TIMEOUT);
        let o = opts(serde_json::json!({"name": "redis",
            "url": "redis://u:p@h1:7000?addr=h2:7001&addr=h3:7002&protocol=3"}))
        .unwrap();
        let Topology::Cluster(nodes) = &o.topology else {
            panic!("{:?}", o.topology)
        };
        let addrs: Vec<_> = nodes.iter().map(|n| n.addr().to_string()).collect();
        assert_eq!(addrs, ["h1:7000", "h2:7001", "h3:7002"]);
        assert!(
            nodes
                .iter()
                .all(|n| n.redis_settings().username() == Some("u")
                    && n.redis_settings().protocol() == ProtocolVersion::RESP3)
        );
        assert!(
            opts(serde_json::json!({"name": "redis", "url": "redis://h1/3?addr=h2:1"}))
                .unwrap_err()
                .contains("only database 0")
        );
        assert!(
            opts(serde_json::json!({"name": "redis", "url": "http://h1"}))
                .unwrap_err()
                .starts_with("http.auth.sessionDriver.url:")
        );
    }

    #[test]
    fn keys_select_one_server_a_cluster_or_sentinel() {
        let o = opts(
            serde_json::json!({"name": "redis", "addr": "h1:7000", "db": 3,
            "username": "u", "password": "p", "protocol": 3, "dial_timeout": "250ms",
            "read_timeout": "2s", "write_timeout": "3s", "max_retries": 4}),
        )
        .unwrap();
        let Topology::Single(info) = &o.topology else {
            panic!("{:?}", o.topology)
        };
        assert_eq!(info.redis_settings().db(), 3);
        assert_eq!(info.redis_settings().protocol(), ProtocolVersion::RESP3);
        assert_eq!(o.dial_timeout, Duration::from_millis(250));
        assert_eq!(o.response_timeout, Duration::from_secs(3));
        assert_eq!(o.max_retries, Some(4));

        let o = opts(serde_json::json!({"name": "redis", "addr": ["h1:1", "h2:2", "h3"]})).unwrap();
        let Topology::Cluster(nodes) = &o.topology else {
            panic!("{:?}", o.topology)
        };
        assert_eq!(nodes[2].addr(), &ConnectionAddr::Tcp("h3".into(), 6379));
        assert!(
            opts(serde_json::json!({"name": "redis", "addr": ["h1:1", "h2:2"], "db": 1}))
                .unwrap_err()
                .starts_with("http.auth.sessionDriver.db:")
        );

        let o = opts(
            serde_json::json!({"name": "redis", "addr": ["s1:26379", "s2:26379"],
            "master_name": "zotmeta", "password": "node-pw", "sentinel_password": "s-pw", "db": 1}),
        )
        .unwrap();
        let Topology::Sentinel {
            sentinels,
            master,
            node,
        } = &o.topology
        else {
            panic!("{:?}", o.topology)
        };
        assert_eq!(master, "zotmeta");
        assert_eq!(sentinels.len(), 2);
        assert!(
            sentinels
                .iter()
                .all(|s| s.redis_settings().password() == Some("s-pw"))
        );
        assert_eq!(node.password(), Some("node-pw"));
        assert_eq!(node.db(), 1);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (v, key) in [
            (serde_json::json!({"name": "redis"}), "url"),
            (serde_json::json!({"name": "redis", "addr": "h:x"}), "addr"),
            (
                serde_json::json!({"name": "redis", "addr": "h:1", "protocol": 4}),
                "protocol",
            ),
            (
                serde_json::json!({"name": "redis", "addr": "h:1", "db": -1}),
                "db",
            ),
            (
                serde_json::json!({"name": "redis", "addr": "h:1", "master_name": ""}),
                "master_name",
            ),
            (
                serde_json::json!({"name": "redis", "addr": "h:1", "sentinel_password": "x"}),
                "master_name",
            ),
            (
                serde_json::json!({"name": "redis", "addr": "h:1", "dial_timeout": "0s"}),
                "dial_timeout",
            ),
            (
                serde_json::json!({"name": "redis", "addr": "h:1",
                    "min_retry_backoff": "2s", "max_retry_backoff": "1s"}),
                "min_retry_backoff",
            ),
        ] {
            let e = opts(v.clone()).unwrap_err();
            assert!(
                e.starts_with(&format!("http.auth.sessionDriver.{key}:")),
                "{v}: {e}"
            );
        }
    }

    #[test]
    fn addr_may_be_one_string_of_several() {
        let a = OneOrMany::One("h1:1, h2:2 h3:3".into());
        assert_eq!(a.to_vec(), ["h1:1", "h2:2", "h3:3"]);
    }
}
