#!/usr/bin/env bash
# Instructions per request, ferroserve against bare axum, under valgrind's callgrind: a count
# that does not depend on what else the machine is doing (unlike req/s), so a change to the hot
# path can be judged on a busy machine. Each server runs under callgrind; after 200 warm-up
# requests the counters are zeroed, N keep-alive requests are sent from one Python client
# (http.client, sequential), the counters are dumped, and the total is divided by N.
# Scenarios: every HTTP one of bench/run.sh, `json_to_ndarray` with a small body (2 floats:
# the per-request cost, not the parsing that the MB/s rows measure); not the WebSocket echo.
#
# Usage, from the repository root:  bash bench/instructions.sh [N]   (N defaults to 2000)
# Needs valgrind (Debian's package) and the release bench binaries (built here if missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N="${1:-2000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferroserve-target}"
command -v valgrind >/dev/null || (apt-get update -qq && apt-get install -y -qq valgrind >/dev/null)
cargo build --release -q -p ferroserve-bench --bin bare_axum --bin fs_counter --bin fs_fastapi_hello \
    --bin fs_handle_hop --bin fs_dag_fanout --bin fs_streaming --bin fs_json_to_ndarray
BIN="$CARGO_TARGET_DIR/release"
WORK="$(mktemp -d -t ferroserve-callgrind.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

cat >"$WORK/client.py" <<'PY'
import http.client, sys
# client.py PORT "METHOD PATH" N [BODY]: N sequential keep-alive requests, each must be 200.
port, (method, path), n = int(sys.argv[1]), sys.argv[2].split(" ", 1), int(sys.argv[3])
body = sys.argv[4].encode() if len(sys.argv) > 4 else None
headers = {"Content-Type": "application/json"} if body else {}
c = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    answer = r.read()
    if r.status != 200:
        sys.exit(f"{path}: {r.status} {answer!r}")
PY

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# count <tag> "<method> <path>" <body> <command...>: prints instructions per request.
count() {
    local tag=$1 path=$2 body=$3; shift 3
    local port; port=$(free_port)
    RUST_LOG=info,ferroserve::access=off FERROSERVE_PORT=$port \
        valgrind --tool=callgrind --callgrind-out-file="$WORK/$tag.out" "$@" >"$WORK/$tag.log" 2>&1 &
    local pid=$!
    for _ in $(seq 200); do
        python3 "$WORK/client.py" "$port" "$path" 1 ${body:+"$body"} 2>/dev/null && break
        sleep 0.2
    done
    python3 "$WORK/client.py" "$port" "$path" 200 ${body:+"$body"}
    callgrind_control -z "$pid" >/dev/null 2>&1
    python3 "$WORK/client.py" "$port" "$path" "$N" ${body:+"$body"}
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill "$pid"; wait "$pid" 2>/dev/null || true
    local dump; dump=$(ls -t "$WORK/$tag.out".* | head -1)
    local total; total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1; exit}')
    echo $((total / N))
}

echo "| scenario | bare axum (instr/req) | ferroserve (instr/req) | ferroserve − bare |"
echo "|---|---:|---:|---:|"
# name|method path|body (one word, no spaces)|ferroserve binary
for s in "counter|GET /?a=b&c=d||fs_counter" \
    "fastapi_hello|GET /hello||fs_fastapi_hello" \
    "handle_hop|POST /|[1,2,3.5]|fs_handle_hop" \
    "dag_fanout|POST /|[1,2,3.5]|fs_dag_fanout" \
    "streaming|GET /stream||fs_streaming" \
    "json_to_ndarray|POST /ndarray|{\"array\":[[1.5,2.5]]}|fs_json_to_ndarray"; do
    IFS='|' read -r name path body fs <<<"$s"
    bare=$(count "bare_$name" "$path" "$body" "$BIN/bare_axum" "$name")
    ours=$(count "fs_$name" "$path" "$body" "$BIN/$fs")
    echo "| $name | $bare | $ours | $((ours - bare)) |"
done
