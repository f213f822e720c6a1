//! The shipped deploy/ files as data, for the tests that check them (tests/cli/deploy_files.rs)
//! and the tests that do what they configure (tests/derived/scale_out.rs routes as the gateway
//! manifest's Collector does): YAML documents with merge keys applied, and how the gateway's
//! Collector routes spans to spanlens replicas.

use serde::Deserialize;
use std::path::Path;
use yaml_serde::Value;

/// The key-affine gateway: an OpenTelemetry Collector in front of spanlens replicas.
pub const GATEWAY: &str = "deploy/kubernetes/spanlens-gateway.yaml";

pub fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every document of a YAML file, with merge keys (`<<: *anchor`) applied.
pub fn yaml_documents(path: impl AsRef<Path>) -> Vec<Value> {
    let path = path.as_ref();
    let text = read(path);
    yaml_serde::Deserializer::from_str(&text)
        .enumerate()
        .map(|(index, document)| {
            let mut value = Value::deserialize(document).unwrap_or_else(|e| {
                panic!(
                    "{}: document {} is not valid YAML: {e}",
                    path.display(),
                    index + 1
                )
            });
            value.apply_merge().unwrap_or_else(|e| {
                panic!(
                    "{}: document {}: merge keys: {e}",
                    path.display(),
                    index + 1
                )
            });
            value
        })
        .collect()
}

/// The document of the gateway manifest with this kind and metadata.name.
pub fn gateway_document(kind: &str, name: &str) -> Value {
    yaml_documents(GATEWAY)
        .into_iter()
        .find(|d| {
            d.get("kind").and_then(Value::as_str) == Some(kind)
                && d.get("metadata")
                    .and_then(|m| m.get("name"))
                    .and_then(Value::as_str)
                    == Some(name)
        })
        .unwrap_or_else(|| panic!("{GATEWAY}: no {kind} named {name}"))
}

/// The Collector config of the gateway (collector.yaml of ConfigMap spanlens-gateway-collector).
pub fn gateway_collector() -> Value {
    let config_map = gateway_document("ConfigMap", "spanlens-gateway-collector");
    let text = config_map
        .get("data")
        .and_then(|d| d.get("collector.yaml"))
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{GATEWAY}: the ConfigMap has no data.collector.yaml"));
    yaml_serde::from_str(text)
        .unwrap_or_else(|e| panic!("{GATEWAY}: collector.yaml is not YAML: {e}"))
}

/// The exporters of the Collector config whose type is the load-balancing exporter
/// (`loadbalancing`, or `load_balancing` from contrib v0.153.0), by id (`type[/name]`).
pub fn load_balancing_exporters(collector: &Value) -> Vec<(String, &Value)> {
    collector
        .get("exporters")
        .and_then(Value::as_mapping)
        .map(|exporters| {
            exporters
                .iter()
                .filter_map(|(id, config)| {
                    let id = id.as_str()?;
                    let kind = id.split('/').next()?;
                    matches!(kind, "loadbalancing" | "load_balancing")
                        .then(|| (id.to_string(), config))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// How the gateway's Collector routes a span.
#[derive(Debug)]
pub struct GatewayRouting {
    /// The one attribute the load-balancing exporter hashes (`routing_attributes`).
    pub attribute: String,
    /// The transform processor copies into it the first of these span attributes the span has
    /// (its statements in reverse: the last that applies wins).
    pub keys: Vec<String>,
    /// Whether a span with none of them is routed by its trace id (else all such spans share
    /// one replica).
    pub trace_id_fallback: bool,
}

/// The routing of the gateway manifest's Collector, read from its load-balancing exporter and
/// the `set(attributes[...], ...)` statements of its transform processors.
pub fn gateway_routing() -> GatewayRouting {
    let collector = gateway_collector();
    let exporters = load_balancing_exporters(&collector);
    assert_eq!(exporters.len(), 1, "{GATEWAY}: one load-balancing exporter");
    let attributes: Vec<&str> = exporters[0]
        .1
        .get("routing_attributes")
        .and_then(Value::as_sequence)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let [attribute] = attributes.as_slice() else {
        panic!("{GATEWAY}: routing_attributes must name one attribute, not {attributes:?}");
    };
    let target = format!("set(attributes[\"{attribute}\"], ");
    let mut keys = Vec::new();
    let mut trace_id_fallback = false;
    let processors = collector.get("processors").and_then(Value::as_mapping);
    for (id, processor) in processors.into_iter().flatten() {
        let kind = id.as_str().and_then(|id| id.split('/').next());
        if kind != Some("transform") {
            continue;
        }
        let groups = processor
            .get("trace_statements")
            .and_then(Value::as_sequence);
        for group in groups.into_iter().flatten() {
            let statements = group.get("statements").and_then(Value::as_sequence);
            for statement in statements.into_iter().flatten().filter_map(Value::as_str) {
                let Some(rest) = statement.strip_prefix(&target) else {
                    continue;
                };
                if rest == "trace_id.string)" {
                    assert!(
                        keys.is_empty(),
                        "{GATEWAY}: the trace id must come first: {statement}"
                    );
                    trace_id_fallback = true;
                    continue;
                }
                let key = rest
                    .strip_prefix("attributes[\"")
                    .and_then(|r| r.split_once("\"])"))
                    .map(|(key, _)| key)
                    .unwrap_or_else(|| panic!("{GATEWAY}: unexpected statement {statement}"));
                assert!(
                    statement.ends_with(&format!(" where attributes[\"{key}\"] != nil")),
                    "{GATEWAY}: {statement} must apply only where {key} is set"
                );
                keys.push(key.to_string());
            }
        }
    }
    keys.reverse();
    GatewayRouting {
        attribute: attribute.to_string(),
        keys,
        trace_id_fallback,
    }
}
