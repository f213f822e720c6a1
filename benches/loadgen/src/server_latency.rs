//! The server's own account of how long it took to answer: spanlens's
//! `spanlens_request_duration_seconds` histogram, read from /metrics before and after the
//! measured phase. The client's round trip adds the client, the kernel and the scheduler
//! to the server's part; this is the server's part alone, to bucket resolution.

pub const METRIC: &str = "spanlens_request_duration_seconds";

/// Cumulative request counts by bucket upper bound in seconds (+Inf last), for one protocol.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets(Vec<(f64, u64)>);

impl Buckets {
    /// The buckets of [`METRIC`] with this `protocol` label (None: summed over every
    /// protocol) in a Prometheus text exposition (empty when the server has timed no such
    /// request yet).
    pub fn parse(exposition: &str, protocol: Option<&str>) -> Buckets {
        let prefix = format!("{METRIC}_bucket{{");
        let wanted = protocol.map(|p| format!("protocol=\"{p}\""));
        let mut buckets = Buckets::default();
        let samples = exposition.lines().filter_map(|line| {
            let labels_and_value = line.strip_prefix(&prefix)?;
            let (labels, value) = labels_and_value.split_once("} ")?;
            if let Some(wanted) = &wanted
                && !labels.split(',').any(|l| l == wanted)
            {
                return None;
            }
            let le = labels.split(',').find_map(|l| l.strip_prefix("le=\""))?;
            let bound = match le.trim_end_matches('"') {
                "+Inf" => f64::INFINITY,
                other => other.parse().ok()?,
            };
            let count = value.split(' ').next()?.parse::<f64>().ok()? as u64;
            Some((bound, count))
        });
        for (bound, count) in samples {
            buckets.add(bound, count);
        }
        buckets
    }

    /// Adds `count` requests to the bucket of `bound`, keeping the bounds in order.
    fn add(&mut self, bound: f64, count: u64) {
        match self.0.iter_mut().find(|(b, _)| *b == bound) {
            Some((_, sum)) => *sum += count,
            None => {
                self.0.push((bound, count));
                self.0.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
        }
    }

    /// The requests of both.
    pub fn plus(&self, other: &Buckets) -> Buckets {
        let mut sum = self.clone();
        for &(bound, count) in &other.0 {
            sum.add(bound, count);
        }
        sum
    }

    /// Requests answered after `before` was read (`before` may be empty: none then).
    pub fn since(&self, before: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|&(bound, count)| {
                    let earlier = before
                        .0
                        .iter()
                        .find(|(b, _)| *b == bound)
                        .map_or(0, |&(_, c)| c);
                    (bound, count.saturating_sub(earlier))
                })
                .collect(),
        )
    }

    pub fn requests(&self) -> u64 {
        self.0.last().map_or(0, |&(_, count)| count)
    }

    /// The smallest bucket bound under which at least a share `q` of the requests were
    /// answered: the q-quantile is at most this (None without requests).
    pub fn quantile_at_most(&self, q: f64) -> Option<f64> {
        let total = self.requests();
        if total == 0 {
            return None;
        }
        let needed = (q * total as f64).ceil() as u64;
        self.0
            .iter()
            .find(|&&(_, count)| count >= needed)
            .map(|&(bound, _)| bound)
    }

    /// The q-quantile estimated as Prometheus's `histogram_quantile` does: linear within the
    /// bucket it falls in (from 0 in the first bucket), the highest finite bound when it falls
    /// in +Inf. None without requests.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.requests();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let (mut lower, mut below) = (0.0, 0u64);
        for &(bound, count) in &self.0 {
            if count as f64 >= rank && count > below {
                if bound.is_infinite() {
                    return Some(lower);
                }
                let within = (rank - below as f64) / (count - below) as f64;
                return Some(lower + (bound - lower) * within);
            }
            (lower, below) = (bound, count);
        }
        Some(lower)
    }

    /// Share of the requests answered within each finite bound, in milliseconds.
    pub fn shares_ms(&self) -> Vec<(f64, f64)> {
        let total = self.requests().max(1) as f64;
        self.0
            .iter()
            .filter(|(bound, _)| bound.is_finite())
            .map(|&(bound, count)| (bound * 1e3, count as f64 / total))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "\
# TYPE spanlens_request_duration_seconds histogram
spanlens_request_duration_seconds_bucket{protocol=\"grpc\",le=\"0.0005\"} 1
spanlens_request_duration_seconds_bucket{protocol=\"grpc\",le=\"0.001\"} 2
spanlens_request_duration_seconds_bucket{protocol=\"grpc\",le=\"+Inf\"} 2
spanlens_request_duration_seconds_bucket{protocol=\"http_protobuf\",le=\"0.0005\"} 7
spanlens_request_duration_seconds_bucket{protocol=\"http_protobuf\",le=\"0.001\"} 7
spanlens_request_duration_seconds_bucket{protocol=\"http_protobuf\",le=\"+Inf\"} 7
spanlens_request_duration_seconds_count{protocol=\"grpc\"} 2
";

    const AFTER: &str = "\
spanlens_request_duration_seconds_bucket{protocol=\"grpc\",le=\"0.0005\"} 51
spanlens_request_duration_seconds_bucket{protocol=\"grpc\",le=\"0.001\"} 101
spanlens_request_duration_seconds_bucket{protocol=\"grpc\",le=\"+Inf\"} 102
";

    #[test]
    fn reads_one_protocol_and_takes_the_difference() {
        let before = Buckets::parse(BEFORE, Some("grpc"));
        assert_eq!(
            before,
            Buckets(vec![(0.0005, 1), (0.001, 2), (f64::INFINITY, 2)])
        );
        let phase = Buckets::parse(AFTER, Some("grpc")).since(&before);
        assert_eq!(phase.requests(), 100);
        assert_eq!(phase.quantile_at_most(0.5), Some(0.0005));
        assert_eq!(phase.quantile_at_most(0.99), Some(0.001));
        assert_eq!(phase.quantile_at_most(0.999), Some(f64::INFINITY));
        assert_eq!(phase.shares_ms(), vec![(0.5, 0.5), (1.0, 0.99)]);
    }

    #[test]
    fn sums_every_protocol_and_interpolates() {
        let all = Buckets::parse(BEFORE, None);
        assert_eq!(
            all,
            Buckets(vec![(0.0005, 8), (0.001, 9), (f64::INFINITY, 9)])
        );
        let grpc = Buckets::parse(BEFORE, Some("grpc"));
        assert_eq!(
            grpc.plus(&Buckets::parse(BEFORE, Some("http_protobuf"))),
            all
        );
        // Rank 4.5 of 9 in the first bucket (0 to 0.5 ms): 4.5 / 8 of the way.
        assert_eq!(all.quantile(0.5), Some(0.0005 * 4.5 / 8.0));
        // Rank 8.91: 0.91 of the one request between 0.5 and 1 ms.
        let p99 = all.quantile(0.99).unwrap();
        assert!((p99 - (0.0005 + 0.0005 * 0.91)).abs() < 1e-12, "{p99}");
        let phase =
            Buckets::parse(AFTER, Some("grpc")).since(&Buckets::parse(BEFORE, Some("grpc")));
        // Rank 99.9 of 100 falls in +Inf: the highest finite bound, as Prometheus answers.
        assert_eq!(phase.quantile(0.999), Some(0.001));
        assert_eq!(Buckets::default().quantile(0.99), None);
    }

    #[test]
    fn no_requests_no_quantile() {
        let none = Buckets::parse(BEFORE, Some("http_json"));
        assert_eq!(none.requests(), 0);
        assert_eq!(none.quantile_at_most(0.5), None);
        assert_eq!(
            Buckets::parse(AFTER, Some("grpc")).since(&none).requests(),
            102
        );
    }
}
