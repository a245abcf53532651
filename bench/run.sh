#!/usr/bin/env bash
# Capstan vs Debian's docker-registry (CNCF distribution 2.8) vs nginx on
# loopback: builds both binaries in release, starts the three servers in a temp
# dir, runs every scenario against Capstan and docker-registry alternately,
# prints the table and writes it to bench/results-latest.md. Everything it
# started is stopped and the temp dir removed on exit.
#
# Knobs (environment): BENCH_REPS (3), BENCH_SIZE_MIB (256), BENCH_CHUNK_MIB (16),
# BENCH_IMAGES (200), BENCH_CONCURRENCY (16), BENCH_WRK_DURATION (10s),
# BENCH_SKIP_BUILD=1 to use the binaries already built, BENCH_CAPSTAN_STORAGE
# for more members of Capstan's storage config in an A/B (e.g.
# '"warmAfterPush":false').
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/capstan-target}
REPS=${BENCH_REPS:-3}
SIZE_MIB=${BENCH_SIZE_MIB:-256}
CHUNK_MIB=${BENCH_CHUNK_MIB:-16}
COUNT=${BENCH_IMAGES:-200}
CONC=${BENCH_CONCURRENCY:-16}
WRK_DURATION=${BENCH_WRK_DURATION:-10s}
OUT_MD="$HERE/results-latest.md"

log() { printf '== %s\n' "$*" >&2; }

# ---------------------------------------------------------------- tools
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || missing+=(nginx-light)
[ -x /usr/bin/docker-registry ] || missing+=(docker-registry)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
    # Debian starts the packaged daemons; this script runs its own.
    $SUDO systemctl disable --now docker-registry nginx >/dev/null 2>&1 || true
fi

# ---------------------------------------------------------------- build
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    log "building capstan and capstan-bench (release) into $CARGO_TARGET_DIR"
    (cd "$ROOT" && cargo build --release -j2 -p capstan --bin capstan -p capstan-bench --bin capstan-bench)
fi
CAPSTAN="$CARGO_TARGET_DIR/release/capstan"
BENCH="$CARGO_TARGET_DIR/release/capstan-bench"

# ---------------------------------------------------------------- temp dir, cleanup
TMP=$(mktemp -d /tmp/capstan-bench.XXXXXX)
chmod 755 "$TMP" # nginx workers run as nobody and must reach $TMP/www
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

# wait_ready NAME PID URL [CODES]: poll GET URL/v2/ until its status matches
# the extended regex CODES (default 200|401); bounded: 600 tries, 1 s timeout each.
wait_ready() {
    local name=$1 pid=$2 url=$3 codes=${4:-200|401} code i
    for ((i = 0; i < 600; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited before it was ready; its output:"
            cat "$TMP/$name.log" >&2 || true
            exit 1
        fi
        code=$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$url/v2/" || true)
        [[ $code =~ ^($codes)$ ]] && return 0
        sleep 0.05
    done
    log "$name not ready at $url after 600 polls"
    exit 1
}

# ---------------------------------------------------------------- Capstan
mkdir -p "$TMP/capstan"
EXTRA_STORAGE=${BENCH_CAPSTAN_STORAGE:+,$BENCH_CAPSTAN_STORAGE}
cat >"$TMP/capstan.json" <<JSON
{"storage":{"rootDirectory":"$TMP/capstan","commit":true$EXTRA_STORAGE},"http":{"address":"127.0.0.1","port":"0"},"log":{"level":"warn"}}
JSON
"$CAPSTAN" serve -c "$TMP/capstan.json" >"$TMP/capstan.out" 2>"$TMP/capstan.log" &
CAPSTAN_PID=$!
PIDS+=("$CAPSTAN_PID")
CAPSTAN_URL=
for ((i = 0; i < 600; i++)); do
    CAPSTAN_URL=$(sed -n 's|^capstan: serving \(http://[^ ]*\).*|\1|p' "$TMP/capstan.out" | head -n1)
    [ -n "$CAPSTAN_URL" ] && break
    if ! kill -0 "$CAPSTAN_PID" 2>/dev/null; then
        log "capstan exited at start:"; cat "$TMP/capstan.out" "$TMP/capstan.log" >&2; exit 1
    fi
    sleep 0.05
done
[ -n "$CAPSTAN_URL" ] || { log "capstan printed no 'serving' line"; cat "$TMP/capstan.out" >&2; exit 1; }
wait_ready capstan "$CAPSTAN_PID" "$CAPSTAN_URL"

# ---------------------------------------------------------------- docker-registry
DIST_PORT=$(free_port)
mkdir -p "$TMP/distribution"
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
wait_ready distribution "$DIST_PID" "$DIST_URL"

# ---------------------------------------------------------------- nginx
NGINX_PORT=$(free_port)
mkdir -p "$TMP/nginx/tmp" "$TMP/www/v2/bench/small/manifests"
cat >"$TMP/nginx/nginx.conf" <<NGINX
daemon off;
worker_processes 2;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/tmp/body;
    proxy_temp_path $TMP/nginx/tmp/proxy;
    fastcgi_temp_path $TMP/nginx/tmp/fastcgi;
    uwsgi_temp_path $TMP/nginx/tmp/uwsgi;
    scgi_temp_path $TMP/nginx/tmp/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $TMP/www;
        location /v2/ { default_type application/vnd.oci.image.manifest.v1+json; }
    }
}
NGINX
nginx -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx/" >"$TMP/nginx.log" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
NGINX_URL="http://127.0.0.1:$NGINX_PORT"
wait_ready nginx "$NGINX_PID" "$NGINX_URL" '[1-5][0-9][0-9]' # /v2/ has no index: any answer will do
log "capstan $CAPSTAN_URL (pid $CAPSTAN_PID), docker-registry $DIST_URL (pid $DIST_PID), nginx $NGINX_URL (pid $NGINX_PID)"

# ---------------------------------------------------------------- measuring
RESULTS="$TMP/results.jsonl"
printf '{"kind":"meta","date":"%s","cpus":%s,"reps":%s,"size_mib":%s,"chunk_mib":%s,"count":%s,"concurrency":%s,"loadavg_start":"%s","commit":"%s"}\n' \
    "$(date -u '+%Y-%m-%d %H:%M UTC')" "$(nproc)" "$REPS" "$SIZE_MIB" "$CHUNK_MIB" "$COUNT" "$CONC" "$(cut -d' ' -f1-3 /proc/loadavg)" \
    "$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)" >"$RESULTS"

declare -A PID_OF=([capstan]=$CAPSTAN_PID [distribution]=$DIST_PID [nginx]=$NGINX_PID)
declare -A URL_OF=([capstan]=$CAPSTAN_URL [distribution]=$DIST_URL [nginx]=$NGINX_URL)
declare -A PUSH_RSS_MAX=([capstan]=0 [distribution]=0)

# CPU ticks (1/100 s) of a process and its direct children.
cpu_ticks() {
    local total=0 p stat rest
    for p in "$1" $(cat "/proc/$1/task/$1/children" 2>/dev/null); do
        stat=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        rest=${stat##*) }
        read -r -a f <<<"$rest"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

# Process-context CPU ticks of the whole machine (all cores), from /proc/stat;
# MACHINE_IRQ=1 for interrupt time instead (loopback traffic is mostly softirq,
# charged to no process).
machine_ticks() {
    local _cpu user nice system idle iowait irq softirq steal _rest
    read -r _cpu user nice system idle iowait irq softirq steal _rest </proc/stat
    if [ "${MACHINE_IRQ:-0}" = 1 ]; then echo $((irq + softirq)); else echo $((user + nice + system + steal)); fi
}
servers_ticks() {
    echo $(($(cpu_ticks "$CAPSTAN_PID") + $(cpu_ticks "$DIST_PID") + $(cpu_ticks "$NGINX_PID")))
}

status_kib() { # status_kib PID FIELD -> kB value of VmRSS/VmHWM
    local k v _
    while read -r k v _; do
        [ "$k" = "$2:" ] && { echo "$v"; return; }
    done <"/proc/$1/status" 2>/dev/null
    echo 0
}

# Blobs Capstan has still to read into the page cache (its /metrics).
warm_pending() {
    curl -sf -m 2 "$CAPSTAN_URL/metrics" |
        awk '/^capstan_blob_warm_pending\{/ { n += $NF } END { print n + 0 }' || echo 0
}

# settle: wait until Capstan has no pushed blob left to warm and no server
# has used CPU for 3 polls in a row (50 ms apart), so that work one server
# does after answering (Capstan reads a pushed blob into the page cache) is
# not charged to the next scenario. Bounded: 200 polls. Sets SETTLE_S,
# SETTLE_TIMED_OUT (true when the bound was hit), and SETTLE_CPU_S and
# SETTLE_CAPSTAN_CPU_S (the CPU all servers used meanwhile, and Capstan
# since the end of the previous measurement: for Capstan, mostly warming).
SETTLE_S=0 SETTLE_CPU_S=0 SETTLE_CAPSTAN_CPU_S=0 SETTLE_TIMED_OUT=false
CAPSTAN_TICKS_AFTER=
settle() {
    local t0=$EPOCHREALTIME first now last quiet=0 i c0
    c0=${CAPSTAN_TICKS_AFTER:-$(cpu_ticks "$CAPSTAN_PID")}
    first=$(servers_ticks) last=$first
    for ((i = 0; i < 200 && quiet < 3; i++)); do
        sleep 0.05
        now=$(servers_ticks)
        if ((now == last)) && (($(warm_pending) == 0)); then quiet=$((quiet + 1)); else quiet=0; fi
        last=$now
    done
    if ((quiet < 3)); then SETTLE_TIMED_OUT=true; else SETTLE_TIMED_OUT=false; fi
    SETTLE_S=$(python3 -c "print(round($EPOCHREALTIME - $t0, 2))")
    SETTLE_CPU_S=$(python3 -c "print(round(($last - $first) / 100, 2))")
    SETTLE_CAPSTAN_CPU_S=$(python3 -c "print(round(($(cpu_ticks "$CAPSTAN_PID") - $c0) / 100, 2))")
}

# measure TARGET REP LABEL CMD...: once the servers are idle, run CMD in the
# background while sampling the server's VmRSS, then append the JSON line it
# printed, annotated with LABEL (the table row), to $RESULTS.
LAST=
measure() {
    local target=$1 rep=$2 scenario=$3; shift 3
    local pid=${PID_OF[$target]} out="$TMP/run.out" err="$TMP/run.err"
    local c0 c1 rss max=0 rc=0 line
    if [ "${NO_SETTLE:-0}" = 1 ]; then
        SETTLE_S=0 SETTLE_CPU_S=0 SETTLE_CAPSTAN_CPU_S=0 SETTLE_TIMED_OUT=false
    else
        settle
    fi
    c0=$(cpu_ticks "$pid")
    timeout 900 "$@" >"$out" 2>"$err" &
    local job=$!
    while kill -0 "$job" 2>/dev/null; do
        rss=$(status_kib "$pid" VmRSS)
        if ((rss > max)); then max=$rss; fi
        sleep 0.02
    done
    wait "$job" || rc=$?
    c1=$(cpu_ticks "$pid")
    CAPSTAN_TICKS_AFTER=$(cpu_ticks "$CAPSTAN_PID")
    line=$(grep -m1 '^{' "$out" || true)
    if [ -z "$line" ]; then
        line=$(python3 -c 'import json,sys; print(json.dumps({"scenario": sys.argv[3], "ok": False, "error": "client exited %s without a result: %s" % (sys.argv[1], open(sys.argv[2]).read()[-500:])}))' "$rc" "$err" "$scenario")
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        log "$target is no longer running"
    fi
    LAST="{\"kind\":\"run\",\"label\":\"$scenario\",\"target\":\"$target\",\"rep\":$rep,\"server_cpu_s\":$(python3 -c "print(round(($c1-$c0)/100,2))"),\"rss_max_kib\":$max,\"settle_s\":$SETTLE_S,\"settle_server_cpu_s\":$SETTLE_CPU_S,\"settle_capstan_cpu_s\":$SETTLE_CAPSTAN_CPU_S,\"settle_timed_out\":$SETTLE_TIMED_OUT,${line#\{}"
    echo "$LAST" >>"$RESULTS"
    printf '  %-12s %s\n' "$target" "$line" >&2
}

# evict DIR: drop every file under DIR from the page cache (written back
# first), so the next read of it comes from the disk.
evict() {
    python3 - "$1" <<'PY'
import os, sys
for root, _, files in os.walk(sys.argv[1]):
    for name in files:
        try:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
        finally:
            os.close(fd)
PY
}

field() { python3 -c 'import json,sys; v=json.loads(sys.argv[1]).get(sys.argv[2]); print("" if v is None else v)' "$1" "$2"; }

SECONDS=0
MACHINE_T0=$(machine_ticks)
IRQ_T0=$(MACHINE_IRQ=1 machine_ticks)
SERVERS_T0=$(servers_ticks)
T="--timeout-s 300"
for ((rep = 1; rep <= REPS; rep++)); do
    if ((rep % 2)); then order=(capstan distribution); else order=(distribution capstan); fi
    log "run $rep/$REPS (order: ${order[*]})"
    declare -A MONO_DIGEST=() CHUNKED_DIGEST=()
    for target in "${order[@]}"; do
        measure "$target" "$rep" push-mono "$BENCH" push-mono --url "${URL_OF[$target]}" $T \
            --size-mib "$SIZE_MIB" --seed $((rep * 10 + 1))
        MONO_DIGEST[$target]=$(field "$LAST" digest)
        rss=$(field "$LAST" rss_max_kib)
        if ((rss > PUSH_RSS_MAX[$target])); then PUSH_RSS_MAX[$target]=$rss; fi
    done
    # A CI pipeline's layers: five pushes, each the moment the previous one
    # is acknowledged (Capstan may still be warming the previous blob).
    for target in "${order[@]}"; do
        measure "$target" "$rep" push-mono/back-to-back "$BENCH" push-mono --url "${URL_OF[$target]}" $T \
            --size-mib "$SIZE_MIB" --seed $((rep * 100 + 50)) --count 5
    done
    # Like for like: docker-registry ignores a monolithic POST's body (202), so
    # it is pushed POST + PUT; also push Capstan that way.
    measure capstan "$rep" push-mono/post-put "$BENCH" push-mono --url "$CAPSTAN_URL" $T \
        --size-mib "$SIZE_MIB" --seed $((rep * 10 + 3)) --method post-put
    rss=$(field "$LAST" rss_max_kib)
    if ((rss > PUSH_RSS_MAX[capstan])); then PUSH_RSS_MAX[capstan]=$rss; fi
    for target in "${order[@]}"; do
        measure "$target" "$rep" push-chunked "$BENCH" push-chunked --url "${URL_OF[$target]}" $T \
            --size-mib "$SIZE_MIB" --chunk-mib "$CHUNK_MIB" --seed $((rep * 10 + 2))
        CHUNKED_DIGEST[$target]=$(field "$LAST" digest)
        rss=$(field "$LAST" rss_max_kib)
        if ((rss > PUSH_RSS_MAX[$target])); then PUSH_RSS_MAX[$target]=$rss; fi
    done
    for target in "${order[@]}"; do
        digest=${MONO_DIGEST[$target]}
        if [ -z "$digest" ]; then
            # Nothing to pull: record why instead of silently skipping.
            echo "{\"kind\":\"run\",\"label\":\"pull\",\"target\":\"$target\",\"rep\":$rep,\"scenario\":\"pull\",\"ok\":false,\"error\":\"skipped: push-mono failed, no blob to pull\"}" >>"$RESULTS"
            continue
        fi
        measure "$target" "$rep" pull "$BENCH" pull --url "${URL_OF[$target]}" $T \
            --repo bench --digest "$digest" --expect-size $((SIZE_MIB << 20)) --seed $((rep * 10 + 1))
    done
    # The same blob again, twice: a hot blob (Capstan reads it through the
    # page cache: warmed after its push, or from its second read on without
    # warming; docker-registry always does).
    for again in second third; do
        for target in "${order[@]}"; do
            digest=${MONO_DIGEST[$target]}
            [ -n "$digest" ] || continue
            measure "$target" "$rep" "pull/$again" "$BENCH" pull --url "${URL_OF[$target]}" $T \
                --repo bench --digest "$digest" --expect-size $((SIZE_MIB << 20)) --seed $((rep * 10 + 1))
        done
    done
    # From the disk: the chunked push's blob (not read yet), with both
    # registries' files dropped from the page cache first. Capstan counts
    # it as hot (warmed after its push), so it refills the page cache as
    # docker-registry does; without warming it reads it with direct I/O.
    for target in "${order[@]}"; do
        digest=${CHUNKED_DIGEST[$target]}
        [ -n "$digest" ] || continue
        evict "$TMP/$target"
        measure "$target" "$rep" pull/cold "$BENCH" pull --url "${URL_OF[$target]}" $T \
            --repo bench --digest "$digest" --expect-size $((SIZE_MIB << 20)) --seed $((rep * 10 + 2))
    done
    # A pull right after its push, with no wait between them: Capstan may
    # still be warming the blob, and the pull shares that work.
    for target in "${order[@]}"; do
        measure "$target" "$rep" push-mono/next "$BENCH" push-mono --url "${URL_OF[$target]}" $T \
            --size-mib "$SIZE_MIB" --seed $((rep * 10 + 4))
        digest=$(field "$LAST" digest)
        [ -n "$digest" ] || continue
        NO_SETTLE=1 measure "$target" "$rep" pull/at-once "$BENCH" pull --url "${URL_OF[$target]}" $T \
            --repo bench --digest "$digest" --expect-size $((SIZE_MIB << 20)) --seed $((rep * 10 + 4))
    done
    for target in "${order[@]}"; do
        measure "$target" "$rep" small-images "$BENCH" small-images --url "${URL_OF[$target]}" $T \
            --count "$COUNT" --concurrency "$CONC"
    done
    measure capstan "$rep" small-images/post-put "$BENCH" small-images --url "$CAPSTAN_URL" $T \
        --count "$COUNT" --concurrency "$CONC" --method post-put
    # Manifest GET by tag: the same manifest bytes on all three servers.
    for target in "${order[@]}"; do
        seed_line=$("$BENCH" seed-manifest --url "${URL_OF[$target]}" $T --out "$TMP/manifest.$target" || true)
        printf '  %-12s %s\n' "$target" "$seed_line" >&2
    done
    cp "$TMP/manifest.capstan" "$TMP/www/v2/bench/small/manifests/latest" 2>/dev/null ||
        cp "$TMP/manifest.distribution" "$TMP/www/v2/bench/small/manifests/latest"
    for target in "${order[@]}" nginx; do
        url="${URL_OF[$target]}/v2/bench/small/manifests/latest"
        if ! curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' "$url" |
            cmp -s - "$TMP/www/v2/bench/small/manifests/latest"; then
            log "$target does not serve the seeded manifest bytes at $url"
        fi
        measure "$target" "$rep" manifest-get python3 "$HERE/report.py" wrk "$target" "$url" "$WRK_DURATION"
    done
done

# ---------------------------------------------------------------- memory, table
for target in capstan distribution; do
    pid=${PID_OF[$target]}
    if kill -0 "$pid" 2>/dev/null; then
        hwm=$(status_kib "$pid" VmHWM)
    else
        hwm=0
        log "$target had exited before the end; last log lines:"
        tail -n 20 "$TMP/$target.log" >&2 || true
    fi
    echo "{\"kind\":\"memory\",\"target\":\"$target\",\"hwm_kib\":$hwm,\"push_rss_max_kib\":${PUSH_RSS_MAX[$target]}}" >>"$RESULTS"
done
if [ -s "$TMP/capstan.log" ]; then
    log "capstan log (warn and above), last 20 lines:"
    tail -n 20 "$TMP/capstan.log" >&2
fi
echo
# CPU the rest of the machine used meanwhile (other people's builds show up here).
echo "{\"kind\":\"end\",\"loadavg_end\":\"$(cut -d' ' -f1-3 /proc/loadavg)\",\"machine_busy_s\":$((($(machine_ticks) - MACHINE_T0) / 100)),\"irq_s\":$((($(MACHINE_IRQ=1 machine_ticks) - IRQ_T0) / 100)),\"servers_busy_s\":$((($(servers_ticks) - SERVERS_T0) / 100)),\"wall_s\":$SECONDS}" >>"$RESULTS"
python3 "$HERE/report.py" table "$RESULTS" "$OUT_MD"
cp "$RESULTS" "$HERE/results-latest.jsonl"
log "wrote $OUT_MD and bench/results-latest.jsonl"
