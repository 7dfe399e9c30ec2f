#!/usr/bin/env bash
# Instructions per request, ferroserve against bare axum, under valgrind's callgrind: a count
# that does not depend on what else the machine is doing (unlike req/s), so a change to the hot
# path can be judged on a busy machine. Each server runs under callgrind; after 200 warm-up
# requests the counters are zeroed, N keep-alive requests are sent from one Python client
# (http.client, sequential), the counters are dumped, and the total is divided by N.
#
# Usage, from the repository root:  bash bench/instructions.sh [N]   (N defaults to 2000)
# Needs valgrind (Debian's package) and the release bench binaries (built here if missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N="${1:-2000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferroserve-target}"
command -v valgrind >/dev/null || (apt-get update -qq && apt-get install -y -qq valgrind >/dev/null)
cargo build --release -q -p ferroserve-bench --bin bare_axum --bin fs_counter --bin fs_fastapi_hello
BIN="$CARGO_TARGET_DIR/release"
WORK="$(mktemp -d -t ferroserve-callgrind.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

cat >"$WORK/client.py" <<'PY'
import http.client, sys
port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    if r.status != 200:
        sys.exit(f"{path}: {r.status} {body!r}")
PY

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# count <tag> <path> <command...>: prints instructions per request.
count() {
    local tag=$1 path=$2; shift 2
    local port; port=$(free_port)
    RUST_LOG=info,ferroserve::access=off FERROSERVE_PORT=$port \
        valgrind --tool=callgrind --callgrind-out-file="$WORK/$tag.out" "$@" >"$WORK/$tag.log" 2>&1 &
    local pid=$!
    for _ in $(seq 200); do
        python3 "$WORK/client.py" "$port" "$path" 1 2>/dev/null && break
        sleep 0.2
    done
    python3 "$WORK/client.py" "$port" "$path" 200
    callgrind_control -z "$pid" >/dev/null 2>&1
    python3 "$WORK/client.py" "$port" "$path" "$N"
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill "$pid"; wait "$pid" 2>/dev/null || true
    local dump; dump=$(ls -t "$WORK/$tag.out".* | head -1)
    local total; total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1; exit}')
    echo $((total / N))
}

echo "| scenario | bare axum (instr/req) | ferroserve (instr/req) | ferroserve − bare |"
echo "|---|---:|---:|---:|"
for s in "counter:/?a=b&c=d:fs_counter" "fastapi_hello:/hello:fs_fastapi_hello"; do
    IFS=: read -r name path fs <<<"$s"
    bare=$(count "bare_$name" "$path" "$BIN/bare_axum" "$name")
    ours=$(count "fs_$name" "$path" "$BIN/$fs")
    echo "| $name | $bare | $ours | $((ours - bare)) |"
done
