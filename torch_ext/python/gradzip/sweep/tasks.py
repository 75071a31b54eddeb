"""Task runners of a sweep: one function per kind of training run, plus how to label and validate its config.

A runner is a ``Task`` whose ``run(params, out_dir)`` trains once, writes whatever files it likes into ``out_dir``
and returns ``(summary, curve)``:

* ``curve``: one dict per evaluation point, in order, with the cumulative columns of ``CURVE_COLUMNS``:
  ``round`` (rounds for fedsim, epochs for DDP), ``accuracy`` (fraction, NaN if none), ``train_loss``,
  ``uplink_bytes`` / ``downlink_bytes`` (all nodes together), ``wall_time_s``, ``compute_time_s``, and the
  bandwidth model's inputs for ONE node (nodes run in parallel): ``node_uplink_bytes``, ``node_downlink_bytes``,
  ``node_compute_s`` and ``sync_points`` (how many latencies it has waited; see ``bandwidth.py``).
* ``summary``: extra facts, all optional: ``wall_time_s`` (whole run, evaluation included), ``diverged``,
  ``numel`` (model parameters), ``nodes``.

Built in: ``fedsim`` (``gradzip.fedsim.run``) and ``ddp`` (``examples/python/02_ddp_train.py`` under
``python -m torch.distributed.run``). A grid may name any other runner as ``"package.module:attribute"``, where the
attribute is a ``Task`` or a plain ``run`` function; it is resolved by name inside the worker processes.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib
import importlib.util
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

CURVE_COLUMNS = ("round", "accuracy", "train_loss", "uplink_bytes", "downlink_bytes", "wall_time_s",
                 "compute_time_s", "node_uplink_bytes", "node_downlink_bytes", "node_compute_s", "sync_points")

Curve = List[Dict[str, float]]
RunFn = Callable[[Dict[str, Any], str], Tuple[Dict[str, Any], Curve]]


@dataclass(frozen=True)
class Task:
    """``run(params, out_dir) -> (summary, curve)``; ``validate(params)`` raises ValueError before any work;
    ``label(params) -> (method, compressor)`` names a run in plots (defaults: the algorithm and compressor keys)."""

    run: RunFn
    validate: Optional[Callable[[Dict[str, Any]], None]] = None
    label: Optional[Callable[[Dict[str, Any]], Tuple[str, str]]] = None


def default_label(params: Mapping[str, Any]) -> Tuple[str, str]:
    method = str(params.get("algorithm", "run"))
    fb = params.get("feedback")
    if fb and fb != "none":
        method += f"+{fb}"
    return method, str(params.get("compressor", "identity"))


def _num(v: Any) -> float:
    if v is None or v == "":
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


# ----------------------------------------------------------------------------------------------------- fedsim ---

_FEDSIM_FALLBACK_DEFAULTS = {"algorithm": "fedavg", "feedback": "none", "compressor": "identity",
                             "downlink": "identity", "clients_per_round": 10}


def _fedsim_defaults() -> Dict[str, Any]:
    try:
        from gradzip.fedsim import FedSimConfig
    except ImportError:
        return dict(_FEDSIM_FALLBACK_DEFAULTS)
    return {f.name: f.default for f in dataclasses.fields(FedSimConfig)
            if f.default is not dataclasses.MISSING}


def fedsim_validate(params: Dict[str, Any]) -> None:
    """The config through fedsim's own checks (``from_mapping`` + ``FedSimConfig.validate``: names and values), then
    the compressor specs and the feedback pairing through ``gradzip.validate`` (the C++ registry)."""
    import gradzip

    try:
        import gradzip.fedsim as fedsim
    except ImportError as e:
        raise ValueError(f"fedsim runner: gradzip.fedsim is not available ({e})") from None
    from_mapping = getattr(fedsim, "from_mapping", None)
    if from_mapping is None:
        try:
            from gradzip.fedsim.config import from_mapping
        except ImportError:
            from_mapping = None
    names = {f.name for f in dataclasses.fields(fedsim.FedSimConfig)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(f"fedsim: unknown parameters {unknown}; known: {sorted(names)}")
    try:
        cfg = from_mapping(params) if from_mapping is not None else fedsim.FedSimConfig(**params)
    except TypeError as e:
        raise ValueError(f"fedsim: {e}") from None
    if callable(getattr(cfg, "validate", None)):
        cfg.validate()
    d = dataclasses.asdict(cfg)
    fb = str(d.get("feedback", "none")) if d.get("algorithm", "fedavg") == "fedavg" else "none"
    gradzip.validate(str(d.get("compressor", "identity")), fb)
    gradzip.validate(str(d.get("downlink", "identity")))
    # The algorithm/compressor pairing (SCALLION: unbiased, SCAFCOM: contractive, ...) is the C++ layer's to judge;
    # fedsim.check asks it with a one-client federation, without loading data.
    fedsim.check(cfg)


def fedsim_label(params: Mapping[str, Any]) -> Tuple[str, str]:
    p = {**_fedsim_defaults(), **params}
    method, comp = default_label(p)
    down = p.get("downlink", "identity")
    if down and down != "identity":
        comp += f" | down {down}"
    return method, comp


def read_table(path: str) -> List[Dict[str, Any]]:
    """Rows of a CSV (values parsed as floats where possible) or JSON-lines file."""
    rows: List[Dict[str, Any]] = []
    if path.endswith(".jsonl"):
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append({k: (_num(v) if v not in ("True", "False") else v == "True") for k, v in r.items()})
    return rows


def fedsim_run(params: Dict[str, Any], out_dir: str) -> Tuple[Dict[str, Any], Curve]:
    """One federated simulation (``gradzip.fedsim.run``, no progress bar, no plots of its own). Per node: the
    sampled clients work in parallel, so one node's share of a round is the round's bytes and compute divided by
    clients_per_round; two latencies per round (model down, update up)."""
    from gradzip.fedsim import run

    summary = run(dict(params), out_dir, progress=False, plots=False)
    path = os.path.join(out_dir, "rounds.csv")
    if not os.path.exists(path):
        path = os.path.join(out_dir, "rounds.jsonl")
    rows = read_table(path)
    cfg = summary.get("config") or {}
    s = float(cfg.get("clients_per_round") or params.get("clients_per_round")
              or _fedsim_defaults().get("clients_per_round", 1))
    s = max(1.0, min(s, float(cfg.get("num_clients") or s)))
    curve: Curve = []
    for r in rows:
        rnd = _num(r.get("round"))
        up, down, comp = _num(r.get("uplink_bytes")), _num(r.get("downlink_bytes")), _num(r.get("compute_time_s"))
        curve.append({
            "round": rnd, "accuracy": _num(r.get("test_accuracy")), "train_loss": _num(r.get("train_loss")),
            "uplink_bytes": up, "downlink_bytes": down, "wall_time_s": _num(r.get("wall_time_s")),
            "compute_time_s": comp, "node_uplink_bytes": up / s, "node_downlink_bytes": down / s,
            "node_compute_s": comp / s, "sync_points": 2.0 * rnd,
        })
    if summary.get("diverged"):
        # A diverged run ends with a point without accuracy at the round that diverged: its final accuracy is NaN
        # (it takes no part in the Pareto front), its best accuracy and bytes stay.
        last = curve[-1] if curve else {}
        up, down, comp = (_num(summary.get("uplink_bytes")), _num(summary.get("downlink_bytes")),
                          _num(summary.get("compute_time_s")))
        rnd = last.get("round", 0.0) + 1.0
        curve.append({"round": rnd, "accuracy": math.nan, "train_loss": math.nan, "uplink_bytes": up,
                      "downlink_bytes": down, "wall_time_s": _num(summary.get("wall_time_s")),
                      "compute_time_s": comp, "node_uplink_bytes": up / s, "node_downlink_bytes": down / s,
                      "node_compute_s": comp / s, "sync_points": 2.0 * rnd})
    extra = {k: summary.get(k) for k in ("wall_time_s", "diverged", "numel") if k in summary}
    extra["nodes"] = s
    return extra, curve


FEDSIM = Task(fedsim_run, fedsim_validate, fedsim_label)

# -------------------------------------------------------------------------------------------------------- ddp ---

DDP_SCRIPT = os.path.join("examples", "python", "02_ddp_train.py")
_DDP_RESERVED = {"json_out", "no_progress", "tag"}  # set by the runner
_DDP_EXTRA = {"nproc": 2, "timeout_s": 3600}        # runner parameters, not script flags


def _repo_root() -> str:
    # torch_ext/python/gradzip/sweep/tasks.py -> the checkout (the package is installed editable)
    return os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))


def ddp_script() -> str:
    path = os.path.join(_repo_root(), DDP_SCRIPT)
    if not os.path.exists(path):
        raise ValueError(f"ddp runner: {path} not found (the ddp runner needs a gradzip checkout)")
    return path


_DDP_PARSER: Dict[str, Any] = {}


def _ddp_parse_args(argv: List[str]):
    """The example's own argparse (imported once from the script file), with errors as ValueError."""
    if "parse_args" not in _DDP_PARSER:
        spec = importlib.util.spec_from_file_location("gradzip_ddp_train_example", ddp_script())
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)  # defines functions only (main runs under __main__)
        _DDP_PARSER["parse_args"] = mod.parse_args
    parse = _DDP_PARSER["parse_args"]
    import contextlib
    import io

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parse(argv)
    except SystemExit:
        msg = err.getvalue().strip().splitlines()
        raise ValueError(f"ddp: {msg[-1] if msg else 'bad arguments'} (arguments: {argv})") from None


def ddp_argv(params: Mapping[str, Any]) -> List[str]:
    """Script flags from run parameters: ``batch_size = 64`` -> ``--batch-size 64``; ``True`` -> bare flag."""
    argv: List[str] = []
    for k, v in params.items():
        if k in _DDP_EXTRA:
            continue
        if k in _DDP_RESERVED:
            raise ValueError(f"ddp: '{k}' is set by the sweep runner")
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            if v:
                argv.append(flag)
        elif isinstance(v, (list, dict)) or v is None:
            raise ValueError(f"ddp: parameter '{k}' must be a scalar, got {v!r}")
        else:
            argv += [flag, str(v)]
    return argv


def ddp_validate(params: Dict[str, Any]) -> None:
    import gradzip

    nproc = params.get("nproc", _DDP_EXTRA["nproc"])
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"ddp: nproc={nproc!r} must be a positive integer")
    args = _ddp_parse_args(ddp_argv(params))
    if args.hook == "gradzip":
        gradzip.validate(args.compressor, args.feedback)


def ddp_label(params: Mapping[str, Any]) -> Tuple[str, str]:
    try:
        a = _ddp_parse_args(ddp_argv(params))
    except ValueError:
        return "ddp", str(params.get("compressor", "?"))
    if a.hook == "gradzip":
        return ("ddp" + (f"+{a.feedback}" if a.feedback != "none" else "")), a.compressor
    if a.hook == "powersgd":
        return "ddp", f"torch-powersgd:rank={a.powersgd_rank}"
    return "ddp", {"none": "allreduce", "fp16": "torch-fp16"}[a.hook]


def ddp_run(params: Dict[str, Any], out_dir: str) -> Tuple[Dict[str, Any], Curve]:
    """``python -m torch.distributed.run --standalone --nproc_per_node=N 02_ddp_train.py ...`` with one JSON line
    per epoch. Bytes per rank: gradzip's own count (this rank's contribution sent, (world-1) times that received);
    for torch's hooks: 4 (none) or 2 (fp16) bytes per parameter and step, PowerSGD: unknown (NaN). One latency
    per step; compute = the epochs' wall time (the collectives over loopback included, evaluation excluded)."""
    nproc = int(params.get("nproc", _DDP_EXTRA["nproc"]))
    timeout = float(params.get("timeout_s", _DDP_EXTRA["timeout_s"]))
    rows_path = os.path.join(out_dir, "epochs.jsonl")
    if os.path.exists(rows_path):
        os.remove(rows_path)
    p = dict(params)
    p.setdefault("threads", 1)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           ddp_script(), *ddp_argv(p), "--json-out", rows_path, "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS=str(p["threads"]))
    with open(os.path.join(out_dir, "log.txt"), "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        try:
            res = subprocess.run(cmd, cwd=_repo_root(), env=env, stdout=log, stderr=subprocess.STDOUT,
                                 timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"ddp run timed out after {timeout:g} s (see {out_dir}/log.txt)") from None
    if res.returncode != 0:
        with open(os.path.join(out_dir, "log.txt")) as f:
            tail = "".join(f.readlines()[-15:])
        raise RuntimeError(f"ddp run failed with exit status {res.returncode}:\n{tail}")
    rows = read_table(rows_path)
    if not rows:
        raise RuntimeError(f"ddp run wrote no epochs to {rows_path}")
    curve: Curve = []
    up = down = comp = steps = 0.0
    world = float(rows[0].get("world") or nproc)
    for r in rows:
        n = float(r.get("steps") or 0)
        per_step = r.get("gradzip_bytes_sent_per_step")
        if per_step is None:
            per_param = {"none": 4.0, "fp16": 2.0}.get(str(r.get("hook")), math.nan)
            per_step = per_param * float(r.get("params") or math.nan)
        up += float(per_step) * n
        down += (world - 1.0) * float(per_step) * n
        comp += float(r.get("epoch_s") or 0.0)
        steps += n
        curve.append({
            "round": float(r.get("epoch", len(curve))) + 1.0, "accuracy": _num(r.get("test_acc")),
            "train_loss": _num(r.get("train_loss")), "uplink_bytes": up * world, "downlink_bytes": down * world,
            "wall_time_s": comp, "compute_time_s": comp, "node_uplink_bytes": up, "node_downlink_bytes": down,
            "node_compute_s": comp, "sync_points": steps,
        })
    return {"numel": rows[0].get("params"), "nodes": world,
            "diverged": not math.isfinite(_num(rows[-1].get("train_loss")))}, curve


DDP = Task(ddp_run, ddp_validate, ddp_label)

TASKS: Dict[str, Task] = {"fedsim": FEDSIM, "ddp": DDP}


def get_task(name: str, tasks: Optional[Mapping[str, Any]] = None) -> Task:
    """A Task from ``tasks`` (default: TASKS) or from ``"package.module:attribute"``."""
    reg = TASKS if tasks is None else tasks
    t: Any
    if name in reg:
        t = reg[name]
    elif ":" in name:
        mod, _, attr = name.partition(":")
        try:
            t = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"runner {name!r}: cannot import ({e})") from None
    else:
        raise ValueError(f"unknown runner {name!r}; known: {sorted(reg)} or 'package.module:function'")
    if isinstance(t, Task):
        return t
    if callable(t):
        return Task(t)
    raise ValueError(f"runner {name!r} is neither a Task nor a function")
