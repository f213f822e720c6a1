//! The spanlens binary under test: a config built from the embedded default profile (every
//! listener on 127.0.0.1:0, then the test's own settings), started as a child process whose
//! stderr is kept line by line, its addresses read from its log, its memory read from
//! /proc/PID/status, scraped over plain HTTP, stopped with SIGTERM or killed when dropped.
#![allow(dead_code)]

use crate::support::Exposition;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use yaml_serde::{Mapping, Value};

/// How long the binary may take to start listening (a loaded 2-core machine, debug build).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One pipeline of the default profile, built once (it compiles the profile's regexes): the
/// oracle for what the binary, which runs that profile, must answer.
pub fn default_pipeline() -> &'static spanlens::pipeline::Pipeline {
    static PIPELINE: std::sync::OnceLock<spanlens::pipeline::Pipeline> = std::sync::OnceLock::new();
    PIPELINE.get_or_init(|| {
        let config = spanlens::config::Config::default_profile();
        spanlens::pipeline::Pipeline::new(&config).expect("the default profile builds")
    })
}

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "spanlens-hardening-{}-{}-{what}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `name` in the directory and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path.join(name);
        std::fs::write(&path, contents).expect("write a temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A config for the binary: the default profile with every listener on 127.0.0.1:0, edited
/// field by field, plus the environment the binary runs with.
pub struct Setup {
    doc: Value,
    env: Vec<(String, String)>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup::new()
    }
}

impl Setup {
    pub fn new() -> Setup {
        let doc: Value = yaml_serde::from_str(spanlens::config::DEFAULT_PROFILE)
            .expect("the default profile is YAML");
        Setup {
            doc,
            env: Vec::new(),
        }
        .set("receivers.grpc.endpoint", "127.0.0.1:0")
        .set("receivers.http.endpoint", "127.0.0.1:0")
        .set("metrics.endpoint", "127.0.0.1:0")
    }

    /// Sets the field at a dotted path (maps on the way are created) to `yaml`, parsed as
    /// YAML: `set("receivers.max_pending_requests", "2")`, `set("x.tls", "{cert_file: a}")`.
    pub fn set(mut self, path: &str, yaml: &str) -> Setup {
        let value: Value = yaml_serde::from_str(yaml)
            .unwrap_or_else(|e| panic!("test config value for {path} is not YAML: {e}"));
        let mut node = &mut self.doc;
        let keys: Vec<&str> = path.split('.').collect();
        for (i, key) in keys.iter().enumerate() {
            if !node.is_mapping() {
                *node = Value::Mapping(Mapping::new());
            }
            let map = node.as_mapping_mut().expect("a mapping");
            let key = Value::String(key.to_string());
            if i == keys.len() - 1 {
                map.insert(key, value);
                break;
            }
            node = map.entry(key).or_insert(Value::Mapping(Mapping::new()));
        }
        self
    }

    /// Sets a string field (quoted for YAML), e.g. a file path.
    pub fn set_str(self, path: &str, text: &str) -> Setup {
        let quoted = serde_json::to_string(text).unwrap();
        self.set(path, &quoted)
    }

    pub fn env(mut self, name: &str, value: &str) -> Setup {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    pub fn yaml(&self) -> String {
        yaml_serde::to_string(&self.doc).expect("the test config serializes")
    }

    /// Writes the config into `dir` and starts the binary on it.
    pub fn start_in(self, dir: TempDir) -> Spanlens {
        let path = dir.write("spanlens.yaml", self.yaml());
        let mut command = Command::new(env!("CARGO_BIN_EXE_spanlens"));
        command.arg("--config").arg(&path);
        command.env_remove("SPANLENS_CONFIG");
        if !self.env.iter().any(|(k, _)| k == "RUST_LOG") {
            command.env("RUST_LOG", "info");
        }
        for (k, v) in &self.env {
            command.env(k, v);
        }
        Spanlens::spawn(command, dir)
    }

    pub fn start(self) -> Spanlens {
        self.start_in(TempDir::new("run"))
    }
}

/// The running binary.
pub struct Spanlens {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    pub grpc: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub metrics: SocketAddr,
    pub dir: TempDir,
    exited: Option<ExitStatus>,
}

/// The address after `local=` in a log line.
fn local_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split("local=").nth(1)?;
    let token: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ',' && *c != '"')
        .collect();
    token.parse().ok()
}

impl Spanlens {
    fn spawn(mut command: Command, dir: TempDir) -> Spanlens {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the spanlens binary starts");
        let lines = crate::support::collect_stderr(&mut child);
        let mut running = Spanlens {
            child,
            lines,
            grpc: None,
            http: None,
            metrics: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            exited: None,
        };
        running.wait_for("spanlens started", START_TIMEOUT);
        let mut metrics = None;
        for line in running.stderr_lines() {
            let Some(addr) = local_addr(&line) else {
                continue;
            };
            if line.contains("gRPC") {
                running.grpc = Some(addr);
            } else if line.contains("HTTP receiver") {
                running.http = Some(addr);
            } else if line.contains("metrics") {
                metrics = Some(addr);
            }
        }
        running.metrics = metrics.unwrap_or_else(|| {
            panic!(
                "no metrics address in the log:\n{}",
                running.stderr_lines().join("\n")
            )
        });
        running
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn grpc(&self) -> SocketAddr {
        self.grpc.expect("the gRPC receiver is listening")
    }

    pub fn http(&self) -> SocketAddr {
        self.http.expect("the HTTP receiver is listening")
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr_lines().join("\n")
    }

    /// Waits for a stderr line containing `needle`; panics (with the log) when it does not
    /// come within `timeout` or the process exits first.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return line.clone();
            }
            if self.exited.is_none()
                && let Ok(Some(status)) = self.child.try_wait()
            {
                self.exited = Some(status);
                // Give the reader thread a moment to take the last lines.
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            if Instant::now() > deadline || self.exited.is_some() {
                panic!(
                    "no `{needle}` on spanlens's stderr (exit: {:?}); it said:\n{}",
                    self.exited,
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                self.exited = Some(status);
                false
            }
            Err(_) => false,
        }
    }

    /// Sends SIGTERM (to this child, by its pid).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.exited {
            return status;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(status);
                std::thread::sleep(Duration::from_millis(200));
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "spanlens did not exit within {timeout:?}; it said:\n{}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.sigterm();
        self.wait_exit(Duration::from_secs(30))
    }

    /// Peak resident set (VmHWM), in bytes.
    pub fn vm_hwm(&self) -> u64 {
        proc_status(self.pid(), "VmHWM")
    }

    /// Resident set now (VmRSS), in bytes.
    pub fn vm_rss(&self) -> u64 {
        proc_status(self.pid(), "VmRSS")
    }

    /// CPU time (user + system) the process has used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("/proc/PID/stat");
        // Fields after the command name (which may hold spaces) in parentheses.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // USER_HZ is 100 on Linux.
        Duration::from_millis(ticks * 10)
    }

    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics)
    }

    /// GET /metrics over plain HTTP (no auth); the body.
    pub async fn metrics_text(&self) -> String {
        let response = tokio::time::timeout(
            Duration::from_secs(30),
            reqwest::Client::new().get(self.metrics_url()).send(),
        )
        .await
        .expect("/metrics answers within 30 s")
        .expect("/metrics answers");
        assert_eq!(response.status(), 200, "GET /metrics");
        response.text().await.expect("the /metrics body")
    }

    pub async fn scrape(&self) -> Exposition {
        Exposition::parse(&self.metrics_text().await)
    }
}

impl Drop for Spanlens {
    fn drop(&mut self) {
        if self.exited.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `kB` field of /proc/PID/status, in bytes.
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unreadable {line}"));
    kb * 1024
}

pub const MIB: u64 = 1024 * 1024;

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// Polls `check` every `every` until it returns Some or `timeout` passes.
pub async fn poll<T, F, Fut>(timeout: Duration, every: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = check().await {
            return Some(found);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}
