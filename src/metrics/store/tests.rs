use super::*;
use std::sync::Arc;

fn store(max_series: usize, cap: usize) -> Store {
    store_expiring(max_series, cap, None)
}

fn store_expiring(max_series: usize, cap: usize, idle: Option<Duration>) -> Store {
    store_keeping(max_series, cap, idle, Vec::new())
}

fn store_keeping(
    max_series: usize,
    cap: usize,
    idle: Option<Duration>,
    never_expire: Vec<MetricId>,
) -> Store {
    Store::new(StoreSpec {
        metrics: vec![
            MetricSpec::new(
                "h_seconds",
                "h",
                MetricKind::Histogram {
                    bounds: Arc::from(vec![0.01, 0.1, 1.0]),
                    native: Some(native_spec()),
                },
                &["service"],
            ),
            MetricSpec::new("c_total", "c", MetricKind::Counter, &["service"]),
            MetricSpec::new("label_overflow_total", "l", MetricKind::Counter, &["label"]),
            MetricSpec::new(
                "series_overflow_total",
                "s",
                MetricKind::Counter,
                &["metric"],
            ),
        ],
        dimensions: vec![("service".into(), cap)],
        overflow_value: "__overflow__".into(),
        max_series_per_metric: max_series,
        label_overflow: Some(MetricId(2)),
        series_overflow: Some(MetricId(3)),
        keep_raw_values: false,
        series_idle_timeout: idle,
        never_expire,
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
        w.observe(MetricId(0), &["a"], v, 1.0, Some(exemplar(v, 1)));
    }
    drop(w);
    let s = store.snapshot().get(MetricId(0), &["a"]).unwrap();
    let Values::Histogram {
        cumulative, sum, ..
    } = s.values
    else {
        panic!()
    };
    assert_eq!(cumulative, vec![2.0, 4.0, 4.0, 5.0]);
    assert!((sum - 2.165).abs() < 1e-12);
}

fn native_spec() -> NativeSpec {
    NativeSpec::new(3, 12, 1e-9)
}

#[test]
fn native_buckets_merge_over_shards_into_what_one_writer_would_hold() {
    let store = Arc::new(store(100, 100));
    let values =
        |t: u32| (0..200).map(move |i| 0.0001 * 1.05f64.powi((i * 7 + t as i32 * 13) % 200));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut w = store.writer();
                for v in values(t) {
                    w.observe(MetricId(0), &["a"], v, 1.0, None);
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let spec = native_spec();
    let mut alone = Native::new(&spec);
    (0..4)
        .flat_map(values)
        .for_each(|v| alone.observe(&spec, v, 1.0));
    let snap = store.snapshot();
    let (_, cell) = snap.cells(MetricId(0)).next().unwrap();
    let Cell::Histogram { native, counts, .. } = cell else {
        panic!("{cell:?}")
    };
    let native = native.as_ref().expect("the metric keeps native buckets");
    assert_eq!(native.count(), counts.iter().sum::<f64>());
    assert_eq!(native.count(), 800.0);
    // A shard's copy may have lowered its schema at a different moment; the merge meets the
    // lowest, where every layout of the same values is the same.
    assert!(native.positive().count() <= 12);
    assert_eq!(native.schema(), alone.schema());
    assert_eq!(
        native.positive().collect::<Vec<_>>(),
        alone.positive().collect::<Vec<_>>()
    );
}

#[test]
fn a_value_goes_to_the_first_bucket_whose_bound_holds_it() {
    let bounds: [f64; 14] = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.8, 1.0, 2.5, 5.0, 10.0,
    ];
    let mut values = vec![0.0, -1.0, 20.0, f64::INFINITY, f64::MIN_POSITIVE];
    for b in bounds {
        // The bound and its neighbours (the bounds are positive).
        values.extend([
            b,
            f64::from_bits(b.to_bits() - 1),
            f64::from_bits(b.to_bits() + 1),
        ]);
    }
    for value in values {
        let expected = bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(bounds.len());
        assert_eq!(bucket_of(&bounds, value), expected, "{value}");
    }
    assert_eq!(bucket_of(&[], 1.0), 0);
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
                    1.0,
                    Some(exemplar(0.0, t as u8)),
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
        Values::Counter(12.0)
    );
    // A new interval: the next observation replaces the exemplar even though it is faster.
    store
        .writer()
        .observe(MetricId(0), &["a"], 0.001, 1.0, Some(exemplar(0.001, 9)));
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
        Values::Counter(2.0)
    );
}

#[test]
fn series_past_the_cap_fold_into_the_overflow_series() {
    let store = store(2, 100);
    count_each(&store, &["a", "b", "c", "d", "a"]);
    let snap = store.snapshot();
    assert_eq!(
        by_service(&snap, 1),
        counters(&[("__overflow__", 2), ("a", 2), ("b", 1)])
    );
    assert_eq!(
        snap.get(MetricId(3), &["c_total"]).unwrap().values,
        Values::Counter(2.0)
    );
}

#[test]
fn snapshot_series_stay_sorted_and_values_set_at_snapshot_time_replace() {
    let store = store(100, 100);
    count_each(&store, &["d", "b"]);
    let mut snap = store.snapshot();
    snap.set_counter(MetricId(1), &["c"], 5);
    snap.set_counter(MetricId(1), &["a"], 7);
    snap.set_counter(MetricId(1), &["b"], 9);
    snap.set_gauge(MetricId(1), &["e"], 1.0);
    assert_eq!(
        by_service(&snap, 1),
        vec![
            ("a".to_string(), Values::Counter(7.0)),
            ("b".to_string(), Values::Counter(9.0)),
            ("c".to_string(), Values::Counter(5.0)),
            ("d".to_string(), Values::Counter(1.0)),
            ("e".to_string(), Values::Gauge(1.0)),
        ]
    );
    assert_eq!(snap.series(MetricId(0)).count(), 0);
    assert_eq!(snap.series(MetricId(2)).count(), 0);
}

/// The series of one metric (labelled by service only) as (service, values), in order.
/// Adds 1 to counter 1 for each service, as written (no admission).
fn count_each(store: &Store, services: &[&str]) {
    let mut w = store.writer();
    for service in services {
        w.add(MetricId(1), &[service], 1);
    }
}

fn counters(expected: &[(&str, u64)]) -> Vec<(String, Values)> {
    expected
        .iter()
        .map(|&(service, n)| (service.to_string(), Values::Counter(n as f64)))
        .collect()
}

fn by_service(snap: &Snapshot, metric: usize) -> Vec<(String, Values)> {
    snap.series(MetricId(metric))
        .map(|s| (s.labels[0].to_string(), s.values))
        .collect()
}

const TIMEOUT: Duration = Duration::from_secs(10);

fn counter(snap: &Snapshot, metric: usize, labels: &[&str]) -> Option<u64> {
    snap.get(MetricId(metric), labels).map(|s| match s.values {
        Values::Counter(n) => n as u64,
        other => panic!("not a counter: {other:?}"),
    })
}

fn observations(snap: &Snapshot, labels: &[&str]) -> Option<u64> {
    snap.get(MetricId(0), labels).map(|s| match s.values {
        Values::Histogram { cumulative, .. } => *cumulative.last().unwrap() as u64,
        other => panic!("not a histogram: {other:?}"),
    })
}

/// Admits each service and counts and observes it once, from this thread's shard.
fn write(store: &Store, services: &[&str]) {
    let mut w = store.writer();
    for service in services {
        let service = w.admitted(DimensionId(0), service);
        w.add(MetricId(1), &[service], 1);
        w.observe(MetricId(0), &[service], 0.05, 1.0, Some(exemplar(0.05, 1)));
    }
}

fn dimension_values(store: &Store) -> Vec<String> {
    let mut values: Vec<String> = read(&store.dimensions[0].values)
        .keys()
        .map(|v| v.to_string())
        .collect();
    values.sort();
    values
}

#[test]
fn idle_series_expire_after_the_timeout_and_recent_ones_stay() {
    for idle in [Some(TIMEOUT), None] {
        let store = store_expiring(100, 100, idle);
        write(&store, &["old", "recent"]);
        let t0 = Instant::now();
        assert_eq!(store.expire_idle(t0), 0);
        write(&store, &["recent"]);
        assert_eq!(
            store.expire_idle(t0 + TIMEOUT - Duration::from_millis(1)),
            0
        );
        let expired = store.expire_idle(t0 + TIMEOUT);
        // Time never runs backwards: this real-time snapshot counts as at t0 + TIMEOUT.
        let snap = store.snapshot();
        assert_eq!(counter(&snap, 1, &["recent"]), Some(2));
        assert_eq!(observations(&snap, &["recent"]), Some(2));
        if idle.is_some() {
            assert_eq!(expired, 2, "the counter and the histogram of old");
            assert_eq!(counter(&snap, 1, &["old"]), None);
            assert_eq!(observations(&snap, &["old"]), None);
            assert_eq!(dimension_values(&store), vec!["recent"]);
            assert_eq!(store.series_count(), 2);
        } else {
            assert_eq!(expired, 0);
            assert_eq!(counter(&snap, 1, &["old"]), Some(1));
            assert_eq!(dimension_values(&store), vec!["old", "recent"]);
            assert_eq!(store.series_count(), 4);
        }

        // Written again after it expired, old restarts from zero (a counter reset); recent,
        // idle since, goes in turn.
        write(&store, &["old"]);
        let expired = store.expire_idle(t0 + 3 * TIMEOUT);
        let snap = store.snapshot();
        if idle.is_some() {
            assert_eq!(expired, 2);
            assert_eq!(counter(&snap, 1, &["old"]), Some(1));
            assert_eq!(counter(&snap, 1, &["recent"]), None);
            assert_eq!(dimension_values(&store), vec!["old"]);
        } else {
            assert_eq!(expired, 0);
            assert_eq!(counter(&snap, 1, &["old"]), Some(2));
            assert_eq!(counter(&snap, 1, &["recent"]), Some(2));
            assert_eq!(store.expire_idle(t0 + 1000 * TIMEOUT), 0);
            assert_eq!(store.series_count(), 4);
        }
    }
}

/// Writes service "a" from a new thread whose shard is not `avoid` (new threads until one
/// is); returns that shard.
fn write_from_another_shard(store: &Arc<Store>, avoid: Option<usize>) -> usize {
    for _ in 0..1000 {
        let store = store.clone();
        let shard = std::thread::spawn(move || {
            let w = store.writer();
            let hint = SHARD_HINT.with(|h| h.get()).unwrap();
            drop(w);
            let shard = hint % store.shards.len();
            if Some(shard) != avoid {
                write(&store, &["a"]);
            }
            shard
        })
        .join()
        .unwrap();
        if Some(shard) != avoid {
            return shard;
        }
    }
    panic!("every new thread took shard {avoid:?}");
}

fn slots_in(store: &Store, shard: usize) -> usize {
    lock(&store.shards[shard]).slots.len()
}

#[test]
fn a_series_written_in_two_shards_expires_only_when_idle_in_both() {
    let store = Arc::new(store_expiring(100, 100, Some(TIMEOUT)));
    let first = write_from_another_shard(&store, None);
    let t0 = Instant::now();
    store.expire_idle(t0);
    let second = write_from_another_shard(&store, Some(first));
    assert_eq!((slots_in(&store, first), slots_in(&store, second)), (2, 2));

    // Idle in the first shard only: the series lives on, with the counts of both.
    assert_eq!(store.expire_idle(t0 + TIMEOUT), 0);
    let snap = store.snapshot();
    assert_eq!(counter(&snap, 1, &["a"]), Some(2));
    assert_eq!(observations(&snap, &["a"]), Some(2));
    assert_eq!(store.series_count(), 2);
    // It keeps counting up from there.
    write_from_another_shard(&store, None);
    assert_eq!(counter(&store.snapshot(), 1, &["a"]), Some(3));

    // Idle everywhere: gone.
    assert_eq!(store.expire_idle(t0 + 3 * TIMEOUT), 2);
    let snap = store.snapshot();
    assert_eq!(counter(&snap, 1, &["a"]), None);
    assert_eq!(observations(&snap, &["a"]), None);
    assert_eq!(store.series_count(), 0);
    assert!(dimension_values(&store).is_empty());
}

#[test]
fn expired_label_values_free_their_place_under_the_cap() {
    let store = store_expiring(100, 3, Some(TIMEOUT));
    write(&store, &["a", "b", "c"]);
    let t0 = Instant::now();
    store.expire_idle(t0);
    assert_eq!(store.expire_idle(t0 + TIMEOUT), 6);
    assert!(dimension_values(&store).is_empty());
    for shard in store.shards.iter() {
        assert!(lock(shard).admitted[0].is_empty());
    }

    let mut w = store.writer();
    let kept: Vec<&str> = ["d", "e", "f"]
        .iter()
        .map(|v| w.admitted(DimensionId(0), v))
        .collect();
    assert_eq!(kept, vec!["d", "e", "f"]);
    for service in &kept {
        w.add(MetricId(1), &[service], 1);
    }
    // The cap still holds, over the live values.
    assert_eq!(w.admitted(DimensionId(0), "g"), "__overflow__");
    drop(w);
    let snap = store.snapshot();
    assert_eq!(counter(&snap, 2, &["service"]), Some(1), "g only");
    let live: Vec<_> = snap
        .series(MetricId(1))
        .map(|s| s.labels[0].to_string())
        .collect();
    assert_eq!(live, vec!["d", "e", "f"]);
}

#[test]
fn expired_series_free_their_place_under_the_series_cap() {
    let store = store_expiring(2, 100, Some(TIMEOUT));
    count_each(&store, &["a", "b"]);
    let t0 = Instant::now();
    store.expire_idle(t0);
    assert_eq!(store.expire_idle(t0 + TIMEOUT), 2);
    assert!(lock(&store.admitted_series[1]).is_empty());

    count_each(&store, &["c", "d", "e"]);
    let snap = store.snapshot();
    assert_eq!(
        by_service(&snap, 1),
        counters(&[("__overflow__", 1), ("c", 1), ("d", 1)])
    );
    assert_eq!(counter(&snap, 3, &["c_total"]), Some(1), "e only");
}

#[test]
fn churning_label_values_stay_bounded() {
    const ROUND: usize = 1_000;
    // One round a second, idle after 3 s: a series lives through its round and the next
    // three passes at most, so four rounds bound everything.
    const BOUND: usize = 4 * ROUND;
    let store = store_expiring(5 * ROUND, 5 * ROUND, Some(Duration::from_secs(3)));
    let t0 = Instant::now();
    for round in 0..200u64 {
        let mut w = store.writer();
        for i in 0..ROUND {
            let value = format!("{round}-{i}");
            let service = w.admitted(DimensionId(0), &value);
            assert_eq!(service, value, "round {round}: overflow");
            w.add(MetricId(1), &[service], 1);
        }
        drop(w);
        store.expire_idle(t0 + Duration::from_secs(round));
        let live = store.series_count();
        assert!((ROUND..=BOUND).contains(&live), "round {round}: {live}");
        let values = read(&store.dimensions[0].values).len();
        assert!(values <= BOUND, "round {round}: {values} values");
        let admitted = lock(&store.admitted_series[1]).len();
        assert!(admitted <= BOUND, "round {round}: {admitted} admitted");
        for shard in store.shards.iter() {
            let shard = lock(shard);
            assert!(shard.admitted[0].len() <= BOUND && shard.index.len() <= BOUND);
            assert!(shard.slots.capacity() <= 4 * BOUND + 64);
        }
    }
    let snap = store.snapshot();
    assert!(snap.get(MetricId(1), &["199-999"]).is_some());
    assert!(snap.get(MetricId(1), &["0-0"]).is_none());
    assert_eq!(counter(&snap, 2, &["service"]), None);
    assert_eq!(counter(&snap, 3, &["c_total"]), None);
}

#[test]
fn metrics_listed_as_never_expiring_keep_their_series() {
    let store = store_keeping(100, 100, Some(TIMEOUT), vec![MetricId(1)]);
    write(&store, &["old"]);
    let t0 = Instant::now();
    store.expire_idle(t0);
    assert_eq!(
        store.expire_idle(t0 + TIMEOUT),
        1,
        "only the histogram goes"
    );
    let snap = store.snapshot();
    assert_eq!(counter(&snap, 1, &["old"]), Some(1));
    assert_eq!(observations(&snap, &["old"]), None);
}

/// A label set's series of several metrics share one allocation of its values, and later
/// sets are still told apart by their values: a set that fell into one metric's overflow
/// series keeps its own values in another metric.
#[test]
fn a_sets_series_share_its_values_and_stay_exact() {
    let store = store(2, 100);
    let mut w = store.writer();
    let mut write = |service: &str, metrics: &[usize]| {
        let values = [service];
        let set = w.label_set(&values);
        for &m in metrics {
            match m {
                0 => w.observe_set(MetricId(0), set, 0.05, 1.0, None),
                _ => w.add_set(MetricId(m), set, 1),
            }
        }
    };
    write("a", &[0, 1]);
    write("b", &[1]);
    write("b", &[1]);
    // Metric 1 is full: "c" overflows there, and is its own series in metric 0.
    write("c", &[1, 0]);
    write("c", &[0, 1]);
    write("a", &[1, 0]);
    drop(w);
    let snap = store.snapshot();
    assert_eq!(observations(&snap, &["a"]), Some(2));
    assert_eq!(observations(&snap, &["c"]), Some(2));
    assert_eq!(observations(&snap, &["__overflow__"]), None);
    let counted = [("__overflow__", 2), ("a", 2), ("b", 2)];
    assert_eq!(
        by_service(&snap, 1),
        counted.map(|(s, n)| (s.to_string(), Values::Counter(f64::from(n))))
    );
    let keys: Vec<SeriesKey> = store
        .shards
        .iter()
        .flat_map(|shard| {
            lock(shard)
                .slots
                .iter()
                .map(|s| s.key.clone())
                .collect::<Vec<_>>()
        })
        .filter(|key| &*key.labels[0] == "a" && key.metric < 2)
        .collect();
    assert_eq!(keys.len(), 2);
    assert!(Arc::ptr_eq(&keys[0].labels, &keys[1].labels));
}

#[test]
fn a_store_filled_to_its_caps_holds_less_than_its_bound() {
    const MAX_SERIES: usize = 300;
    const LABEL: usize = 40;
    let store = store(MAX_SERIES, 200);
    let longest = u64::MAX as f64 / 1e9;
    for round in 0..2 {
        let mut w = store.writer();
        for i in 0..500 {
            // Past both the label cap and the series cap, every value as long as allowed.
            let value = format!("{i:x<LABEL$}");
            let value = w.admitted(DimensionId(0), &value).to_string();
            for seconds in [1e-9, 2e-9, longest, longest / 3.0] {
                w.observe(MetricId(0), &[&value], seconds + round as f64, 1.0, None);
            }
            w.add(MetricId(1), &[&value], 1);
        }
    }
    let bound = store.memory_bound(LABEL, 1);
    let held = store.held_bytes();
    assert!(
        held <= bound.series_bytes + bound.label_bytes,
        "held {held}, bound {} + {}",
        bound.series_bytes,
        bound.label_bytes
    );
    // Not absurdly loose either: the bound assumes every slot's own key, runs grown to twice
    // what they hold and the allocator's size classes (up to 2.5 times the counts alone).
    assert!(
        bound.series_bytes + bound.label_bytes <= 5 * held,
        "{bound:?} against {held}"
    );
}
