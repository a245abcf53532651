#!/usr/bin/env bash
# Metadata at scale on SQLite: BENCH_REPOS (100,000) repositories with
# BENCH_TAGS_PER_REPO (10) tags each (1,000,000 tags), written straight into
# Capstan's database with the sqlite3 client, against the same binary on an
# empty registry, in one run. Measures the time to ready (`/v2/` answering)
# after a start, manifest GET by tag (wrk -t2 -c64), and the latency of a
# catalog page and of a tags page (wrk -t1 -c4). Writes
# bench/results-meta-scale-latest.md. BENCH_SKIP_BUILD=1 uses the binaries
# already built.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/capstan-target}
REPOS=${BENCH_REPOS:-100000}
PER=${BENCH_TAGS_PER_REPO:-10}
DURATION=${BENCH_WRK_DURATION:-10s}
OUT_MD="$HERE/results-meta-scale-latest.md"
log() { printf '== %s\n' "$*" >&2; }

for tool in wrk sqlite3 curl python3; do
    command -v "$tool" >/dev/null || { log "needs $tool"; exit 1; }
done
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release -j2 -p capstan --bin capstan -p capstan-bench --bin capstan-bench)
fi
CAPSTAN="$CARGO_TARGET_DIR/release/capstan"
BENCH="$CARGO_TARGET_DIR/release/capstan-bench"

TMP=$(mktemp -d /tmp/capstan-meta-scale.XXXXXX)
PID=
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"

# start NAME: start Capstan on $TMP/NAME; sets PID and READY_S (seconds from
# exec to the first 200 on /v2/, bounded at 600 s).
start() {
    cat >"$TMP/$1.json" <<JSON
{"storage":{"rootDirectory":"$TMP/$1","commit":true,"gcInterval":"0s"},
 "http":{"address":"127.0.0.1","port":"$PORT"},"log":{"level":"warn"}}
JSON
    local t0 i
    t0=$(date +%s.%N)
    "$CAPSTAN" serve -c "$TMP/$1.json" >"$TMP/$1.out" 2>"$TMP/$1.log" &
    PID=$!
    for ((i = 0; i < 60000; i++)); do
        kill -0 "$PID" 2>/dev/null || { log "capstan exited"; cat "$TMP/$1.log" >&2; exit 1; }
        [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$URL/v2/" || true)" = 200 ] && break
        sleep 0.01
    done
    READY_S=$(python3 -c "import time; print(round(time.time() - $t0, 2))")
}
stop() { kill "$PID"; wait "$PID" || true; PID=; }

# wrk_json CONNS URL: one JSON line (req/s, p50, p99 in ms) from wrk --latency.
wrk_json() {
    wrk -t"$(( $1 < 2 ? 1 : 2 ))" -c"$1" -d"$DURATION" --latency \
        -H 'Accept: application/vnd.oci.image.manifest.v1+json' "$2" | python3 -c '
import json, re, sys
out = sys.stdin.read()
def ms(v):
    n, u = re.match(r"([\d.]+)(\w+)", v).groups()
    return round(float(n) * {"us": 0.001, "ms": 1, "s": 1000}[u], 2)
rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
print(json.dumps({"req_per_s": float(rps.group(1)), "p50_ms": ms(p50.group(1)),
                  "p99_ms": ms(p99.group(1)), "non_2xx": int(bad.group(1)) if bad else 0}))'
}
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

measure() { # NAME: one image pushed, then the three figures
    "$BENCH" seed-manifest --url "$URL" --repo scale/seeded --tag latest >/dev/null
    M_GET=$(wrk_json 64 "$URL/v2/scale/seeded/manifests/latest")
    CATALOG=$(wrk_json 4 "$URL/v2/_catalog?n=100&last=scale/repo050000")
    TAGS=$(wrk_json 4 "$URL/v2/scale/repo012345/tags/list?n=100")
}

# ------------------------------------------------ empty registry
start empty
EMPTY_READY=$READY_S
"$BENCH" seed-manifest --url "$URL" --repo scale/repo012345 --tag v0 >/dev/null
measure
E_GET=$M_GET E_CATALOG=$CATALOG E_TAGS=$TAGS
stop

# ------------------------------------------------ 100,000 repositories, 1,000,000 tags
start big
stop # the schema is in place; now the rows
log "writing $REPOS repositories and $((REPOS * PER)) tags into SQLite"
t0=$(date +%s)
sqlite3 "$TMP/big/meta.db" <<SQL
PRAGMA journal_mode = WAL;
BEGIN;
WITH RECURSIVE r(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM r WHERE i < $REPOS - 1)
INSERT INTO repositories (name, created_at) SELECT printf('scale/repo%06d', i), 0 FROM r;
INSERT INTO manifests (repo, digest, media_type, content, size, annotations, created_at)
SELECT name, 'sha256:' || printf('%064d', rowid), 'application/vnd.oci.image.manifest.v1+json',
       CAST('{"schemaVersion":2}' AS BLOB), 19, '{}', 0 FROM repositories;
WITH RECURSIVE t(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM t WHERE j < $PER - 1)
INSERT INTO tags (repo, name, digest, updated_at)
SELECT m.repo, 'v' || t.j, m.digest, 0 FROM manifests m, t;
COMMIT;
SQL
SEED_S=$(( $(date +%s) - t0 ))
TAG_ROWS=$(sqlite3 "$TMP/big/meta.db" 'SELECT COUNT(*) FROM tags')
start big
BIG_READY=$READY_S
measure
B_GET=$M_GET B_CATALOG=$CATALOG B_TAGS=$TAGS
stop

ratio() { python3 -c "print(f'{$1 / $2 * 100:.0f} %')"; }
{
    echo "# Metadata at scale, SQLite ($(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(git -C "$ROOT" describe --always --dirty))"
    echo
    echo "$REPOS repositories and $TAG_ROWS tags written in ${SEED_S} s with sqlite3; wrk for $DURATION per row."
    echo
    echo "| | empty registry | $TAG_ROWS tags | scale / empty |"
    echo "|---|---:|---:|---:|"
    echo "| ready after start (s) | $EMPTY_READY | $BIG_READY | |"
    echo "| manifest GET by tag, c64 (req/s) | $(field "$E_GET" req_per_s) | $(field "$B_GET" req_per_s) | $(ratio "$(field "$B_GET" req_per_s)" "$(field "$E_GET" req_per_s)") |"
    echo "| catalog page n=100 from the middle, c4: req/s, p50 / p99 (ms) | $(field "$E_CATALOG" req_per_s), $(field "$E_CATALOG" p50_ms) / $(field "$E_CATALOG" p99_ms) | $(field "$B_CATALOG" req_per_s), $(field "$B_CATALOG" p50_ms) / $(field "$B_CATALOG" p99_ms) | |"
    echo "| tags page n=100, c4: req/s, p50 / p99 (ms) | $(field "$E_TAGS" req_per_s), $(field "$E_TAGS" p50_ms) / $(field "$E_TAGS" p99_ms) | $(field "$B_TAGS" req_per_s), $(field "$B_TAGS" p50_ms) / $(field "$B_TAGS" p99_ms) | |"
    for j in "$E_GET" "$E_CATALOG" "$E_TAGS" "$B_GET" "$B_CATALOG" "$B_TAGS"; do
        [ "$(field "$j" non_2xx)" = 0 ] || echo "**warning**: non-2xx answers in $j"
    done
} | tee "$OUT_MD"
