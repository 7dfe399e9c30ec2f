#!/usr/bin/env bash
# ferroserve load benchmark: builds the bench crate in release mode, then runs the orchestrator
# (bench/src/main.rs), which starts each scenario's servers on 127.0.0.1, drives them with wrk
# or the WebSocket echo client or the HTTP/2 client h2_load (closed loop, 1 thread, 16 connections (4 for json_to_ndarray),
# 1 s warm-up, A B A B alternation), measures streaming TTFB and cancellation latency, and prints
# markdown tables (also written to bench/RESULTS.md and into bench/README.md). About 11 minutes
# after the build on a quiet machine.
#
# Usage, from the repository root:  bash bench/run.sh
# Knobs: BENCH_ONLY (observability: only the metrics/access-log cost section; metrics: only its metrics row;
#        or a comma-separated list of dag, h2, soak, iris, and soak_mix, overload, which only run
#        when named), BENCH_ROUNDS (5), BENCH_DURATION (5), BENCH_WARMUP (1), BENCH_CONNECTIONS (16),
#        BENCH_JSON_CONNECTIONS (4), BENCH_TTFB_REQUESTS (1000), BENCH_CANCELS (1000),
#        BENCH_STARTUP_RUNS (5), BENCH_H2_CONNECTIONS (4), BENCH_H2_STREAMS (16),
#        BENCH_SOAK_REQUESTS (1000000; 0 skips), BENCH_SOAK_MIX_REQUESTS (1000000),
#        BENCH_OVERLOAD_CONNECTIONS (2000), BENCH_MAX_OTHER (0.1), BENCH_QUIET_BUDGET (300),
#        CARGO_TARGET_DIR (~/.cache/ferroserve-target).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v wrk >/dev/null 2>&1; then
    echo "wrk not found; installing the Debian package" >&2
    (apt-get update && apt-get install -y wrk) >&2
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferroserve-target}"
echo "building (release) into $CARGO_TARGET_DIR ..." >&2
cargo build --release -p ferroserve-bench \
    --bin ferroserve-bench --bin bare_axum --bin fs_counter --bin fs_handle_hop \
    --bin fs_fastapi_hello --bin fs_streaming --bin fs_websocket_echo --bin fs_json_to_ndarray \
    --bin fs_dag_fanout --bin ws_echo_client --bin h2_load --bin stream_ttfb \
    --bin cancel_latency --bin fs_mixed --bin soak_mix >&2
# fs_iris alone with ferroserve's onnx feature (tract), so that the other servers do not link it.
cargo build --release -p ferroserve-bench --features iris --bin fs_iris >&2

# The orchestrator kills its servers itself; this trap is the safety net for Ctrl-C, errors and
# SIGTERM: every server PID it has alive is listed in this file.
export BENCH_PIDFILE
BENCH_PIDFILE="$(mktemp -t ferroserve-bench-pids.XXXXXX)"
orchestrator_pid=""
cleanup() {
    if [[ -n "$orchestrator_pid" ]]; then kill "$orchestrator_pid" 2>/dev/null || true; fi
    if [[ -s "$BENCH_PIDFILE" ]]; then
        while read -r pid; do
            [[ -n "$pid" ]] && kill -9 "$pid" 2>/dev/null || true
        done <"$BENCH_PIDFILE"
    fi
    rm -f "$BENCH_PIDFILE"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$CARGO_TARGET_DIR/release/ferroserve-bench" &
orchestrator_pid=$!
status=0
wait "$orchestrator_pid" || status=$?
orchestrator_pid=""
exit "$status"
