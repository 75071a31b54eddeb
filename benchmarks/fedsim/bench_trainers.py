#!/usr/bin/env python3
"""Rounds per second of gradzip.fedsim's batched trainer (the S clients of a round in one vmap'd computation)
against a straightforward per-client loop of the same algorithm, in the same process on the same data.

    .venv/bin/python benchmarks/fedsim/bench_trainers.py --clients-per-round 20 --model mlp --rounds 20

Both trainers run the identical algorithm (same sampling, minibatches, C++ local steps, uplink, aggregation); only
the gradient computation differs. Timed: whole rounds (sampling, batch gather, K local steps, finish, aggregate),
evaluation excluded, after one warm-up round each. The two runs are interleaved round by round (A, B, A, B, ...) so
that load from other processes on the machine hits both alike; reported: median round time of each and their ratio.
Results as JSON lines (--json-out) and a table on stdout."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time




def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="fmnist")
    p.add_argument("--model", default="mlp")
    p.add_argument("--hidden", type=int, nargs="+", default=[200])
    p.add_argument("--batch-size", type=int, nargs="+", default=[32])
    p.add_argument("--clients-per-round", type=int, nargs="+", default=[20])
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--num-clients", type=int, default=100)
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--algorithm", default="scafcom")
    p.add_argument("--compressor", default="topk:ratio=0.01")
    p.add_argument("--json-out", default=None)
    args = p.parse_args()

    from gradzip.fedsim import FedSimConfig, Simulation
    from gradzip.fedsim import tasks

    base = dict(task=args.task, model=args.model, num_clients=args.num_clients, local_steps=args.local_steps,
                algorithm=args.algorithm, compressor=args.compressor, partition="dirichlet", dirichlet_alpha=0.1)
    task_cache = {}
    rows = []
    print(f"{'S':>4} {'hidden':>6} {'B':>4} {'thr':>3} {'batched ms':>11} {'loop ms':>9} {'speedup':>8} {'max|dx|':>9}")
    for thr in args.threads:
        for S in args.clients_per_round:
            for hidden in args.hidden:
                for B in args.batch_size:
                    cfgs = {t: FedSimConfig(**base, clients_per_round=S, hidden=hidden, batch_size=B, threads=thr,
                                            trainer=t).validate() for t in ("batched", "loop")}
                    key = (args.task, args.model)
                    if key not in task_cache:
                        task_cache[key] = tasks.build(cfgs["batched"])
                    sims = {t: Simulation(c, task=task_cache[key]) for t, c in cfgs.items()}
                    times = {t: [] for t in sims}
                    for r in range(args.rounds + 1):
                        for t, sim in sims.items():
                            t0 = time.perf_counter()
                            sim.step()
                            if r > 0:
                                times[t].append(time.perf_counter() - t0)
                    med = {t: statistics.median(v) for t, v in times.items()}
                    dx = float((sims["batched"].fed.model() - sims["loop"].fed.model()).abs().max())
                    row = {"clients_per_round": S, "hidden": hidden, "batch_size": B, "threads": thr,
                           "model": args.model, "batched_round_s": med["batched"], "loop_round_s": med["loop"],
                           "speedup": med["loop"] / med["batched"], "rounds": args.rounds,
                           "max_abs_model_diff": dx}
                    rows.append(row)
                    print(f"{S:>4} {hidden:>6} {B:>4} {thr:>3} {1e3 * med['batched']:>11.2f} "
                          f"{1e3 * med['loop']:>9.2f} {row['speedup']:>7.2f}x {dx:>9.2e}")
                    sys.stdout.flush()
    if args.json_out:
        with open(args.json_out, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
