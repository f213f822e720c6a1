//! A request's work on a sharded table, grouped so that each shard is locked once per request
//! and its cache misses overlap, instead of one lock per item.

/// Item indexes grouped by shard (`shard_of[i]` is item i's shard), in item order within a
/// shard: each call of `each` gets one shard and its items.
pub fn for_each_shard(shard_of: &[usize], mut each: impl FnMut(usize, &[usize])) {
    let mut order: Vec<usize> = (0..shard_of.len()).collect();
    order.sort_by_key(|&i| shard_of[i]);
    for run in order.chunk_by(|&a, &b| shard_of[a] == shard_of[b]) {
        each(shard_of[run[0]], run);
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
}
