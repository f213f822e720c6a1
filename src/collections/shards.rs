//! A request's work on a sharded table, grouped so that each shard is locked once per request
//! and its cache misses overlap, instead of one lock per item.

/// Item indexes grouped by shard (`shard_of[i]` is item i's shard), in item order within a
/// shard: each call of `each` gets one shard and its items. Shards are few (16) and a
/// request's items many (512): the items are placed by their shard's count (a counting sort,
/// two passes) instead of sorted.
pub(crate) fn for_each_shard(shard_of: &[usize], mut each: impl FnMut(usize, &[usize])) {
    let shards = shard_of.iter().max().map_or(0, |&s| s + 1);
    // ends[s]: where shard s's items end in `order`, once counted and summed.
    let mut ends = vec![0; shards];
    for &s in shard_of {
        ends[s] += 1;
    }
    let mut total = 0;
    for end in &mut ends {
        total += *end;
        *end = total;
    }
    // Placed back to front, so that each shard's items keep their order.
    let mut order = vec![0; shard_of.len()];
    for (i, &s) in shard_of.iter().enumerate().rev() {
        ends[s] -= 1;
        order[ends[s]] = i;
    }
    // Now ends[s] is where shard s's items start.
    ends.push(order.len());
    for (s, run) in ends.windows(2).enumerate() {
        if run[0] < run[1] {
            each(s, &order[run[0]..run[1]]);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn items_come_by_shard_in_item_order() {
        let mut seen = Vec::new();
        super::for_each_shard(&[2, 0, 2, 1, 0], |shard, items| {
            seen.push((shard, items.to_vec()))
        });
        assert_eq!(seen, [(0, vec![1, 4]), (1, vec![3]), (2, vec![0, 2])]);
    }

    #[test]
    fn every_item_once_in_its_shard_in_order_whatever_the_spread() {
        let mut state = 7u64;
        for n in [0, 1, 2, 511, 512, 1000] {
            let shard_of: Vec<usize> = (0..n)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (state >> 60) as usize
                })
                .collect();
            let mut seen = Vec::new();
            super::for_each_shard(&shard_of, |shard, items| seen.push((shard, items.to_vec())));
            let want: Vec<(usize, Vec<usize>)> = (0..16)
                .map(|s| (s, (0..n).filter(|&i| shard_of[i] == s).collect::<Vec<_>>()))
                .filter(|(_, items)| !items.is_empty())
                .collect();
            assert_eq!(seen, want, "{n} items");
        }
    }
}
