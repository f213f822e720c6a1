//! The real alerting chain for end-to-end tests: Debian's Prometheus (`/usr/bin/prometheus`)
//! scraping a spanlens target every second and evaluating a rule file every second, sending
//! to Debian's Alertmanager (`/usr/bin/prometheus-alertmanager`), which routes one severity
//! ([`ChainSpec::paged`]) to a [`Webhook`] served by the test and everything else nowhere.
//!
//! [`Chain::start`] writes both configs into a scratch directory and spawns the daemons
//! (extra Prometheus flags, such as `--enable-feature=native-histograms`, are passed through);
//! [`Chain::wait_up`] waits until both are ready, the target is scraped and Alertmanager is
//! known. [`Chain::until`] polls with a deadline; on a timeout, a failed [`Chain::check`] or a
//! daemon that exits, the test fails with what Prometheus and the webhook saw, and the
//! daemons' logs are printed as they are dropped. Children are killed however the test ends.

use super::process::TempDir;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::Value;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const PROMETHEUS: &str = "/usr/bin/prometheus";
pub const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";

/// How often [`Chain::until`] probes.
const POLL: Duration = Duration::from_millis(100);

/// Fails clearly when Debian's Prometheus or Alertmanager is missing.
pub fn require_daemons() {
    for binary in [PROMETHEUS, ALERTMANAGER] {
        assert!(
            Path::new(binary).is_file(),
            "{binary} is missing: this test runs the real Prometheus and Alertmanager from \
             Debian's `prometheus` and `prometheus-alertmanager` packages (scripts/test.sh \
             installs them)"
        );
    }
}

/// What the chain evaluates and scrapes, and what it shows when a test fails.
pub struct ChainSpec<'a> {
    /// The rule file's text (as `spanlens rules` writes it).
    pub rules: String,
    /// The scrape job's name (`alerting.job`).
    pub job: &'a str,
    /// The job's targets (`host:port`): spanlens's metrics endpoint, and any other.
    pub targets: Vec<String>,
    /// Extra Prometheus command-line flags.
    pub prometheus_flags: &'a [&'a str],
    /// The `severity` Alertmanager sends to the webhook.
    pub paged: &'a str,
    /// Alerts whose rules are printed on failure.
    pub alerts: &'a [&'a str],
    /// Instant queries whose results are printed on failure.
    pub diagnostics: &'a [&'a str],
}

pub struct Chain {
    pub http: reqwest::Client,
    pub prometheus: String,
    pub alertmanager: String,
    pub webhook: Webhook,
    pub job: String,
    daemons: Vec<Daemon>,
    rules: String,
    alerts: Vec<String>,
    diagnostics: Vec<String>,
}

impl Chain {
    /// A chain with no rules whose Prometheus scrapes `targets` as job `job` (with `flags`),
    /// up and scraping when it returns (30 s at most).
    pub async fn scraping(
        scratch: &TempDir,
        job: &str,
        targets: Vec<String>,
        flags: &[&str],
    ) -> Chain {
        let chain = Chain::start(
            scratch,
            ChainSpec {
                rules: "groups: []\n".to_string(),
                job,
                targets,
                prometheus_flags: flags,
                paged: "page",
                alerts: &[],
                diagnostics: &[],
            },
        )
        .await;
        chain.wait_up(Duration::from_secs(30)).await;
        chain
    }

    /// Starts the webhook, Alertmanager and Prometheus; does not wait for them.
    pub async fn start(scratch: &TempDir, spec: ChainSpec<'_>) -> Chain {
        require_daemons();
        let webhook = Webhook::start().await;
        let rules_path = scratch.write("spanlens.rules.yml", &spec.rules);
        let am_port = free_port();
        let prom_port = free_port();
        let am_config = scratch.write(
            "alertmanager.yml",
            format!(
                r#"route:
  receiver: blackhole
  group_by: [alertname, service, handler_language]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
  routes:
    - matchers: ['severity="{paged}"']
      receiver: webhook
receivers:
  - name: blackhole
  - name: webhook
    webhook_configs:
      - url: http://{addr}/alerts
        send_resolved: true
"#,
                paged = spec.paged,
                addr = webhook.addr
            ),
        );
        let alertmanager = Daemon::spawn(
            "alertmanager",
            ALERTMANAGER,
            &[
                format!("--config.file={}", am_config.display()),
                format!(
                    "--storage.path={}",
                    scratch.dir("alertmanager-data").display()
                ),
                format!("--web.listen-address=127.0.0.1:{am_port}"),
                "--cluster.listen-address=".to_string(),
            ],
            &scratch.path().join("alertmanager.log"),
        );
        let prom_config = scratch.write(
            "prometheus.yml",
            format!(
                r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["127.0.0.1:{am_port}"]
scrape_configs:
  - job_name: {job}
    static_configs:
      - targets: {targets:?}
"#,
                rules = rules_path.display(),
                job = spec.job,
                targets = spec.targets,
            ),
        );
        let mut args = vec![
            format!("--config.file={}", prom_config.display()),
            format!(
                "--storage.tsdb.path={}",
                scratch.dir("prometheus-data").display()
            ),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
            "--rules.alert.resend-delay=1s".to_string(),
        ];
        args.extend(spec.prometheus_flags.iter().map(|f| f.to_string()));
        let prometheus = Daemon::spawn(
            "prometheus",
            PROMETHEUS,
            &args,
            &scratch.path().join("prometheus.log"),
        );
        Chain {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
            prometheus: format!("http://127.0.0.1:{prom_port}"),
            alertmanager: format!("http://127.0.0.1:{am_port}"),
            webhook,
            job: spec.job.to_string(),
            daemons: vec![alertmanager, prometheus],
            rules: spec.rules,
            alerts: spec.alerts.iter().map(|a| a.to_string()).collect(),
            diagnostics: spec.diagnostics.iter().map(|d| d.to_string()).collect(),
        }
    }

    /// Waits until both daemons are ready, the target is scraped and Prometheus knows the
    /// Alertmanager, all within `timeout`.
    pub async fn wait_up(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        self.until("Alertmanager /-/ready", left(), async || {
            self.get_ok(&format!("{}/-/ready", self.alertmanager)).await
        })
        .await;
        self.until("Prometheus /-/ready", left(), async || {
            self.get_ok(&format!("{}/-/ready", self.prometheus)).await
        })
        .await;
        let up = format!("up{{job=\"{}\"}} == 1", self.job);
        self.until("Prometheus to scrape spanlens", left(), async || {
            let up = self.query(&up).await?;
            (!up.is_empty()).then_some(())
        })
        .await;
        self.until("Prometheus to discover Alertmanager", left(), async || {
            let v = self.api("/api/v1/alertmanagers").await?;
            let active = v["data"]["activeAlertmanagers"].as_array()?;
            (!active.is_empty()).then_some(())
        })
        .await;
    }

    /// Every loaded rule (recording and alerting) of every group.
    pub async fn rules(&self) -> Option<Vec<Value>> {
        let v = self.api("/api/v1/rules").await?;
        Some(
            v["data"]["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect(),
        )
    }

    /// Waits for Prometheus to have loaded the alert rule `alert`, and returns it.
    pub async fn wait_for_rule(&self, alert: &str, timeout: Duration) -> Value {
        self.until(
            &format!("Prometheus to load the alert {alert}"),
            timeout,
            async || {
                self.rules()
                    .await?
                    .into_iter()
                    .find(|r| r["type"] == "alerting" && r["name"] == alert)
            },
        )
        .await
    }

    /// Fails unless every loaded rule evaluates without error.
    pub async fn check_rules_healthy(&self) {
        let unhealthy: Vec<Value> = self
            .rules()
            .await
            .expect("Prometheus answers")
            .into_iter()
            .filter(|r| r["health"] != "ok")
            .collect();
        self.check(
            unhealthy.is_empty(),
            "every generated rule evaluates without error",
            &Value::Array(unhealthy),
        )
        .await;
    }

    /// Polls `probe` until it yields, failing with diagnostics when `timeout` passes or a
    /// daemon exits.
    pub async fn until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl AsyncFnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = probe().await {
                return value;
            }
            for daemon in &self.daemons {
                if let Some(status) = daemon.exited() {
                    self.fail(&format!(
                        "{} exited ({status}) while waiting for {what}",
                        daemon.name
                    ))
                    .await;
                }
            }
            if Instant::now() >= deadline {
                self.fail(&format!("timed out after {timeout:?} waiting for {what}"))
                    .await;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub async fn check(&self, ok: bool, what: &str, evidence: &Value) {
        if !ok {
            self.fail(&format!("check failed: {what}\nevidence: {evidence:#}"))
                .await;
        }
    }

    /// Checks a delivered alert's annotations: summary, description and runbook_url each
    /// present and fully rendered (no template left, no missing value), runbook_url at
    /// `alert`'s section of the runbook at `runbook_base`. Returns the summary and description.
    pub async fn check_annotations(
        &self,
        alert: &Value,
        runbook_base: &str,
        name: &str,
    ) -> (String, String) {
        let text = |key: &str| {
            alert["annotations"][key]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        for key in ["summary", "description", "runbook_url"] {
            let value = text(key);
            self.check(
                !value.is_empty()
                    && !value.contains("{{")
                    && !value.contains("<no value>")
                    && !value.contains("%!"),
                &format!("annotation {key} present and fully rendered"),
                alert,
            )
            .await;
        }
        let runbook = format!("{runbook_base}#{}", name.to_ascii_lowercase());
        self.check(
            text("runbook_url") == runbook,
            "runbook_url points at the alert's runbook section",
            alert,
        )
        .await;
        (text("summary"), text("description"))
    }

    /// Panics with what Prometheus and the webhook saw (the daemons' logs follow, printed
    /// when they are dropped).
    pub async fn fail(&self, message: &str) -> ! {
        let alerts = self.api("/api/v1/alerts").await;
        let rules = self.api("/api/v1/rules?type=alert").await.map(|v| {
            let groups = v["data"]["groups"].as_array().cloned().unwrap_or_default();
            let rules: Vec<Value> = groups
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .filter(|r| self.alerts.iter().any(|a| r["name"] == a.as_str()))
                .collect();
            Value::Array(rules)
        });
        let mut series = String::new();
        for q in self.diagnostics.iter().map(String::as_str).chain(["up"]) {
            series.push_str(&format!("{q} = {:?}\n", self.query(q).await));
        }
        let payloads: Vec<Value> = self
            .webhook
            .payloads
            .lock()
            .unwrap()
            .iter()
            .map(|(_, p)| p.clone())
            .collect();
        panic!(
            "{message}\n\n--- Prometheus /api/v1/alerts ---\n{alerts:#?}\n\n--- the alert rules \
             ---\n{rules:#?}\n\n--- recorded series ---\n{series}\n--- webhook payloads ---\n{}\n\n\
             --- generated rules ---\n{}",
            serde_json::to_string_pretty(&payloads).unwrap(),
            self.rules
        );
    }

    pub async fn get_ok(&self, url: &str) -> Option<()> {
        let response = self.http.get(url).send().await.ok()?;
        response.status().is_success().then_some(())
    }

    /// GET of a Prometheus API path, as JSON; None when Prometheus does not answer.
    pub async fn api(&self, path: &str) -> Option<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.prometheus))
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    /// An instant query's result vector; None when Prometheus does not answer.
    pub async fn query(&self, query: &str) -> Option<Vec<Value>> {
        let response = self
            .http
            .get(format!("{}/api/v1/query", self.prometheus))
            .query(&[("query", query)])
            .send()
            .await
            .ok()?;
        let v: Value = response.json().await.ok()?;
        assert_eq!(v["status"], "success", "query {query}: {v}");
        v["data"]["result"].as_array().cloned()
    }

    /// The value of a query that yields one series; None when it yields none.
    pub async fn scalar(&self, query: &str) -> Option<f64> {
        let result = self.query(query).await.expect("Prometheus answers");
        assert!(
            result.len() <= 1,
            "{query} yields several series: {result:?}"
        );
        result.first()?["value"][1].as_str()?.parse().ok()
    }
}

// ----------------------------------------------------------------------------------------------
// The webhook receiver
// ----------------------------------------------------------------------------------------------

/// Every JSON payload Alertmanager POSTed to /alerts, with when it arrived.
#[derive(Clone)]
pub struct Webhook {
    pub addr: SocketAddr,
    pub payloads: Arc<Mutex<Vec<(Instant, Value)>>>,
}

impl Webhook {
    pub async fn start() -> Webhook {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the webhook");
        let hook = Webhook {
            addr: listener.local_addr().unwrap(),
            payloads: Arc::default(),
        };
        let app = Router::new()
            .route("/alerts", post(receive))
            .with_state(hook.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        hook
    }

    /// Every alert of every payload, with the payload's arrival time.
    pub fn alerts(&self) -> Vec<(Instant, Value)> {
        self.payloads
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(at, p)| {
                p["alerts"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|a| (*at, a))
            })
            .collect()
    }

    /// The first alert named `alert` for `service` received with `status`.
    pub fn find(&self, alert: &str, service: &str, status: &str) -> Option<(Instant, Value)> {
        self.alerts().into_iter().find(|(_, a)| {
            a["status"] == status
                && a["labels"]["alertname"] == alert
                && a["labels"]["service"] == service
        })
    }
}

async fn receive(State(hook): State<Webhook>, body: String) -> StatusCode {
    let payload = serde_json::from_str(&body).unwrap_or(Value::String(body));
    hook.payloads
        .lock()
        .unwrap()
        .push((Instant::now(), payload));
    StatusCode::OK
}

// ----------------------------------------------------------------------------------------------
// Child processes
// ----------------------------------------------------------------------------------------------

/// A child process killed (and reaped) on drop; its stdout and stderr go to a log file that
/// is printed when the test is failing.
pub struct Daemon {
    pub name: &'static str,
    child: Mutex<Child>,
    log: PathBuf,
}

impl Daemon {
    pub fn spawn(name: &'static str, program: &str, args: &[String], log: &Path) -> Daemon {
        let file = File::create(log).expect("create log file");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        Daemon {
            name,
            child: Mutex::new(child),
            log: log.to_path_buf(),
        }
    }

    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().unwrap().try_wait().ok().flatten()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!(
                "\n----- {} log ({}) -----\n{log}----- end of {} log -----",
                self.name,
                self.log.display(),
                self.name
            );
        }
    }
}

/// A free loopback port: bind port 0, read it, release it.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}
