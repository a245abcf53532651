#!/usr/bin/env bash
# First pull through a pull-through cache: Capstan (extensions.sync onDemand)
# against Debian's docker-registry configured as a proxy (`proxy.remoteurl`),
# both in front of the same upstream docker-registry holding one image with a
# BENCH_LAYER_MIB (256) layer. Each run starts both caches empty, then times
# the client's manifest GET and its full blob GET (curl), alternating which
# goes first, BENCH_REPS (3) times. Writes bench/results-sync-latest.md.
# Everything it started is stopped and its temp dir removed on exit.
#
# Knobs: BENCH_REPS (3), BENCH_LAYER_MIB (256), BENCH_SKIP_BUILD=1.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/capstan-target}
REPS=${BENCH_REPS:-3}
LAYER_MIB=${BENCH_LAYER_MIB:-256}
OUT_MD="$HERE/results-sync-latest.md"
log() { printf '== %s\n' "$*" >&2; }

missing=()
[ -x /usr/bin/docker-registry ] || missing+=(docker-registry)
command -v curl >/dev/null || missing+=(curl)
command -v skopeo >/dev/null || missing+=(skopeo)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
    $SUDO systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    log "building capstan (release)"
    (cd "$ROOT" && cargo build --release -j2 -p capstan --bin capstan)
fi
CAPSTAN="$CARGO_TARGET_DIR/release/capstan"

TMP=$(mktemp -d /tmp/capstan-sync-bench.XXXXXX)
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
wait_ready() {
    local code i
    for ((i = 0; i < 600; i++)); do
        code=$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$1/v2/" || true)
        [[ $code =~ ^(200|401)$ ]] && return 0
        sleep 0.05
    done
    log "not ready: $1"; exit 1
}

# start_distribution NAME EXTRA_YAML: echo URL (PID appended to PIDS by caller).
start_distribution() {
    local name=$1 extra=$2 port
    port=$(free_port)
    mkdir -p "$TMP/$name"
    printf 'version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n%s' \
        "$TMP/$name" "$port" "$extra" >"$TMP/$name.yml"
    /usr/bin/docker-registry serve "$TMP/$name.yml" >"$TMP/$name.log" 2>&1 &
    echo "$! http://127.0.0.1:$port"
}

# The upstream, holding bench/big:v1 with one LAYER_MIB layer.
read -r pid UPSTREAM < <(start_distribution upstream "")
PIDS+=("$pid")
wait_ready "$UPSTREAM"
log "building a ${LAYER_MIB} MiB image"
python3 - "$TMP/layout" "$LAYER_MIB" <<'PY'
import hashlib, json, os, sys
root, mib = sys.argv[1], int(sys.argv[2])
blobs = os.path.join(root, "blobs", "sha256")
os.makedirs(blobs)
def put(data):
    d = hashlib.sha256(data).hexdigest()
    open(os.path.join(blobs, d), "wb").write(data)
    return "sha256:" + d, len(data)
h = hashlib.sha256()
tmp = os.path.join(blobs, "layer.tmp")
with open(tmp, "wb") as f:
    chunk = os.urandom(1 << 20)
    for i in range(mib):
        block = chunk[i:] + chunk[:i]
        h.update(block); f.write(block)
layer = "sha256:" + h.hexdigest()
os.rename(tmp, os.path.join(blobs, h.hexdigest()))
config, csize = put(json.dumps({"architecture": "amd64", "os": "linux",
    "rootfs": {"type": "layers", "diff_ids": [layer]}}).encode())
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": csize},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": mib << 20}]}).encode()
md, msize = put(manifest)
open(os.path.join(root, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": md, "size": msize, "annotations": {"org.opencontainers.image.ref.name": "v1"}}]},
    open(os.path.join(root, "index.json"), "w"))
open(os.path.join(root, "layer-digest"), "w").write(layer)
PY
LAYER=$(cat "$TMP/layout/layer-digest")
skopeo --insecure-policy copy --preserve-digests --dest-tls-verify=false "oci:$TMP/layout:v1" "docker://${UPSTREAM#http://}/bench/big:v1" >/dev/null
rm -rf "$TMP/layout"

# first_pull NAME URL: time the manifest GET and the blob GET (seconds).
first_pull() {
    local url=$1 m b
    m=$(curl -sf -o /dev/null -w '%{time_total}' -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        "$url/v2/bench/big/manifests/v1")
    b=$(curl -sf -o /dev/null -w '%{time_total} %{size_download}' "$url/v2/bench/big/blobs/$LAYER")
    echo "$m $b"
}

RESULTS="$TMP/results.jsonl"
for ((rep = 1; rep <= REPS; rep++)); do
    order=(capstan distribution)
    ((rep % 2 == 0)) && order=(distribution capstan)
    for target in "${order[@]}"; do
        case $target in
        capstan)
            mkdir -p "$TMP/capstan-$rep"
            echo "{\"storage\":{\"rootDirectory\":\"$TMP/capstan-$rep\"},\"http\":{\"address\":\"127.0.0.1\",\"port\":\"0\"},\"log\":{\"level\":\"warn\"},\"extensions\":{\"sync\":{\"registries\":[{\"urls\":[\"$UPSTREAM\"],\"onDemand\":true}]}}}" >"$TMP/capstan-$rep.json"
            "$CAPSTAN" serve -c "$TMP/capstan-$rep.json" >"$TMP/capstan-$rep.out" 2>"$TMP/capstan-$rep.log" &
            pid=$!
            url=
            for ((i = 0; i < 600; i++)); do
                url=$(sed -n 's|^capstan: serving \(http://[^ ]*\).*|\1|p' "$TMP/capstan-$rep.out" | head -n1)
                [ -n "$url" ] && break
                sleep 0.05
            done
            ;;
        distribution)
            read -r pid url < <(start_distribution "proxy-$rep" "$(printf 'proxy:\n  remoteurl: %s\n' "$UPSTREAM")")
            ;;
        esac
        PIDS+=("$pid")
        wait_ready "$url"
        read -r m b size < <(first_pull "$url")
        printf '{"target":"%s","rep":%d,"manifest_s":%s,"blob_s":%s,"size":%s}\n' "$target" "$rep" "$m" "$b" "$size" >>"$RESULTS"
        log "rep $rep $target: manifest ${m}s, blob ${b}s (${size} bytes)"
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
done

python3 - "$RESULTS" "$OUT_MD" "$LAYER_MIB" "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
mib = int(sys.argv[3])
def med(t, k):
    return statistics.median(r[k] for r in rows if r["target"] == t)
lines = [f"# First pull of a {mib} MiB layer through a pull-through cache (commit {sys.argv[4]})", "",
         "Both caches empty at each run; medians of %d runs; curl on loopback." % max(r["rep"] for r in rows), "",
         "| cache | manifest GET (s) | blob GET (s) | total (s) | blob MiB/s |", "|---|---:|---:|---:|---:|"]
tot = {}
for t, name in (("capstan", "Capstan (onDemand)"), ("distribution", "docker-registry (proxy)")):
    m, b = med(t, "manifest_s"), med(t, "blob_s")
    tot[t] = m + b
    lines.append(f"| {name} | {m:.2f} | {b:.2f} | {m + b:.2f} | {mib / b:.0f} |")
lines += ["", f"Capstan total / docker-registry total: {tot['capstan'] / tot['distribution']:.2f} (lower is faster)"]
text = "\n".join(lines) + "\n"
open(sys.argv[2], "w").write(text)
print(text)
PY
