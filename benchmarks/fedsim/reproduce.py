#!/usr/bin/env python3
"""Issue 6's reproduction: Fashion-MNIST, N = 100 clients, S = 10 per round, K = 10 local steps, Dirichlet(0.1) label
skew, MLP (784-200-200-10), the same seed for every algorithm:

    .venv/bin/python benchmarks/fedsim/reproduce.py --out out/fedsim-repro --rounds 600

Runs (each a `gradzip.fedsim` run; finished runs with a summary.json are reused, so the script resumes):
  fedavg, scaffold (uncompressed), scafcom + topk 1%, scafcom + scaled sign, fedavg + topk 1% (no feedback),
  fedavg + topk 1% + ef14 / econtrol, scallion + randk 10% (unbiased, shared=0).
Writes results.csv / results.md (final and best accuracy, uplink bytes and the ratio to SCAFFOLD's) and the
comparison plots (accuracy vs rounds and vs uplink bytes) into --out."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

RUNS = [
    ("fedavg", dict(algorithm="fedavg")),
    ("scaffold", dict(algorithm="scaffold")),
    ("scafcom topk1%", dict(algorithm="scafcom", compressor="topk:ratio=0.01")),
    ("scafcom sign", dict(algorithm="scafcom", compressor="sign")),
    ("fedavg topk1% no-EF", dict(algorithm="fedavg", compressor="topk:ratio=0.01")),
    ("fedavg topk1% ef14", dict(algorithm="fedavg", compressor="topk:ratio=0.01", feedback="ef14")),
    ("fedavg topk1% econtrol", dict(algorithm="fedavg", compressor="topk:ratio=0.01", feedback="econtrol")),
    ("scallion randk10%", dict(algorithm="scallion", compressor="randk:ratio=0.1,shared=0")),
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/fedsim-repro")
    p.add_argument("--rounds", type=int, default=600)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--lr-local", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", nargs="*", default=None, help="labels of the runs to do (default: all)")
    args = p.parse_args()

    from gradzip.fedsim import output, run

    os.makedirs(args.out, exist_ok=True)
    base = dict(task="fmnist", model="mlp", partition="dirichlet", dirichlet_alpha=0.1, num_clients=100,
                clients_per_round=10, local_steps=10, batch_size=args.batch_size, lr_local=args.lr_local,
                rounds=args.rounds, eval_every=args.eval_every, seed=args.seed, threads=args.threads)
    summaries, curves = {}, {}
    for label, extra in RUNS:
        if args.only and label not in args.only:
            continue
        d = os.path.join(args.out, label.replace(" ", "_").replace("%", "pct"))
        s = output.load_summary(d)
        if s is None or s["config"] != {**s["config"], **base, **extra}:
            s = run({**base, **extra}, d, progress=True, plots=False)
        summaries[label] = s
        curves[label] = output.read_rows(os.path.join(d, "rounds.csv"))
        print(output.summary_line(s), flush=True)

    ref = summaries.get("scaffold")
    fields = ["run", "final_acc_%", "best_acc_%", "uplink_MB", "uplink_vs_scaffold", "downlink_MB", "wall_s",
              "diverged"]
    table = []
    for label, s in summaries.items():
        ratio = s["uplink_bytes"] / ref["uplink_bytes"] if ref else float("nan")
        table.append([label, f"{100 * s['final_accuracy']:.2f}", f"{100 * s['best_accuracy']:.2f}",
                      f"{s['uplink_bytes'] / 1e6:.1f}", f"1/{1 / ratio:.0f}" if ratio == ratio and ratio < 1 else
                      f"{ratio:.2f}", f"{s['downlink_bytes'] / 1e6:.1f}", f"{s['wall_time_s']:.0f}",
                      str(s["diverged"])])
    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        w.writerows(table)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("| " + " | ".join(fields) + " |\n|" + "---|" * len(fields) + "\n")
        for row in table:
            f.write("| " + " | ".join(row) + " |\n")
    output.plot_curves(curves, args.out)
    with open(os.path.join(args.out, "command.json"), "w") as f:
        json.dump({"argv": sys.argv, "base": base}, f, indent=2)
    print(open(os.path.join(args.out, "results.md")).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
