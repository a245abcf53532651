//! Real servers for Capstan's tests: Redis (alone, as a Sentinel group or
//! as a Cluster), Postgres, OpenLDAP's slapd and an S3-compatible store
//! (s3s-fs), each started in its own
//! temporary directory, waited for until it answers, and stopped and removed
//! on drop. A lone Redis and Postgres listen only on a Unix socket there (no
//! port to collide with a parallel test or with a server already on the
//! machine); Sentinel and Cluster members, which name one another by
//! address, slapd and s3s-fs listen on loopback ports of their own.
//!
//! Only tests depend on this crate.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to become ready.
const READY_LIMIT: Duration = Duration::from_secs(30);

/// A `redis-server` of its own.
pub struct Redis {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Start Redis without persistence on a socket in a new temp dir.
    pub fn start() -> Redis {
        let mut r = Redis {
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        r.restart();
        r
    }

    /// Start the server (again, after [`Redis::kill`]: empty, on the same
    /// socket), waiting until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let socket = self.socket();
        let _ = std::fs::remove_file(&socket);
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (apt install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + READY_LIMIT;
        while !self.answers_ping() {
            assert!(Instant::now() < deadline, "redis did not become ready");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// `redis+unix:///…/redis.sock`.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    fn answers_ping(&self) -> bool {
        UnixStream::connect(self.socket()).is_ok_and(|mut s| {
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            pongs(&mut s)
        })
    }

    /// Run one command through `redis-cli` and return its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Kill the server (SIGKILL) and wait for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `redis-server` on a loopback TCP port of its own: Sentinel and Cluster
/// name their members by address, so these cannot use a socket.
pub struct RedisNode {
    child: Option<Child>,
    /// Its working directory, removed on drop.
    _dir: tempfile::TempDir,
    port: u16,
}

impl RedisNode {
    /// Start a data node without persistence; `extra` are more
    /// `redis-server` arguments (`--replicaof`, `--cluster-enabled`, …).
    pub fn start(extra: &[&str]) -> RedisNode {
        Self::spawn(|dir, port| {
            let mut c = Command::new("redis-server");
            c.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir)
                .args(extra);
            c
        })
    }

    /// Start a sentinel watching the master `name` at `master_port` with a
    /// quorum of `quorum`; it declares the master down after one second.
    pub fn sentinel(name: &str, master_port: u16, quorum: u32) -> RedisNode {
        Self::spawn(|dir, port| {
            // A sentinel rewrites its configuration file, so it gets one.
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {name} 127.0.0.1 {master_port} {quorum}\n\
                     sentinel down-after-milliseconds {name} 1000\n\
                     sentinel failover-timeout {name} 10000\n\
                     sentinel parallel-syncs {name} 1\n",
                    dir = dir.display()
                ),
            )
            .expect("sentinel.conf");
            let mut c = Command::new("redis-server");
            c.arg(&conf).arg("--sentinel");
            c
        })
    }

    /// Try free ports until a server comes up on one (another process may
    /// take a port between the probe and the bind).
    fn spawn(command: impl Fn(&Path, u16) -> Command) -> RedisNode {
        for _ in 0..10 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            let child = command(dir.path(), port)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server (apt install redis-server)");
            let mut node = RedisNode {
                child: Some(child),
                _dir: dir,
                port,
            };
            let deadline = Instant::now() + READY_LIMIT;
            loop {
                if node.answers_ping() {
                    return node;
                }
                let exited = node
                    .child
                    .as_mut()
                    .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
                if exited || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            node.kill();
        }
        panic!("redis-server did not start on any of 10 ports");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn answers_ping(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok_and(|mut s| {
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            pongs(&mut s)
        })
    }

    /// Run one command through `redis-cli` and return its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kill the server (SIGKILL) and wait for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a Redis server (or sentinel) on `s` answers `PING`.
fn pongs(s: &mut (impl Read + Write)) -> bool {
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// One field of `INFO`-style `key:value` lines.
fn info_field(info: &str, key: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix(':'))
        .map(str::to_string)
}

/// Poll `ready` every 20 ms until it holds; panic with `what` after
/// [`READY_LIMIT`] (or `limit`).
pub fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A Redis Sentinel group: a master, one replica and three sentinels
/// (quorum 2) on loopback ports, ready once every sentinel knows the
/// replica and the other sentinels.
pub struct RedisSentinelGroup {
    pub master: RedisNode,
    pub replica: RedisNode,
    pub sentinels: Vec<RedisNode>,
    pub name: String,
}

impl RedisSentinelGroup {
    pub fn start(name: &str) -> RedisSentinelGroup {
        let master = RedisNode::start(&[]);
        let replica = RedisNode::start(&["--replicaof", "127.0.0.1", &master.port().to_string()]);
        wait_until("the replica to sync", READY_LIMIT, || {
            info_field(&replica.cli(&["INFO", "replication"]), "master_link_status").as_deref()
                == Some("up")
        });
        let sentinels: Vec<RedisNode> = (0..3)
            .map(|_| RedisNode::sentinel(name, master.port(), 2))
            .collect();
        let g = RedisSentinelGroup {
            master,
            replica,
            sentinels,
            name: name.to_string(),
        };
        // Sentinels find the replica through the master's INFO and one
        // another through hello messages (every 2 s).
        wait_until(
            "the sentinels to see each other",
            Duration::from_secs(60),
            || {
                g.sentinels.iter().all(|s| {
                    let m = s.cli(&["SENTINEL", "master", name]);
                    let field = |k: &str| {
                        let lines: Vec<&str> = m.lines().collect();
                        lines
                            .iter()
                            .position(|l| *l == k)
                            .and_then(|i| lines.get(i + 1))
                            .map(|v| v.to_string())
                    };
                    field("num-slaves").as_deref() == Some("1")
                        && field("num-other-sentinels").as_deref() == Some("2")
                })
            },
        );
        g
    }

    /// `host:port` of every sentinel.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisNode::addr).collect()
    }

    /// The port the first live sentinel names as the master's.
    pub fn master_port(&mut self) -> Option<u16> {
        let name = self.name.clone();
        self.sentinels.iter_mut().find_map(|s| {
            if !s.is_running() {
                return None;
            }
            s.cli(&["SENTINEL", "get-master-addr-by-name", &name])
                .lines()
                .nth(1)?
                .trim()
                .parse()
                .ok()
        })
    }
}

/// A Redis Cluster of three masters on loopback ports, all slots covered.
pub struct RedisCluster {
    pub nodes: Vec<RedisNode>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisNode> = (0..3)
            .map(|_| {
                RedisNode::start(&["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(n.addr());
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        wait_until("the cluster to be ok", Duration::from_secs(60), || {
            nodes.iter().all(|n| {
                info_field(&n.cli(&["CLUSTER", "INFO"]), "cluster_state").as_deref() == Some("ok")
            })
        });
        RedisCluster { nodes }
    }

    /// `host:port` of every node.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(RedisNode::addr).collect()
    }

    /// Run one command through `redis-cli -c` (following redirections).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args([
                "-c",
                "-h",
                "127.0.0.1",
                "-p",
                &self.nodes[0].port().to_string(),
            ])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// A Postgres cluster of its own, run by an unprivileged user when the tests
/// run as root (initdb refuses root).
pub struct Postgres {
    dir: tempfile::TempDir,
    as_user: Option<&'static str>,
}

/// The newest installed Postgres server binaries (`/usr/lib/postgresql/N/bin`).
fn pg_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Postgres is not installed (apt install postgresql)")
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("no Postgres server binaries").1
}

impl Postgres {
    pub fn start() -> Postgres {
        let dir = tempfile::tempdir().expect("temp dir");
        let as_user = is_root().then_some("postgres");
        if let Some(u) = as_user {
            let ok = Command::new("chown")
                .arg(format!("{u}:"))
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(ok.success(), "chown the Postgres dir to {u}");
        }
        let pg = Postgres { dir, as_user };
        let data = pg.dir.path().join("data");
        pg.run(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-U",
                "capstan",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        pg.start_server();
        pg
    }

    /// Start the server on the cluster (again), waiting until it answers.
    fn start_server(&self) {
        let data = self.dir.path().join("data");
        let opts = format!(
            "-k {} -c listen_addresses='' -c fsync=off -c max_connections=50",
            self.dir.path().display()
        );
        let log = self.dir.path().join("pg.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&data),
                "-l",
                path_str(&log),
                "-o",
                &opts,
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
    }

    /// Stop the server at once (`-m immediate`: like a crash, every
    /// connection cut), keeping its data.
    pub fn stop(&self) {
        let data = self.dir.path().join("data");
        self.run(
            "pg_ctl",
            &["-D", path_str(&data), "-m", "immediate", "-w", "stop"],
        );
    }

    /// Start it again after [`Postgres::stop`], on the same data.
    pub fn restart(&self) {
        self.start_server();
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = pg_bin().join(tool);
        let mut cmd = match self.as_user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("run {tool}: {e} (apt install postgresql)"));
        assert!(
            out.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A URL for database `postgres` as superuser `capstan`, over the socket.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// Create database `name` and return its URL.
    pub fn create_database(&self, name: &str) -> String {
        self.run(
            "createdb",
            &["-h", path_str(self.dir.path()), "-U", "capstan", name],
        );
        self.url_for(name)
    }

    /// Create database `name` whose default collation is ICU's `en-US`
    /// (linguistic: `a` before `B`), and return its URL. Schemas that
    /// promise byte order must then ask for it themselves.
    pub fn create_database_icu(&self, name: &str) -> String {
        self.run(
            "createdb",
            &[
                "-h",
                path_str(self.dir.path()),
                "-U",
                "capstan",
                "-T",
                "template0",
                "--locale-provider=icu",
                "--icu-locale=en-US",
                name,
            ],
        );
        self.url_for(name)
    }

    fn url_for(&self, db: &str) -> String {
        format!(
            "postgres://capstan@localhost/{db}?host={}",
            self.dir.path().display()
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let exe = pg_bin().join("pg_ctl");
        let mut cmd = match self.as_user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let _ = cmd
            .args(["-D", path_str(&data), "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// An OpenLDAP `slapd` with one database, seeded from LDIF before it starts.
pub struct Slapd {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Slapd {
    /// Start slapd for `suffix` (e.g. `dc=example,dc=org`) with root
    /// `cn=admin,<suffix>` / `root_password`, loaded with `ldif` (the suffix
    /// entry included).
    pub fn start(suffix: &str, root_password: &str, ldif: &str) -> Slapd {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("db");
        std::fs::create_dir_all(&db).expect("db dir");
        let conf = dir.path().join("slapd.conf");
        let schema = "/etc/ldap/schema";
        std::fs::write(
            &conf,
            format!(
                "include {schema}/core.schema\ninclude {schema}/cosine.schema\n\
                 include {schema}/nis.schema\ninclude {schema}/inetorgperson.schema\n\
                 modulepath /usr/lib/ldap\nmoduleload back_mdb\n\
                 pidfile {pid}\n\
                 database mdb\nmaxsize 10485760\nsuffix \"{suffix}\"\n\
                 rootdn \"cn=admin,{suffix}\"\nrootpw {root_password}\ndirectory {db}\n\
                 access to attrs=userPassword by anonymous auth by * none\n\
                 access to * by * read\n",
                pid = dir.path().join("slapd.pid").display(),
                db = db.display(),
            ),
        )
        .expect("slapd.conf");
        let seed = dir.path().join("seed.ldif");
        std::fs::write(&seed, ldif).expect("seed ldif");
        let out = Command::new("slapadd")
            .arg("-f")
            .arg(&conf)
            .arg("-l")
            .arg(&seed)
            .output()
            .expect("slapadd (apt install slapd)");
        assert!(
            out.status.success(),
            "slapadd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let child = Command::new("slapd")
            .arg("-f")
            .arg(&conf)
            .args(["-h", &format!("ldap://127.0.0.1:{port}/"), "-d", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn slapd (apt install slapd)");
        let s = Slapd {
            child: Some(child),
            _dir: dir,
            port,
        };
        let deadline = Instant::now() + READY_LIMIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "slapd did not become ready");
            std::thread::sleep(Duration::from_millis(10));
        }
        s
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stop the server (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Access key of every [`S3Server`].
pub const S3_ACCESS_KEY: &str = "capstan-test";
/// Secret key of every [`S3Server`].
pub const S3_SECRET_KEY: &str = "capstan-test-secret";

/// An S3-compatible server of its own: `s3s-fs`, which keeps each bucket as
/// a directory under a temp dir, on a loopback port, with path-style
/// addressing and SigV4 checked against [`S3_ACCESS_KEY`] and
/// [`S3_SECRET_KEY`].
pub struct S3Server {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

/// `s3s-fs` on the PATH, or where `cargo install` puts it.
fn s3s_fs() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let installed = home.join(".cargo/bin/s3s-fs");
    if installed.exists() {
        installed
    } else {
        PathBuf::from("s3s-fs")
    }
}

impl S3Server {
    /// Start the server with one empty bucket, `bucket`.
    pub fn start(bucket: &str) -> S3Server {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join(bucket)).expect("bucket dir");
        // A port is picked by binding it and letting go; should another
        // process take it in between, the server exits and another is tried.
        for _ in 0..10 {
            let port = free_port();
            let mut child = Command::new(s3s_fs())
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn s3s-fs (scripts/setup.sh installs it)");
            let deadline = Instant::now() + READY_LIMIT;
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return S3Server {
                        child: Some(child),
                        dir,
                        port,
                    };
                }
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                assert!(Instant::now() < deadline, "s3s-fs did not become ready");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("s3s-fs did not start on any of 10 ports");
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Another empty bucket.
    pub fn create_bucket(&self, name: &str) {
        std::fs::create_dir(self.dir.path().join(name)).expect("bucket dir");
    }

    /// The file holding object `key` of `bucket`.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.dir.path().join(bucket).join(key)
    }

    /// Stop the server at once (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start the server again (after [`S3Server::kill`]) on the same port
    /// and the same data, and wait until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn s3s-fs");
        self.child = Some(child);
        wait_until("s3s-fs to answer again", READY_LIMIT, || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_starts_answers_and_stops() {
        let mut r = Redis::start();
        assert_eq!(r.cli(&["SET", "k", "v"]), "OK");
        assert_eq!(r.cli(&["GET", "k"]), "v");
        r.kill();
        assert!(!r.answers_ping());
    }

    #[test]
    fn a_sentinel_group_fails_over_to_its_replica() {
        let mut g = RedisSentinelGroup::start("t");
        assert_eq!(g.master.cli(&["SET", "k", "v"]), "OK");
        assert_eq!(g.master_port(), Some(g.master.port()));
        // Replication is asynchronous: the replica has it before the kill.
        wait_until("the replica to have k", READY_LIMIT, || {
            g.replica.cli(&["GET", "k"]) == "v"
        });
        g.master.kill();
        let replica = g.replica.port();
        wait_until("the failover", Duration::from_secs(60), || {
            g.master_port() == Some(replica)
        });
        wait_until(
            "the replica to become master",
            Duration::from_secs(30),
            || {
                info_field(&g.replica.cli(&["INFO", "replication"]), "role").as_deref()
                    == Some("master")
            },
        );
        assert_eq!(g.replica.cli(&["GET", "k"]), "v");
    }

    #[test]
    fn a_cluster_covers_every_slot() {
        let c = RedisCluster::start();
        for k in ["a", "b", "c", "d"] {
            assert_eq!(c.cli(&["SET", k, "1"]), "OK");
        }
        let keys: usize = c
            .nodes
            .iter()
            .map(|n| n.cli(&["DBSIZE"]).parse::<usize>().unwrap())
            .sum();
        assert_eq!(keys, 4);
    }

    #[test]
    fn slapd_starts_with_its_seed() {
        let ldif = "dn: dc=example,dc=org\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n";
        let mut s = Slapd::start("dc=example,dc=org", "secret", ldif);
        let out = Command::new("ldapsearch")
            .args(["-x", "-H", &format!("ldap://127.0.0.1:{}", s.port())])
            .args(["-b", "dc=example,dc=org", "-s", "base", "o"])
            .output()
            .expect("ldapsearch (apt install ldap-utils)");
        assert!(String::from_utf8_lossy(&out.stdout).contains("o: Example"));
        s.kill();
        assert!(std::net::TcpStream::connect(("127.0.0.1", s.port())).is_err());
    }

    #[test]
    fn postgres_starts_and_creates_databases() {
        let pg = Postgres::start();
        let url = pg.create_database("t1");
        assert!(
            url.starts_with("postgres://capstan@localhost/t1?host=/"),
            "{url}"
        );
        assert!(pg.dir.path().join("data/postmaster.pid").exists());
    }
}
