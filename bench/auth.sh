#!/usr/bin/env bash
# What authentication costs a pull: manifest GET by tag (wrk -t2 -c64) on
# Capstan and on Debian's docker-registry (CNCF distribution 2.8), each once
# open and anonymous and once with htpasswd and Basic credentials on every
# request; Capstan also with anonymous reads allowed by policy, and with the
# web UI's session cookie kept in Redis (a redis-server of its own). Runs
# the six alternately, BENCH_REPS times (3), and writes
# bench/results-auth-latest.md. Everything it started is stopped and its
# temp dir removed on exit.
#
# Knobs: BENCH_REPS (3), BENCH_WRK_DURATION (10s), BENCH_SKIP_BUILD=1,
# BENCH_CAPSTAN_BIN (another capstan binary, for A/B runs).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/capstan-target}
REPS=${BENCH_REPS:-3}
WRK_DURATION=${BENCH_WRK_DURATION:-10s}
OUT_MD="$HERE/results-auth-latest.md"
log() { printf '== %s\n' "$*" >&2; }

missing=()
command -v wrk >/dev/null || missing+=(wrk)
[ -x /usr/bin/docker-registry ] || missing+=(docker-registry)
command -v curl >/dev/null || missing+=(curl)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
    $SUDO systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi
python3 -c 'import bcrypt' 2>/dev/null || python3 -m pip install -q bcrypt 2>/dev/null ||
    python3 -m pip install -q --break-system-packages bcrypt

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    log "building capstan and capstan-bench (release)"
    (cd "$ROOT" && cargo build --release -j2 -p capstan --bin capstan -p capstan-bench --bin capstan-bench)
fi
CAPSTAN="${BENCH_CAPSTAN_BIN:-$CARGO_TARGET_DIR/release/capstan}"
BENCH="$CARGO_TARGET_DIR/release/capstan-bench"

TMP=$(mktemp -d /tmp/capstan-auth-bench.XXXXXX)
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

# wait_ready NAME URL: poll GET URL/v2/ (200 or 401), bounded.
wait_ready() {
    local code i
    for ((i = 0; i < 600; i++)); do
        code=$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$2/v2/" || true)
        [[ $code =~ ^(200|401)$ ]] && return 0
        sleep 0.05
    done
    log "$1 not ready at $2"; cat "$TMP/$1.log" >&2 || true; exit 1
}

USER_PW="bench:bench-password"
python3 -c 'import bcrypt,sys; print("bench:" + bcrypt.hashpw(b"bench-password", bcrypt.gensalt(10)).decode())' >"$TMP/htpasswd"
B64=$(printf '%s' "$USER_PW" | base64 -w0)

# start_capstan NAME HTTP_JSON: echo its URL.
start_capstan() {
    local name=$1 http=$2 url i
    mkdir -p "$TMP/$name"
    echo "{\"storage\":{\"rootDirectory\":\"$TMP/$name\"},\"http\":{\"address\":\"127.0.0.1\",\"port\":\"0\"$http},\"log\":{\"level\":\"warn\"}}" >"$TMP/$name.json"
    "$CAPSTAN" serve -c "$TMP/$name.json" >"$TMP/$name.out" 2>"$TMP/$name.log" &
    PIDS+=($!)
    for ((i = 0; i < 600; i++)); do
        url=$(sed -n 's|^capstan: serving \(http://[^ ]*\).*|\1|p' "$TMP/$name.out" | head -n1)
        [ -n "$url" ] && break
        sleep 0.05
    done
    [ -n "$url" ] || { log "$name did not start"; cat "$TMP/$name.log" >&2; exit 1; }
    wait_ready "$name" "$url"
    echo "$url"
}

# start_distribution NAME AUTH_YAML: echo its URL.
start_distribution() {
    local name=$1 auth=$2 port
    port=$(free_port)
    mkdir -p "$TMP/$name"
    printf 'version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n%s' \
        "$TMP/$name" "$port" "$auth" >"$TMP/$name.yml"
    /usr/bin/docker-registry serve "$TMP/$name.yml" >"$TMP/$name.log" 2>&1 &
    PIDS+=($!)
    wait_ready "$name" "http://127.0.0.1:$port"
    echo "http://127.0.0.1:$port"
}

POLICY=',"accessControl":{"repositories":{"**":{"defaultPolicy":["read","create"],"anonymousPolicy":["read"]}}}'
declare -A URL_OF CREDS_OF
URL_OF[capstan-open]=$(start_capstan capstan-open "")
URL_OF[capstan-basic]=$(start_capstan capstan-basic ",\"auth\":{\"htpasswd\":{\"path\":\"$TMP/htpasswd\"}}$POLICY")
# Sessions in a Redis of its own, on a socket in the temp dir.
redis-server --port 0 --unixsocket "$TMP/redis.sock" --save '' --appendonly no --dir "$TMP" \
    >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
for ((i = 0; i < 600; i++)); do
    [ "$(redis-cli -s "$TMP/redis.sock" PING 2>/dev/null)" = PONG ] && break
    sleep 0.05
done
SESSION_DRIVER=",\"sessionDriver\":{\"name\":\"redis\",\"url\":\"redis+unix://$TMP/redis.sock\"}"
URL_OF[capstan-session]=$(start_capstan capstan-session ",\"auth\":{\"htpasswd\":{\"path\":\"$TMP/htpasswd\"}$SESSION_DRIVER}$POLICY")
URL_OF[distribution-open]=$(start_distribution distribution-open "")
URL_OF[distribution-basic]=$(start_distribution distribution-basic "$(printf 'auth:\n  htpasswd:\n    realm: bench\n    path: %s\n' "$TMP/htpasswd")")
CREDS_OF[capstan-open]=""
CREDS_OF[capstan-basic]="$USER_PW"
CREDS_OF[capstan-session]="$USER_PW"
CREDS_OF[distribution-open]=""
CREDS_OF[distribution-basic]="$USER_PW"
for t in capstan-open capstan-basic capstan-session distribution-open distribution-basic; do
    args=(seed-manifest --url "${URL_OF[$t]}" --out "$TMP/manifest.$t")
    [ -n "${CREDS_OF[$t]}" ] && args+=(--basic "${CREDS_OF[$t]}")
    "$BENCH" "${args[@]}" >/dev/null
done

# The web UI's login: Basic credentials with its header start a session.
SESSION=$(curl -s -o /dev/null -D - -u "$USER_PW" -H 'X-ZOT-API-CLIENT: zot-ui' \
    "${URL_OF[capstan-session]}/v2/" | sed -n 's/^[Ss]et-[Cc]ookie: session=\([0-9a-f]*\);.*/\1/p')
[ -n "$SESSION" ] || { log "no session cookie from capstan-session"; exit 1; }

# Runs: label, target, request headers ("" for none, several split by "|").
RUNS=(
    "capstan open, anonymous|capstan-open|"
    "capstan htpasswd, Basic|capstan-basic|Authorization: Basic $B64"
    "capstan htpasswd, anonymous by policy|capstan-basic|"
    "capstan htpasswd, session cookie (Redis)|capstan-session|Cookie: session=$SESSION|X-ZOT-API-CLIENT: zot-ui"
    "docker-registry open, anonymous|distribution-open|"
    "docker-registry htpasswd, Basic|distribution-basic|Authorization: Basic $B64"
)
RESULTS="$TMP/results.jsonl"
for ((rep = 1; rep <= REPS; rep++)); do
    for run in "${RUNS[@]}"; do
        label=${run%%|*}
        rest=${run#*|}
        target=${rest%%|*}
        headers=${rest#*|}
        url="${URL_OF[$target]}/v2/bench/small/manifests/latest"
        hdr=()
        while [ -n "$headers" ]; do
            hdr+=(-H "${headers%%|*}")
            [[ $headers == *"|"* ]] && headers=${headers#*|} || headers=""
        done
        out=$(wrk -t2 -c64 -d"$WRK_DURATION" -H 'Accept: application/vnd.oci.image.manifest.v1+json' "${hdr[@]}" "$url")
        rps=$(sed -n 's/^Requests\/sec:[[:space:]]*\([0-9.]*\).*/\1/p' <<<"$out")
        bad=$(sed -n 's/^[[:space:]]*Non-2xx or 3xx responses:[[:space:]]*\([0-9]*\).*/\1/p' <<<"$out")
        printf '{"label":"%s","rep":%d,"req_per_s":%s,"non_2xx":%s}\n' "$label" "$rep" "${rps:-0}" "${bad:-0}" >>"$RESULTS"
        log "rep $rep  $label: ${rps:-?} req/s (non-2xx: ${bad:-0})"
    done
done

python3 - "$RESULTS" "$OUT_MD" "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
labels = list(dict.fromkeys(r["label"] for r in rows))
med = {l: statistics.median(r["req_per_s"] for r in rows if r["label"] == l) for l in labels}
bad = {l: sum(r["non_2xx"] for r in rows if r["label"] == l) for l in labels}
def ratio(a, b):
    return f"{med[a] / med[b]:.2f}" if med.get(b) else "n/a"
lines = [
    f"# Manifest GET with and without authentication (commit {sys.argv[3]})",
    "",
    "wrk -t2 -c64, medians of %d runs, one machine (2 cores), loopback." % max(r["rep"] for r in rows),
    "",
    "| run | req/s | non-2xx |",
    "|---|---:|---:|",
]
lines += [f"| {l} | {med[l]:.0f} | {bad[l]} |" for l in labels]
lines += [
    "",
    "| ratio | value |",
    "|---|---:|",
    f"| Capstan Basic / Capstan anonymous | {ratio('capstan htpasswd, Basic', 'capstan open, anonymous')} |",
    f"| Capstan anonymous by policy / open | {ratio('capstan htpasswd, anonymous by policy', 'capstan open, anonymous')} |",
    f"| Capstan session cookie / Capstan Basic | {ratio('capstan htpasswd, session cookie (Redis)', 'capstan htpasswd, Basic')} |",
    f"| docker-registry Basic / anonymous | {ratio('docker-registry htpasswd, Basic', 'docker-registry open, anonymous')} |",
    f"| Capstan Basic / docker-registry Basic | {ratio('capstan htpasswd, Basic', 'docker-registry htpasswd, Basic')} |",
]
text = "\n".join(lines) + "\n"
open(sys.argv[2], "w").write(text)
print(text)
PY
