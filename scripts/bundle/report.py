#!/usr/bin/env python3
"""Writes the Markdown report of a snug GPU-bundle run (SPEC §5). Standard library only.

    python3 report.py LOGDIR [-o REPORT.md]

LOGDIR is what the bundle's `run` fills (OUTDIR/logs): env.txt, manifest.json, info.json,
status.tsv, test-X.log, memcheck-X.log, racecheck-X.log, bench-X.log, bench.jsonl, peer-X.log,
peers.jsonl. Missing pieces are reported as missing, never fatal. Default output: LOGDIR/report.md.
"""

import argparse
import glob
import json
import os
import re
import sys

RESULT_RE = re.compile(
    r"test result: (\w+)\. (\d+) passed; (\d+) failed; (\d+) ignored; (\d+) measured; (\d+) filtered out"
)
FAILED_RE = re.compile(r"^test (\S+) \.\.\. FAILED\s*$")
PANIC_RE = re.compile(r"^thread '([^']*)'(?: \(\d+\))? panicked at (.*)$")
SECTION_RE = re.compile(r"^---- (\S+) stdout ----$")
# memcheck prints "ERROR SUMMARY: N errors"; racecheck "RACECHECK SUMMARY: N hazards displayed
# (E errors, W warnings)".
SUMMARY_RE = re.compile(r"ERROR SUMMARY: (\d+) errors?|RACECHECK SUMMARY: \d+ hazards? displayed \((\d+) errors?")
NO_GPU_CALL = "terminated before first instrumented API call"
SKIP_TEXT = "skipped: no CUDA device"


def read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def read_json(path):
    text = read(path)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def read_jsonl(path):
    rows = []
    text = read(path)
    if text is None:
        return rows
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def read_status(logdir):
    """status.tsv -> {(step, name): {"rc", "secs", "note"}} in file order."""
    out = {}
    text = read(os.path.join(logdir, "status.tsv")) or ""
    for line in text.splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) < 5:
            parts += [""] * (5 - len(parts))
        step, name, rc, secs, note = parts[:5]
        out[(step, name)] = {"rc": rc, "secs": secs, "note": note}
    return out


def env_fields(text):
    fields = {}
    for line in (text or "").splitlines():
        if line.startswith("== "):
            break
        key, sep, value = line.partition(": ")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def md_escape(s):
    return str(s).replace("|", "\\|").replace("\n", " ")


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        out.append("| " + " | ".join(md_escape(c) for c in r) + " |")
    return "\n".join(out)


def parse_test_log(text):
    """Counts from libtest's `test result:` lines, failing tests with their panic messages."""
    res = {"passed": 0, "failed": 0, "ignored": 0, "filtered": 0, "results": 0, "failures": [], "skips": 0}
    if text is None:
        return res
    lines = text.splitlines()
    panics = {}
    section = None
    for i, line in enumerate(lines):
        m = RESULT_RE.search(line)
        if m:
            res["results"] += 1
            res["passed"] += int(m.group(2))
            res["failed"] += int(m.group(3))
            res["ignored"] += int(m.group(4))
            res["filtered"] += int(m.group(6))
            continue
        m = FAILED_RE.match(line)
        if m and m.group(1) not in res["failures"]:
            res["failures"].append(m.group(1))
            continue
        m = SECTION_RE.match(line)
        if m:
            section = m.group(1)
            continue
        m = PANIC_RE.match(line)
        if m:
            who = section or m.group(1)
            if who not in panics:
                # The message is on the next line(s) in current Rust; take the first non-empty one.
                msg = ""
                for nxt in lines[i + 1 : i + 4]:
                    if nxt.strip() and not nxt.startswith("note:"):
                        msg = nxt.strip()
                        break
                panics[who] = f"{msg} (at {m.group(2).rstrip(':')})" if msg else m.group(2)
        if SKIP_TEXT in line:
            res["skips"] += 1
    res["panics"] = panics
    return res


def fmt_num(x, nd=3):
    if x is None:
        return ""
    try:
        return f"{float(x):.{nd}f}"
    except (TypeError, ValueError):
        return str(x)


def fmt_mib(b):
    if b is None or b == "":
        return ""
    try:
        return f"{float(b) / (1 << 20):.2f} MiB"
    except (TypeError, ValueError):
        return str(b)


def binaries_from(manifest, status, kind, step):
    names = []
    if manifest:
        names = [b["name"] for b in manifest.get("binaries", []) if b.get("kind") == kind]
    for (st, name) in status:
        if st == step and name not in names and name != "-":
            names.append(name)
    return names


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logdir")
    ap.add_argument("-o", "--out", help="output path (default LOGDIR/report.md)")
    args = ap.parse_args()
    d = args.logdir
    out_path = args.out or os.path.join(d, "report.md")

    env_text = read(os.path.join(d, "env.txt"))
    env = env_fields(env_text)
    manifest = read_json(os.path.join(d, "manifest.json")) or {}
    info = read_json(os.path.join(d, "info.json")) or {}
    snug_info = read_json(os.path.join(d, "snug-info.json"))
    status = read_status(d)

    gpu = env.get("gpu", "")
    gpu_parts = [p.strip() for p in gpu.split(",")]
    if len(gpu_parts) >= 3:
        device, driver, memory = gpu_parts[0], gpu_parts[1], ", ".join(gpu_parts[2:])
        device_line = f"{device}, {memory}; **driver**: {driver}"
    else:  # nvidia-smi missing or failing: keep its words
        device_line = f"? ({gpu or 'no nvidia-smi output'}); **driver**: ?"

    L = []
    L.append("# snug GPU run")
    L.append("")
    L.append(f"- **commit**: `{manifest.get('commit', '?')}` (bundle built {manifest.get('date', '?')})")
    L.append(f"- **run**: {env.get('date', '?')} on `{env.get('host', '?')}` ({env.get('kernel', '?')})")
    L.append(f"- **device**: {device_line}")
    if snug_info is not None:
        cuda = snug_info.get("cuda") or {}
        devs = cuda.get("devices") or []
        if devs:
            seen = "; ".join(
                f"cuda:{x.get('ordinal', '?')} {x.get('name', '?')} (compute {x.get('compute_capability', '?')}, "
                f"{x.get('sm_count', '?')} SMs, SASS embedded: {'yes' if x.get('sass_embedded') else 'no, PTX JIT'})"
                for x in devs
            )
        else:
            seen = f"no device ({cuda.get('error', '?')})"
        L.append(f"- **snug info sees**: {seen}")
    L.append(f"- **torch**: {env.get('torch', '?')} (version, CUDA)")
    L.append(f"- **compute-sanitizer**: {env.get('compute-sanitizer-version') or env.get('compute-sanitizer', '?')}")
    archs = manifest.get("archs") or info.get("archs") or []
    L.append(
        f"- **build**: {manifest.get('rustc', '?')}; nvcc {manifest.get('nvcc_version') or '?'}; "
        f"kernels compiled: {manifest.get('kernels_compiled', info.get('kernels_compiled', '?'))}; "
        f"archs: {', '.join(f'sm_{a}' for a in archs) or '?'}"
    )
    if env.get("steps"):
        L.append(f"- **steps**: {env['steps']}" + (f"; budget {env['budget']} s" if env.get("budget", "0") not in ("", "0") else ""))
    L.append("")
    L.append("This report is evidence for the commit above only.")
    L.append("")

    verdict_fail = []
    warnings = []
    incomplete = []

    # Tests.
    L.append("## Tests (`SNUG_REQUIRE_GPU=1`, `--test-threads=1`)")
    L.append("")
    rows, failures = [], []
    for name in binaries_from(manifest, status, "tests", "tests"):
        st = status.get(("tests", name))
        text = read(os.path.join(d, f"test-{name}.log"))
        if st is None:
            rows.append([name, "not run", "", "", "", "", "", ""])
            incomplete.append(f"test binary {name} not run")
            continue
        r = parse_test_log(text)
        rc = st["rc"]
        note = st["note"]
        if rc == "skip":
            incomplete.append(f"test binary {name} skipped ({st['note']})")
        if rc not in ("0", "skip"):
            verdict_fail.append(f"test binary {name} exited {rc}")
            if r["results"] == 0 and not note:
                note = "no `test result:` line (crashed before the summary?)"
        if r["skips"]:
            note = "; ".join(x for x in (note, "GPU tests skipped although SNUG_REQUIRE_GPU=1") if x)
            warnings.append(f"{r['skips']} 'skipped: no CUDA device' line(s) in {name}")
        rows.append([name, rc, r["passed"], r["failed"], r["ignored"], r["skips"], st["secs"], note])
        for t in r["failures"]:
            failures.append((name, t, r["panics"].get(t, "")))
    if rows:
        L.append(table(["binary", "exit", "passed", "failed", "ignored", "'skipped: no CUDA device' lines", "s", "note"], rows))
    else:
        L.append("_No test binaries ran._")
    L.append("")
    if failures:
        L.append("Failing tests:")
        L.append("")
        for b, t, msg in failures:
            L.append(f"- `{b}` :: `{t}`" + (f" — {md_escape(msg)[:300]}" if msg else ""))
        L.append("")

    # Sanitizers.
    L.append("## compute-sanitizer (GPU tests only: libtest filter `gpu`)")
    L.append("")
    rows = []
    for (st, name), s in status.items():
        if st not in ("memcheck", "racecheck"):
            continue
        if name == "-":
            rows.append(["all", st, s["rc"], "", s["note"]])
            incomplete.append(f"{st} not run ({s['note']})")
            continue
        text = read(os.path.join(d, f"{st}-{name}.log")) or ""
        sums = SUMMARY_RE.findall(text)
        summary_lines = [l.strip().lstrip("=").strip() for l in text.splitlines() if "ERROR SUMMARY" in l or "RACECHECK SUMMARY" in l]
        r = parse_test_log(text)
        errors = sum(int(a or b) for a, b in sums)
        if NO_GPU_CALL in text and r["results"] and r["passed"] == 0 and r["failed"] == 0:
            # a binary without GPU tests (filter `gpu` selects none): nothing to instrument
            rows.append([name, st, s["rc"], "n/a: no GPU test in this binary", ""])
            continue
        if s["rc"] == "skip":
            incomplete.append(f"{st} of {name} skipped ({s['note']})")
        if s["rc"] == "99" or errors > 0:
            verdict_fail.append(f"{st} found errors in {name}")
        elif s["rc"] in ("124", "137"):
            verdict_fail.append(f"{st} timed out on {name}")
        tests = f"{r['passed']} passed, {r['failed']} failed" if r["results"] else ""
        summary = summary_lines[-1] if summary_lines else ("" if s["rc"] == "skip" else "(no SUMMARY line)")
        if len(summary_lines) > 1:
            summary += f" (+{len(summary_lines) - 1} more processes, {errors} errors in all)"
        rows.append([name, st, s["rc"], summary, "; ".join(x for x in (tests, s["note"]) if x)])
    if rows:
        L.append(table(["binary", "tool", "exit", "SUMMARY", "tests / note"], rows))
    else:
        L.append("_Not run._")
    L.append("")

    # Benches.
    L.append("## Benches (median of 20 single calls, L2 flushed; snug vs PyTorch peer)")
    L.append("")
    snug = [r for r in read_jsonl(os.path.join(d, "bench.jsonl")) if r.get("source", "snug") == "snug"]
    peers = [r for r in read_jsonl(os.path.join(d, "peers.jsonl")) if r.get("source") != "snug"]
    by_key, order = {}, []
    for r in snug:
        k = (r.get("op"), r.get("case"))
        if k not in by_key:
            order.append(k)
        by_key[k] = r  # last one wins if a bench ran twice
    peer_by_key = {}
    for r in peers:
        k = (r.get("op"), r.get("case"))
        peer_by_key.setdefault(k, {})[r.get("variant", "?")] = r  # last per variant wins
        if k not in by_key and k not in order:
            order.append(k)
    rows = []
    for k in order:
        s = by_key.get(k)
        s_secs = s.get("secs") if s else None
        gbs = (s["bytes"] / s_secs / 1e9) if s and s_secs and s.get("bytes") is not None else None
        base = [
            k[0],
            k[1],
            fmt_num(s_secs * 1e6) if s_secs else "—",
            fmt_num(gbs, 1) if gbs is not None else "",
            fmt_num(s.get("pct_of_floor"), 1) if s else "",
        ]
        tail = [fmt_mib(s.get("planned_bytes")) if s else "", (fmt_mib(s.get("measured_bytes")) or "?") if s else ""]
        variants = peer_by_key.get(k, {})
        if not variants:
            rows.append(base + ["—", "", ""] + tail + [""])
        for v, p in variants.items():
            p_secs = p.get("secs")
            ratio = f"{p_secs / s_secs:.2f}×" if p_secs and s_secs else ""
            rows.append(
                base
                + [f"{p.get('source', 'peer')} {v}", fmt_num(p_secs * 1e6) if p_secs else "", ratio]
                + tail
                + [fmt_mib(p.get("peak_bytes"))]
            )
    if rows:
        L.append(
            table(
                [
                    "op",
                    "case",
                    "snug (µs)",
                    "GB/s",
                    "% of floor",
                    "peer variant",
                    "peer (µs)",
                    "speed-up (peer/snug)",
                    "planned",
                    "measured",
                    "peer peak",
                ],
                rows,
            )
        )
        L.append("")
        L.append(
            "GB/s: the bytes each call must move (snug's `Work`) over its time; % of floor: the DRAM/FLOP "
            "floor over the time. planned: the case's arena; measured: the drop in free device memory when "
            "it was made (driver page granularity); peer peak: `torch.cuda.max_memory_allocated()` above "
            "what was allocated before the case."
        )
    else:
        L.append("_No bench results (bench.jsonl / peers.jsonl empty or missing)._")
    L.append("")
    bench_status = [(n, s) for (st, n), s in status.items() if st in ("bench", "peers")]
    bad = [f"{n} (exit {s['rc']}{', ' + s['note'] if s['note'] else ''})" for n, s in bench_status if s["rc"] != "0"]
    if bad:
        L.append("Bench/peer runs that did not exit 0: " + ", ".join(f"`{b}`" for b in bad) + ".")
        L.append("")

    # Steps.
    L.append("## Steps")
    L.append("")
    if status:
        L.append(table(["step", "name", "exit", "s", "note"], [[st, n, s["rc"], s["secs"], s["note"]] for (st, n), s in status.items()]))
    else:
        L.append("_No status.tsv._")
    L.append("")
    L.append("Raw logs: `logs.tar.xz` beside this report (env.txt with full `nvidia-smi`, one log per step, the JSON lines).")
    L.append("")

    if not any(st == "tests" for st, _ in status):
        incomplete.insert(0, "no test binary ran")
    if verdict_fail:
        verdict, why = "FAIL", verdict_fail + incomplete
    elif incomplete:
        verdict, why = "INCOMPLETE", incomplete
    else:
        verdict, why = "PASS", []
    head = [f"**verdict: {verdict}**" + (" — " + "; ".join(why) if why else ""), ""]
    if warnings:
        head += ["**warning**: " + "; ".join(warnings), ""]
    L[2:2] = head

    with open(out_path, "w", encoding="utf-8") as f:
        f.write("\n".join(L).rstrip() + "\n")
    print(f"report: {out_path} ({verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
