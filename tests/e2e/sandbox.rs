//! `Sandbox`: a Capstan started for one test — the real `capstan` binary in
//! its own temp dir, on a port the OS picks, waited for through its
//! announcement line and `/v2/`, killed and removed on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_capstan");

/// One running `capstan` process.
pub struct Process {
    child: Child,
    /// What it announced: `http://127.0.0.1:PORT` (gateway) or the gRPC URL.
    pub url: String,
    pub log: PathBuf,
}

impl Process {
    /// Start `capstan serve` with `args`; stderr goes to `log`. Returns once
    /// the process printed its address line.
    pub fn spawn(args: &[&str], log: &Path) -> Process {
        Self::spawn_env(args, log, &[])
    }

    /// A gRPC role of a distributed deployment: `capstan serve -c config
    /// --role role --listen listen`, logging to `log`, with `env` set.
    pub fn role(
        config: &Path,
        role: &str,
        listen: &str,
        log: &Path,
        env: &[(&str, &str)],
    ) -> Process {
        let config = config.to_str().unwrap();
        let args = ["-c", config, "--role", role, "--listen", listen];
        Self::spawn_env(&args, log, env)
    }

    /// [`Process::spawn`] with `env` set for the process.
    pub fn spawn_env(args: &[&str], log: &Path, env: &[(&str, &str)]) -> Process {
        Self::spawn_command(Command::new(BIN), args, log, env)
    }

    /// [`Process::spawn`] in a mount namespace of its own whose
    /// `/etc/hosts` is `hosts` (bind-mounted: rewrite it in place and the
    /// process resolves names by the new text). Needs root, as CI has.
    pub fn spawn_with_hosts(args: &[&str], log: &Path, hosts: &Path) -> Process {
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
            hosts.to_str().unwrap(),
            BIN,
        ]);
        Self::spawn_command(cmd, args, log, &[])
    }

    /// Start `cmd serve args…` (`cmd` runs the binary).
    fn spawn_command(mut cmd: Command, args: &[&str], log: &Path, env: &[(&str, &str)]) -> Process {
        let log_file = std::fs::File::create(log).expect("log file");
        let mut child = cmd
            .arg("serve")
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("spawn capstan");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read announcement");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            .unwrap_or_else(|| {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!("capstan did not announce an address: {line:?}\n{log}")
            })
            .to_string();
        Process {
            child,
            url,
            log: log.to_path_buf(),
        }
    }

    /// Whether the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The first log line matching `pred`, waiting up to 5 s for it (an
    /// access-log line is written just after its answer is sent).
    pub fn wait_log_line(&self, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(l) = self.log_text().lines().find(|l| pred(l)) {
                return Some(l.to_string());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ask the process to stop (SIGTERM) and wait up to `limit` for it to
    /// exit; its exit status, or `None` if it is still running.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -TERM {pid}");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("--- log of {} (last lines) ---", self.url);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// Poll `url` until it answers (200, or 401 when it wants credentials),
/// for at most 60 s.
pub async fn wait_ready(client: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(url).send().await
            && (r.status() == 200 || r.status() == 401)
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url} not ready in 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Poll a Capstan gateway's `/readyz` (at `base`) until it is 200: every
/// role the gateway needs has a serving replica. A role can listen before
/// it serves (svc-meta on Postgres opens its database after it binds), so
/// "the port answers" is not enough. At most 60 s.
pub async fn wait_readyz(client: &reqwest::Client, base: &str) {
    let url = format!("{base}/readyz");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = match client.get(&url).send().await {
            Ok(r) if r.status() == 200 => return,
            Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => e.to_string(),
        };
        assert!(Instant::now() < deadline, "{url} not ready in 60 s: {last}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A whole registry (every role in one process) for one test.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub proc: Process,
    pub client: reqwest::Client,
}

impl Sandbox {
    /// Embedded mode on defaults plus `extra` merged into the config.
    pub async fn start_with(extra: serde_json::Value) -> Sandbox {
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        Self::start_with_client(extra, client).await
    }

    /// Like [`Sandbox::start_with`], with `client` for requests (and for
    /// the readiness check).
    pub async fn start_with_client(extra: serde_json::Value, client: reqwest::Client) -> Sandbox {
        Self::start_inner(extra, client, true).await
    }

    /// Like [`Sandbox::start_with`], returning once the gateway answers,
    /// ready or not (a role it needs may be waiting for its storage).
    pub async fn start_unready(extra: serde_json::Value) -> Sandbox {
        Self::start_inner(extra, reqwest::Client::new(), false).await
    }

    async fn start_inner(
        extra: serde_json::Value,
        client: reqwest::Client,
        ready: bool,
    ) -> Sandbox {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = serde_json::json!({
            "storage": {"rootDirectory": dir.path().join("data")},
            "http": {"address": "127.0.0.1", "port": "0"},
            "log": {"level": "info"}
        });
        merge(&mut cfg, extra);
        let cfg_path = dir.path().join("config.json");
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        let proc = Process::spawn(
            &["-c", cfg_path.to_str().unwrap()],
            &dir.path().join("capstan.log"),
        );
        if ready {
            wait_readyz(&client, &proc.url).await;
        } else {
            wait_ready(&client, &format!("{}/v2/", proc.url)).await;
        }
        Sandbox { dir, proc, client }
    }

    /// Send `user`/`password` as Basic credentials on every request of
    /// `self.client` from now on.
    pub fn login(&mut self, user: &str, password: &str) {
        self.client = basic_client(user, password);
    }

    /// Send no credentials from now on.
    pub fn logout(&mut self) {
        self.client = basic_client("", "");
    }

    pub async fn start() -> Sandbox {
        Self::start_with(serde_json::json!({})).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.proc.url)
    }

    /// `GET` a path of the registry.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    /// `HEAD` a path of the registry.
    pub async fn head(&self, path: &str) -> reqwest::Response {
        self.client.head(self.url(path)).send().await.expect("HEAD")
    }

    /// `DELETE` a path of the registry.
    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.client
            .delete(self.url(path))
            .send()
            .await
            .expect("DELETE")
    }

    /// `POST` to a path of the registry, without a body.
    pub async fn post(&self, path: &str) -> reqwest::Response {
        self.client.post(self.url(path)).send().await.expect("POST")
    }

    /// `host:port` of the gateway (for clients that want a registry name).
    pub fn host(&self) -> String {
        self.proc
            .url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_string()
    }

    /// Kill the process (SIGKILL, no shutdown) and start it again on the
    /// same configuration and data.
    pub async fn crash_and_restart(&mut self) {
        self.proc.kill();
        self.start_again().await;
    }

    /// Start the registry again on the same configuration and data, after
    /// `self.proc.kill()`.
    pub async fn start_again(&mut self) {
        let cfg = self.dir.path().join("config.json");
        self.proc = Process::spawn(
            &["-c", cfg.to_str().unwrap()],
            &self.dir.path().join("capstan-restarted.log"),
        );
        wait_readyz(&self.client, &self.proc.url).await;
    }
}

/// A client sending `user:password` as Basic credentials (none when both
/// are empty).
pub fn basic_client(user: &str, password: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if !(user.is_empty() && password.is_empty()) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut v: reqwest::header::HeaderValue = format!("Basic {b64}").parse().unwrap();
        v.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .default_headers(headers)
        .build()
        .unwrap()
}

pub fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
    match (base, extra) {
        (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}
