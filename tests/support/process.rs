//! The spanlens binary as a child process: a config built from the embedded default profile
//! (every listener on 127.0.0.1:0, then the test's own settings) or a config file of the
//! test's, started with its stderr kept line by line, its addresses read from its log, its
//! memory read from /proc/PID/status, scraped over plain HTTP, stopped with SIGTERM, or killed
//! when dropped. Also `spanlens check-config` and the scratch directories the tests write into.

use super::Exposition;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use yaml_serde::{Mapping, Value};

/// How long the binary may take to start listening (a loaded 2-core machine, debug build).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The spanlens binary, with no SPANLENS_* variable of the caller's environment that would
/// change which config it reads or where it listens.
pub fn spanlens_command() -> Command {
    without_spanlens_env(Command::new(env!("CARGO_BIN_EXE_spanlens")))
}

/// `command` without the SPANLENS_* variables that would change which config the binary
/// reads or where it listens.
fn without_spanlens_env(mut command: Command) -> Command {
    for name in [
        "SPANLENS_CONFIG",
        "SPANLENS_GRPC_ENDPOINT",
        "SPANLENS_HTTP_ENDPOINT",
        "SPANLENS_METRICS_ENDPOINT",
    ] {
        command.env_remove(name);
    }
    command
}

/// Runs `command`; panics when it cannot be started.
pub fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

/// stdout then stderr, as text.
pub fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `command`, panicking with its output unless it succeeds; stdout and stderr.
pub fn run_ok(command: &mut Command) -> String {
    let output = run(command);
    let text = output_text(&output);
    assert!(output.status.success(), "{command:?} failed:\n{text}");
    text
}

/// `spanlens check-config FILE` with the environment plus `env`.
pub fn check_config(file: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = spanlens_command();
    command.arg("check-config").arg(file);
    command.envs(env.iter().copied());
    run(&mut command)
}

// ---------------------------------------------------------------------------------------------
// Scratch directories
// ---------------------------------------------------------------------------------------------

/// A fresh directory under the target's tmp dir, removed when dropped, or kept (its path
/// printed) when the test is failing.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "spanlens-{what}-{}-{}-{nanos:08x}",
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

    /// The subdirectory `name`, created.
    pub fn dir(&self, name: &str) -> PathBuf {
        let path = self.path.join(name);
        std::fs::create_dir_all(&path).expect("create a temp subdirectory");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

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
        self.start_as(dir, |config| {
            let mut command = spanlens_command();
            command.arg("--config").arg(config);
            command
        })
    }

    /// Starts the binary on this config under bash's `ulimit` with `limit` (`-n 1024`: at
    /// most 1,024 open files).
    pub fn start_under_ulimit(self, limit: &str) -> Spanlens {
        self.start_as(TempDir::new("run"), |config| under_ulimit(config, limit))
    }

    /// Writes the config into `dir` and starts the command `command` makes of its path.
    fn start_as(self, dir: TempDir, command: impl FnOnce(&Path) -> Command) -> Spanlens {
        let path = dir.write("spanlens.yaml", self.yaml());
        let mut command = command(&path);
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut running = Spanlens::spawn(&mut command);
        running.dir = Some(dir);
        running
    }

    pub fn start(self) -> Spanlens {
        self.start_in(TempDir::new("run"))
    }
}

/// The binary on `config` under bash's `ulimit` with `limit` (SIGXFSZ ignored, which exec
/// keeps, so that `-f` makes writes fail rather than kill).
fn under_ulimit(config: &Path, limit: &str) -> Command {
    let mut command = without_spanlens_env(Command::new("bash"));
    command
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit {limit}; exec \"$0\" --config \"$1\""
        ))
        .arg(env!("CARGO_BIN_EXE_spanlens"))
        .arg(config);
    command
}

/// The default profile text with its three listeners on 127.0.0.1:0 (for a config file that
/// starts from the profile's text rather than from [`Setup`]).
/// Only whole addresses are replaced: a forwarding endpoint on an ephemeral port such as
/// 43173 keeps its port.
pub fn on_ephemeral_ports(profile: &str) -> String {
    let mut text = profile.to_string();
    for listener in ["127.0.0.1:4317", "127.0.0.1:4318", "127.0.0.1:9464"] {
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(at) = rest.find(listener) {
            let after = &rest[at + listener.len()..];
            let whole = !after.starts_with(|c: char| c.is_ascii_digit());
            out.push_str(&rest[..at]);
            out.push_str(if whole { "127.0.0.1:0" } else { listener });
            rest = after;
        }
        out.push_str(rest);
        text = out;
    }
    text
}

// ---------------------------------------------------------------------------------------------
// Standard error, line by line
// ---------------------------------------------------------------------------------------------

/// The lines read so far and whether the stream has ended, with the condition variable that
/// signals each change.
type Shared = (Mutex<(Vec<String>, bool)>, Condvar);

/// A child's stderr, read line by line on a thread: every line so far, and whether the stream
/// has ended (the process exited, and every line it wrote is in).
#[derive(Clone, Default)]
pub struct Lines(Arc<Shared>);

impl Lines {
    /// Takes the piped stderr of `child` and starts reading it.
    pub fn collect(child: &mut Child) -> Lines {
        use std::io::BufRead;
        let stderr = child.stderr.take().expect("stderr is piped");
        let lines = Lines::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            let (state, changed) = &*sink.0;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                state.lock().unwrap().0.push(line);
                changed.notify_all();
            }
            state.lock().unwrap().1 = true;
            changed.notify_all();
        });
        lines
    }

    pub fn all(&self) -> Vec<String> {
        self.0.0.lock().unwrap().0.clone()
    }

    /// The first line so far that contains `needle`.
    pub fn find(&self, needle: &str) -> Option<String> {
        let state = self.0.0.lock().unwrap();
        state.0.iter().find(|l| l.contains(needle)).cloned()
    }

    /// Waits for a line containing `needle` until `deadline`. Err(true) when the stream ended
    /// without one, Err(false) when the deadline passed.
    pub fn wait_for(&self, needle: &str, deadline: Instant) -> Result<String, bool> {
        let (state, changed) = &*self.0;
        let mut state = state.lock().unwrap();
        loop {
            if let Some(line) = state.0.iter().find(|l| l.contains(needle)) {
                return Ok(line.clone());
            }
            if state.1 {
                return Err(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(false);
            }
            state = changed.wait_timeout(state, deadline - now).unwrap().0;
        }
    }

    /// Waits until the stream ends; false when `deadline` passes first.
    pub fn wait_end(&self, deadline: Instant) -> bool {
        let (state, changed) = &*self.0;
        let mut state = state.lock().unwrap();
        while !state.1 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = changed.wait_timeout(state, deadline - now).unwrap().0;
        }
        true
    }
}

// ---------------------------------------------------------------------------------------------
// The running binary
// ---------------------------------------------------------------------------------------------

/// The running binary.
pub struct Spanlens {
    child: Child,
    lines: Lines,
    pub grpc: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub metrics: SocketAddr,
    /// Where [`Setup`] wrote the config, removed when the process is dropped.
    dir: Option<TempDir>,
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

/// Starts `command` with its stderr collected line by line.
fn spawn_reading_stderr(command: &mut Command) -> (Child, Lines) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the spanlens binary starts");
    let lines = Lines::collect(&mut child);
    (child, lines)
}
impl Spanlens {
    /// The binary on a config file (RUST_LOG=info).
    pub fn start(config: &Path) -> Spanlens {
        let mut command = spanlens_command();
        command.arg("--config").arg(config);
        Spanlens::spawn(&mut command)
    }

    /// The binary with files capped at `kib` KiB (RLIMIT_FSIZE, through bash's ulimit):
    /// writes past it fail as on a full disk (EFBIG; SIGXFSZ is ignored, which exec keeps).
    pub fn start_with_file_limit(config: &Path, kib: u64) -> Spanlens {
        Spanlens::spawn(&mut under_ulimit(config, &format!("-f {kib}")))
    }

    /// Starts `command` (the binary, its arguments and environment; RUST_LOG=info unless
    /// the command sets it) and waits for `spanlens started`; then reads the listeners'
    /// addresses from the log.
    pub fn spawn(command: &mut Command) -> Spanlens {
        if !command.get_envs().any(|(k, _)| k == "RUST_LOG") {
            command.env("RUST_LOG", "info");
        }
        let (child, lines) = spawn_reading_stderr(command);
        let mut running = Spanlens {
            child,
            lines,
            grpc: None,
            http: None,
            metrics: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir: None,
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

    /// Starts `command` expecting it to exit before it serves: its exit status and stderr,
    /// and how long it ran. Panics when it is still running after `timeout`.
    pub fn start_refused(
        command: &mut Command,
        timeout: Duration,
    ) -> (ExitStatus, String, Duration) {
        let started = Instant::now();
        let (mut child, lines) = spawn_reading_stderr(command);
        let ended = lines.wait_end(started + timeout);
        if !ended {
            let _ = child.kill();
        }
        let status = child.wait().expect("wait");
        let text = lines.all().join("\n");
        assert!(ended, "still running after {timeout:?}; it said:\n{text}");
        (status, text, started.elapsed())
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
        self.lines.all()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr_lines().join("\n")
    }

    /// The first stderr line so far that contains `needle`.
    pub fn find_line(&self, needle: &str) -> Option<String> {
        self.lines.find(needle)
    }

    /// Waits for a stderr line containing `needle`; panics (with the log) when it does not
    /// come within `timeout` or the process exits first.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        match self.lines.wait_for(needle, Instant::now() + timeout) {
            Ok(line) => line,
            Err(ended) => {
                if ended {
                    // stderr is closed: the process has exited.
                    self.exited = Some(self.child.wait().expect("wait"));
                }
                panic!(
                    "no `{needle}` on spanlens's stderr within {timeout:?} (exit: {:?}); it \
                     said:\n{}",
                    self.exited,
                    self.stderr_text()
                )
            }
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

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.exited = Some(self.child.wait().expect("reaped"));
    }

    /// Waits for the process to exit, at most `timeout`, with every line it wrote read.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        // stderr ends when the process exits (nothing else holds it).
        let ended = self.lines.wait_end(Instant::now() + timeout);
        if let Some(status) = self.exited {
            return status;
        }
        if !ended {
            panic!(
                "spanlens did not exit within {timeout:?}; it said:\n{}",
                self.stderr_text()
            );
        }
        let status = self.child.wait().expect("wait");
        self.exited = Some(status);
        status
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
