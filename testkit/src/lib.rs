//! Real servers for Capstan's tests: Redis, Postgres and OpenLDAP's slapd,
//! each started in its own temporary directory, waited for until it answers,
//! and stopped and removed on drop. Redis and Postgres listen only on a Unix
//! socket there (no port to collide with a parallel test or with a server
//! already on the machine); slapd listens on a loopback port of its own.
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
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (apt install redis-server)");
        let r = Redis {
            child: Some(child),
            dir,
        };
        let deadline = Instant::now() + READY_LIMIT;
        while !r.answers_ping() {
            assert!(Instant::now() < deadline, "redis did not become ready");
            std::thread::sleep(Duration::from_millis(10));
        }
        r
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// `redis+unix:///…/redis.sock`.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut s) = UnixStream::connect(self.socket()) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
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
        let opts = format!(
            "-k {} -c listen_addresses='' -c fsync=off -c max_connections=50",
            pg.dir.path().display()
        );
        let log = pg.dir.path().join("pg.log");
        pg.run(
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
        pg
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
