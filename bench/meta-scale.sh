#!/usr/bin/env bash
# Metadata at scale, on SQLite and on Postgres: BENCH_REPOS (100,000)
# repositories with BENCH_TAGS_PER_REPO (10) tags each (1,000,000 tags),
# written straight into Capstan's database (sqlite3, psql), against the same
# binary on an empty registry, in one run. The Postgres server is started
# here, in the temp dir (as the `postgres` user when run as root). Measures the time to ready (`/v2/` answering)
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

PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
[ -x "$PGBIN/initdb" ] || { log "needs postgresql (apt install postgresql)"; exit 1; }
for tool in wrk sqlite3 curl python3; do
    command -v "$tool" >/dev/null || { log "needs $tool"; exit 1; }
done
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release -j2 -p capstan --bin capstan -p capstan-bench --bin capstan-bench)
fi
CAPSTAN="$CARGO_TARGET_DIR/release/capstan"
BENCH="$CARGO_TARGET_DIR/release/capstan-bench"

TMP=$(mktemp -d /tmp/capstan-meta-scale.XXXXXX)
chmod 755 "$TMP"
PID=
PG_UP=0
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    [ "$PG_UP" = 1 ] && as_pg "$PGBIN/pg_ctl" -D "$TMP/pg/data" -m fast stop >/dev/null 2>&1
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"

# start NAME [DATABASE_URL]: start Capstan on $TMP/NAME (metadata in SQLite
# there, or in DATABASE_URL); sets PID and READY_S (seconds from exec to the
# first 200 on /v2/, bounded at 600 s).
start() {
    local database=${2:+,\"database\":\"$2\"}
    cat >"$TMP/$1.json" <<JSON
{"storage":{"rootDirectory":"$TMP/$1","commit":true,"gcInterval":"0s"$database},
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

# scale BACKEND: the empty and the big registry on BACKEND (sqlite or
# postgres); sets ${BACKEND}_* figures.
scale() {
    local b=$1 empty_url= big_url=
    if [ "$b" = postgres ]; then
        empty_url="postgres://capstan@127.0.0.1:$PGPORT/empty"
        big_url="postgres://capstan@127.0.0.1:$PGPORT/big"
        for db in empty big; do
            as_pg "$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U capstan "$db"
        done
    fi
    start "$b-empty" "$empty_url"
    local empty_ready=$READY_S
    "$BENCH" seed-manifest --url "$URL" --repo scale/repo012345 --tag v0 >/dev/null
    measure
    local e_get=$M_GET e_catalog=$CATALOG e_tags=$TAGS
    stop
    start "$b-big" "$big_url"
    stop # the schema is in place; now the rows
    log "$b: writing $REPOS repositories and $((REPOS * PER)) tags"
    local t0 rows
    t0=$(date +%s)
    if [ "$b" = sqlite ]; then
        sqlite3 "$TMP/$b-big/meta.db" >/dev/null <<SQL
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
        rows=$(sqlite3 "$TMP/$b-big/meta.db" 'SELECT COUNT(*) FROM tags')
    else
        as_pg psql -q -h 127.0.0.1 -p "$PGPORT" -U capstan -d big -v ON_ERROR_STOP=1 >/dev/null <<SQL
BEGIN;
INSERT INTO repositories (name, created_at)
SELECT 'scale/repo' || lpad(i::text, 6, '0'), 0 FROM generate_series(0, $REPOS - 1) i;
INSERT INTO manifests (repo, digest, media_type, content, size, annotations, created_at)
SELECT name, 'sha256:' || lpad((row_number() OVER ())::text, 64, '0'),
       'application/vnd.oci.image.manifest.v1+json', convert_to('{"schemaVersion":2}', 'UTF8'),
       19, '{}', 0 FROM repositories;
INSERT INTO tags (repo, name, digest, updated_at)
SELECT m.repo, 'v' || j, m.digest, 0 FROM manifests m, generate_series(0, $PER - 1) j;
COMMIT;
ANALYZE;
SQL
        rows=$(as_pg psql -At -h 127.0.0.1 -p "$PGPORT" -U capstan -d big -c 'SELECT COUNT(*) FROM tags')
    fi
    local seed_s=$(( $(date +%s) - t0 ))
    start "$b-big" "$big_url"
    local big_ready=$READY_S
    measure
    stop
    ratio() { python3 -c "print(f'{$1 / $2 * 100:.0f} %')"; }
    {
        echo "## $b: $REPOS repositories, $rows tags (written in ${seed_s} s)"
        echo
        echo "| | empty registry | $rows tags | scale / empty |"
        echo "|---|---:|---:|---:|"
        echo "| ready after start (s) | $empty_ready | $big_ready | |"
        echo "| manifest GET by tag, c64 (req/s) | $(field "$e_get" req_per_s) | $(field "$M_GET" req_per_s) | $(ratio "$(field "$M_GET" req_per_s)" "$(field "$e_get" req_per_s)") |"
        echo "| catalog page n=100 from the middle, c4: req/s, p50 / p99 (ms) | $(field "$e_catalog" req_per_s), $(field "$e_catalog" p50_ms) / $(field "$e_catalog" p99_ms) | $(field "$CATALOG" req_per_s), $(field "$CATALOG" p50_ms) / $(field "$CATALOG" p99_ms) | |"
        echo "| tags page n=100, c4: req/s, p50 / p99 (ms) | $(field "$e_tags" req_per_s), $(field "$e_tags" p50_ms) / $(field "$e_tags" p99_ms) | $(field "$TAGS" req_per_s), $(field "$TAGS" p50_ms) / $(field "$TAGS" p99_ms) | |"
        for j in "$e_get" "$e_catalog" "$e_tags" "$M_GET" "$CATALOG" "$TAGS"; do
            [ "$(field "$j" non_2xx)" = 0 ] || echo "**warning**: non-2xx answers in $j"
        done
        echo
    } >>"$TMP/report.md"
}

# ------------------------------------------------ Postgres, started here
PGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$TMP/pg"
[ "$(id -u)" = 0 ] && chown postgres: "$TMP/pg"
as_pg "$PGBIN/initdb" -D "$TMP/pg/data" -U capstan --auth=trust -E UTF8 >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$TMP/pg/data" -l "$TMP/pg/log" -w -t 60 \
    -o "-p $PGPORT -k $TMP/pg -c listen_addresses=127.0.0.1" start >/dev/null
PG_UP=1

{
    echo "# Metadata at scale ($(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(git -C "$ROOT" describe --always --dirty))"
    echo
    echo "wrk for $DURATION per row; the same binary on each backend, empty and at scale."
    echo
} >"$TMP/report.md"
scale sqlite
scale postgres
tee "$OUT_MD" <"$TMP/report.md"
