# Shared by the bench scripts that source it: logging, ports, readiness,
# starting a Capstan process, and measuring one scenario. The sourcing
# script sets TMP (its temp dir), RESULTS (its JSON lines) and PIDS (what
# to stop on exit), and PID_OF (target -> the pid whose RSS is sampled).

log() { printf '== %s\n' "$*" >&2; }

# bench_tmp PREFIX: a temp dir in TMP and an empty PIDS; on exit every pid
# in PIDS is stopped and the dir removed.
bench_tmp() {
    TMP=$(mktemp -d "/tmp/$1.XXXXXX")
    PIDS=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}
bench_cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_http NAME PID URL CODES: bounded poll until URL answers one of CODES
# (an extended regex); NAME's log is shown if PID exits first.
wait_http() {
    local i code
    for ((i = 0; i < 600; i++)); do
        kill -0 "$2" 2>/dev/null || { log "$1 exited"; cat "$TMP/$1.log" >&2; exit 1; }
        code=$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$3" || true)
        [[ $code =~ ^($4)$ ]] && return 0
        sleep 0.05
    done
    log "$1 not ready at $3"
    exit 1
}

field() { python3 -c 'import json,sys; v=json.loads(sys.argv[1]).get(sys.argv[2]); print("" if v is None else v)' "$1" "$2"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# start_capstan NAME CONFIG [ARGS...]: run `capstan serve -c CONFIG ARGS`
# (logs in $TMP/NAME.log), wait for the URL it announces on stdout, and
# set STARTED_PID and STARTED_URL.
start_capstan() {
    local name=$1 config=$2 i url=
    shift 2
    "$CAPSTAN" serve -c "$config" "$@" >"$TMP/$name.out" 2>"$TMP/$name.log" &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    for ((i = 0; i < 600; i++)); do
        url=$(grep -o -m1 'http://[0-9.:]*' "$TMP/$name.out" || true)
        [ -n "$url" ] && break
        kill -0 "$STARTED_PID" 2>/dev/null || { log "$name exited:"; cat "$TMP/$name.out" "$TMP/$name.log" >&2; exit 1; }
        sleep 0.05
    done
    [ -n "$url" ] || { log "$name announced no address"; exit 1; }
    STARTED_URL=$url
}

# measure TARGET REP LABEL CMD...: run CMD while sampling the RSS of
# PID_OF[TARGET]; append its JSON line with the label and the peak RSS to
# $RESULTS, and keep it in LAST.
LAST=
measure() {
    local target=$1 rep=$2 label=$3
    shift 3
    local pid=${PID_OF[$target]} max=0 rss rc=0 line
    timeout 900 "$@" >"$TMP/run.out" 2>"$TMP/run.err" &
    local job=$!
    while kill -0 "$job" 2>/dev/null; do
        rss=$(rss_kib "$pid")
        ((rss > max)) && max=$rss
        sleep 0.02
    done
    wait "$job" || rc=$?
    line=$(grep -m1 '^{' "$TMP/run.out" || true)
    [ -n "$line" ] || line=$(python3 -c 'import json,sys; print(json.dumps({"ok": False, "error": "exit %s: %s" % (sys.argv[1], open(sys.argv[2]).read()[-400:])}))' "$rc" "$TMP/run.err")
    LAST=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(label=sys.argv[2], target=sys.argv[3], rep=int(sys.argv[4]), rss_max_kib=int(sys.argv[5])); print(json.dumps(d))' \
        "$line" "$label" "$target" "$rep" "$max")
    echo "$LAST" >>"$RESULTS"
    log "$target $label rep $rep: $(field "$LAST" mib_per_s)$(field "$LAST" images_per_s) (ok=$(field "$LAST" ok), rss ${max} KiB)"
}

# blob_scenarios REP TARGET...: one rep of the blob scenarios, each run on
# every TARGET in turn before the next: a monolithic push of SIZE_MIB MiB
# (POST + PUT: docker-registry ignores a monolithic POST's body), a push
# in CHUNK_MIB MiB PATCHes, a pull of the first, and COUNT small images
# pushed CONC at a time. Needs BENCH, URL_OF, and the sizes set.
blob_scenarios() {
    local rep=$1 target T="--timeout-s 600"
    shift
    local -A digest=()
    for target in "$@"; do
        measure "$target" "$rep" push-mono "$BENCH" push-mono --url "${URL_OF[$target]}" $T \
            --size-mib "$SIZE_MIB" --seed $((rep * 10 + 1)) --method post-put
        digest[$target]=$(field "$LAST" digest)
    done
    for target in "$@"; do
        measure "$target" "$rep" push-chunked "$BENCH" push-chunked --url "${URL_OF[$target]}" $T \
            --size-mib "$SIZE_MIB" --chunk-mib "$CHUNK_MIB" --seed $((rep * 10 + 2))
    done
    for target in "$@"; do
        [ -n "${digest[$target]}" ] || continue
        measure "$target" "$rep" pull "$BENCH" pull --url "${URL_OF[$target]}" $T \
            --repo bench --digest "${digest[$target]}" --expect-size $((SIZE_MIB << 20)) --seed $((rep * 10 + 1))
    done
    for target in "$@"; do
        measure "$target" "$rep" small-images "$BENCH" small-images --url "${URL_OF[$target]}" $T \
            --count "$COUNT" --concurrency "$CONC" --repo "bench/small-$rep" --method post-put
    done
}
