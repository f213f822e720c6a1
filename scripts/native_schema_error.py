#!/usr/bin/env python3
"""How far a native histogram's quantiles land from the exact ones, by schema.

The measurement behind the default `metrics.native_histograms.schema` (BENCHMARKS.md,
"Native histograms: schema 3"). For three seeds, it draws 20,000 durations from each of the
distributions of tests/metrics/native_quantiles.rs (log-normal with median 40 ms, bimodal
90% near 20 ms and 10% near 400 ms, Pareto from 10 ms with shape 1.5), puts them in native
buckets at schemas 2 to 5 under the bucket limit (lowering the schema as spanlens does when
a series has more populated buckets than the limit), and estimates p50, p95 and p99 the way
histogram_quantile does within a bucket: linear interpolation (Prometheus 2.x) and
exponential interpolation (later versions). It prints the worst relative error against the
exact nearest-rank quantile, and each distribution's final schema and bucket count.

    python3 scripts/native_schema_error.py [max_buckets]   # default 160
"""

import math
import random
import sys

QUANTILES = (0.5, 0.95, 0.99)
SCHEMAS = (2, 3, 4, 5)


def bucket(value, schema):
    """Bucket i holds (base^(i-1), base^i], base = 2^(2^-schema)."""
    return math.ceil(math.log2(value) * 2**schema - 1e-12)


def buckets(values, schema, max_buckets):
    while True:
        counts = {}
        for v in values:
            i = bucket(v, schema)
            counts[i] = counts.get(i, 0) + 1
        if len(counts) <= max_buckets or schema == -4:
            return schema, counts
        schema -= 1


def estimate(counts, schema, q, n, exponential):
    rank, below = q * n, 0
    for i in sorted(counts):
        c = counts[i]
        if below + c >= rank:
            lower, upper = 2 ** ((i - 1) / 2**schema), 2 ** (i / 2**schema)
            f = (rank - below) / c
            return lower * (upper / lower) ** f if exponential else lower + (upper - lower) * f
        below += c
    raise ValueError("rank beyond the count")


def nearest_rank(values, q):
    ordered = sorted(values)
    return ordered[math.ceil(q * len(ordered)) - 1]


def distributions(seed, n=20_000):
    r = random.Random(seed)
    bimodal = [r.gauss(0.020, 0.003) if r.random() < 0.9 else r.gauss(0.400, 0.050) for _ in range(n)]
    return {
        "log-normal": [r.lognormvariate(math.log(0.040), 0.6) for _ in range(n)],
        "bimodal": [max(v, 1e-6) for v in bimodal],
        "pareto": [0.010 * r.paretovariate(1.5) for _ in range(n)],
    }


def main():
    max_buckets = int(sys.argv[1]) if len(sys.argv) > 1 else 160
    for seed in (1, 2, 3):
        drawn = distributions(seed)
        for schema in SCHEMAS:
            worst = {False: 0.0, True: 0.0}
            layout = []
            for name, values in drawn.items():
                final, counts = buckets(values, schema, max_buckets)
                layout.append(f"{name} s{final}/{len(counts)}")
                for q in QUANTILES:
                    exact = nearest_rank(values, q)
                    for exponential in worst:
                        got = estimate(counts, final, q, len(values), exponential)
                        worst[exponential] = max(worst[exponential], abs(got / exact - 1))
            print(
                f"seed {seed} schema {schema} max_buckets {max_buckets}: worst error "
                f"linear {worst[False]:.2%}, exponential {worst[True]:.2%} ({', '.join(layout)})"
            )


if __name__ == "__main__":
    main()
