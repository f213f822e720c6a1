#!/usr/bin/env python3
"""Check an OpenMetrics 1.0 exposition with an independent parser.

Reads the exposition text from stdin and parses it with
prometheus_client.openmetrics.parser.text_string_to_metric_families (the Python client's
OpenMetrics parser, written apart from spanlens and from the Rust prometheus-client crate).

Exit status:
  0  the text parsed; a JSON summary is printed to stdout:
       {"families": {NAME: {"type", "help", "unit",
                            "samples": [{"name", "labels", "value",
                                         ["timestamp"], ["exemplar": {"labels", "value",
                                         ["timestamp"]}]}]}}}
     Values that are not finite numbers are written as the strings "+Inf", "-Inf", "NaN"
     (JSON has no literal for them); every finite value is a JSON number.
  1  the text is not valid OpenMetrics (the reason goes to stderr)
  2  prometheus_client cannot be imported (install it: scripts/test.sh does, into
     target/pyenv), or the input is not UTF-8
"""

import json
import math
import sys

try:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
except ImportError as error:  # pragma: no cover - environment problem, not a format problem
    print(
        f"check_openmetrics: cannot import prometheus_client ({error}) with {sys.executable}.\n"
        "Run scripts/test.sh (it installs prometheus_client into target/pyenv and exports\n"
        "SPANLENS_PYTHON), or `pip install prometheus_client` for this interpreter.",
        file=sys.stderr,
    )
    sys.exit(2)


def number(value):
    """A JSON-safe number: finite floats stay numbers, the rest become strings."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return value


def timestamp(value):
    return None if value is None else number(float(value))


def summarize(families):
    out = {}
    for family in families:
        samples = []
        for sample in family.samples:
            entry = {
                "name": sample.name,
                "labels": dict(sample.labels),
                "value": number(sample.value),
            }
            if sample.timestamp is not None:
                entry["timestamp"] = timestamp(sample.timestamp)
            if sample.exemplar is not None:
                exemplar = {
                    "labels": dict(sample.exemplar.labels),
                    "value": number(sample.exemplar.value),
                }
                if sample.exemplar.timestamp is not None:
                    exemplar["timestamp"] = timestamp(sample.exemplar.timestamp)
                entry["exemplar"] = exemplar
            samples.append(entry)
        if family.name in out:
            raise ValueError(f"metric family {family.name!r} appears more than once")
        out[family.name] = {
            "type": family.type,
            "help": family.documentation,
            "unit": family.unit,
            "samples": samples,
        }
    return out


def main():
    raw = sys.stdin.buffer.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        print(f"check_openmetrics: exposition is not UTF-8: {error}", file=sys.stderr)
        return 2
    if not text.endswith("# EOF\n") and not text.endswith("# EOF"):
        tail = text[-200:]
        print(
            "check_openmetrics: OpenMetrics exposition must end with '# EOF'; it ends with:\n"
            + tail,
            file=sys.stderr,
        )
        return 1
    try:
        # The parser is a generator: list() makes it read (and check) every line.
        families = summarize(list(text_string_to_metric_families(text)))
    except Exception as error:  # the parser raises ValueError, KeyError, IndexError ...
        print(
            f"check_openmetrics: not valid OpenMetrics 1.0: {type(error).__name__}: {error}",
            file=sys.stderr,
        )
        return 1
    json.dump({"families": families}, sys.stdout, sort_keys=True, allow_nan=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
