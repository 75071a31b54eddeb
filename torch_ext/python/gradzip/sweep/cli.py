"""``python -m gradzip.sweep``: expand a grid, run what is not finished yet, write the table, plots and report.

    python -m gradzip.sweep --config configs/sweeps/demo.toml                 # the README's demo grid
    python -m gradzip.sweep --config configs/sweeps/example.toml --shard 0/4  # a quarter of a big grid
    python -m gradzip.sweep --config configs/sweeps/example.toml --report-only  # after merging the shards' runs/
    python -m gradzip.sweep --runner fedsim --set task=synthetic_logreg --set rounds=30 \\
        --algorithm fedavg scaffold --compressor identity 'topk:ratio={r}' --param r=0.01,0.1 --seeds 0 1

Flags build a one-block grid without ``--config``; with it they override every block (``--set rounds=3`` fixes a
parameter, an axis flag replaces that axis, ``--seeds`` the seeds). Exit status: 0 when every run of this
invocation finished, 1 when some failed (the report lists them; they are retried next time), 2 on a bad config.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from . import plots as P
from .bandwidth import DEFAULT_LINKS, Link, parse_links
from .grid import RunSpec, SweepConfig, expand, load_config, parse_config, parse_shard, shard, varying_keys
from .runner import (Outcome, collect, default_workers, is_current, load_result, param_column, run_sweep,
                     write_table)
from .tasks import default_label, get_task

AXIS_FLAGS = ("algorithm", "feedback", "compressor", "downlink", "hook")


@dataclass
class SweepResult:
    """What ``sweep()`` produced: the grid, what ran, the table rows and the files written."""

    out: str
    runs: List[RunSpec]
    skipped: List[Tuple[RunSpec, str]]
    outcome: Outcome
    rows: List[Dict[str, Any]]
    tables: List[str] = field(default_factory=list)
    plots: Dict[str, P.PlotInfo] = field(default_factory=dict)
    report: Optional[str] = None


def make_label(tasks: Optional[Mapping[str, Any]] = None) -> Callable[[RunSpec], Tuple[str, str]]:
    cache: Dict[str, Callable] = {}

    def label(spec: RunSpec) -> Tuple[str, str]:
        if spec.runner not in cache:
            try:
                t = get_task(spec.runner, tasks)
                cache[spec.runner] = t.label or default_label
            except ValueError:
                cache[spec.runner] = default_label
        return cache[spec.runner](spec.params)

    return label


def make_validator(tasks: Optional[Mapping[str, Any]] = None) -> Callable[[RunSpec], None]:
    def validate(spec: RunSpec) -> None:
        t = get_task(spec.runner, tasks)
        if t.validate is not None:
            t.validate(dict(spec.params))

    return validate


def sweep(cfg: SweepConfig, out: str, *, workers: Optional[int] = None, shard_spec: Optional[Tuple[int, int]] = None,
          progress: bool = True, report: bool = True, report_only: bool = False, force: bool = False,
          keep_stale: bool = False,
          tasks: Optional[Mapping[str, Any]] = None, validate: bool = True, log=None) -> SweepResult:
    """Runs the grid of ``cfg`` (or this shard of it) into ``out`` and writes ``results.csv`` (+ ``.parquet``),
    the PNGs and ``report.md`` over every run of the grid found finished there."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    links = parse_links(cfg.links)
    runs, skipped = expand(cfg, make_validator(tasks) if validate else None)
    if skipped:
        log(f"[sweep] left out {len(skipped)} invalid combinations (listed in the report), e.g. "
            f"{skipped[0][0].params.get('algorithm', '')} {skipped[0][0].params.get('compressor', '')}: "
            f"{skipped[0][1].splitlines()[0][:160]}")
    if not runs:
        raise ValueError("the grid has no valid runs")
    mine = shard(runs, *shard_spec) if shard_spec else list(runs)
    if report_only:
        outcome = Outcome()
    else:
        if shard_spec:
            log(f"[sweep] shard {shard_spec[0]}/{shard_spec[1]}: {len(mine)} of {len(runs)} runs")
        outcome = run_sweep(mine, out, workers=workers, progress=progress, tasks=tasks, force=force,
                             keep_stale=keep_stale, log=log)
    os.makedirs(out, exist_ok=True)
    label = make_label(tasks)
    rows, curves = collect(runs, out, links, label, outcome.failed)
    res = SweepResult(out, runs, skipped, outcome, rows)
    res.tables = write_table(rows, out)
    if report:
        # Configurations are told apart by the parameters that vary inside a block (other than labels and seeds).
        per_block: Dict[str, List[str]] = {}
        for b in dict.fromkeys(r.block for r in runs):
            per_block[b] = [param_column(k) for k in varying_keys([r for r in runs if r.block == b])
                            if k not in ("seed",) + AXIS_FLAGS]
        keys = list(dict.fromkeys(k for ks in per_block.values() for k in ks))
        agg = P.aggregate(rows, keys, links)
        res.plots = P.make_plots(rows, curves, agg, per_block, links, out)
        res.report = P.write_report(os.path.join(out, "report.md"), name=cfg.name, source=cfg.source, rows=rows,
                                    agg=agg, keys=per_block, links=links, plots=res.plots, tables=res.tables,
                                    skipped=skipped, shard=shard_spec)
    return res


def _value(text: str) -> Any:
    """``--set`` values: JSON when it parses (numbers, true/false, lists), else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _kv(text: str, what: str) -> Tuple[str, str]:
    k, sep, v = text.partition("=")
    if not sep or not k.strip():
        raise ValueError(f"{what} {text!r}: expected KEY=VALUE")
    return k.strip().replace("-", "_"), v


def build_config(args: argparse.Namespace) -> SweepConfig:
    if args.config:
        cfg = load_config(args.config)
    else:
        cfg = parse_config({"grid": [{"name": args.name or "sweep"}]})
        cfg.name = args.name or "sweep"
    if args.name:
        cfg.name = args.name
    sets = dict(_kv(s, "--set") for s in args.set)
    sets = {k: _value(v) for k, v in sets.items()}
    params: Dict[str, List[Any]] = {}
    for p in args.param:
        k, v = _kv(p, "--param")
        params[k] = [_value(x) for x in v.split(",")]
    axes = {a: getattr(args, a) for a in AXIS_FLAGS if getattr(args, a)}
    for v in args.vary:
        k, vals = _kv(v, "--vary")
        if k == "seed":
            raise ValueError("--vary seed=...: use --seeds")
        axes[k] = [_value(x) for x in vals.split(",")]
    for b in cfg.blocks:
        if args.runner:
            b["runner"] = args.runner
        base = dict(b.get("base") or {})
        for k, v in sets.items():
            if k == "seed":
                raise ValueError("--set seed=...: use --seeds")
            b.pop(k, None)  # a fixed value replaces an axis of the same name
            base[k] = v
        for k, v in axes.items():
            base.pop(k, None)
            b[k] = list(v)
        b["base"] = base
        if params:
            bp = dict(b.get("params") or {})
            bp.update(params)
            b["params"] = bp
        if args.seeds:
            b.pop("seed", None)
            b["seeds"] = list(args.seeds)
        if args.target is not None:
            b["target_accuracy"] = args.target
    if args.seeds:
        cfg.seeds = list(args.seeds)
    if args.link:
        cfg.links = dict(cfg.links) if cfg.links else dict(DEFAULT_LINKS)  # --link adds to the model's links
        for spec in args.link:
            k, v = _kv(spec, "--link")
            cfg.links[k] = Link.parse(k, v)
    if args.only_link:
        links = parse_links(cfg.links)
        unknown = [n for n in args.only_link if n not in links]
        if unknown:
            raise ValueError(f"--only-link {unknown}: known links {sorted(links)}")
        cfg.links = {n: links[n] for n in args.only_link}
    return cfg


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gradzip.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="grid file (.toml, .yaml/.yml or .json); see configs/sweeps/")
    p.add_argument("--out", help="output directory (default: [sweep] out, else out/sweeps/<name>)")
    p.add_argument("--name", help="sweep name (titles the report)")
    p.add_argument("--workers", type=int, default=None,
                   help=f"worker processes (default: [sweep] workers, else min(2, cpus) = {default_workers()}; "
                        f"0 = run in this process)")
    p.add_argument("--shard", help="run only shard i/n (0 <= i < n) of the grid, e.g. --shard 0/4")
    p.add_argument("--list", action="store_true", help="print the runs of the grid (hash, state) and exit")
    p.add_argument("--report-only", action="store_true", help="run nothing; rebuild table, plots and report")
    p.add_argument("--no-report", action="store_true", help="write the table only (no plots, no report)")
    p.add_argument("--force", action="store_true", help="re-run finished runs too")
    p.add_argument("--keep-stale", action="store_true",
                   help="reuse finished runs written by other gradzip code (another build or version) "
                        "instead of running them again")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("grid (without --config: defines it; with --config: overrides every block)")
    g.add_argument("--runner", help="fedsim | ddp | package.module:function")
    for a in AXIS_FLAGS:
        g.add_argument(f"--{a}", nargs="+", metavar="VALUE", help=f"{a} axis")
    g.add_argument("--param", action="append", default=[], metavar="NAME=V1,V2",
                   help="values of a {NAME} placeholder (compression parameter), repeatable")
    g.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                   help="any other run parameter as an axis, repeatable, e.g. --vary lr_local=0.02,0.05")
    g.add_argument("--seeds", type=int, nargs="+")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="fixed run parameter (JSON value or string), repeatable, e.g. --set rounds=20")
    g.add_argument("--target", type=float, help="target accuracy for rounds-to-target")
    g.add_argument("--link", action="append", default=[], metavar="NAME=UP[/DOWN][@LATENCY]",
                   help="add a link to the bandwidth model, e.g. --link lte=5Mbit/s/30Mbit/s@60ms")
    g.add_argument("--only-link", nargs="+", metavar="NAME", help="estimate times for these links only")
    return p.parse_args(argv)


def _print_list(runs: Sequence[RunSpec], out: str, shard_spec: Optional[Tuple[int, int]]) -> None:
    """State per run: finished (by this code), stale (finished by other code), todo, other (another shard)."""
    mine = {r.hash for r in shard(runs, *shard_spec)} if shard_spec else None
    keys = varying_keys(runs)
    print("hash              state     block         parameters that vary")
    for r in runs:
        res = load_result(out, r)
        state = "finished" if is_current(res) else "stale" if res is not None else "todo"
        if mine is not None and r.hash not in mine:
            state = "other"
        print(f"{r.hash}  {state:8s}  {r.block[:12]:12s}  "
              + " ".join(f"{k}={r.params[k]}" for k in keys if k in r.params))
    print(f"{len(runs)} runs" + (f", {len(mine)} in shard {shard_spec[0]}/{shard_spec[1]}" if mine is not None
                                 else ""))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    try:
        cfg = build_config(args)
        shard_spec = parse_shard(args.shard) if args.shard else None
        out = args.out or cfg.out or os.path.join("out", "sweeps", cfg.name)
        if args.list:
            runs, skipped = expand(cfg, make_validator())
            _print_list(runs, out, shard_spec)
            for spec, why in skipped:
                print(f"left out: {spec.block}: {spec.params.get('algorithm', '')} {spec.params.get('feedback', '')} "
                      f"{spec.params.get('compressor', '')}: {why.splitlines()[0][:150]}")
            return 0
        workers = args.workers if args.workers is not None else cfg.workers
        res = sweep(cfg, out, workers=workers, shard_spec=shard_spec, progress=not args.no_progress,
                    report=not args.no_report, report_only=args.report_only, force=args.force,
                    keep_stale=args.keep_stale)
    except (ValueError, OSError) as e:
        print(f"gradzip.sweep: error: {e}", file=sys.stderr)
        return 2
    oc = res.outcome
    n_ok = sum(r["status"] == "ok" for r in res.rows)
    print(f"[sweep] {cfg.name}: {len(res.runs)} runs in the grid, {n_ok} finished "
          f"({len(oc.ran)} ran now, {len(oc.reused)} reused), {len(oc.failed)} failed; "
          f"{time.time() - t0:.1f} s")
    if res.report:
        print(f"[sweep] report: {os.path.abspath(res.report)}")
    print(f"[sweep] table:  {', '.join(os.path.abspath(t) for t in res.tables)}")
    if res.plots:
        names = ",".join(os.path.basename(p.path) for p in res.plots.values())
        print(f"[sweep] plots:  {os.path.abspath(res.out)}/{{{names}}}")
    return 1 if oc.failed else 0
