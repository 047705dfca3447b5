#!/usr/bin/env python3
"""Reads `shardlm train` / `shardlm bench` output for the multi-process scripts
(tests/dist/launch_gpu/run.sh, bench/dist/*.sh).

  loss_logs.py losses NAME REFERENCE_LOG LOG [TOLERANCE]
      every logged loss (training and validation), in order, within TOLERANCE relative
      (default 1e-4); prints PASS/FAIL NAME and exits 0/1.
  loss_logs.py iterations NAME REFERENCE_LOG LOG TOLERANCE [MIN_ITERATIONS [FIRST]]
      LOG's training iterations (at least MIN_ITERATIONS, default 1; the first of them FIRST
      when given: a resumed run that did not load starts at 1), each against the same
      iteration of the reference run (a resumed run's against the straight run's).
  loss_logs.py scaling-table RESULTS_JSONL [BASE_LABEL [PLAN_DIR]]
      a markdown table of `bench --result-jsonl` rows: tokens/s of the job and per GPU, the
      efficiency against the BASE_LABEL row (rows whose label starts like it, e.g. dp1 vs dp2;
      "" = the first row), MFU per GPU and rank 0's memory; with PLAN_DIR, `shardlm plan`'s
      estimate of each row from PLAN_DIR/plan_LABEL.json (its best layout's tokens/s per GPU
      and planned allocation, the trainer's memory plan without the reserve) beside the
      measurement.
"""
import json
import re
import sys

LOSS = re.compile(r"lm loss( value)?: ([0-9.E+-]+)")
ITERATION = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*?lm loss: ([0-9.E+-]+)")


def report(ok, name, detail):
    print(("PASS" if ok else "FAIL"), name, f"({detail})")
    return 0 if ok else 1


def losses(name, reference, log, tol="1e-4"):
    a = [float(m.group(2)) for m in LOSS.finditer(open(reference).read())]
    b = [float(m.group(2)) for m in LOSS.finditer(open(log).read())]
    tol = float(tol)
    ok = len(a) == len(b) and len(a) > 0 and all(abs(x - y) <= tol * abs(x) for x, y in zip(a, b))
    worst = max((abs(x - y) / abs(x) for x, y in zip(a, b)), default=float("nan"))
    return report(ok, name, f"{len(b)} losses vs {len(a)}, worst relative difference {worst:.2e}")


def iterations(name, reference, log, tol, min_iterations="1", first=None):
    def by_iteration(path):
        return {int(i): float(x) for i, x in ITERATION.findall(open(path).read())}

    a, b, tol = by_iteration(reference), by_iteration(log), float(tol)
    ok = (len(b) >= int(min_iterations) and set(b) <= set(a)
          and (first is None or min(b) == int(first))
          and all(abs(a[i] - b[i]) <= tol * abs(a[i]) for i in b))
    common = sorted(set(a) & set(b))
    worst = max((abs(a[i] - b[i]) / abs(a[i]) for i in common), default=float("nan"))
    span = f"iterations {min(b)}-{max(b)}" if b else "no iterations"
    return report(ok, name, f"{span}, worst relative difference {worst:.2e}")


def scaling_table(results, base_label=None, plan_dir=None):
    rows = [json.loads(line) for line in open(results) if line.strip()]
    base_label = base_label or None
    base = next((r for r in rows if r["system"] == base_label), rows[0] if rows else None)
    prefix = re.sub(r"\d+$", "", base["system"]) if base else ""

    def planned(label):  # (tokens/s per GPU, memory GiB) of the plan's best layout, or None
        try:
            plan = json.load(open(f"{plan_dir}/plan_{label}.json"))
        except (OSError, ValueError, TypeError):
            return None
        best = plan["candidates"][0] if plan.get("candidates") else None
        if not best or not best.get("fits"):
            return None
        return best["tokens_per_s_per_gpu"], best["memory_bytes"] / 2**30  # without the reserve

    extra = " plan: tokens/s per GPU | plan: allocation per GPU |" if plan_dir else ""
    print(f"\n| run | GPUs | tokens/s | tokens/s per GPU | efficiency vs {base['system'] if base else '—'} "
          f"| MFU per GPU | memory per GPU (rank 0) |{extra}")
    print("|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if plan_dir else ""))
    for r in rows:
        per = r.get("tokens_per_s_per_gpu", r["tokens_per_s_wall"])
        comparable = base and (base_label is None or r["system"].startswith(prefix))
        eff = f"{100 * per / base['tokens_per_s_wall']:.1f}%" if comparable else "—"
        cp = f", cp {r['cp']}" if r.get('cp', 1) > 1 else ""
        ep = f", ep {r['ep']}" if r.get('ep', 1) > 1 else ""
        line = (f"| {r['system']} (tp {r.get('tp', 1)}, pp {r.get('pp', 1)}{cp}, dp {r.get('dp', 1)}{ep}) | "
                f"{r.get('world_size', 1)} | {r['tokens_per_s_wall']:,.0f} | {per:,.0f} | {eff} | "
                f"{100 * r['mfu_989']:.1f}% | {r['peak_mem_allocated_GiB']:.2f} GiB |")
        if plan_dir:
            p = planned(r["system"])
            line += f" {p[0]:,.0f} ({100 * per / p[0]:.0f}% of it) | {p[1]:.2f} GiB |" if p else " — | — |"
        print(line)
    return 0


if __name__ == "__main__":
    commands = {"losses": losses, "iterations": iterations, "scaling-table": scaling_table}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    sys.exit(commands[sys.argv[1]](*sys.argv[2:]))
