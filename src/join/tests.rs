use super::*;

/// A span from `start_ms` to `end_ms` after a fixed origin (offered spans never start at 0).
fn span(start_ms: u64, end_ms: u64, id: u8) -> PartSpan {
    const ORIGIN_MS: u64 = 1_000;
    PartSpan {
        start_unix_nano: (ORIGIN_MS + start_ms) * 1_000_000,
        end_unix_nano: (ORIGIN_MS + end_ms) * 1_000_000,
        trace_id: [id; 16],
        span_id: [id; 8],
    }
}

fn window(operation: Operation, parts: usize, max_pending: usize) -> JoinWindow {
    JoinWindow::new(
        vec![JoinSpec {
            operation,
            parts,
            labels: 1,
        }],
        max_pending,
        Duration::from_secs(60),
    )
}

/// One span of derived metric 0, where no key is expected to be evicted.
fn offer(
    w: &JoinWindow,
    key: &str,
    part: usize,
    span: PartSpan,
    label: Option<&str>,
    now: Instant,
) -> Offer {
    let no_eviction = &mut |_, _| panic!("no eviction expected");
    offer_evicting(w, (key, part, span, label), now, no_eviction)
}

/// One span of derived metric 0: (key, part, span, label).
fn offer_evicting(
    w: &JoinWindow,
    (key, part, span, label): (&str, usize, PartSpan, Option<&str>),
    now: Instant,
    evicted: &mut impl FnMut(usize, Eviction),
) -> Offer {
    let arrival = Arrival {
        derived: 0,
        key,
        part,
        span,
        count: 1.0,
        labels: &[label],
    };
    let answers = w.offer_all(&[arrival], now, evicted);
    match <[_; 1]>::try_from(answers) {
        Ok([(0, answer)]) => answer,
        Ok(other) => panic!("answered for another arrival: {other:?}"),
        Err(none) if none.is_empty() => Offer::Waiting,
        Err(many) => panic!("more answers than arrivals: {many:?}"),
    }
}

fn complete(offer: Offer) -> Completed {
    match offer {
        Offer::Complete(c) => c,
        other => panic!("expected completion, got {other:?}"),
    }
}

#[test]
fn each_operation_in_any_order() {
    let now = Instant::now();
    let cases = [
        (Operation::Sum, 0.038),      // 15 ms + 23 ms
        (Operation::Difference, 0.0), // 15 - 23 clamps at 0
        (Operation::Gap, 0.085),      // from end of claim (115) to start of submit (200)
        (Operation::Envelope, 0.123), // 100 .. 223
    ];
    for (operation, expected) in cases {
        let w = window(operation, 2, 100);
        // Second part first: order does not matter.
        assert_eq!(
            offer(&w, "step-1", 1, span(200, 223, 2), None, now),
            Offer::Waiting
        );
        let done = complete(offer(&w, "step-1", 0, span(100, 115, 1), Some("ruby"), now));
        assert!(
            (done.seconds - expected).abs() < 1e-12,
            "{operation:?}: {}",
            done.seconds
        );
        assert_eq!(done.labels[0].as_deref(), Some("ruby"));
        assert_eq!(done.exemplar.span_id, [2; 8], "the part that ended last");
    }
}

#[test]
fn keys_of_more_parts_and_labels_than_kept_in_place_join_alike() {
    let now = Instant::now();
    let w = JoinWindow::new(
        vec![JoinSpec {
            operation: Operation::Sum,
            parts: 3,
            labels: 3,
        }],
        100,
        Duration::from_secs(60),
    );
    let arrive = |part, span, labels: &[Option<&str>]| {
        let arrival = Arrival {
            derived: 0,
            key: "task-1",
            part,
            span,
            count: 1.0,
            labels,
        };
        w.offer_all(&[arrival], now, &mut |_, _| panic!("no eviction expected"))
    };
    assert!(arrive(2, span(300, 340, 3), &[Some("c"), Some("c"), Some("c")]).is_empty());
    assert!(arrive(0, span(100, 110, 1), &[None, Some("a"), None]).is_empty());
    let answers = arrive(1, span(200, 220, 2), &[Some("b"), None, None]);
    let [(0, Offer::Complete(done))] = &answers[..] else {
        panic!("expected a completion, got {answers:?}");
    };
    assert!((done.seconds - 0.070).abs() < 1e-12, "{}", done.seconds);
    // Each label from the first part, in part order, that has it.
    let labels: Vec<_> = done.labels.iter().map(|l| l.as_deref()).collect();
    assert_eq!(labels, [Some("b"), Some("a"), Some("c")]);
    assert_eq!(done.exemplar.span_id, [3; 8], "the part that ended last");
}

#[test]
fn late_and_repeated_parts_are_not_counted_twice() {
    let now = Instant::now();
    let w = window(Operation::Sum, 2, 100);
    assert_eq!(offer(&w, "k", 0, span(0, 10, 1), None, now), Offer::Waiting);
    assert_eq!(
        offer(&w, "k", 0, span(0, 10, 1), None, now),
        Offer::Repeated
    );
    complete(offer(&w, "k", 1, span(20, 30, 2), None, now));
    assert_eq!(offer(&w, "k", 1, span(20, 30, 2), None, now), Offer::Late);
    assert_eq!(offer(&w, "k", 0, span(0, 10, 1), None, now), Offer::Late);
}

#[test]
fn envelope_merges_repeated_parts() {
    let now = Instant::now();
    let w = window(Operation::Envelope, 2, 100);
    offer(&w, "task", 0, span(100, 118, 1), None, now);
    offer(&w, "task", 0, span(90, 95, 3), None, now);
    let done = complete(offer(&w, "task", 1, span(200, 218, 2), None, now));
    assert!((done.seconds - 0.128).abs() < 1e-12, "{}", done.seconds);
}

#[test]
fn the_exemplar_is_the_part_that_ended_last_whatever_the_arrival_order() {
    let now = Instant::now();
    // Envelope: a repeat of part 0 that ends after every other part takes the exemplar
    // with the part's merged times; a repeat that ends earlier does not.
    let w = window(Operation::Envelope, 2, 100);
    offer(&w, "a", 0, span(100, 150, 1), None, now);
    offer(&w, "a", 0, span(90, 300, 3), None, now);
    offer(&w, "a", 0, span(80, 120, 4), None, now);
    let done = complete(offer(&w, "a", 1, span(200, 250, 2), None, now));
    let merged = span(80, 300, 3);
    assert_eq!(done.exemplar, merged);
    // Parts that end together: the later in part order, whichever arrived first.
    for (key, first) in [("b", 0), ("c", 1)] {
        let w = window(Operation::Sum, 2, 100);
        let parts = [span(100, 200, 1), span(150, 200, 2)];
        offer(&w, key, first, parts[first], None, now);
        let done = complete(offer(&w, key, 1 - first, parts[1 - first], None, now));
        assert_eq!(done.exemplar, parts[1], "{key}");
    }
}

#[test]
fn keys_that_wait_too_long_are_evicted_and_counted() {
    let start = Instant::now();
    let w = window(Operation::Sum, 2, 100);
    offer(&w, "slow", 0, span(0, 1, 1), None, start);
    let mut evicted = Vec::new();
    w.sweep(start + Duration::from_secs(30), &mut |d, why| {
        evicted.push((d, why))
    });
    assert!(evicted.is_empty());
    w.sweep(start + Duration::from_secs(61), &mut |d, why| {
        evicted.push((d, why))
    });
    assert_eq!(evicted, vec![(0, Eviction::Timeout)]);
    assert_eq!(w.pending(), vec![0]);
}

/// Opening times are milliseconds modulo 2³²: a key opened just before the count wraps
/// (49.7 days after the window's origin) waits, and leaves, as any other.
#[test]
fn waits_are_timed_across_the_millisecond_wrap() {
    let w = window(Operation::Sum, 2, 100);
    // The origin is a little before now: this is a little after its wrap.
    let wrapped = Instant::now() + Duration::from_millis(1 << 32);
    let opened = wrapped - Duration::from_secs(10);
    offer(&w, "across", 0, span(0, 1, 1), None, opened);
    let mut evicted = Vec::new();
    w.sweep(opened + Duration::from_secs(59), &mut |d, why| {
        evicted.push((d, why))
    });
    assert!(evicted.is_empty());
    assert_eq!(w.pending(), vec![1]);
    let done = complete(offer(&w, "across", 1, span(2, 3, 2), None, wrapped));
    assert_eq!(done.seconds, 0.002);
    offer(&w, "waits_out", 0, span(0, 1, 3), None, opened);
    w.sweep(opened + Duration::from_secs(61), &mut |d, why| {
        evicted.push((d, why))
    });
    assert_eq!(evicted, vec![(0, Eviction::Timeout)]);
}

/// Concurrent requests read the clock before they take a shard's lock: a request whose clock
/// is a little older than a key's opening time sees that key as just opened, not as one that
/// waited 49 days (which evicted whole runs of keys as timed out under two ingest threads).
#[test]
fn a_key_opened_by_a_request_with_a_later_clock_is_not_timed_out() {
    let w = window(Operation::Sum, 2, 100);
    let earlier = Instant::now() + Duration::from_secs(1);
    let later = earlier + Duration::from_millis(5);
    offer(&w, "opened_later", 0, span(0, 1, 1), None, later);
    w.sweep(earlier, &mut |d, why| panic!("evicted {d} for {why:?}"));
    offer(&w, "opened_earlier", 0, span(0, 1, 2), None, earlier);
    assert_eq!(w.pending(), vec![2]);
    let mut evicted = Vec::new();
    w.sweep(later + Duration::from_secs(61), &mut |d, why| {
        evicted.push((d, why))
    });
    assert_eq!(
        evicted,
        vec![(0, Eviction::Timeout), (0, Eviction::Timeout)]
    );
}

/// A `max_wait` past the bound waits as long as the bound, not for ever.
#[test]
fn the_longest_wait_is_the_bound() {
    let w = JoinWindow::new(
        vec![JoinSpec {
            operation: Operation::Sum,
            parts: 2,
            labels: 1,
        }],
        100,
        Duration::from_secs(365 * 86_400),
    );
    let start = Instant::now();
    offer(&w, "forever", 0, span(0, 1, 1), None, start);
    let mut evicted = Vec::new();
    w.sweep(
        start + MAX_JOIN_WAIT - Duration::from_secs(1),
        &mut |d, why| evicted.push((d, why)),
    );
    assert!(evicted.is_empty());
    w.sweep(
        start + MAX_JOIN_WAIT + Duration::from_secs(1),
        &mut |d, why| evicted.push((d, why)),
    );
    assert_eq!(evicted, vec![(0, Eviction::Timeout)]);
}

#[test]
fn a_flood_of_keys_that_never_complete_stays_at_the_cap() {
    let now = Instant::now();
    let w = window(Operation::Sum, 2, 1600);
    let mut capacity_evictions = 0u64;
    for i in 0..1_000_000u32 {
        let key = format!("key-{i}");
        let arrival = (key.as_str(), 0, span(0, 1, 1), None);
        offer_evicting(&w, arrival, now, &mut |_, why| {
            assert_eq!(why, Eviction::Capacity);
            capacity_evictions += 1;
        });
    }
    let pending = w.pending()[0];
    assert!(pending <= 1600, "{pending}");
    assert_eq!(capacity_evictions, 1_000_000 - pending as u64);
    let queued: usize = w.shards.iter().map(|s| s.lock().unwrap().slots.len()).sum();
    assert!(queued <= 2 * 1600 + 64 * SHARDS, "{queued}");
}

#[test]
fn labels_come_from_the_first_part_in_part_order_that_has_them() {
    let now = Instant::now();
    let w = window(Operation::Sum, 2, 100);
    let parts = [span(100, 115, 1), span(200, 223, 2)];
    // (key, part arriving first, then the other part, with their labels; expected label)
    let cases = [
        (
            "late-first",
            [(1, Some("python")), (0, Some("ruby"))],
            "ruby",
        ),
        (
            "early-first",
            [(0, Some("ruby")), (1, Some("python"))],
            "ruby",
        ),
        ("only-second", [(0, None), (1, Some("python"))], "python"),
    ];
    for (key, [(first, first_label), (second, second_label)], expected) in cases {
        offer(&w, key, first, parts[first], first_label, now);
        let done = complete(offer(&w, key, second, parts[second], second_label, now));
        assert_eq!(done.labels[0].as_deref(), Some(expected), "{key}");
    }
}

#[test]
fn waiting_keys_keep_their_place_while_completed_ones_are_compacted_away() {
    // 100 keys a shard; one key in 50 of 20,000 waits (about 25 a shard), the others
    // complete around them, leaving holes that compaction drops many times over.
    let (w, now) = (window(Operation::Sum, 2, 1600), Instant::now());
    let mut waiting = Vec::new();
    for j in 0..20_000 {
        let key = format!("k{j}");
        assert_eq!(offer(&w, &key, 0, span(0, 1, 2), None, now), Offer::Waiting);
        match j % 50 {
            0 => waiting.push(key),
            _ => drop(complete(offer(&w, &key, 1, span(1, 2, 3), None, now))),
        }
    }
    assert_eq!(w.pending(), [400]);
    for key in &waiting {
        let done = complete(offer(&w, key, 1, span(1, 3, 4), Some("x"), now));
        assert_eq!(done.seconds, 0.003, "{key}");
    }
    assert_eq!(w.pending(), [0]);
    let slots: usize = w.shards.iter().map(|s| s.lock().unwrap().slots.len()).sum();
    assert!(slots <= 16 * (100 + 25 + 64), "{slots} slots held");
}

#[test]
fn label_values_are_held_while_their_keys_wait_and_let_go_when_they_leave() {
    let texts_in_use = |w: &JoinWindow| -> usize {
        w.shards
            .iter()
            .map(|s| s.lock().unwrap().texts.in_use())
            .sum()
    };
    let (w, start) = (window(Operation::Sum, 2, 160), Instant::now());
    let languages = ["rust", "ruby", "python"];
    let mut evicted = 0;
    for i in 0..1_000 {
        let key = format!("k{i}");
        let arrival = (key.as_str(), 1, span(0, 1, 1), Some(languages[i % 3]));
        offer_evicting(&w, arrival, start, &mut |_, _| evicted += 1);
        if i % 2 == 0 {
            // A lower part's label replaces the first one's, then the key completes.
            let done = complete(offer(&w, &key, 0, span(1, 2, 2), Some("go"), start));
            assert_eq!(done.labels[0].as_deref(), Some("go"));
        }
    }
    assert!(evicted > 0, "the window overflowed");
    // Per shard, only the values its waiting keys name.
    let held = texts_in_use(&w);
    assert!((1..=3 * SHARDS).contains(&held), "{held}");
    w.sweep(start + Duration::from_secs(61), &mut |_, _| {});
    assert_eq!(w.pending(), [0]);
    assert_eq!(texts_in_use(&w), 0, "every value let go");
}

#[test]
fn slot_positions_wrap_around_without_losing_keys() {
    let (w, now) = (window(Operation::Sum, 2, 1600), Instant::now());
    for shard in w.shards.iter() {
        shard.lock().unwrap().base = u32::MAX - 40;
    }
    // 100 keys a shard: positions pass 2^32, holes are compacted and the oldest evicted
    // across it.
    let mut evicted = 0;
    for j in 0..8_000 {
        let key = format!("k{j}");
        let arrival = (key.as_str(), 0, span(0, 1, 2), None);
        offer_evicting(&w, arrival, now, &mut |_, _| evicted += 1);
        if j % 3 == 0 {
            complete(offer(&w, &key, 1, span(1, 2, 3), None, now));
        }
    }
    assert!(evicted > 0, "the window overflowed");
    let waiting: Vec<String> = (7_000..8_000)
        .filter(|j| j % 3 != 0)
        .map(|j| format!("k{j}"))
        .collect();
    for key in &waiting {
        let done = complete(offer(&w, key, 1, span(1, 3, 4), None, now));
        assert_eq!(done.seconds, 0.003, "{key}");
    }
    assert_eq!(offer(&w, "k7998", 1, span(1, 3, 4), None, now), Offer::Late);
}

/// The window's memory is its slots': see the sizes in `Pending`'s comment.
#[test]
fn a_waiting_key_takes_96_bytes() {
    assert_eq!(std::mem::size_of::<Values>(), 48);
    assert_eq!(std::mem::size_of::<Pending>(), 88);
    assert_eq!(std::mem::size_of::<Slot>(), 96);
}

#[test]
fn a_value_counts_each_of_its_traces_adjusted_count_once() {
    let now = Instant::now();
    let w = JoinWindow::new(
        vec![JoinSpec {
            operation: Operation::Envelope,
            parts: 3,
            labels: 0,
        }],
        100,
        Duration::from_secs(60),
    );
    // Parts 0 and 2 from one trace kept at 1 in 4, part 1 from another kept at 1 in 10.
    let parts = [
        (span(0, 10, 1), 4.0),
        (span(20, 30, 2), 10.0),
        (span(40, 50, 1), 4.0),
    ];
    let mut answers = Vec::new();
    for (part, (span, count)) in parts.into_iter().enumerate() {
        let arrival = Arrival {
            derived: 0,
            key: "task-1",
            part,
            span,
            count,
            labels: &[],
        };
        answers = w.offer_all(&[arrival], now, &mut |_, _| panic!("no eviction"));
    }
    let [(0, done)] = <[_; 1]>::try_from(answers).expect("one answer") else {
        panic!("answered for another arrival")
    };
    assert_eq!(complete(done).count, 40.0);
}

#[test]
fn a_sum_of_absurd_durations_saturates_instead_of_wrapping() {
    let half = Times {
        start_unix_nano: 1,
        end_unix_nano: u64::MAX / 2 + 2,
    };
    assert_eq!(value_nanos(Operation::Sum, &[half, half]), u64::MAX);
}
