use super::*;
use std::sync::Arc;

fn store(max_series: usize, cap: usize) -> Store {
    Store::new(StoreSpec {
        metrics: vec![
            MetricSpec {
                name: "h_seconds".into(),
                help: "h".into(),
                kind: MetricKind::Histogram {
                    bounds: Arc::from(vec![0.01, 0.1, 1.0]),
                },
                label_names: vec!["service".into()],
            },
            MetricSpec {
                name: "c_total".into(),
                help: "c".into(),
                kind: MetricKind::Counter,
                label_names: vec!["service".into()],
            },
            MetricSpec {
                name: "label_overflow_total".into(),
                help: "l".into(),
                kind: MetricKind::Counter,
                label_names: vec!["label".into()],
            },
            MetricSpec {
                name: "series_overflow_total".into(),
                help: "s".into(),
                kind: MetricKind::Counter,
                label_names: vec!["metric".into()],
            },
        ],
        dimensions: vec![("service".into(), cap)],
        overflow_value: "__overflow__".into(),
        max_series_per_metric: max_series,
        label_overflow: Some(MetricId(2)),
        series_overflow: Some(MetricId(3)),
        keep_raw_values: false,
    })
}

fn exemplar(value: f64, id: u8) -> Exemplar {
    Exemplar {
        trace_id: [id; 16],
        span_id: [id; 8],
        value,
        timestamp_unix_nano: 1,
        epoch: 0,
    }
}

#[test]
fn histograms_count_per_bucket_with_le_semantics() {
    let store = store(100, 100);
    let mut w = store.writer();
    for v in [0.005, 0.01, 0.05, 0.1, 2.0] {
        w.observe(MetricId(0), &["a"], v, exemplar(v, 1));
    }
    drop(w);
    let s = store.snapshot().get(MetricId(0), &["a"]).unwrap();
    let Values::Histogram {
        cumulative, sum, ..
    } = s.values
    else {
        panic!()
    };
    assert_eq!(cumulative, vec![2, 4, 4, 5]);
    assert!((sum - 2.165).abs() < 1e-12);
}

#[test]
fn shards_merge_and_keep_the_slowest_exemplar_of_the_interval() {
    let store = Arc::new(store(100, 100));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut w = store.writer();
                w.observe(
                    MetricId(0),
                    &["a"],
                    0.02 * f64::from(t + 1),
                    exemplar(0.0, t as u8),
                );
                w.add(MetricId(1), &["a"], 3);
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let snap = store.snapshot();
    let Values::Histogram { exemplar: kept, .. } = snap.get(MetricId(0), &["a"]).unwrap().values
    else {
        panic!()
    };
    assert_eq!(kept.unwrap().value, 0.08);
    assert_eq!(
        snap.get(MetricId(1), &["a"]).unwrap().values,
        Values::Counter(12)
    );
    // A new interval: the next observation replaces the exemplar even though it is faster.
    store
        .writer()
        .observe(MetricId(0), &["a"], 0.001, exemplar(0.001, 9));
    let Values::Histogram { exemplar: kept, .. } =
        store.snapshot().get(MetricId(0), &["a"]).unwrap().values
    else {
        panic!()
    };
    assert_eq!(kept.unwrap().span_id, [9; 8]);
}

#[test]
fn label_values_past_the_cap_overflow_and_are_counted() {
    let store = store(100, 2);
    let mut w = store.writer();
    let names: Vec<&str> = ["a", "b", "c", "a", "d"]
        .iter()
        .map(|v| w.admitted(DimensionId(0), v))
        .collect();
    assert_eq!(names, vec!["a", "b", "__overflow__", "a", "__overflow__"]);
    drop(w);
    assert_eq!(
        store
            .snapshot()
            .get(MetricId(2), &["service"])
            .unwrap()
            .values,
        Values::Counter(2)
    );
}

#[test]
fn series_past_the_cap_fold_into_the_overflow_series() {
    let store = store(2, 100);
    let mut w = store.writer();
    for service in ["a", "b", "c", "d", "a"] {
        w.add(MetricId(1), &[service], 1);
    }
    drop(w);
    let snap = store.snapshot();
    let all: Vec<_> = snap
        .series(MetricId(1))
        .map(|s| (s.labels[0].to_string(), s.values))
        .collect();
    assert_eq!(
        all,
        vec![
            ("__overflow__".to_string(), Values::Counter(2)),
            ("a".to_string(), Values::Counter(2)),
            ("b".to_string(), Values::Counter(1)),
        ]
    );
    assert_eq!(
        snap.get(MetricId(3), &["c_total"]).unwrap().values,
        Values::Counter(2)
    );
}
