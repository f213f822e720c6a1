//! The deployment files under deploy/ are checked, not only written:
//!
//! * every YAML (each document of a multi-document file) and JSON file parses, and no file of
//!   another kind sits there unchecked;
//! * `promtool check config` accepts the Prometheus config with the rule file laid out as
//!   docker-compose.yml mounts them, and the scrape job, targets and Alertmanager agree with
//!   the compose services and the spanlens config;
//! * `amtool check-config` accepts the Alertmanager config, and `amtool config routes test`
//!   sends every generated alert to the receiver of its severity;
//! * the Kubernetes ConfigMap's spanlens config passes `spanlens check-config`, differs from
//!   config/spanlens.yaml only in listener addresses, and the pod, Service and PodMonitor are
//!   wired to it;
//! * the gateway manifest's Collector config has the shape its components need: a
//!   load-balancing exporter routing by one attribute that a transform processor fills with
//!   the join keys of config/spanlens.yaml's derived metrics, resolving the replicas through the
//!   headless Service that manifest defines, on the port the replicas' container profile
//!   receives OTLP/gRPC on; the Collector may read what the resolver watches, and the
//!   replicas are scraped under the alerting job (no Collector runs here: shape, not behaviour;
//!   tests/derived/scale_out.rs routes as it does);
//! * the Dockerfile's container profile (its `sed` applied to `spanlens default-config`)
//!   passes `spanlens check-config`;
//! * every metric name in the Grafana dashboard's PromQL is one spanlens emits or the rule
//!   file records.
//!
//! promtool and amtool come from Debian's `prometheus` and `prometheus-alertmanager` packages
//! (scripts/test.sh installs them); SPANLENS_PROMTOOL / SPANLENS_AMTOOL may point elsewhere.
//! The tests fail, never skip, when a tool is missing.

use crate::support::deploy::{
    GATEWAY, gateway_collector, gateway_document, gateway_routing, load_balancing_exporters, read,
    yaml_documents,
};
use crate::support::process::{TempDir, check_config, output_text, run, run_ok};
use crate::support::tools::{amtool, promtool};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use yaml_serde::Value;

const DEPLOY: &str = "deploy";
const CONFIG: &str = "config/spanlens.yaml";
const RULES: &str = "config/rules/spanlens.rules.yml";
const PROMETHEUS: &str = "deploy/prometheus/prometheus.yml";
const ALERTMANAGER: &str = "deploy/alertmanager/alertmanager.yml";
const COMPOSE: &str = "deploy/docker-compose.yml";
const SIDECAR: &str = "deploy/kubernetes/spanlens-sidecar.yaml";
const DOCKERFILE: &str = "deploy/Dockerfile";
const DASHBOARD: &str = "deploy/grafana/spanlens-dashboard.json";
const GRAFANA_DATASOURCES: &str = "deploy/grafana/provisioning/datasources/spanlens.yml";

/// spanlens's own counters and gauges (src/pipeline.rs): not named in the config. Its own
/// histogram, spanlens_request_duration_seconds, is added with its series in allowed_metrics.
const OWN_METRICS: [&str; 11] = [
    "spanlens_spans_received_total",
    "spanlens_spans_accepted_total",
    "spanlens_spans_refused_total",
    "spanlens_requests_refused_total",
    "spanlens_label_overflow_total",
    "spanlens_series_overflow_total",
    "spanlens_spans_duplicate_total",
    "spanlens_join_evicted_total",
    "spanlens_join_late_spans_total",
    "spanlens_join_repeated_spans_total",
    "spanlens_join_pending",
];

// ---------------------------------------------------------------------------------------------
// Reading files

fn yaml(path: impl AsRef<Path>) -> Value {
    let path = path.as_ref();
    let mut documents = yaml_documents(path);
    assert_eq!(
        documents.len(),
        1,
        "{}: one document expected",
        path.display()
    );
    documents.remove(0)
}

fn json(path: impl AsRef<Path>) -> serde_json::Value {
    let path = path.as_ref();
    serde_json::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// `value[a][b]...` as a string, or a panic naming the file and the path.
fn string_at<'a>(value: &'a Value, path: &[&str], origin: &str) -> &'a str {
    let mut node = value;
    for key in path {
        node = node
            .get(key)
            .unwrap_or_else(|| panic!("{origin}: no {}", path.join(".")));
    }
    node.as_str()
        .unwrap_or_else(|| panic!("{origin}: {} is not a string", path.join(".")))
}

fn sequence<'a>(value: &'a Value, key: &str, origin: &str) -> &'a [Value] {
    value
        .get(key)
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{origin}: `{key}` is not a list"))
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_sequence)
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn spanlens_config() -> Value {
    yaml(CONFIG)
}

fn scrape_job(config: &Value) -> String {
    string_at(config, &["alerting", "job"], CONFIG).to_string()
}

// ---------------------------------------------------------------------------------------------
// Copying files

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to)
            .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
    }
}

// ---------------------------------------------------------------------------------------------
// docker-compose.yml

struct Compose {
    services: BTreeMap<String, Value>,
}

/// A bind mount of a compose service: host path (resolved against deploy/) and container path.
struct Mount {
    host: PathBuf,
    container: String,
}

impl Compose {
    fn load() -> Compose {
        let document = yaml(COMPOSE);
        let services = document
            .get("services")
            .and_then(Value::as_mapping)
            .unwrap_or_else(|| panic!("{COMPOSE}: no services"))
            .iter()
            .map(|(name, service)| (name.as_str().unwrap().to_string(), service.clone()))
            .collect();
        Compose { services }
    }

    fn service(&self, name: &str) -> &Value {
        self.services
            .get(name)
            .unwrap_or_else(|| panic!("{COMPOSE}: no service `{name}`"))
    }

    /// The service whose image starts with `image` (a repository name).
    fn service_with_image(&self, image: &str) -> (&str, &Value) {
        self.services
            .iter()
            .find(|(_, s)| {
                s.get("image")
                    .and_then(Value::as_str)
                    .is_some_and(|i| i.starts_with(&format!("{image}:")))
            })
            .map(|(name, s)| (name.as_str(), s))
            .unwrap_or_else(|| panic!("{COMPOSE}: no service runs {image}"))
    }

    /// Services built from deploy/Dockerfile: the spanlens sidecars.
    fn spanlens_services(&self) -> Vec<&str> {
        let services: Vec<&str> = self
            .services
            .iter()
            .filter(|(_, s)| {
                s.get("build")
                    .and_then(|b| b.get("dockerfile"))
                    .and_then(Value::as_str)
                    == Some("deploy/Dockerfile")
            })
            .map(|(name, _)| name.as_str())
            .collect();
        assert!(
            !services.is_empty(),
            "{COMPOSE}: nothing is built from {DOCKERFILE}"
        );
        services
    }

    fn bind_mounts(&self, service: &str) -> Vec<Mount> {
        strings(self.service(service).get("volumes"))
            .iter()
            .filter(|v| v.starts_with("./") || v.starts_with("../"))
            .map(|v| {
                let parts: Vec<&str> = v.split(':').collect();
                assert!(parts.len() >= 2, "{COMPOSE}: {service}: volume {v}");
                Mount {
                    host: Path::new(DEPLOY).join(parts[0]),
                    container: parts[1].to_string(),
                }
            })
            .collect()
    }

    /// The value of `--flag=` in the service's command.
    fn flag(&self, service: &str, flag: &str) -> String {
        let prefix = format!("{flag}=");
        strings(self.service(service).get("command"))
            .iter()
            .find_map(|arg| arg.strip_prefix(&prefix).map(str::to_string))
            .unwrap_or_else(|| panic!("{COMPOSE}: {service} has no {flag}= in its command"))
    }

    /// Lays out the service's bind mounts under `root` as the container sees them.
    fn mirror_mounts(&self, service: &str, root: &Path) {
        for mount in self.bind_mounts(service) {
            copy_tree(
                &mount.host,
                &root.join(mount.container.trim_start_matches('/')),
            );
        }
    }
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    match service.get("environment") {
        Some(Value::Mapping(map)) => map
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => yaml_serde::to_string(other).unwrap().trim().to_string(),
                };
                (k.as_str().unwrap().to_string(), value)
            })
            .collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|item| match item.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (item.to_string(), String::new()),
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Files and formats

#[test]
fn every_deploy_file_parses_and_none_goes_unchecked() {
    let mut yaml_files = 0;
    let mut json_files = 0;
    for path in files_under(Path::new(DEPLOY)) {
        let name = path.file_name().unwrap().to_str().unwrap();
        match path.extension().and_then(|e| e.to_str()) {
            Some("yml" | "yaml") => {
                let documents = yaml_documents(&path);
                assert!(
                    !documents.is_empty(),
                    "{}: no YAML document",
                    path.display()
                );
                for (index, document) in documents.iter().enumerate() {
                    assert!(
                        document.is_mapping(),
                        "{}: document {} is not a mapping",
                        path.display(),
                        index + 1
                    );
                }
                yaml_files += 1;
            }
            Some("json") => {
                assert!(json(&path).is_object(), "{}: not an object", path.display());
                json_files += 1;
            }
            // Checked by the_dockerfile_* below; the ignore file is a list of patterns.
            _ if name == "Dockerfile" || name == "Dockerfile.dockerignore" => {}
            _ => panic!(
                "{}: no check knows this kind of file; add one to tests/cli/deploy_files.rs",
                path.display()
            ),
        }
    }
    for required in [
        PROMETHEUS,
        ALERTMANAGER,
        COMPOSE,
        SIDECAR,
        GATEWAY,
        DOCKERFILE,
        DASHBOARD,
        GRAFANA_DATASOURCES,
    ] {
        assert!(Path::new(required).is_file(), "{required} is missing");
    }
    assert!(yaml_files >= 6, "{yaml_files} YAML files");
    assert!(json_files >= 1, "{json_files} JSON files");
    // The ConfigMap, Deployment, Service and PodMonitor are separate documents.
    assert_eq!(yaml_documents(SIDECAR).len(), 4);
    // The Collector's ConfigMap, ServiceAccount, Role, RoleBinding, Deployment and Service;
    // the replicas' Deployment, headless Service and PodMonitor.
    assert_eq!(yaml_documents(GATEWAY).len(), 9);
}

// ---------------------------------------------------------------------------------------------
// Prometheus

#[test]
fn promtool_accepts_the_prometheus_config_with_rules_mounted_as_in_compose() {
    let compose = Compose::load();
    let (service, _) = compose.service_with_image("prom/prometheus");
    let scratch = TempDir::new("prometheus");
    let root = scratch.path();
    compose.mirror_mounts(service, root);
    let config_path = compose.flag(service, "--config.file");
    let config = root.join(config_path.trim_start_matches('/'));
    assert!(
        config.is_file(),
        "{COMPOSE}: {service} reads {config_path}, which no bind mount provides"
    );

    // Every rule file resolves (relative to the config's directory, as Prometheus reads it)
    // to a mounted file.
    let rule_files = strings(yaml(&config).get("rule_files"));
    assert!(!rule_files.is_empty(), "{PROMETHEUS}: no rule_files");
    let config_dir = config.parent().unwrap();
    for rule_file in &rule_files {
        let resolved = match rule_file.strip_prefix('/') {
            Some(absolute) => root.join(absolute),
            None => config_dir.join(rule_file),
        };
        assert!(
            resolved.is_file(),
            "{PROMETHEUS}: rule file {rule_file} is not mounted by {COMPOSE} (looked for {})",
            resolved.display()
        );
        assert_eq!(
            read(&resolved),
            read(RULES),
            "{rule_file} must be the generated {RULES}"
        );
    }

    let text = run_ok(
        Command::new(promtool())
            .args(["check", "config"])
            .arg(&config),
    );
    assert!(
        text.contains(&format!("SUCCESS: {} rule files found", rule_files.len())),
        "{text}"
    );
    assert!(text.contains("rules found"), "{text}");
    assert!(!text.contains("FAILED"), "{text}");

    // Exemplars are only kept with the feature flag.
    assert!(
        strings(compose.service(service).get("command"))
            .iter()
            .any(|a| a == "--enable-feature=exemplar-storage"),
        "{COMPOSE}: {service} must run with --enable-feature=exemplar-storage"
    );
}

#[test]
fn prometheus_scrapes_every_spanlens_sidecar_under_the_configured_job() {
    let job = scrape_job(&spanlens_config());
    let prometheus = yaml(PROMETHEUS);
    let scrape = sequence(&prometheus, "scrape_configs", PROMETHEUS)
        .iter()
        .find(|s| s.get("job_name").and_then(Value::as_str) == Some(job.as_str()))
        .unwrap_or_else(|| {
            panic!("{PROMETHEUS}: no scrape config with job_name {job} (alerting.job in {CONFIG})")
        });
    let targets: BTreeSet<String> = sequence(scrape, "static_configs", PROMETHEUS)
        .iter()
        .flat_map(|s| strings(s.get("targets")))
        .collect();

    let compose = Compose::load();
    let sidecars: BTreeSet<String> = compose
        .spanlens_services()
        .iter()
        .map(|name| format!("{name}:9464"))
        .collect();
    assert_eq!(
        targets, sidecars,
        "{PROMETHEUS} must scrape exactly the spanlens services of {COMPOSE} on :9464"
    );

    // Alerts go to the compose Alertmanager.
    let (alertmanager, _) = compose.service_with_image("prom/alertmanager");
    let alerting = prometheus
        .get("alerting")
        .unwrap_or_else(|| panic!("{PROMETHEUS}: no alerting"));
    let am_targets: Vec<String> = sequence(alerting, "alertmanagers", PROMETHEUS)
        .iter()
        .flat_map(|a| sequence(a, "static_configs", PROMETHEUS))
        .flat_map(|s| strings(s.get("targets")))
        .collect();
    assert_eq!(am_targets, vec![format!("{alertmanager}:9093")]);
}

// ---------------------------------------------------------------------------------------------
// Alertmanager

/// The receiver each generated severity must reach.
fn receiver_for(severity: &str) -> &'static str {
    match severity {
        "critical" => "pager",
        "warning" => "chat",
        other => panic!(
            "a generated alert has severity {other}: route it in {ALERTMANAGER} and expect it here"
        ),
    }
}

/// (alertname, severity) of every alert in the generated rule file.
fn generated_alerts() -> Vec<(String, String)> {
    let rules = yaml(RULES);
    sequence(&rules, "groups", RULES)
        .iter()
        .flat_map(|g| sequence(g, "rules", RULES))
        .filter_map(|r| {
            let name = r.get("alert")?.as_str()?.to_string();
            let severity = string_at(r, &["labels", "severity"], RULES).to_string();
            Some((name, severity))
        })
        .collect()
}

#[test]
fn amtool_accepts_the_alertmanager_config_as_mounted_in_compose() {
    let compose = Compose::load();
    let (service, _) = compose.service_with_image("prom/alertmanager");
    let scratch = TempDir::new("alertmanager");
    let root = scratch.path();
    compose.mirror_mounts(service, root);
    let config_path = compose.flag(service, "--config.file");
    let config = root.join(config_path.trim_start_matches('/'));
    assert_eq!(
        read(&config),
        read(ALERTMANAGER),
        "{COMPOSE} must mount {ALERTMANAGER}"
    );
    let text = run_ok(Command::new(amtool()).arg("check-config").arg(&config));
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn alertmanager_routes_every_generated_alert_by_severity() {
    let alerts = generated_alerts();
    assert!(alerts.len() >= 10, "{} alerts in {RULES}", alerts.len());
    let amtool = amtool();
    for (alertname, severity) in &alerts {
        let expected = receiver_for(severity);
        let output = run(Command::new(&amtool).args([
            "config",
            "routes",
            "test",
            &format!("--config.file={ALERTMANAGER}"),
            &format!("--verify.receivers={expected}"),
            &format!("alertname={alertname}"),
            &format!("severity={severity}"),
            "service=tasker-ruby-worker",
            "handler_language=ruby",
        ]));
        assert!(
            output.status.success(),
            "{alertname} (severity {severity}) must reach receiver {expected}:\n{}",
            output_text(&output)
        );
    }

    let config = yaml(ALERTMANAGER);
    let route = config.get("route").expect("route");
    assert_eq!(
        strings(route.get("group_by")),
        ["alertname", "service", "handler_language"]
    );
    for key in ["group_wait", "group_interval", "repeat_interval"] {
        assert!(
            route.get(key).is_some(),
            "{ALERTMANAGER}: route.{key} is unset"
        );
    }
    // A critical alert silences the warning of the same alert and service.
    let inhibit = sequence(&config, "inhibit_rules", ALERTMANAGER);
    assert!(
        inhibit.iter().any(|rule| {
            strings(rule.get("source_matchers")) == ["severity=\"critical\""]
                && strings(rule.get("target_matchers")) == ["severity=\"warning\""]
                && strings(rule.get("equal")) == ["alertname", "service"]
        }),
        "{ALERTMANAGER}: no critical-inhibits-warning rule on [alertname, service]"
    );
    // Receivers are webhooks to placeholder hosts only.
    for receiver in sequence(&config, "receivers", ALERTMANAGER) {
        for hook in sequence(receiver, "webhook_configs", ALERTMANAGER) {
            let url = string_at(hook, &["url"], ALERTMANAGER);
            let host = url
                .split("://")
                .nth(1)
                .and_then(|rest| rest.split(['/', ':']).next())
                .unwrap_or_default();
            assert!(
                host == "example.com" || host.ends_with(".example.com"),
                "{ALERTMANAGER}: {url} is not a placeholder on example.com"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

struct Sidecar {
    config_map: Value,
    deployment: Value,
    service: Value,
    pod_monitor: Value,
}

impl Sidecar {
    fn load() -> Sidecar {
        let mut by_kind: BTreeMap<String, Value> = BTreeMap::new();
        for document in yaml_documents(SIDECAR) {
            let kind = string_at(&document, &["kind"], SIDECAR).to_string();
            assert!(
                by_kind.insert(kind.clone(), document).is_none(),
                "{SIDECAR}: two {kind} documents"
            );
        }
        let mut take = |kind: &str| {
            by_kind
                .remove(kind)
                .unwrap_or_else(|| panic!("{SIDECAR}: no {kind}"))
        };
        Sidecar {
            config_map: take("ConfigMap"),
            deployment: take("Deployment"),
            service: take("Service"),
            pod_monitor: take("PodMonitor"),
        }
    }

    fn embedded_config(&self) -> &str {
        string_at(&self.config_map, &["data", "spanlens.yaml"], SIDECAR)
    }

    fn pod_spec(&self) -> &Value {
        self.deployment
            .get("spec")
            .and_then(|s| s.get("template"))
            .and_then(|t| t.get("spec"))
            .unwrap_or_else(|| panic!("{SIDECAR}: Deployment has no spec.template.spec"))
    }

    fn pod_labels(&self) -> BTreeMap<String, String> {
        labels(
            self.deployment
                .get("spec")
                .and_then(|s| s.get("template"))
                .and_then(|t| t.get("metadata"))
                .and_then(|m| m.get("labels")),
        )
    }

    /// Containers and init containers (spanlens may run as a native sidecar).
    fn containers(&self) -> Vec<&Value> {
        let spec = self.pod_spec();
        ["initContainers", "containers"]
            .iter()
            .filter_map(|key| spec.get(key).and_then(Value::as_sequence))
            .flatten()
            .collect()
    }

    fn container(&self, name: &str) -> &Value {
        self.containers()
            .into_iter()
            .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
            .unwrap_or_else(|| panic!("{SIDECAR}: no container {name}"))
    }
}

fn labels(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_mapping)
        .map(|map| {
            map.iter()
                .map(|(k, v)| {
                    (
                        k.as_str().unwrap().to_string(),
                        v.as_str()
                            .unwrap_or_else(|| panic!("{SIDECAR}: label {k:?} is not a string"))
                            .to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn selects(selector: &BTreeMap<String, String>, pod: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| pod.get(k) == Some(v))
}

fn env_value(container: &Value, name: &str) -> Option<String> {
    container
        .get("env")?
        .as_sequence()?
        .iter()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(name))?
        .get("value")?
        .as_str()
        .map(str::to_string)
}

#[test]
fn the_configmap_config_passes_spanlens_check_config() {
    let sidecar = Sidecar::load();
    let dir = TempDir::new("configmap");
    let file = dir.write("spanlens.yaml", sidecar.embedded_config());
    let output = check_config(&file, &[]);
    let text = output_text(&output);
    assert!(
        output.status.success(),
        "the spanlens config in {SIDECAR} fails check-config:\n{text}"
    );
    assert!(text.contains(": ok ("), "{text}");

    // Receivers on the pod's loopback, /metrics on every interface.
    let config = sidecar_config(&sidecar);
    for path in [["receivers", "grpc"], ["receivers", "http"]] {
        let endpoint = string_at(&config, &[path[0], path[1], "endpoint"], SIDECAR);
        assert!(
            endpoint.starts_with("127.0.0.1:"),
            "{SIDECAR}: {} endpoint {endpoint} must stay on loopback inside the pod",
            path.join(".")
        );
    }
    assert_eq!(
        string_at(&config, &["metrics", "endpoint"], SIDECAR),
        "0.0.0.0:9464"
    );
}

fn sidecar_config(sidecar: &Sidecar) -> Value {
    yaml_serde::from_str(sidecar.embedded_config())
        .unwrap_or_else(|e| panic!("{SIDECAR}: the ConfigMap's spanlens.yaml: {e}"))
}

/// Removes the listener addresses, the only fields the deployment copies may change.
fn without_endpoints(mut config: Value) -> Value {
    for path in [
        &["receivers", "grpc"][..],
        &["receivers", "http"][..],
        &["metrics"][..],
    ] {
        let mut node = &mut config;
        for key in path {
            node = node.get_mut(key).expect("section present");
        }
        node.as_mapping_mut().unwrap().remove("endpoint");
    }
    // Where spans are forwarded is the deployment's too.
    if let Some(forward) = config.get_mut("forward") {
        forward.as_mapping_mut().unwrap().remove("endpoints");
    }
    config
}

#[test]
fn the_configmap_config_is_the_shipped_config_but_for_listener_and_forwarding_addresses() {
    let shipped = without_endpoints(spanlens_config());
    let copy = without_endpoints(sidecar_config(&Sidecar::load()));
    if shipped != copy {
        let keys = |v: &Value| -> BTreeSet<String> {
            v.as_mapping()
                .unwrap()
                .keys()
                .map(|k| k.as_str().unwrap().to_string())
                .collect()
        };
        let differing: Vec<String> = keys(&shipped)
            .union(&keys(&copy))
            .filter(|k| shipped.get(k.as_str()) != copy.get(k.as_str()))
            .cloned()
            .collect();
        panic!(
            "the ConfigMap in {SIDECAR} has drifted from {CONFIG} in: {}; copy the change \
             (only the listener endpoints and forward.endpoints may differ)",
            differing.join(", ")
        );
    }
}

#[test]
fn the_sidecar_pod_service_and_podmonitor_are_wired_together() {
    let sidecar = Sidecar::load();
    let config = sidecar_config(&sidecar);
    let config_map_name = string_at(&sidecar.config_map, &["metadata", "name"], SIDECAR);
    let pod_labels = sidecar.pod_labels();

    // The Deployment selects its own pods.
    let selector = labels(
        sidecar
            .deployment
            .get("spec")
            .and_then(|s| s.get("selector"))
            .and_then(|s| s.get("matchLabels")),
    );
    assert!(
        selects(&selector, &pod_labels),
        "Deployment selector {selector:?}"
    );

    // spanlens: reads the ConfigMap, serves metrics and probes on the metrics port.
    let spanlens = sidecar.container("spanlens");
    assert_eq!(
        strings(spanlens.get("args")),
        ["--config", "/etc/spanlens/spanlens.yaml"]
    );
    let mount = sequence(spanlens, "volumeMounts", SIDECAR)
        .iter()
        .find(|m| m.get("mountPath").and_then(Value::as_str) == Some("/etc/spanlens"))
        .unwrap_or_else(|| panic!("{SIDECAR}: spanlens has no volume at /etc/spanlens"));
    let volume_name = string_at(mount, &["name"], SIDECAR);
    let volume = sequence(sidecar.pod_spec(), "volumes", SIDECAR)
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(volume_name))
        .unwrap_or_else(|| panic!("{SIDECAR}: no volume {volume_name}"));
    assert_eq!(
        string_at(volume, &["configMap", "name"], SIDECAR),
        config_map_name
    );
    let metrics_port = string_at(&config, &["metrics", "endpoint"], SIDECAR)
        .rsplit(':')
        .next()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    let port = sequence(spanlens, "ports", SIDECAR)
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some("metrics"))
        .unwrap_or_else(|| panic!("{SIDECAR}: spanlens has no port named metrics"));
    assert_eq!(
        port.get("containerPort").and_then(Value::as_u64),
        Some(metrics_port)
    );
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(
            string_at(spanlens, &[probe, "httpGet", "path"], SIDECAR),
            path,
            "{probe}"
        );
        assert_eq!(
            string_at(spanlens, &[probe, "httpGet", "port"], SIDECAR),
            "metrics",
            "{probe}"
        );
    }
    let resources = spanlens.get("resources").expect("spanlens resources");
    assert!(resources.get("requests").is_some() && resources.get("limits").is_some());

    // The app exports to the receiver on the pod's loopback.
    let grpc_port = string_at(&config, &["receivers", "grpc", "endpoint"], SIDECAR)
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let app = sidecar
        .containers()
        .into_iter()
        .find(|c| c.get("name").and_then(Value::as_str) != Some("spanlens"))
        .unwrap_or_else(|| panic!("{SIDECAR}: no app container"));
    assert_eq!(
        env_value(app, "OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
        Some(format!("http://localhost:{grpc_port}").as_str())
    );

    // The Service exposes the metrics port of these pods.
    assert!(selects(
        &labels(sidecar.service.get("spec").and_then(|s| s.get("selector"))),
        &pod_labels
    ));
    let service_port = sequence(sidecar.service.get("spec").unwrap(), "ports", SIDECAR)
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some("metrics"))
        .unwrap_or_else(|| panic!("{SIDECAR}: the Service has no port named metrics"));
    assert_eq!(service_port.get("port").and_then(Value::as_u64), Some(9464));

    // The PodMonitor scrapes them under the job the generated alerts select.
    let monitor = &sidecar.pod_monitor;
    assert_eq!(
        string_at(monitor, &["apiVersion"], SIDECAR),
        "monitoring.coreos.com/v1"
    );
    let spec = monitor.get("spec").expect("PodMonitor spec");
    assert!(selects(
        &labels(spec.get("selector").and_then(|s| s.get("matchLabels"))),
        &pod_labels
    ));
    let endpoint = &sequence(spec, "podMetricsEndpoints", SIDECAR)[0];
    assert_eq!(string_at(endpoint, &["port"], SIDECAR), "metrics");
    let job = scrape_job(&spanlens_config());
    assert!(
        sequence(endpoint, "relabelings", SIDECAR).iter().any(|r| {
            r.get("targetLabel").and_then(Value::as_str) == Some("job")
                && r.get("replacement").and_then(Value::as_str) == Some(job.as_str())
        }),
        "{SIDECAR}: the PodMonitor must set job={job} (alerting.job in {CONFIG})"
    );
}

// ---------------------------------------------------------------------------------------------
// Kubernetes gateway

/// The Collector release whose load-balancing exporter the gateway config was checked against
/// (contrib v0.154.0 source: `routing_key: attributes` and `routing_attributes` for traces,
/// the `k8s` resolver's `service` and `ports`).
const COLLECTOR_CHECKED: (u64, u64, u64) = (0, 154, 0);

fn mapping_keys(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_mapping)
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The pod template's labels and its first container of a Deployment.
fn pod_of(deployment: &Value) -> (BTreeMap<String, String>, &Value) {
    let template = deployment
        .get("spec")
        .and_then(|s| s.get("template"))
        .unwrap_or_else(|| panic!("{GATEWAY}: a Deployment without spec.template"));
    let labels = labels(template.get("metadata").and_then(|m| m.get("labels")));
    let container = &sequence(template.get("spec").unwrap(), "containers", GATEWAY)[0];
    (labels, container)
}

fn container_port(container: &Value, name: &str) -> u64 {
    sequence(container, "ports", GATEWAY)
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|p| p.get("containerPort").and_then(Value::as_u64))
        .unwrap_or_else(|| panic!("{GATEWAY}: no container port named {name}"))
}

/// The Service's port named `name`: (port, targetPort).
fn service_port<'v>(service: &'v Value, name: &str) -> (u64, &'v str) {
    let port = sequence(service.get("spec").unwrap(), "ports", GATEWAY)
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
        .unwrap_or_else(|| panic!("{GATEWAY}: the Service has no port named {name}"));
    (
        port.get("port").and_then(Value::as_u64).unwrap(),
        string_at(port, &["targetPort"], GATEWAY),
    )
}

#[test]
fn the_gateway_collector_routes_by_the_join_keys_to_the_headless_spanlens_service() {
    let collector = gateway_collector();

    // Receivers: OTLP/gRPC on the port the services export to.
    let grpc = string_at(
        &collector,
        &["receivers", "otlp", "protocols", "grpc", "endpoint"],
        GATEWAY,
    );
    assert!(
        grpc.ends_with(":4317"),
        "{GATEWAY}: the otlp receiver listens on {grpc}"
    );

    // One load-balancing exporter, by attributes, to the replicas behind the headless
    // Service, over plain OTLP/gRPC.
    let exporters = load_balancing_exporters(&collector);
    let [(exporter_id, exporter)] = exporters.as_slice() else {
        panic!("{GATEWAY}: one loadbalancing exporter expected: {exporters:?}");
    };
    assert_eq!(string_at(exporter, &["routing_key"], GATEWAY), "attributes");
    let resolver = exporter.get("resolver").expect("resolver");
    assert_eq!(
        mapping_keys(Some(resolver)),
        ["k8s"],
        "{GATEWAY}: exactly one resolver, the k8s one"
    );
    let headless = gateway_document("Service", "spanlens-replicas");
    let headless_name = string_at(&headless, &["metadata", "name"], GATEWAY);
    let resolved = string_at(resolver, &["k8s", "service"], GATEWAY);
    assert_eq!(
        resolved.split('.').next(),
        Some(headless_name),
        "{GATEWAY}: the resolver watches {resolved}"
    );
    assert_eq!(
        headless
            .get("spec")
            .and_then(|s| s.get("clusterIP"))
            .and_then(Value::as_str),
        Some("None"),
        "{GATEWAY}: {headless_name} must be headless (one address per replica)"
    );
    let ports: Vec<u64> = sequence(resolver.get("k8s").unwrap(), "ports", GATEWAY)
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let (otlp_port, otlp_target) = service_port(&headless, "otlp-grpc");
    assert_eq!(ports, [otlp_port], "{GATEWAY}: resolver ports");
    let otlp = exporter
        .get("protocol")
        .and_then(|p| p.get("otlp"))
        .expect("protocol.otlp");
    assert!(
        otlp.get("endpoint").is_none(),
        "{GATEWAY}: protocol.otlp.endpoint is set per replica by the exporter"
    );
    assert_eq!(
        otlp.get("tls")
            .and_then(|t| t.get("insecure"))
            .and_then(Value::as_bool),
        Some(true),
        "{GATEWAY}: the replicas receive plain OTLP/gRPC"
    );

    // The routing attribute holds the join key of every derived metric of the shipped
    // profile: step_uuid before correlation_id, the trace id for spans with neither.
    let routing = gateway_routing();
    assert_eq!(routing.attribute, "spanlens.join_key");
    assert_eq!(routing.keys, ["step_uuid", "correlation_id"]);
    assert!(
        routing.trace_id_fallback,
        "{GATEWAY}: spans without a key spread by trace id"
    );
    let derived_keys: BTreeSet<String> = spanlens_config()
        .get("derived")
        .and_then(Value::as_mapping)
        .expect("derived metrics")
        .values()
        .map(|d| string_at(d, &["key"], CONFIG).to_string())
        .collect();
    assert_eq!(
        derived_keys,
        routing.keys.iter().cloned().collect::<BTreeSet<_>>(),
        "{GATEWAY}: route by every join key of {CONFIG}, and only those"
    );

    // Pipelines: the transform feeds only the load-balancing exporter (the trace backend gets
    // the spans unchanged), and every pipeline reads the otlp receiver.
    let pipelines = collector
        .get("service")
        .and_then(|s| s.get("pipelines"))
        .and_then(Value::as_mapping)
        .expect("service.pipelines");
    let mut balanced = 0;
    for (id, pipeline) in pipelines {
        let id = id.as_str().unwrap();
        assert!(id.starts_with("traces"), "{GATEWAY}: pipeline {id}");
        assert_eq!(strings(pipeline.get("receivers")), ["otlp"], "{id}");
        let processors = strings(pipeline.get("processors"));
        let exporters = strings(pipeline.get("exporters"));
        for name in processors.iter().chain(&exporters) {
            let section = if processors.contains(name) {
                "processors"
            } else {
                "exporters"
            };
            assert!(
                collector
                    .get(section)
                    .and_then(|s| s.get(name.as_str()))
                    .is_some(),
                "{GATEWAY}: {id} uses {name}, which {section} does not define"
            );
        }
        let transforms = processors.iter().any(|p| p.starts_with("transform"));
        let balances = exporters.contains(exporter_id);
        assert_eq!(
            transforms, balances,
            "{GATEWAY}: {id}: the transform and the load-balancing exporter go together"
        );
        if balances {
            assert_eq!(exporters, std::slice::from_ref(exporter_id), "{id}");
            balanced += 1;
        }
    }
    assert_eq!(balanced, 1);

    // The replicas: the spanlens image on its container profile, which receives OTLP/gRPC on
    // 0.0.0.0:4317 (the Dockerfile's substitution), behind the headless Service.
    let replicas = gateway_document("Deployment", "spanlens");
    let (replica_labels, spanlens) = pod_of(&replicas);
    assert!(string_at(spanlens, &["image"], GATEWAY).contains("spanlens"));
    assert!(
        spanlens.get("args").is_none(),
        "{GATEWAY}: the replicas run the image's container profile"
    );
    assert!(
        dockerfile_substitutions(&read(DOCKERFILE))
            .iter()
            .any(|(_, to)| to.ends_with(&format!(":-0.0.0.0:{otlp_port}}}"))),
        "{DOCKERFILE}: the container profile receives OTLP/gRPC on 0.0.0.0:{otlp_port}"
    );
    assert_eq!(container_port(spanlens, otlp_target), otlp_port);
    assert!(selects(
        &labels(headless.get("spec").and_then(|s| s.get("selector"))),
        &replica_labels
    ));

    // Every replica scraped under the job the generated alerts select.
    let monitor = gateway_document("PodMonitor", "spanlens-replicas");
    let spec = monitor.get("spec").expect("PodMonitor spec");
    assert!(selects(
        &labels(spec.get("selector").and_then(|s| s.get("matchLabels"))),
        &replica_labels
    ));
    let endpoint = &sequence(spec, "podMetricsEndpoints", GATEWAY)[0];
    assert_eq!(
        container_port(spanlens, string_at(endpoint, &["port"], GATEWAY)),
        9464
    );
    let job = scrape_job(&spanlens_config());
    assert!(
        sequence(endpoint, "relabelings", GATEWAY).iter().any(|r| {
            r.get("targetLabel").and_then(Value::as_str) == Some("job")
                && r.get("replacement").and_then(Value::as_str) == Some(job.as_str())
        }),
        "{GATEWAY}: the PodMonitor must set job={job}"
    );

    // The Collector: the contrib image, at least the release checked, reading the ConfigMap,
    // as a ServiceAccount allowed to watch the EndpointSlices the resolver reads.
    let gateway = gateway_document("Deployment", "spanlens-gateway");
    let (gateway_labels, otelcol) = pod_of(&gateway);
    let image = string_at(otelcol, &["image"], GATEWAY);
    let (repository, tag) = image.rsplit_once(':').expect("a tagged image");
    assert_eq!(repository, "otel/opentelemetry-collector-contrib");
    let version: Vec<u64> = tag.split('.').map(|n| n.parse().unwrap()).collect();
    assert!(
        (version[0], version[1], version[2]) >= COLLECTOR_CHECKED,
        "{GATEWAY}: {image} is older than the release the config was checked against"
    );
    let mount = &sequence(otelcol, "volumeMounts", GATEWAY)[0];
    let config_arg = format!(
        "--config={}/collector.yaml",
        string_at(mount, &["mountPath"], GATEWAY)
    );
    assert_eq!(strings(otelcol.get("args")), [config_arg]);
    let volume = &sequence(
        gateway
            .get("spec")
            .unwrap()
            .get("template")
            .unwrap()
            .get("spec")
            .unwrap(),
        "volumes",
        GATEWAY,
    )[0];
    assert_eq!(
        string_at(volume, &["configMap", "name"], GATEWAY),
        "spanlens-gateway-collector"
    );
    let account = string_at(
        &gateway,
        &["spec", "template", "spec", "serviceAccountName"],
        GATEWAY,
    );
    gateway_document("ServiceAccount", account);
    let binding = gateway_document("RoleBinding", account);
    let role_name = string_at(&binding, &["roleRef", "name"], GATEWAY);
    assert!(
        sequence(&binding, "subjects", GATEWAY)
            .iter()
            .any(|s| s.get("name").and_then(Value::as_str) == Some(account))
    );
    let role = gateway_document("Role", role_name);
    assert!(
        sequence(&role, "rules", GATEWAY).iter().any(|rule| {
            strings(rule.get("resources")).contains(&"endpointslices".to_string())
                && ["list", "watch"]
                    .iter()
                    .all(|v| strings(rule.get("verbs")).contains(&v.to_string()))
        }),
        "{GATEWAY}: the Collector must list and watch EndpointSlices"
    );

    // The Service the services export to reaches the Collector's OTLP/gRPC port.
    let service = gateway_document("Service", "spanlens-gateway");
    assert!(selects(
        &labels(service.get("spec").and_then(|s| s.get("selector"))),
        &gateway_labels
    ));
    let (port, target) = service_port(&service, "otlp-grpc");
    assert_eq!(port, 4317);
    assert_eq!(container_port(otelcol, target), 4317);
}

// ---------------------------------------------------------------------------------------------
// Dockerfile and compose

/// The `sed -e 's/FROM/TO/'` substitutions of the Dockerfile.
fn dockerfile_substitutions(dockerfile: &str) -> Vec<(String, String)> {
    let pattern = regex::Regex::new(r"-e\s+'s/([^/']*)/([^/']*)/'").unwrap();
    pattern
        .captures_iter(dockerfile)
        .map(|c| (c[1].to_string(), c[2].to_string()))
        .collect()
}

#[test]
fn the_dockerfile_builds_a_non_root_image_whose_profile_passes_check_config() {
    let dockerfile = read(DOCKERFILE);
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&&str> = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(
        froms.len(),
        2,
        "{DOCKERFILE}: a builder and a runtime stage"
    );
    assert!(
        froms[0].starts_with("FROM rust:1.95-bookworm AS "),
        "{}",
        froms[0]
    );
    assert_eq!(*froms[1], "FROM debian:bookworm-slim");
    let user = instructions
        .iter()
        .rfind(|l| l.starts_with("USER "))
        .unwrap_or_else(|| panic!("{DOCKERFILE}: no USER"));
    let uid = user["USER ".len()..].split(':').next().unwrap();
    assert!(uid != "root" && uid != "0", "{DOCKERFILE}: runs as {uid}");
    assert!(instructions.contains(&"EXPOSE 4317 4318 9464"));
    assert!(instructions.contains(&r#"ENTRYPOINT ["spanlens"]"#));

    // The image's profile: the Dockerfile's substitutions applied to the embedded default.
    let default = run_ok(Command::new(env!("CARGO_BIN_EXE_spanlens")).arg("default-config"));
    let substitutions = dockerfile_substitutions(&dockerfile);
    assert_eq!(substitutions.len(), 3, "{DOCKERFILE}: {substitutions:?}");
    let mut profile = default.clone();
    for (from, to) in &substitutions {
        assert_eq!(
            default.matches(from.as_str()).count(),
            1,
            "{DOCKERFILE}: `{from}` must match exactly one line of the default profile"
        );
        profile = profile.replace(from.as_str(), to);
    }
    let dir = TempDir::new("dockerfile");
    let file = dir.write("spanlens.yaml", &profile);
    // As the image runs by default (0.0.0.0) and as the compose sidecars set it (loopback).
    for env in [
        &[][..],
        &[
            ("SPANLENS_GRPC_ENDPOINT", "127.0.0.1:4317"),
            ("SPANLENS_HTTP_ENDPOINT", "127.0.0.1:4318"),
        ][..],
    ] {
        let output = check_config(&file, env);
        assert!(
            output.status.success(),
            "the image profile fails check-config with {env:?}:\n{}",
            output_text(&output)
        );
    }

    // The endpoint variables the compose sidecars set are the ones the profile reads.
    let compose = Compose::load();
    for name in compose.spanlens_services() {
        for variable in environment(compose.service(name)).keys() {
            if variable.starts_with("SPANLENS_") {
                assert!(
                    profile.contains(&format!("${{{variable}:-")),
                    "{COMPOSE}: {name} sets {variable}, which the image's profile does not read"
                );
            }
        }
    }
}

#[test]
fn compose_services_are_complete_and_wired_to_their_sidecars() {
    let compose = Compose::load();
    let sidecars = compose.spanlens_services();
    for (name, service) in &compose.services {
        assert!(
            service.get("image").is_some() || service.get("build").is_some(),
            "{COMPOSE}: {name} has neither image nor build"
        );
        if let Some(build) = service.get("build") {
            let context = Path::new(DEPLOY).join(string_at(build, &["context"], COMPOSE));
            let dockerfile = string_at(build, &["dockerfile"], COMPOSE);
            assert!(
                context.join(dockerfile).is_file(),
                "{COMPOSE}: {name} builds {dockerfile}, missing in {}",
                context.display()
            );
        }
        for mount in compose.bind_mounts(name) {
            assert!(
                mount.host.exists(),
                "{COMPOSE}: {name} mounts {}, which does not exist",
                mount.host.display()
            );
        }
        let dependencies: Vec<String> = match service.get("depends_on") {
            Some(Value::Mapping(map)) => map
                .keys()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            other => strings(other),
        };
        for dependency in dependencies {
            assert!(
                compose.services.contains_key(&dependency),
                "{COMPOSE}: {name} depends on unknown {dependency}"
            );
        }
    }

    // Each tasker service shares the network namespace of a spanlens sidecar and exports
    // OTLP/gRPC to it on localhost.
    let mut apps = Vec::new();
    for (name, service) in &compose.services {
        let Some(mode) = service.get("network_mode").and_then(Value::as_str) else {
            continue;
        };
        let target = mode
            .strip_prefix("service:")
            .unwrap_or_else(|| panic!("{COMPOSE}: {name}: network_mode {mode}"));
        assert!(
            sidecars.contains(&target),
            "{COMPOSE}: {name} shares the network of {target}, which is not a spanlens sidecar"
        );
        let env = environment(service);
        assert_eq!(
            env.get("OTEL_EXPORTER_OTLP_ENDPOINT").map(String::as_str),
            Some("http://localhost:4317"),
            "{COMPOSE}: {name}"
        );
        apps.push(env.get("OTEL_SERVICE_NAME").cloned().unwrap_or_default());
    }
    apps.sort();
    assert_eq!(
        apps,
        [
            "tasker-orchestration",
            "tasker-ruby-worker",
            "tasker-rust-worker"
        ]
    );
    for image in [
        "prom/prometheus",
        "prom/alertmanager",
        "jaegertracing/jaeger",
    ] {
        compose.service_with_image(image);
    }
}

// ---------------------------------------------------------------------------------------------
// Grafana dashboard

/// The metric names spanlens emits for the shipped config, plus what the rule file records.
fn allowed_metrics() -> BTreeSet<String> {
    let config = spanlens_config();
    let mut allowed: BTreeSet<String> = OWN_METRICS.iter().map(|s| s.to_string()).collect();
    allowed.insert("up".to_string());
    // A classic histogram's series; the stage, derived and span-metrics histograms also have
    // their native twin under the bare name (scraped over protobuf).
    let classic = |allowed: &mut BTreeSet<String>, name: &str| {
        for suffix in ["_bucket", "_sum", "_count"] {
            allowed.insert(format!("{name}{suffix}"));
        }
    };
    let histogram = |allowed: &mut BTreeSet<String>, name: &str| {
        classic(allowed, name);
        allowed.insert(name.to_string());
    };
    classic(&mut allowed, "spanlens_request_duration_seconds");
    let stages = config
        .get("stages")
        .and_then(Value::as_mapping)
        .unwrap_or_else(|| panic!("{CONFIG}: no stages"));
    for (_, stage) in stages {
        histogram(&mut allowed, string_at(stage, &["histogram"], CONFIG));
        allowed.insert(string_at(stage, &["calls"], CONFIG).to_string());
        allowed.insert(string_at(stage, &["errors"], CONFIG).to_string());
    }
    if let Some(derived) = config.get("derived").and_then(Value::as_mapping) {
        for (_, metric) in derived {
            histogram(&mut allowed, string_at(metric, &["histogram"], CONFIG));
        }
    }
    let span_metrics = config.get("span_metrics").expect("span_metrics");
    if span_metrics.get("enabled").and_then(Value::as_bool) != Some(false) {
        allowed.insert(string_at(span_metrics, &["calls"], CONFIG).to_string());
        histogram(&mut allowed, string_at(span_metrics, &["duration"], CONFIG));
    }
    let rules = yaml(RULES);
    for group in sequence(&rules, "groups", RULES) {
        for rule in sequence(group, "rules", RULES) {
            if let Some(record) = rule.get("record").and_then(Value::as_str) {
                allowed.insert(record.to_string());
            }
        }
    }
    allowed
}

const AGGREGATIONS: [&str; 14] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const KEYWORDS: [&str; 8] = [
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];
/// Keywords followed by a parenthesised list of label names.
const LABEL_LIST_KEYWORDS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression (possibly with Grafana variables) selects: every
/// identifier that is not a function, aggregation, keyword, label name or part of a label
/// matcher, duration, number or string; plus `__name__="..."` matchers.
fn promql_metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_string = |mut i: usize| -> usize {
        let quote = chars[i];
        i += 1;
        while i < chars.len() && chars[i] != quote {
            if chars[i] == '\\' {
                i += 1;
            }
            i += 1;
        }
        i + 1
    };
    let skip_ws = |mut i: usize| -> usize {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let skip_group = |mut i: usize, open: char, close: char| -> Result<(usize, String), String> {
        let start = i + 1;
        let mut depth = 0;
        while i < chars.len() {
            let c = chars[i];
            if c == '"' || c == '\'' || c == '`' {
                i = skip_string(i);
                continue;
            }
            if c == open {
                depth += 1;
            } else if c == close {
                depth -= 1;
                if depth == 0 {
                    return Ok((i + 1, chars[start..i].iter().collect()));
                }
            }
            i += 1;
        }
        Err(format!("unbalanced {open}{close} in {expr}"))
    };
    let is_ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let name_matcher = regex::Regex::new(r#"__name__\s*(=~|!=|!~|=)\s*"([^"]*)""#).unwrap();
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(i);
        } else if c == '{' {
            let (next, matchers) = skip_group(i, '{', '}')?;
            for capture in name_matcher.captures_iter(&matchers) {
                if &capture[1] != "=" {
                    return Err(format!(
                        "a {}{} matcher on __name__ cannot be checked: {expr}",
                        &capture[1], &capture[2]
                    ));
                }
                names.insert(capture[2].to_string());
            }
            i = next;
        } else if c == '[' {
            i = skip_group(i, '[', ']')?.0;
        } else if c == '$' {
            // A Grafana variable: $name, ${name} or ${name:format}.
            i += 1;
            if i < chars.len() && chars[i] == '{' {
                i = skip_group(i, '{', '}')?.0;
            } else {
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // Numbers, durations (5m, 1h30m), hex, exponents.
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '_')
            {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let lower = word.to_ascii_lowercase();
            let next = skip_ws(i);
            let opens = chars.get(next) == Some(&'(');
            if LABEL_LIST_KEYWORDS.contains(&lower.as_str()) {
                if opens {
                    i = skip_group(next, '(', ')')?.0;
                }
            } else if KEYWORDS.contains(&lower.as_str())
                || AGGREGATIONS.contains(&lower.as_str())
                || opens
            {
                // A keyword, an aggregation or a function call.
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    Ok(names)
}

/// The PromQL inside a Grafana variable query: `label_values(selector, label)` ->
/// `selector`; `label_values(label)` and `label_names()` -> nothing; `query_result(expr)` ->
/// `expr`; anything else is PromQL as it is.
fn variable_query_promql(query: &str) -> Result<Option<String>, String> {
    let query = query.trim();
    let call = |name: &str| {
        query
            .strip_prefix(name)
            .and_then(|rest| rest.trim_start().strip_prefix('('))
            .and_then(|rest| rest.strip_suffix(')'))
    };
    if let Some(inner) = call("label_values") {
        return Ok(inner.rfind(',').map(|comma| inner[..comma].to_string()));
    }
    if call("label_names").is_some() {
        return Ok(None);
    }
    if let Some(inner) = call("query_result") {
        return Ok(Some(inner.to_string()));
    }
    if call("metrics").is_some() {
        return Err(format!("{query}: a metrics() variable cannot be checked"));
    }
    Ok(Some(query.to_string()))
}

/// Every PromQL expression of a dashboard, with where it is (panel title or variable).
fn dashboard_queries(dashboard: &serde_json::Value) -> Result<Vec<(String, String)>, String> {
    let mut queries = Vec::new();
    let mut panels: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    while let Some(panel) = panels.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                let title = panel["title"].as_str().unwrap_or("?");
                queries.push((format!("panel `{title}`"), expr.to_string()));
            }
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"]["query"]
            .as_str()
            .or_else(|| variable["query"].as_str())
            .ok_or_else(|| format!("variable {} has no query", variable["name"]))?;
        if let Some(expr) = variable_query_promql(query)? {
            queries.push((format!("variable `{}`", variable["name"]), expr));
        }
    }
    Ok(queries)
}

/// Problems of a dashboard: each query's metric names that spanlens does not emit.
fn unknown_dashboard_metrics(
    dashboard: &serde_json::Value,
    allowed: &BTreeSet<String>,
) -> Vec<String> {
    let queries = match dashboard_queries(dashboard) {
        Ok(queries) => queries,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    for (place, expr) in queries {
        match promql_metric_names(&expr) {
            Ok(names) => {
                for name in names.difference(allowed) {
                    problems.push(format!("{place}: {name} (in {expr})"));
                }
            }
            Err(e) => problems.push(format!("{place}: {e}")),
        }
    }
    problems
}

#[test]
fn dashboard_queries_use_only_metrics_spanlens_emits_or_records() {
    let dashboard = json(DASHBOARD);
    let allowed = allowed_metrics();
    let queries = dashboard_queries(&dashboard).unwrap();
    assert!(queries.len() >= 30, "{} queries", queries.len());
    let used: BTreeSet<String> = queries
        .iter()
        .flat_map(|(_, expr)| promql_metric_names(expr).unwrap())
        .collect();
    assert!(used.len() >= 30, "{used:?}");
    let problems = unknown_dashboard_metrics(&dashboard, &allowed);
    assert!(
        problems.is_empty(),
        "{DASHBOARD} queries metrics spanlens neither emits nor records:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_dashboard_check_catches_unknown_metrics() {
    let allowed = allowed_metrics();
    let mut dashboard = json(DASHBOARD);
    assert!(unknown_dashboard_metrics(&dashboard, &allowed).is_empty());

    // A metric spanlens does not emit, nested in a collapsed row.
    dashboard["panels"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "type": "row",
            "title": "bogus",
            "collapsed": true,
            "panels": [{
                "title": "bogus latency",
                "targets": [{
                    "expr": "histogram_quantile(0.95, sum by (le) (rate(tasker_bogus_duration_seconds_bucket{service=~\"$service\"}[$__rate_interval])))"
                }]
            }]
        }));
    // A variable over an unknown metric.
    dashboard["templating"]["list"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "type": "query",
            "name": "bogus",
            "query": {"query": "label_values(tasker_bogus_calls_total, service)"}
        }));
    let problems = unknown_dashboard_metrics(&dashboard, &allowed);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems[0].contains("tasker_bogus_duration_seconds_bucket"));
    assert!(problems[1].contains("tasker_bogus_calls_total"));
}

#[test]
fn promql_metric_names_skip_functions_keywords_labels_and_durations() {
    let names = |expr: &str| -> Vec<String> {
        promql_metric_names(expr)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .collect()
    };
    assert_eq!(
        names(
            r#"histogram_quantile(0.95, sum by (service, le) (rate(a_bucket{service=~"$service", x="rate(b)"}[$__rate_interval])))"#
        ),
        ["a_bucket"]
    );
    assert_eq!(
        names(
            "ns:a:p95_rate5m > 1.5 * (ns:a:p95_rate5m offset 1d)\nand on (service, handler_language) group_left(x) ns:calls:rate5m >= 0.05"
        ),
        ["ns:a:p95_rate5m", "ns:calls:rate5m"]
    );
    assert_eq!(
        names(
            "sum without (instance) (rate(c_total[5m:30s])) / ignoring(le) d_total unless e > bool 1e-3"
        ),
        ["c_total", "d_total", "e"]
    );
    assert_eq!(
        names(r#"up{job="spanlens"} == 0 or absent(up) * Inf"#),
        ["up"]
    );
    assert_eq!(names(r#"{__name__="f_total", job="x"}"#), ["f_total"]);
    assert_eq!(names("topk(5, g_total @ start())"), ["g_total"]);
    assert_eq!(names("count(h) by (x)"), ["h"]);
    assert_eq!(
        names(r#"i_total{service=~"${service:regex}"} / $scale"#),
        ["i_total"]
    );
    assert!(promql_metric_names(r#"{__name__=~"tasker_.+"}"#).is_err());
    assert!(promql_metric_names("rate(x[5m)").is_err());

    assert_eq!(
        variable_query_promql(r#"label_values({job="spanlens"}, service)"#).unwrap(),
        Some(r#"{job="spanlens"}"#.to_string())
    );
    assert_eq!(
        variable_query_promql("label_values(service)").unwrap(),
        None
    );
    assert!(variable_query_promql("metrics(tasker_.*)").is_err());
}

#[test]
fn the_dashboard_has_every_stage_with_exemplars_and_the_variables() {
    let dashboard = json(DASHBOARD);
    let config = spanlens_config();
    let schema = dashboard["schemaVersion"].as_u64().unwrap_or(0);
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()));

    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for name in ["datasource", "service", "handler_language"] {
        assert!(
            variables.contains(&name),
            "no ${name} variable: {variables:?}"
        );
    }

    let mut panels: Vec<&serde_json::Value> = Vec::new();
    let mut stack: Vec<&serde_json::Value> =
        dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = stack.pop() {
        stack.extend(panel["panels"].as_array().into_iter().flatten());
        panels.push(panel);
    }
    let ids: Vec<u64> = panels.iter().filter_map(|p| p["id"].as_u64()).collect();
    let unique: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "panel ids repeat");
    assert_eq!(ids.len(), panels.len(), "every panel needs an id");

    // Per stage: p50/p95/p99 over the stage's buckets with exemplars, the alert threshold
    // drawn, and the calls and errors counters shown.
    let all_exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    // Per stage and per derived duration: p50/p95/p99 over its buckets with exemplars, its
    // alert thresholds drawn, and (for stages) the calls and errors counters shown.
    struct Histogram {
        name: String,
        metric: String,
        thresholds: Vec<f64>,
        counters: Vec<String>,
    }
    let mut histograms = Vec::new();
    for (stage, spec) in config["stages"].as_mapping().unwrap() {
        histograms.push(Histogram {
            name: stage.as_str().unwrap().to_string(),
            metric: string_at(spec, &["histogram"], CONFIG).to_string(),
            thresholds: spec
                .get("alert")
                .and_then(|a| a.get("above_seconds"))
                .and_then(Value::as_f64)
                .into_iter()
                .collect(),
            counters: ["calls", "errors"]
                .iter()
                .map(|c| string_at(spec, &[c], CONFIG).to_string())
                .collect(),
        });
    }
    for (name, spec) in config
        .get("derived")
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
    {
        histograms.push(Histogram {
            name: name.as_str().unwrap().to_string(),
            metric: string_at(spec, &["histogram"], CONFIG).to_string(),
            thresholds: spec
                .get("alerts")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
                .filter_map(|a| a.get("above_seconds").and_then(Value::as_f64))
                .collect(),
            counters: Vec::new(),
        });
    }
    assert!(histograms.len() >= 8);
    for histogram in &histograms {
        let name = &histogram.name;
        let bucket = format!("{}_bucket", histogram.metric);
        let panel = panels
            .iter()
            .find(|p| {
                p["targets"].as_array().into_iter().flatten().any(|t| {
                    t["exemplar"] == true && t["expr"].as_str().is_some_and(|e| e.contains(&bucket))
                })
            })
            .unwrap_or_else(|| panic!("{DASHBOARD}: no latency panel with exemplars on {bucket}"));
        for quantile in ["0.5", "0.95", "0.99"] {
            let wanted = format!("histogram_quantile({quantile},");
            assert!(
                panel["targets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t["expr"]
                        .as_str()
                        .is_some_and(|e| e.contains(&wanted) && e.contains(&bucket))),
                "{DASHBOARD}: {name} has no p{quantile} of {bucket}"
            );
        }
        let steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
            .as_array()
            .unwrap();
        for threshold in &histogram.thresholds {
            assert!(
                steps
                    .iter()
                    .any(|s| s["value"].as_f64() == Some(*threshold)),
                "{DASHBOARD}: the {name} latency panel does not draw its alert threshold {threshold}"
            );
        }
        for counter in &histogram.counters {
            assert!(
                all_exprs.iter().any(|e| e.contains(counter.as_str())),
                "{DASHBOARD}: {counter} is never shown"
            );
        }
    }
    for own in [
        "spanlens_spans_refused_total",
        "spanlens_requests_refused_total",
        "spanlens_label_overflow_total",
    ] {
        assert!(
            all_exprs.iter().any(|e| e.contains(own)),
            "{own} is never shown"
        );
    }

    // Job matchers name the configured scrape job.
    let job = scrape_job(&config);
    let job_matcher = regex::Regex::new(r#"job\s*=\s*"([^"]*)""#).unwrap();
    let text = read(DASHBOARD).replace("\\\"", "\"");
    for capture in job_matcher.captures_iter(&text) {
        assert_eq!(
            &capture[1], job,
            "{DASHBOARD}: a query selects job {}",
            &capture[1]
        );
    }

    // Exemplar trace ids link to Jaeger through the provisioned Prometheus data source.
    let datasources = yaml(GRAFANA_DATASOURCES);
    let prometheus = sequence(&datasources, "datasources", GRAFANA_DATASOURCES)
        .iter()
        .find(|d| d.get("type").and_then(Value::as_str) == Some("prometheus"))
        .expect("a Prometheus data source");
    let destinations = prometheus
        .get("jsonData")
        .and_then(|j| j.get("exemplarTraceIdDestinations"))
        .and_then(Value::as_sequence)
        .expect("exemplarTraceIdDestinations");
    let jaeger_uid = sequence(&datasources, "datasources", GRAFANA_DATASOURCES)
        .iter()
        .find(|d| d.get("type").and_then(Value::as_str) == Some("jaeger"))
        .map(|d| string_at(d, &["uid"], GRAFANA_DATASOURCES))
        .expect("a Jaeger data source");
    assert!(destinations.iter().any(|d| {
        d.get("name").and_then(Value::as_str) == Some("trace_id")
            && d.get("datasourceUid").and_then(Value::as_str) == Some(jaeger_uid)
    }));
}

/// Every `slo` of the shipped config has a panel with its recorded slow ratios (the windows
/// of both burn-rate alerts' long sides and the 3d one) and one with the error budget left,
/// computed with the configured objective.
#[test]
fn the_dashboard_shows_every_slo_with_its_budget() {
    let dashboard = json(DASHBOARD);
    let config = spanlens_config();
    let queries: Vec<String> = dashboard_queries(&dashboard)
        .unwrap()
        .into_iter()
        .map(|(_, expr)| expr)
        .collect();
    let mut slos = Vec::new();
    for (section, level) in [("stages", None), ("derived", Some("labels"))] {
        for (name, spec) in config
            .get(section)
            .and_then(Value::as_mapping)
            .into_iter()
            .flatten()
        {
            let Some(slo) = spec.get("slo") else { continue };
            let level = match level {
                None => "service_handler_language".to_string(),
                Some(key) => {
                    let labels = strings(spec.get(key));
                    if labels.is_empty() {
                        "all".to_string()
                    } else {
                        labels.join("_")
                    }
                }
            };
            let objective = slo
                .get("objective")
                .and_then(Value::as_f64)
                .unwrap_or_else(|| panic!("{CONFIG}: {section}.{name:?}.slo has no objective"));
            let histogram = string_at(spec, &["histogram"], CONFIG);
            slos.push((format!("{level}:{histogram}"), objective));
        }
    }
    assert!(slos.len() >= 2, "{CONFIG} has {} SLOs", slos.len());
    for (recorded, objective) in &slos {
        for window in ["5m", "1h", "6h", "3d"] {
            let series = format!("{recorded}:slow_ratio_rate{window}");
            assert!(
                queries.iter().any(|q| q.contains(&format!("{series}{{"))),
                "{DASHBOARD}: no panel shows {series}"
            );
        }
        let budget = format!("1 - {recorded}:slow_ratio_rate3d");
        let per = format!("/ (1 - {objective})");
        assert!(
            queries
                .iter()
                .any(|q| q.starts_with(&budget) && q.ends_with(&per)),
            "{DASHBOARD}: no error-budget panel `{budget}{{...}} {per}`"
        );
    }
}
