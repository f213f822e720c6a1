//! Several spanlens instances behind one Prometheus ([`super::chain::Chain`] scraping them all
//! under one job), for the scale-out tests of issue 23: instances on ports chosen once, so that
//! one can be restarted on the same addresses (the same Prometheus target); a wait until
//! Prometheus has scraped what each instance now holds; and the series of one instance
//! compared, sum by sum, with the sum over a group of others.

use super::chain::{Chain, free_port};
use super::{scrape, test_config};
use serde_json::Value;
use spanlens::config::Config;
use spanlens::server::Server;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

/// The default profile (edited by `edit`) with every listener on a loopback port chosen now,
/// not at bind time: a restarted instance listens where it did before.
pub fn pinned_config(edit: impl FnOnce(&mut Config)) -> Config {
    let port = || SocketAddr::from(([127, 0, 0, 1], free_port()));
    test_config(|c| {
        c.receivers.grpc.endpoint = port();
        c.receivers.http.endpoint = port();
        c.metrics.endpoint = port();
        edit(c);
    })
}

/// The `instance` label Prometheus gives `server`'s metrics endpoint.
pub fn instance(server: &Server) -> String {
    server.metrics_addr().to_string()
}

/// A regex matching exactly the `instance` labels of `servers`.
pub fn instances(servers: &[&Server]) -> String {
    servers
        .iter()
        .map(|s| instance(s).replace('.', "\\\\."))
        .collect::<Vec<_>>()
        .join("|")
}

/// Waits until every one of `servers` is up in Prometheus and its latest scraped
/// `spanlens_spans_accepted_total` equals what the server reports now (call it once nothing
/// more is sent: then Prometheus holds everything the servers counted).
pub async fn wait_scraped(chain: &Chain, servers: &[&Server], timeout: Duration) {
    let mut want = BTreeMap::new();
    for server in servers {
        let accepted = scrape(server)
            .await
            .sum("spanlens_spans_accepted_total", &[]);
        want.insert(instance(server), accepted);
    }
    // Up targets that have accepted nothing yet have no such series: 0 for them.
    let job = &chain.job;
    let query = format!(
        "sum by (instance) (spanlens_spans_accepted_total{{job=\"{job}\"}}) \
         or sum by (instance) (0 * (up{{job=\"{job}\"}} == 1))"
    );
    chain
        .until(
            &format!("Prometheus to scrape spans accepted {want:?}"),
            timeout,
            async || {
                let seen = by_instance(&chain.query(&query).await?);
                want.iter()
                    .all(|(instance, n)| seen.get(instance) == Some(n))
                    .then_some(())
            },
        )
        .await;
}

fn by_instance(result: &[Value]) -> BTreeMap<String, f64> {
    result
        .iter()
        .filter_map(|r| {
            let instance = r["metric"]["instance"].as_str()?.to_string();
            let value = r["value"][1].as_str()?.parse().ok()?;
            Some((instance, value))
        })
        .collect()
}

/// Every series name of the stage, derived, comparison and span-metrics histograms and counters
/// of `config`: what sidecars summed by Prometheus must report as one instance does.
pub fn summed_metrics(config: &Config) -> Vec<String> {
    let histogram = |name: &str| {
        ["_bucket", "_count", "_sum"]
            .into_iter()
            .map(|suffix| format!("{name}{suffix}"))
            .collect::<Vec<_>>()
    };
    let mut names = Vec::new();
    for stage in config.stages.values() {
        names.extend(histogram(&stage.histogram));
        names.push(stage.calls.clone());
        names.push(stage.errors.clone());
    }
    for derived in config.derived.values() {
        names.extend(histogram(&derived.histogram));
    }
    for comparison in config.comparisons.values() {
        names.extend(histogram(&comparison.histogram));
    }
    if config.span_metrics.enabled {
        names.extend(histogram(&config.span_metrics.duration));
        names.push(config.span_metrics.calls.clone());
    }
    names
}

/// What [`compare_sums`] found.
#[derive(Debug, Default)]
pub struct Sums {
    /// Series (name and labels but `instance`) present on both sides with equal values.
    pub equal: usize,
    /// Those with a different value on each side, or on one side only: name, labels, the sum
    /// over the group and the one instance's value (None where absent).
    pub differing: Vec<(String, String, Option<String>, Option<String>)>,
}

/// For every metric of `names`, `sum without (instance) (...)` over the instances matching
/// `group` (a regex, see [`instances`]) against the series of the instance `one`, label set by
/// label set (`le` included), each value as Prometheus prints it: equal means exactly equal.
pub async fn compare_sums(chain: &Chain, names: &[String], group: &str, one: &str) -> Sums {
    let mut sums = Sums::default();
    for name in names {
        let side = async |selector: String| -> BTreeMap<String, String> {
            let query = format!("sum without (instance) ({name}{{{selector}}})");
            chain
                .query(&query)
                .await
                .expect("Prometheus answers")
                .iter()
                .map(|r| {
                    (
                        r["metric"].to_string(),
                        r["value"][1].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        };
        let summed = side(format!("instance=~\"{group}\"")).await;
        let single = side(format!("instance=\"{one}\"")).await;
        let labels: BTreeSet<&String> = summed.keys().chain(single.keys()).collect();
        for labels in labels {
            let (a, b) = (summed.get(labels), single.get(labels));
            if a.is_some() && a == b {
                sums.equal += 1;
            } else {
                sums.differing
                    .push((name.clone(), labels.clone(), a.cloned(), b.cloned()));
            }
        }
    }
    sums
}
