#!/usr/bin/env bash
# Capstan distributed (gateway, svc-meta and two svc-blob replicas as
# separate processes on loopback, the replicas sharing one storage root)
# beside Capstan embedded (every role in one process) and Debian's
# docker-registry (distribution 2.8), in one run, alternating reps of: a
# monolithic push of BENCH_SIZE_MIB (256) MiB (POST + PUT), a chunked push
# in BENCH_CHUNK_MIB (16) MiB PATCHes, a pull of the first, and
# BENCH_IMAGES (200) small images pushed BENCH_CONCURRENCY (16) at a time.
# The distributed gateway's calls to svc-blob alternate between the
# replicas (a chunked upload's PATCHes too). Writes
# bench/results-distributed-latest.md. Everything it started is stopped
# and the temp dir removed on exit. BENCH_SKIP_BUILD=1 uses the binaries
# already built.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/capstan-target}
REPS=${BENCH_REPS:-3}
SIZE_MIB=${BENCH_SIZE_MIB:-256}
CHUNK_MIB=${BENCH_CHUNK_MIB:-16}
COUNT=${BENCH_IMAGES:-200}
CONC=${BENCH_CONCURRENCY:-16}
OUT_MD="$HERE/results-distributed-latest.md"
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

[ -x /usr/bin/docker-registry ] || { log "needs docker-registry (apt install docker-registry)"; exit 1; }
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release -j2 -p capstan --bin capstan -p capstan-bench --bin capstan-bench)
fi
CAPSTAN="$CARGO_TARGET_DIR/release/capstan"
BENCH="$CARGO_TARGET_DIR/release/capstan-bench"

bench_tmp capstan-dist-bench

# ------------------------------------------------ Capstan embedded
cat >"$TMP/embedded.json" <<JSON
{"storage":{"rootDirectory":"$TMP/embedded","commit":true},
 "http":{"address":"127.0.0.1","port":"0"},"log":{"level":"warn"}}
JSON
start_capstan embedded "$TMP/embedded.json"
EMBEDDED_PID=$STARTED_PID EMBEDDED_URL=$STARTED_URL
wait_http embedded "$EMBEDDED_PID" "$EMBEDDED_URL/v2/" '200'

# ------------------------------------------------ Capstan distributed
cat >"$TMP/roles.json" <<JSON
{"storage":{"rootDirectory":"$TMP/distributed","commit":true},"log":{"level":"warn"}}
JSON
start_capstan meta "$TMP/roles.json" --role meta --listen 127.0.0.1:0
META_URL=$STARTED_URL
start_capstan blob-1 "$TMP/roles.json" --role blob --listen 127.0.0.1:0
BLOB_1_URL=$STARTED_URL
start_capstan blob-2 "$TMP/roles.json" --role blob --listen 127.0.0.1:0
BLOB_2_URL=$STARTED_URL
cat >"$TMP/gateway.json" <<JSON
{"storage":{"rootDirectory":"$TMP/distributed","commit":true},
 "http":{"address":"127.0.0.1","port":"0"},"log":{"level":"warn"},
 "services":{"meta":{"endpoints":["$META_URL"]},"blob":{"endpoints":["$BLOB_1_URL","$BLOB_2_URL"]}}}
JSON
start_capstan gateway "$TMP/gateway.json" --role gateway
GATEWAY_PID=$STARTED_PID GATEWAY_URL=$STARTED_URL
wait_http gateway "$GATEWAY_PID" "$GATEWAY_URL/readyz" '200'

# ------------------------------------------------ docker-registry
DIST_PORT=$(free_port)
cat >"$TMP/distribution.yml" <<YAML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $TMP/distribution
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$DIST_PORT
YAML
/usr/bin/docker-registry serve "$TMP/distribution.yml" >"$TMP/distribution.log" 2>&1 &
DIST_PID=$!
PIDS+=("$DIST_PID")
DIST_URL="http://127.0.0.1:$DIST_PORT"
wait_http distribution "$DIST_PID" "$DIST_URL/v2/" '200'
log "embedded $EMBEDDED_URL, distributed $GATEWAY_URL (meta $META_URL, blob $BLOB_1_URL $BLOB_2_URL), docker-registry $DIST_URL"

# The distributed row's RSS is the gateway's (the process the bytes cross).
declare -A PID_OF=([embedded]=$EMBEDDED_PID [distributed]=$GATEWAY_PID [distribution]=$DIST_PID)
declare -A URL_OF=([embedded]=$EMBEDDED_URL [distributed]=$GATEWAY_URL [distribution]=$DIST_URL)
RESULTS="$TMP/results.jsonl"
: >"$RESULTS"

for ((rep = 1; rep <= REPS; rep++)); do
    if ((rep % 2)); then
        blob_scenarios "$rep" embedded distributed distribution
    else
        blob_scenarios "$rep" distribution distributed embedded
    fi
done

python3 - "$RESULTS" "$OUT_MD" "$SIZE_MIB" "$CHUNK_MIB" "$COUNT" "$CONC" "$REPS" <<'PY'
import json, statistics, sys, datetime, subprocess
rows = [json.loads(l) for l in open(sys.argv[1])]
size, chunk, count, conc, reps = sys.argv[3:8]
labels = [("push-mono", "mib_per_s", f"push {size} MiB (POST + PUT), MiB/s"),
          ("push-chunked", "mib_per_s", f"push {size} MiB in {chunk} MiB PATCHes, MiB/s"),
          ("pull", "mib_per_s", f"pull {size} MiB, MiB/s"),
          ("small-images", "images_per_s", f"{count} small images, {conc} at a time, images/s")]
def values(label, target, key):
    return [r.get(key) for r in rows if r["label"] == label and r["target"] == target and r.get("ok")]
def cell(label, target, key):
    vals = values(label, target, key)
    failed = sum(1 for r in rows if r["label"] == label and r["target"] == target and not r.get("ok"))
    if not vals:
        return "failed" if failed else "-"
    s = f"{statistics.median(vals):.1f}" + (f" ({min(vals):.1f}–{max(vals):.1f})" if len(vals) > 1 else "")
    return s + (f", {failed} failed" if failed else "")
def share(label, key):
    d, e = values(label, "distributed", key), values(label, "embedded", key)
    return f"{100 * statistics.median(d) / statistics.median(e):.0f} %" if d and e else "-"
def rss(target):
    v = [r["rss_max_kib"] for r in rows if r["target"] == target and r["label"].startswith("push")]
    return f"{max(v) / 1024:.1f} MiB" if v else "-"
commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
out = [f"# Distributed vs embedded Capstan vs docker-registry ({datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, {commit})", "",
       f"Loopback, filesystem storage, {reps} alternating reps; median (min–max). Distributed: gateway, svc-meta "
       "and two svc-blob replicas as separate processes (the replicas share the storage root).", "",
       "| scenario | Capstan embedded | Capstan distributed | distributed / embedded | docker-registry |",
       "|---|---|---|---|---|"]
for label, key, title in labels:
    out.append(f"| {title} | {cell(label, 'embedded', key)} | {cell(label, 'distributed', key)} | "
               f"{share(label, key)} | {cell(label, 'distribution', key)} |")
out.append(f"| peak RSS during the pushes (distributed: the gateway) | {rss('embedded')} | {rss('distributed')} | | {rss('distribution')} |")
open(sys.argv[2], "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
log "wrote $OUT_MD"
