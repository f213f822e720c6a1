#!/usr/bin/env bash
# The one test command for spanlens: installs what the tests need when it is missing, then
# runs formatting, the API docs (warnings are errors), the doc tests and every target of the
# workspace (spanlens and benches/loadgen's spanlens-loadgen) with clippy's lints, warnings
# as errors.
#
# Clippy lints in the build itself: clippy-driver compiles the workspace's crates
# (RUSTC_WORKSPACE_WRAPPER) with -D warnings, which is `cargo clippy --workspace
# --all-targets -- -D warnings` without a second, check-only build of every dependency.
# The criterion benches are among the targets: they are linted, and nextest builds them in the
# test profile and runs each benchmark once as a test, so they keep compiling and running
# without the release build with fat LTO that measuring them takes (BENCHMARKS.md).
#
# Last, the 2-minute soak (`scripts/soak.sh --short`, BENCHMARKS.md "Soak"): the release
# build of spanlens and spanlens-soak (what is measured is what ships; a debug build cannot
# carry the load on two cores), built as `cargo build --release` builds them, then the run's
# checks; one that fails fails this command.
#
# Works on a fresh Debian 12 machine (as root, or with sudo) that has Rust with clippy,
# cargo, cargo-nextest (optional) and Python 3 with pip, reaching only crates.io, PyPI and
# Debian's archive.
#
# What it installs, each only when missing:
#   * Debian packages `prometheus` (promtool) and `prometheus-alertmanager`
#     (prometheus-alertmanager, amtool), for the exposition, rules and alerting tests;
#   * Debian package `golang-github-prometheus-client-model-dev`, for client_model's
#     metrics.proto (the protobuf exposition's schema);
#   * Debian packages `chromium` and `chromium-driver`, for the operator page's browser tests
#     (tests/page, headless Chromium through chromedriver);
#   * Python `prometheus_client` in a venv at target/pyenv, the independent OpenMetrics parser
#     used by tests/tools/check_openmetrics.py, and `grpcio-tools` (protoc, with Google's
#     `protobuf` runtime), which tests/tools/decode_protobuf.py decodes the protobuf
#     exposition with.
# It exports SPANLENS_PYTHON (that venv's python) and SPANLENS_PROMTOOL, and puts promtool on
# PATH. Tests that need these tools fail, never skip, when they are absent.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"

section() {
    printf '\n==================== %s ====================\n' "$*"
}

fail() {
    printf 'scripts/test.sh: %s\n' "$*" >&2
    exit 1
}

started=$SECONDS
elapsed() {
    printf '(%s: %ds since start)\n' "$1" "$((SECONDS - started))"
}

# The caller's RUSTFLAGS: the soak's release build uses them as they were, so that it is the
# build `cargo build --release` makes and reuses.
CALLER_RUSTFLAGS="${RUSTFLAGS-}"

# Debian's packages put their binaries in /usr/bin and /usr/sbin; make sure both are searched.
case ":$PATH:" in *:/usr/bin:*) ;; *) PATH="$PATH:/usr/bin" ;; esac
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin" ;; esac
export PATH

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        fail "need root (or sudo) to run: $*"
    fi
}

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        as_root apt-get update
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
}

# ---------------------------------------------------------------------------------------------
section "tools: promtool, Alertmanager, amtool (Debian)"
missing_debs=()
command -v promtool >/dev/null 2>&1 || missing_debs+=(prometheus)
if ! command -v prometheus-alertmanager >/dev/null 2>&1 || ! command -v amtool >/dev/null 2>&1; then
    missing_debs+=(prometheus-alertmanager)
fi
if [ "${#missing_debs[@]}" -gt 0 ]; then
    echo "installing: ${missing_debs[*]}"
    apt_install "${missing_debs[@]}"
    # Installing may start the packages' own daemons (ports 9090, 9093); the tests start
    # their own instances on ephemeral ports, so stop the ones this install just started.
    for service in prometheus prometheus-alertmanager; do
        if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
            as_root systemctl stop "$service" >/dev/null 2>&1 || true
        elif [ -x "/etc/init.d/$service" ]; then
            as_root "/etc/init.d/$service" stop >/dev/null 2>&1 || true
        fi
    done
else
    echo "already installed"
fi
METRICS_PROTO=/usr/share/gocode/src/github.com/prometheus/client_model/io/prometheus/client/metrics.proto
if [ ! -f "$METRICS_PROTO" ]; then
    echo "installing: golang-github-prometheus-client-model-dev"
    apt_install golang-github-prometheus-client-model-dev
fi
[ -f "$METRICS_PROTO" ] || fail "$METRICS_PROTO is still missing after installing its Debian package"
for tool in promtool prometheus-alertmanager amtool; do
    path="$(command -v "$tool" 2>/dev/null)" || fail "$tool is still missing after installing its Debian package"
    printf '%-24s %s\n' "$tool" "$path"
done
promtool --version 2>&1 | head -n 1
SPANLENS_PROMTOOL="$(command -v promtool)"
export SPANLENS_PROMTOOL

# ---------------------------------------------------------------------------------------------
section "tools: Chromium and chromedriver (Debian), for tests/page"
missing_debs=()
[ -x /usr/bin/chromium ] || missing_debs+=(chromium)
[ -x /usr/bin/chromedriver ] || missing_debs+=(chromium-driver)
if [ "${#missing_debs[@]}" -gt 0 ]; then
    echo "installing: ${missing_debs[*]}"
    apt_install "${missing_debs[@]}"
else
    echo "already installed"
fi
for tool in /usr/bin/chromium /usr/bin/chromedriver; do
    [ -x "$tool" ] || fail "$tool is still missing after installing its Debian package"
done
/usr/bin/chromium --version 2>/dev/null | head -n 1 || true

# ---------------------------------------------------------------------------------------------
section "tools: Python prometheus_client, grpcio-tools (target/pyenv)"
PYENV="$ROOT/target/pyenv"
PY="$PYENV/bin/python"
PY_IMPORTS='import prometheus_client.openmetrics.parser, grpc_tools.protoc, google.protobuf'
if [ -x "$PY" ] && "$PY" -c "$PY_IMPORTS" >/dev/null 2>&1; then
    echo "already installed"
else
    command -v python3 >/dev/null 2>&1 || apt_install python3
    if [ ! -x "$PY" ] || ! "$PY" -c 'import sys' >/dev/null 2>&1; then
        rm -rf "$PYENV"
        mkdir -p "$ROOT/target"
        if ! python3 -m venv "$PYENV"; then
            # Debian's own python3 keeps venv (ensurepip) in a separate package.
            rm -rf "$PYENV"
            apt_install python3-venv
            python3 -m venv "$PYENV"
        fi
    fi
    "$PY" -m pip install --disable-pip-version-check --quiet 'prometheus_client>=0.20,<1' \
        'grpcio-tools>=1.60,<2'
fi
"$PY" -c "$PY_IMPORTS" || fail "prometheus_client or grpcio-tools is not importable by $PY"
printf 'SPANLENS_PYTHON=%s (prometheus_client %s, grpcio-tools %s, protobuf %s)\n' "$PY" \
    "$("$PY" -c 'from importlib.metadata import version; print(version("prometheus_client"))')" \
    "$("$PY" -c 'from importlib.metadata import version; print(version("grpcio-tools"))')" \
    "$("$PY" -c 'from importlib.metadata import version; print(version("protobuf"))')"
SPANLENS_PYTHON="$PY"
export SPANLENS_PYTHON

# ---------------------------------------------------------------------------------------------
section "toolchain"
# One full build from scratch: incremental caches would only add gigabytes to target/ (a CI
# run once failed with "No space left on device" while writing them).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
df -h . | tail -n 1 | awk '{print "disk free before building: " $4}'
cargo --version
rustc --version
if cargo nextest --version >/dev/null 2>&1; then
    have_nextest=1
    cargo nextest --version | head -n 1
else
    have_nextest=0
    echo "cargo-nextest not found: using cargo test"
fi

# ---------------------------------------------------------------------------------------------
section "cargo fmt --all -- --check"
cargo fmt --all -- --check
elapsed fmt

# Every build below compiles the workspace's crates with clippy's lints, warnings as errors.
CLIPPY_DRIVER="$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver)" \
    || fail "clippy-driver is missing: rustup component add clippy"
export RUSTC_WORKSPACE_WRAPPER="$CLIPPY_DRIVER"
export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-D warnings"
echo "lints: $RUSTC_WORKSPACE_WRAPPER with RUSTFLAGS=$RUSTFLAGS"

section "cargo doc --no-deps --document-private-items --workspace (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --document-private-items --workspace
elapsed docs

# Doc tests first: nextest does not run them, and the suite's summary should be the last
# test-runner line printed (the doc tests may number zero).
section "cargo test --workspace --doc"
cargo test --workspace --doc
elapsed doctests

if [ "$have_nextest" -eq 1 ]; then
    section "cargo nextest run --workspace --all-targets --no-fail-fast (with clippy's lints)"
    cargo nextest run --workspace --all-targets --no-fail-fast
else
    section "cargo test --workspace --all-targets --no-fail-fast (with clippy's lints)"
    cargo test --workspace --all-targets --no-fail-fast
fi
elapsed tests

section "scripts/soak.sh --short (release build; the soak's checks)"
if [ -n "$CALLER_RUSTFLAGS" ]; then
    env -u RUSTC_WORKSPACE_WRAPPER RUSTFLAGS="$CALLER_RUSTFLAGS" scripts/soak.sh --short
else
    env -u RUSTC_WORKSPACE_WRAPPER -u RUSTFLAGS scripts/soak.sh --short
fi
elapsed soak

section "all checks passed"
du -sh target | awk '{print "target/ holds " $1}'
elapsed total
