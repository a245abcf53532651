#!/usr/bin/env bash
# Blob throughput on S3, in one run: Capstan (storage.storageDriver) and
# Debian's docker-registry (distribution 2.8, its s3 driver) side by side,
# each on its own bucket of one s3s-fs server on loopback, and both on the
# filesystem for reference (what the S3 store costs). Alternating reps
# of: a monolithic push of BENCH_SIZE_MIB (256) MiB, a chunked push of the
# same size in BENCH_CHUNK_MIB (16) MiB PATCHes, a pull of the first, and
# BENCH_IMAGES (200) small images pushed BENCH_CONCURRENCY (16) at a time;
# with each server's peak RSS during the pushes (memory must not grow with
# the blob). Writes bench/results-s3-latest.md. Everything it started is
# stopped and the temp dir removed on exit. BENCH_SKIP_BUILD=1 uses the
# binaries already built.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/capstan-target}
REPS=${BENCH_REPS:-3}
SIZE_MIB=${BENCH_SIZE_MIB:-256}
CHUNK_MIB=${BENCH_CHUNK_MIB:-16}
COUNT=${BENCH_IMAGES:-200}
CONC=${BENCH_CONCURRENCY:-16}
OUT_MD="$HERE/results-s3-latest.md"
AK=bench-access SK=bench-secret-key
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

[ -x /usr/bin/docker-registry ] || { log "needs docker-registry (apt install docker-registry)"; exit 1; }
S3S=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")
[ -x "$S3S" ] || { log "needs s3s-fs (scripts/setup.sh installs it)"; exit 1; }
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release -j2 -p capstan --bin capstan -p capstan-bench --bin capstan-bench)
fi
CAPSTAN="$CARGO_TARGET_DIR/release/capstan"
BENCH="$CARGO_TARGET_DIR/release/capstan-bench"

bench_tmp capstan-s3-bench

# ------------------------------------------------ the S3 server
S3_PORT=$(free_port)
mkdir -p "$TMP/s3/capstan" "$TMP/s3/distribution"
"$S3S" --host 127.0.0.1 --port "$S3_PORT" --access-key "$AK" --secret-key "$SK" "$TMP/s3" >"$TMP/s3s.log" 2>&1 &
S3_PID=$!
PIDS+=("$S3_PID")
S3_URL="http://127.0.0.1:$S3_PORT"
wait_http s3s "$S3_PID" "$S3_URL/" '[1-5][0-9][0-9]'

# ------------------------------------------------ Capstan
cat >"$TMP/capstan.json" <<JSON
{"storage":{"rootDirectory":"$TMP/capstan","gc":false,
  "storageDriver":{"name":"s3","rootdirectory":"/capstan","region":"us-east-1",
    "regionendpoint":"$S3_URL","bucket":"capstan","forcepathstyle":true,
    "accesskey":"$AK","secretkey":"$SK"}},
 "http":{"address":"127.0.0.1","port":"0"},"log":{"level":"warn"}}
JSON
start_capstan capstan "$TMP/capstan.json"
CAPSTAN_PID=$STARTED_PID CAPSTAN_URL=$STARTED_URL
wait_http capstan "$CAPSTAN_PID" "$CAPSTAN_URL/v2/" '200'

# ------------------------------------------------ docker-registry on its s3 driver
DIST_PORT=$(free_port)
cat >"$TMP/distribution.yml" <<YAML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  s3:
    accesskey: $AK
    secretkey: $SK
    region: us-east-1
    regionendpoint: $S3_URL
    bucket: distribution
    rootdirectory: /distribution
    secure: false
    v4auth: true
    chunksize: 16777216
  delete:
    enabled: true
  redirect:
    disable: true
http:
  addr: 127.0.0.1:$DIST_PORT
YAML
env -u AWS_CA_BUNDLE /usr/bin/docker-registry serve "$TMP/distribution.yml" >"$TMP/distribution.log" 2>&1 &
DIST_PID=$!
PIDS+=("$DIST_PID")
DIST_URL="http://127.0.0.1:$DIST_PORT"
wait_http distribution "$DIST_PID" "$DIST_URL/v2/" '200'
log "s3s-fs $S3_URL, capstan $CAPSTAN_URL, docker-registry $DIST_URL"

# ------------------------------------------------ both on the filesystem
cat >"$TMP/capstan-fs.json" <<JSON
{"storage":{"rootDirectory":"$TMP/capstan-fs","gc":false},
 "http":{"address":"127.0.0.1","port":"0"},"log":{"level":"warn"}}
JSON
start_capstan capstan-fs "$TMP/capstan-fs.json"
CAPSTAN_FS_PID=$STARTED_PID CAPSTAN_FS_URL=$STARTED_URL
wait_http capstan-fs "$CAPSTAN_FS_PID" "$CAPSTAN_FS_URL/v2/" '200'
DIST_FS_PORT=$(free_port)
cat >"$TMP/distribution-fs.yml" <<YAML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $TMP/distribution-fs
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$DIST_FS_PORT
YAML
/usr/bin/docker-registry serve "$TMP/distribution-fs.yml" >"$TMP/distribution-fs.log" 2>&1 &
DIST_FS_PID=$!
PIDS+=("$DIST_FS_PID")
DIST_FS_URL="http://127.0.0.1:$DIST_FS_PORT"
wait_http distribution-fs "$DIST_FS_PID" "$DIST_FS_URL/v2/" '200'

declare -A PID_OF=([capstan]=$CAPSTAN_PID [distribution]=$DIST_PID [capstan-fs]=$CAPSTAN_FS_PID [distribution-fs]=$DIST_FS_PID)
declare -A URL_OF=([capstan]=$CAPSTAN_URL [distribution]=$DIST_URL [capstan-fs]=$CAPSTAN_FS_URL [distribution-fs]=$DIST_FS_URL)
RESULTS="$TMP/results.jsonl"
: >"$RESULTS"

for ((rep = 1; rep <= REPS; rep++)); do
    if ((rep % 2)); then
        blob_scenarios "$rep" capstan distribution capstan-fs distribution-fs
    else
        blob_scenarios "$rep" distribution-fs capstan-fs distribution capstan
    fi
done

# What docker-registry said about its first failure, for the report.
DIST_ERR=$(grep -m1 -o 'err.detail="[^"]*' "$TMP/distribution.log" | sed 's/err.detail="//; s/\\n.*//' || true)
python3 - "$RESULTS" "$OUT_MD" "$SIZE_MIB" "$CHUNK_MIB" "$COUNT" "$CONC" "$REPS" "$DIST_ERR" <<'PY'
import json, statistics, sys, datetime, subprocess, collections
rows = [json.loads(l) for l in open(sys.argv[1])]
size, chunk, count, conc, reps, dist_err = sys.argv[3:9]
labels = [("push-mono", "mib_per_s", f"push {size} MiB (POST + PUT), MiB/s"),
          ("push-chunked", "mib_per_s", f"push {size} MiB in {chunk} MiB PATCHes, MiB/s"),
          ("pull", "mib_per_s", f"pull {size} MiB, MiB/s"),
          ("small-images", "images_per_s", f"{count} small images, {conc} at a time, images/s")]
def cell(label, target, key):
    vals = [r.get(key) for r in rows if r["label"] == label and r["target"] == target and r.get("ok")]
    failed = sum(1 for r in rows if r["label"] == label and r["target"] == target and not r.get("ok"))
    if not vals:
        return "failed" if failed else "-"
    med = statistics.median(vals)
    s = f"{med:.1f}" + (f" ({min(vals):.1f}–{max(vals):.1f})" if len(vals) > 1 else "")
    return s + (f", {failed} failed" if failed else "")
def rss(target):
    v = [r["rss_max_kib"] for r in rows if r["target"] == target and r["label"].startswith("push")]
    return f"{max(v) / 1024:.1f} MiB" if v else "-"
commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
out = [f"# S3 backend: Capstan vs docker-registry ({datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, {commit})", "",
       f"Both on one s3s-fs server on loopback (separate buckets), {reps} alternating reps; median (min–max).", "",
       "| scenario | Capstan on S3 | docker-registry on S3 | Capstan on the filesystem | docker-registry on the filesystem |",
       "|---|---|---|---|---|"]
targets = ["capstan", "distribution", "capstan-fs", "distribution-fs"]
for label, key, title in labels:
    out.append(f"| {title} | " + " | ".join(cell(label, t, key) for t in targets) + " |")
out.append("| peak RSS during the pushes | " + " | ".join(rss(t) for t in targets) + " |")
failed = collections.Counter((r["target"], r["label"]) for r in rows if not r.get("ok"))
if failed:
    out += ["", "Failures:", ""]
    for (t, l), n in sorted(failed.items()):
        last = next(r.get("error", "") for r in rows if r["target"] == t and r["label"] == l and not r.get("ok"))
        http = last[last.find("HTTP"):][:120] if "HTTP" in last else last[-120:]
        out.append(f"- {t} {l}: {n} of {reps} runs failed (`{' '.join(http.split())}`)")
    if dist_err:
        out.append(f"- docker-registry's log on its first failure: `{dist_err}`")
open(sys.argv[2], "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
