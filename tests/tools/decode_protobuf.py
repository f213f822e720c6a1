#!/usr/bin/env python3
"""Decode a Prometheus protobuf exposition with an independent implementation.

Usage: decode_protobuf.py METRICS_PROTO < body

METRICS_PROTO is client_model's io/prometheus/client/metrics.proto (Debian's
golang-github-prometheus-client-model-dev installs it under /usr/share/gocode). It is
compiled here with grpcio-tools' protoc into a temporary directory, and the body (a sequence
of MetricFamily messages, each preceded by its length as a varint) is parsed with Google's
Python protobuf runtime: nothing of spanlens is used.

Exit status:
  0  decoded; a JSON summary on stdout:
       {"families": [{"name", "help", "type" (enum name),
                      "metrics": [{"labels": {..}, ["counter" | "gauge": value],
                                   ["histogram": {"sample_count", "sample_sum",
                                     "buckets": [{"cumulative_count", "upper_bound",
                                                  ["exemplar": {"labels", "value",
                                                                "timestamp"}]}],
                                     ["native": {"schema", "zero_threshold", "zero_count",
                                                 "positive": [[index, count], ...],
                                                 "negative": [[index, count], ...],
                                                 "positive_spans": [[offset, length], ...],
                                                 "negative_spans": ...}]}]}]}]}
     The native buckets are rebuilt from spans and deltas here (absolute counts by index).
     Infinite bounds are written as the strings "+Inf" and "-Inf".
  1  the body does not decode (the reason goes to stderr)
  2  grpcio-tools or protobuf cannot be imported, or the .proto does not compile or lacks
     the native histogram fields
"""

import importlib.util
import json
import math
import os
import sys
import tempfile


def fail(status, message):
    print(f"decode_protobuf: {message}", file=sys.stderr)
    sys.exit(status)


def compile_proto(proto_path):
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError as error:
        fail(2, f"cannot import grpc_tools ({error}) with {sys.executable}: run scripts/test.sh")
    proto_path = os.path.abspath(proto_path)
    if not os.path.isfile(proto_path):
        fail(2, f"{proto_path} is missing: install Debian's golang-github-prometheus-client-model-dev")
    # metrics.proto imports itself as io/prometheus/client/metrics.proto's siblings do: its
    # root is three directories up.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(proto_path))))
    relative = os.path.relpath(proto_path, root)
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    out = tempfile.mkdtemp(prefix="spanlens-metrics-proto-")
    status = protoc.main(
        ["protoc", f"-I{root}", f"-I{well_known}", f"--python_out={out}", relative]
    )
    if status != 0:
        fail(2, f"protoc could not compile {proto_path} (status {status})")
    # Loaded from its file: as a package path, io.prometheus would clash with Python's io.
    generated = os.path.join(out, relative[: -len(".proto")] + "_pb2.py")
    spec = importlib.util.spec_from_file_location("metrics_pb2", generated)
    metrics = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(metrics)
    fields = metrics.Histogram.DESCRIPTOR.fields_by_name
    for needed in ("schema", "zero_threshold", "positive_span", "positive_delta"):
        if needed not in fields:
            fail(2, f"{proto_path} has no Histogram.{needed}: too old for native histograms")
    return metrics


def varint(data, at):
    value, shift = 0, 0
    while True:
        if at >= len(data):
            raise ValueError("truncated length prefix")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise ValueError("length prefix longer than 10 bytes")


def number(value):
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return value


def labels(pairs):
    return {pair.name: pair.value for pair in pairs}


def native_buckets(spans, deltas):
    """(index, absolute count) of every bucket the spans cover, from the deltas."""
    out, index, count, at = [], None, 0, 0
    for span in spans:
        index = span.offset if index is None else index + span.offset
        for _ in range(span.length):
            if at >= len(deltas):
                raise ValueError("fewer deltas than the spans cover")
            count += deltas[at]
            if count < 0:
                raise ValueError(f"bucket {index} has a negative count")
            out.append([index, count])
            at += 1
            index += 1
    if at != len(deltas):
        raise ValueError(f"{len(deltas)} deltas for {at} buckets of the spans")
    return out


def histogram(h):
    summary = {
        "sample_count": h.sample_count,
        "sample_sum": number(h.sample_sum),
        "buckets": [],
    }
    for bucket in h.bucket:
        entry = {
            "cumulative_count": bucket.cumulative_count,
            "upper_bound": number(bucket.upper_bound),
        }
        if bucket.HasField("exemplar"):
            e = bucket.exemplar
            entry["exemplar"] = {
                "labels": labels(e.label),
                "value": number(e.value),
                "timestamp": e.timestamp.seconds + e.timestamp.nanos / 1e9
                if e.HasField("timestamp")
                else None,
            }
        summary["buckets"].append(entry)
    native_fields = ("schema", "zero_threshold", "zero_count")
    if any(h.HasField(f) for f in native_fields) or h.positive_span or h.negative_span:
        summary["native"] = {
            "schema": h.schema,
            "zero_threshold": h.zero_threshold,
            "zero_count": h.zero_count,
            "positive": native_buckets(h.positive_span, h.positive_delta),
            "negative": native_buckets(h.negative_span, h.negative_delta),
            "positive_spans": [[s.offset, s.length] for s in h.positive_span],
            "negative_spans": [[s.offset, s.length] for s in h.negative_span],
        }
    return summary


def main():
    if len(sys.argv) != 2:
        fail(2, "usage: decode_protobuf.py METRICS_PROTO < body")
    metrics = compile_proto(sys.argv[1])
    data = sys.stdin.buffer.read()
    families, at = [], 0
    try:
        while at < len(data):
            length, at = varint(data, at)
            if at + length > len(data):
                raise ValueError(f"message of {length} bytes at {at} runs past the end")
            family = metrics.MetricFamily()
            family.ParseFromString(data[at : at + length])
            at += length
            entries = []
            for metric in family.metric:
                entry = {"labels": labels(metric.label)}
                if metric.HasField("counter"):
                    entry["counter"] = number(metric.counter.value)
                if metric.HasField("gauge"):
                    entry["gauge"] = number(metric.gauge.value)
                if metric.HasField("histogram"):
                    entry["histogram"] = histogram(metric.histogram)
                entries.append(entry)
            families.append(
                {
                    "name": family.name,
                    "help": family.help,
                    "type": metrics.MetricType.Name(family.type),
                    "metrics": entries,
                }
            )
    except Exception as error:  # DecodeError, ValueError ...
        fail(1, f"not a delimited MetricFamily stream: {type(error).__name__}: {error}")
    json.dump({"families": families}, sys.stdout, sort_keys=True, allow_nan=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
