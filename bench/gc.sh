#!/usr/bin/env bash
# Garbage collection at scale, in one run: BENCH_ORPHANS (100,000) blobs
# pushed and referenced by nothing, then reclaimed
#   - by Capstan's online collection (storage.gc, first run 5 s after start)
#     while small-image pushes go on, whose latencies are recorded, and
#   - by docker-registry's `garbage-collect`, which runs with the registry
#     stopped (distribution's collector is offline).
# Writes bench/results-gc-latest.md. Everything it started is stopped and the
# temp dir removed on exit. BENCH_SKIP_BUILD=1 uses the binaries already built.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/capstan-target}
ORPHANS=${BENCH_ORPHANS:-100000}
OUT_MD="$HERE/results-gc-latest.md"
log() { printf '== %s\n' "$*" >&2; }

[ -x /usr/bin/docker-registry ] || { log "needs docker-registry (apt install docker-registry)"; exit 1; }
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release -j2 -p capstan --bin capstan -p capstan-bench --bin capstan-bench)
fi
CAPSTAN="$CARGO_TARGET_DIR/release/capstan"
BENCH="$CARGO_TARGET_DIR/release/capstan-bench"

TMP=$(mktemp -d /tmp/capstan-gc-bench.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_ready() { # NAME PID URL: bounded poll of /v2/
    local i code
    for ((i = 0; i < 600; i++)); do
        kill -0 "$2" 2>/dev/null || { log "$1 exited"; cat "$TMP/$1.log" >&2; exit 1; }
        code=$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$3/v2/" || true)
        [ "$code" = 200 ] && return 0
        sleep 0.05
    done
    log "$1 not ready"; exit 1
}
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get(sys.argv[2]))' "$1" "$2"; }
blob_files() { find "$1" -type f | wc -l; }

# ------------------------------------------------ Capstan: seed with gc off
PORT=$(free_port)
capstan_config() { # GC_ON
    cat >"$TMP/capstan.json" <<JSON
{"storage":{"rootDirectory":"$TMP/capstan","commit":true,"gc":$1,"gcDelay":"1s","gcInterval":"1h"},
 "http":{"address":"127.0.0.1","port":"$PORT"},"log":{"level":"info"}}
JSON
}
start_capstan() {
    "$CAPSTAN" serve -c "$TMP/capstan.json" >"$TMP/capstan.out" 2>"$TMP/capstan.log" &
    CAPSTAN_PID=$!
    PIDS+=("$CAPSTAN_PID")
    wait_ready capstan "$CAPSTAN_PID" "http://127.0.0.1:$PORT"
}
capstan_config false
start_capstan
URL="http://127.0.0.1:$PORT"
log "capstan: pushing $ORPHANS orphan blobs"
C_SEED=$("$BENCH" orphans --url "$URL" --count "$ORPHANS")
C_BASE=$("$BENCH" small-images --url "$URL" --repo bench/base --count 500 --concurrency 4)
kill "$CAPSTAN_PID"; wait "$CAPSTAN_PID" || true

# ------------------------------------------------ Capstan: collect while pushing
capstan_config true
start_capstan
log "capstan: collecting while pushing"
C_START=$(date +%s.%N)
MAX_MS=0; P99_MS=0; IMAGES=0; ROUND=0
while ! grep -q "garbage collection done" "$TMP/capstan.log"; do
    ROUND=$((ROUND + 1))
    R=$("$BENCH" small-images --url "$URL" --repo "bench/during$ROUND" --count 200 --concurrency 4)
    [ "$(field "$R" ok)" = True ] || { log "push failed during GC: $R"; exit 1; }
    IMAGES=$((IMAGES + 200))
    MAX_MS=$(python3 -c "print(max($MAX_MS, $(field "$R" max_ms)))")
    P99_MS=$(python3 -c "print(max($P99_MS, $(field "$R" p99_ms)))")
    (( $(date +%s) - ${C_START%.*} < 1200 )) || { log "no collection in 20 minutes"; exit 1; }
done
DONE_LINE=$(grep "garbage collection done" "$TMP/capstan.log" | head -n1)
C_ELAPSED_MS=$(sed -n 's/.*elapsed_ms=\([0-9]*\).*/\1/p' <<<"$DONE_LINE")
C_BLOBS=$(sed -n 's/.* blobs=\([0-9]*\).*/\1/p' <<<"$DONE_LINE")
C_LINKS=$(sed -n 's/.*links=\([0-9]*\).*/\1/p' <<<"$DONE_LINE")
C_LEFT=$(blob_files "$TMP/capstan/blobs")
kill "$CAPSTAN_PID"; wait "$CAPSTAN_PID" || true

# ------------------------------------------------ docker-registry
DPORT=$(free_port)
cat >"$TMP/distribution.yml" <<YAML
version: 0.1
log: { level: warn, accesslog: { disabled: true } }
storage:
  filesystem: { rootdirectory: $TMP/distribution }
  delete: { enabled: true }
http: { addr: "127.0.0.1:$DPORT" }
YAML
/usr/bin/docker-registry serve "$TMP/distribution.yml" >"$TMP/distribution.log" 2>&1 &
DIST_PID=$!
PIDS+=("$DIST_PID")
DURL="http://127.0.0.1:$DPORT"
wait_ready distribution "$DIST_PID" "$DURL"
log "docker-registry: pushing $ORPHANS orphan blobs"
D_SEED=$("$BENCH" orphans --url "$DURL" --count "$ORPHANS")
D_BASE=$("$BENCH" small-images --url "$DURL" --repo bench/base --count 500 --concurrency 4)
kill "$DIST_PID"; wait "$DIST_PID" || true
log "docker-registry: garbage-collect (registry stopped)"
D_T0=$(date +%s.%N)
/usr/bin/docker-registry garbage-collect "$TMP/distribution.yml" >"$TMP/gc.log" 2>&1
D_ELAPSED_MS=$(python3 -c "import time; print(round((time.time() - $D_T0) * 1000))")
D_LEFT=$(blob_files "$TMP/distribution/docker/registry/v2/blobs")

{
    echo "# Garbage collection of $ORPHANS orphan blobs ($(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(git -C "$ROOT" describe --always --dirty))"
    echo
    echo "| | Capstan (online) | docker-registry (offline) |"
    echo "|---|---:|---:|"
    echo "| orphans pushed, blobs/s (c16) | $(field "$C_SEED" blobs_per_s) | $(field "$D_SEED" blobs_per_s) |"
    echo "| small-image push p99 / max, no GC (ms, c4) | $(field "$C_BASE" p99_ms) / $(field "$C_BASE" max_ms) | $(field "$D_BASE" p99_ms) / $(field "$D_BASE" max_ms) |"
    echo "| time to reclaim (s) | $(python3 -c "print(round($C_ELAPSED_MS/1000, 1))") | $(python3 -c "print(round($D_ELAPSED_MS/1000, 1))") |"
    echo "| links / blobs removed | $C_LINKS / $C_BLOBS | — |"
    echo "| blob files left (images pushed meanwhile) | $C_LEFT | $D_LEFT |"
    echo "| pushes during the collection | $IMAGES images, p99 $P99_MS ms, max $MAX_MS ms | none: the registry is stopped |"
} | tee "$OUT_MD"
