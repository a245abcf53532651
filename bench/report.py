#!/usr/bin/env python3
"""Helpers for bench/run.sh.

  report.py wrk LABEL URL DURATION       (LABEL unused) run wrk -t2 -c64 against URL, print one JSON line
  report.py table RESULTS.jsonl OUT.md   print the comparison table and write it as markdown
"""
import json
import re
import resource
import statistics
import subprocess
import sys
import time

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


def run_wrk(label, url, duration):
    cmd = ["wrk", "-t2", "-c64", f"-d{duration}", "--latency",
           "-H", f"Accept: {MANIFEST_TYPE}", url]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    user = after.ru_utime - before.ru_utime
    sys_ = after.ru_stime - before.ru_stime
    out = proc.stdout
    line = {"scenario": "manifest-get", "url": url,
            "seconds": round(seconds, 3), "cpu_user_s": round(user, 3),
            "cpu_sys_s": round(sys_, 3), "cpu_s": round(user + sys_, 3),
            "cpu_pct": round(100 * (user + sys_) / seconds, 1)}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    total = re.search(r"(\d+) requests in", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    line["requests"] = int(total.group(1)) if total else None
    line["req_per_s"] = float(rps.group(1)) if rps else None
    line["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    line["latency_p50"] = p50.group(1) if p50 else None
    line["latency_p99"] = p99.group(1) if p99 else None
    if errors:
        line["socket_errors"] = errors.group(0)
    problems = []
    if proc.returncode != 0 or rps is None:
        problems.append(f"wrk exited {proc.returncode}: {proc.stderr.strip()[:300]}")
    if line["non_2xx"]:
        problems.append(f"{line['non_2xx']} of {line['requests']} responses were not 2xx/3xx")
    line["ok"] = not problems
    if problems:
        line["error"] = "; ".join(problems)
    print(json.dumps(line))


# ---------------------------------------------------------------- table

# (row label, title, metric, label of the docker-registry run it is compared with)
SCENARIOS = [
    ("push-mono", "push {size} MiB, one request body (MiB/s)", "mib_per_s", "push-mono"),
    ("push-mono/post-put", "… same, Capstan also as POST + PUT (MiB/s)", "mib_per_s", "push-mono"),
    ("push-mono/back-to-back", "push 5 × {size} MiB back to back, no pause (MiB/s)", "mib_per_s", "push-mono/back-to-back"),
    ("push-chunked", "push {size} MiB, {chunk} MiB chunks (MiB/s)", "mib_per_s", "push-chunked"),
    ("pull", "pull {size} MiB blob, every byte verified (MiB/s)", "mib_per_s", "pull"),
    ("pull/second", "… the same blob a second time (MiB/s)", "mib_per_s", "pull/second"),
    ("pull/third", "… and a third time (MiB/s)", "mib_per_s", "pull/third"),
    ("pull/cold", "pull {size} MiB blob, not in the page cache (MiB/s)", "mib_per_s", "pull/cold"),
    ("pull/at-once", "pull {size} MiB blob right after its push, no wait (MiB/s)", "mib_per_s", "pull/at-once"),
    ("small-images", "push {count} small images, c{conc} (images/s)", "images_per_s", "small-images"),
    ("small-images/post-put", "… same, Capstan also as POST + PUT (images/s)", "images_per_s", "small-images"),
    ("manifest-get", "manifest GET by tag, wrk -t2 -c64 (req/s)", "req_per_s", "manifest-get"),
]
SERVERS = [("capstan", "Capstan"), ("distribution", "docker-registry"), ("nginx", "nginx")]


def fmt(x):
    if x is None:
        return "–"
    if x >= 1000:
        return f"{x:,.0f}"
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.1f}"


def ratio(a, b):
    if a is None or b in (None, 0):
        return "–"
    return f"{a / b:.2f}×"


def table(results_path, out_path):
    rows = [json.loads(l) for l in open(results_path) if l.strip()]
    meta = next((r for r in rows if r.get("kind") == "meta"), {})
    end = next((r for r in rows if r.get("kind") == "end"), {})
    runs = [r for r in rows if r.get("kind") == "run"]
    mem = {r["target"]: r for r in rows if r.get("kind") == "memory"}
    fields = {"size": meta.get("size_mib"), "chunk": meta.get("chunk_mib"),
              "count": meta.get("count"), "conc": meta.get("concurrency")}

    def figures(label, target, metric):
        rs = [r for r in runs if r.get("label", r.get("scenario")) == label and r["target"] == target]
        ok = [r[metric] for r in rs if r.get("ok") and r.get(metric) is not None]
        cpu = [r["cpu_s"] for r in rs if r.get("ok") and r.get("cpu_s") is not None]
        errs = [r.get("error", "?") for r in rs if not r.get("ok")]
        med = statistics.median(ok) if ok else None
        return med, ok, (statistics.median(cpu) if cpu else None), errs, len(rs)

    md = []
    md.append("| scenario | Capstan | docker-registry | Capstan / docker-registry | nginx | Capstan / nginx | client CPU s per run (Capstan / docker-registry / nginx) |")
    md.append("|---|---:|---:|---:|---:|---:|---|")
    text = []
    errors = []
    for scenario, title, metric, base in SCENARIOS:
        title = title.format(**fields)
        cells = {}
        for key, _ in SERVERS:
            med, ok, cpu, errs, n = figures(base if key == "distribution" else scenario, key, metric)
            cells[key] = (med, ok, cpu, errs, n)
            if key != "distribution" or base == scenario:
                errors.extend(f"{scenario} on {key}: {e}" for e in errs)

        def show(key):
            med, ok, _, errs, n = cells[key]
            if n == 0:
                return "–"
            if key == "distribution" and base != scenario:
                return "(as above)"
            s = fmt(med) if med is not None else "FAILED"
            if errs and med is not None:
                s += f" ({len(errs)}/{n} failed)"
            if len(ok) > 1:
                s += f" [{fmt(min(ok))}–{fmt(max(ok))}]"
            return s

        def cpu(key):
            _, _, c, _, n = cells[key]
            return "–" if n == 0 or c is None else f"{c:.2f}"

        has_nginx = cells["nginx"][4] > 0
        cpu_cell = " / ".join(cpu(k) for k, _ in SERVERS if k != "nginx" or has_nginx)
        row = [title, show("capstan"), show("distribution"),
               ratio(cells["capstan"][0], cells["distribution"][0]),
               show("nginx") if has_nginx else "",
               ratio(cells["capstan"][0], cells["nginx"][0]) if has_nginx else "",
               cpu_cell]
        md.append("| " + " | ".join(row) + " |")
        text.append(row)

    md.append("")
    md.append("Figures are medians over the runs, [min–max] in brackets. Client CPU is the")
    md.append("load client's own user+sys CPU seconds during the measured phase (median).")
    if end.get("machine_busy_s") is not None:
        clients = sum(r.get("cpu_s") or 0 for r in runs)
        other = end["machine_busy_s"] - end.get("servers_busy_s", 0) - clients
        md.append("")
        md.append(f"Machine CPU while measuring ({end.get('wall_s', '?')} s wall × "
                  f"{meta.get('cpus', '?')} cores): {end['machine_busy_s']} s in processes — servers "
                  f"{end.get('servers_busy_s')} s, measured client phases {clients:.0f} s, everything "
                  f"else ≈ {other:.0f} s (the harness itself: digest passes, RSS sampling, "
                  f"python; plus any other load on the machine) — and {end.get('irq_s', '?')} s "
                  f"in interrupts (loopback networking).")
    # What the servers did after answering: charged to no row, shown here.
    waited = [r for r in runs if "settle_s" in r]
    if waited:
        capstan = sum(r.get("settle_capstan_cpu_s", 0) for r in waited)
        big = sum(1 for r in runs if r.get("target") == "capstan" and r.get("ok")
                  and r.get("label", "").startswith("push-") and r.get("bytes"))
        timed_out = sum(1 for r in waited if r.get("settle_timed_out"))
        md.append("")
        md.append(f"Before each scenario the harness waits until the servers are idle and Capstan "
                  f"has warmed every pushed blob ({sum(r['settle_s'] for r in waited):.0f} s in all"
                  f"{f', {timed_out} waits hit the 200-poll bound' if timed_out else ''}). Meanwhile "
                  f"Capstan used {capstan:.2f} s of CPU, mostly reading its {big} large pushed blobs "
                  f"back into the page cache (≈ {capstan / big if big else 0:.2f} s each), work no "
                  f"row includes. "
                  f"docker-registry pays its page-cache copy inside its push rows.")
    md.append("")
    md.append("| memory (MiB) | Capstan | docker-registry |")
    md.append("|---|---:|---:|")
    for field, title in [("push_rss_max_kib", f"max VmRSS sampled during the {fields['size']} MiB pushes"),
                         ("hwm_kib", "VmHWM (peak RSS) after all runs")]:
        c = mem.get("capstan", {}).get(field)
        d = mem.get("distribution", {}).get(field)
        md.append(f"| {title} | {fmt(c / 1024) if c else '–'} | {fmt(d / 1024) if d else '–'} |")
    if errors:
        md.append("")
        md.append("Errors:")
        md.append("")
        for e in errors:
            md.append(f"- `{e}`")
    md.append("")
    md.append("<details><summary>every run</summary>")
    md.append("")
    md.append("| rep | scenario | server | figure | seconds | client CPU s | server CPU s | max RSS MiB | ok |")
    md.append("|---:|---|---|---:|---:|---:|---:|---:|---|")
    metric_of = {s: m for s, _, m, _ in SCENARIOS}
    for r in runs:
        label = r.get("label", r.get("scenario"))
        m = metric_of.get(label)
        rss = r.get("rss_max_kib")
        md.append(f"| {r.get('rep')} | {label} | {r['target']} | {fmt(r.get(m))} | "
                  f"{r.get('seconds', '–')} | {r.get('cpu_s', '–')} | {r.get('server_cpu_s', '–')} | "
                  f"{fmt(rss / 1024) if rss else '–'} | {'yes' if r.get('ok') else 'NO'} |")
    md.append("")
    md.append("</details>")

    header = (f"Capstan vs docker-registry (distribution 2.8) vs nginx — {meta.get('date', '')}, "
              f"{meta.get('cpus', '?')} cores, {meta.get('reps', '?')} run(s) each, "
              f"capstan at {meta.get('commit', '?')}; load average {meta.get('loadavg_start', '?')} "
              f"at start, {end.get('loadavg_end', '?')} at end (the benchmark itself keeps ~2 busy)")
    doc = "# Benchmark results\n\n" + header + "\n\n" + "\n".join(md) + "\n"
    with open(out_path, "w") as f:
        f.write(doc)

    # Terminal rendering of the main table.
    heads = ["scenario", "Capstan", "docker-registry", "C/dr", "nginx", "C/nginx", "client CPU s"]
    allrows = [heads] + text
    widths = [max(len(str(r[i])) for r in allrows) for i in range(len(heads))]
    print(header)
    for r in allrows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    for line in md[md.index("| memory (MiB) | Capstan | docker-registry |"):]:
        if line.startswith("<details>"):
            break
        print(line)


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "wrk" and len(sys.argv) == 5:
        run_wrk(*sys.argv[2:])
    elif len(sys.argv) == 4 and sys.argv[1] == "table":
        table(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
