"""Running a sweep's runs in worker processes (resumable), and collecting their results into one table.

Layout of a sweep's output directory::

    OUT/runs/<hash>/spec.json     the run (runner, params), written before it starts
    OUT/runs/<hash>/...           whatever the runner writes (fedsim: rounds.csv, summary.json, config.json)
    OUT/runs/<hash>/curve.csv     the normalised curve (tasks.CURVE_COLUMNS)
    OUT/runs/<hash>/result.json   written last, atomically: the run is finished when this file says status "ok"
                                  and was written by the same code (``code_version()``; ``keep_stale`` reuses it anyway)
    OUT/runs/<hash>/error.txt     a failed run's traceback (it is tried again next time)
    OUT/results.csv[.parquet]     one row per run; report.md and *.png (gradzip.sweep.plots)

Runs are independent, so shards of a grid may write into copies of OUT on different machines; copying the
``runs/`` folders together and running ``--report-only`` gives the merged table.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import functools
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .bandwidth import Link
from .grid import RunSpec, canonical_json, varying_keys
from .tasks import CURVE_COLUMNS, Curve, get_task, read_table

RESULT = "result.json"


def run_dir(out: str, spec: RunSpec) -> str:
    return os.path.join(out, "runs", spec.hash)


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """12 hex digits of SHA-256 over the bytes of the installed gradzip extension (all the math) and of the
    gradzip package's Python sources, in path order. A rebuilt extension or an edited runner gives a new value,
    so results written by other code are not mistaken for finished runs of this one."""
    import gradzip
    from gradzip import _C

    h = hashlib.sha256()
    files = [os.path.realpath(_C.__file__)]
    root = os.path.dirname(os.path.realpath(gradzip.__file__))
    for base, dirs, names in os.walk(root):
        dirs.sort()
        files += [os.path.join(base, n) for n in sorted(names) if n.endswith(".py")]
    for path in files:
        h.update(os.path.relpath(path, root).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()[:12]


def load_result(out: str, spec: RunSpec) -> Optional[Dict[str, Any]]:
    """The finished result of ``spec`` under ``out`` (status ok, same hash), else None. Whatever code wrote it
    (``result["code"]``): the table reports it; run_sweep decides whether it is stale."""
    path = os.path.join(run_dir(out, spec), RESULT)
    try:
        with open(path) as f:
            res = json.load(f)
    except (OSError, ValueError):
        return None
    if res.get("status") != "ok" or res.get("hash") != spec.hash:
        return None
    return res


def is_current(res: Optional[Dict[str, Any]], keep_stale: bool = False) -> bool:
    """A loaded result counts as finished: written by this code (or by any code with ``keep_stale``)."""
    return res is not None and (keep_stale or res.get("code") == code_version())


def is_finished(out: str, spec: RunSpec, keep_stale: bool = False) -> bool:
    """Finished by this code (or by any code with ``keep_stale``)."""
    return is_current(load_result(out, spec), keep_stale)


def _write_json_atomic(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, allow_nan=True)
        f.write("\n")
    os.replace(tmp, path)


def write_curve(path: str, curve: Curve) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CURVE_COLUMNS)
        for r in curve:
            w.writerow([_cell(r.get(c, math.nan)) for c in CURVE_COLUMNS])


def read_curve(path: str) -> Curve:
    return read_table(path)


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else repr(v))
    return v


def _check_curve(curve: Any) -> Curve:
    if not isinstance(curve, list) or not curve:
        raise ValueError("the runner returned an empty curve (no evaluation point)")
    out: Curve = []
    for r in curve:
        missing = [c for c in ("round", "accuracy", "uplink_bytes") if c not in r]
        if missing:
            raise ValueError(f"the runner's curve row lacks {missing}: {r}")
        out.append({c: float(r.get(c, math.nan)) for c in CURVE_COLUMNS})
    return out


def execute(spec_dict: Dict[str, Any], out: str, tasks: Optional[Mapping[str, Any]] = None,
            threads: int = 1) -> Dict[str, Any]:
    """Runs one spec into ``out/runs/<hash>/`` (cleared first) and returns its result dict; a failure returns
    ``{"status": "failed", "error": ...}`` and leaves error.txt, never raises. Used in-process and by workers."""
    spec = RunSpec.from_dict(spec_dict)
    d = run_dir(out, spec)
    t0 = time.time()
    try:
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)
        _write_json_atomic(os.path.join(d, "spec.json"), spec.to_dict())
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:
            pass
        task = get_task(spec.runner, tasks)
        summary, curve = task.run(dict(spec.params), d)
        curve = _check_curve(curve)
        write_curve(os.path.join(d, "curve.csv"), curve)
        summary = dict(summary or {})
        summary.setdefault("wall_time_s", curve[-1]["wall_time_s"])
        result = {"status": "ok", "hash": spec.hash, "code": code_version(), "spec": spec.to_dict(),
                  "summary": _jsonable(summary),
                  "sweep_wall_time_s": time.time() - t0, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _write_json_atomic(os.path.join(d, RESULT), result)
        return result
    except BaseException as e:  # noqa: B902 - a worker must report every failure, then the pool decides
        if isinstance(e, KeyboardInterrupt):
            raise
        tb = traceback.format_exc()
        try:
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "error.txt"), "w") as f:
                f.write(tb)
        except OSError:
            pass
        msg = f"{type(e).__name__}: {e}"
        return {"status": "failed", "hash": spec.hash, "spec": spec.to_dict(), "error": msg,
                "sweep_wall_time_s": time.time() - t0}


def _jsonable(d: Mapping[str, Any]) -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple, dict)):
            try:
                json.dumps(v, allow_nan=True)
                out[k] = v
            except TypeError:
                out[k] = str(v)
        else:
            out[k] = str(v)
    return out


def _worker_init(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


@dataclass
class Outcome:
    """What ``run_sweep`` did: ``reused`` finished before, ``ran`` finished now, ``failed`` (result dicts)."""

    reused: List[RunSpec] = field(default_factory=list)
    ran: List[RunSpec] = field(default_factory=list)
    failed: List[Dict[str, Any]] = field(default_factory=list)
    wall_time_s: float = 0.0


def run_sweep(runs: Sequence[RunSpec], out: str, *, workers: Optional[int] = None, progress: bool = True,
              tasks: Optional[Mapping[str, Any]] = None, force: bool = False, threads: int = 1,
              keep_stale: bool = False, log=None) -> Outcome:
    """Runs every spec not already finished under ``out`` by this code (all of them with ``force``; a result
    written by other code, see code_version(), counts as finished only with ``keep_stale``). ``workers=0`` runs in
    this process; otherwise a pool of ``workers`` spawned processes (default min(2, cpus)), ``threads`` torch threads
    each. ``tasks`` overrides the runner registry (it must be picklable: module-level functions). A failed run is
    reported and left unfinished; a crashed worker fails the runs still in flight, the others go on."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    t0 = time.time()
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    oc = Outcome()
    todo: List[RunSpec] = []
    stale = 0
    for r in runs:
        res = None if force else load_result(out, r)  # read each result.json once
        if is_current(res, keep_stale):
            oc.reused.append(r)
        else:
            stale += res is not None
            todo.append(r)
    if stale:
        log(f"[sweep] {stale} finished runs in {out} were written by other gradzip code (not {code_version()}); "
            f"running them again (--keep-stale reuses them)")
    if oc.reused:
        log(f"[sweep] {len(oc.reused)} of {len(runs)} runs already finished in {out}; reusing them")
    if not todo:
        oc.wall_time_s = time.time() - t0
        return oc
    workers = default_workers() if workers is None else int(workers)
    if workers < 0:
        raise ValueError(f"workers={workers} must be >= 0 (0: run in this process)")

    bar = _progress(len(todo), progress)

    def done(res: Dict[str, Any]) -> None:
        spec = RunSpec.from_dict(res["spec"])
        if res["status"] == "ok":
            oc.ran.append(spec)
        else:
            oc.failed.append(res)
            log(f"[sweep] run {spec.hash} failed ({spec.runner} {canonical_json(spec.params)}): {res['error']}"
                f"\n        traceback: {os.path.join(run_dir(out, spec), 'error.txt')}")
        bar.update(1)
        bar.set_postfix_str(f"{len(oc.failed)} failed" if oc.failed else "", refresh=False)

    try:
        if workers == 0:
            for r in todo:
                done(execute(r.to_dict(), out, tasks, threads))
        else:
            _run_pool(todo, out, tasks, threads, min(workers, len(todo)), done)
    finally:
        bar.close()
    oc.wall_time_s = time.time() - t0
    return oc


def _run_pool(todo: Sequence[RunSpec], out: str, tasks, threads: int, workers: int, done) -> None:
    ctx = multiprocessing.get_context("spawn")
    # The children import torch while unpickling the task: set the OpenMP thread count before they start.
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        ex = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                                    initargs=(threads,))
        try:
            futs = {ex.submit(execute, r.to_dict(), out, tasks, threads): r for r in todo}
            for f in cf.as_completed(futs):
                r = futs[f]
                try:
                    res = f.result()
                except cf.process.BrokenProcessPool as e:
                    res = {"status": "failed", "hash": r.hash, "spec": r.to_dict(),
                           "error": f"worker process died ({e})"}
                except Exception as e:  # noqa: BLE001 - e.g. an unpicklable task registry
                    res = {"status": "failed", "hash": r.hash, "spec": r.to_dict(),
                           "error": f"{type(e).__name__}: {e}"}
                done(res)
        except BaseException:
            ex.shutdown(wait=False, cancel_futures=True)
            raise
        ex.shutdown(wait=True)
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old


class _NoBar:
    def __init__(self, total: int) -> None:
        self.n, self.total = 0, total

    def update(self, k: int) -> None:
        self.n += k

    def set_postfix_str(self, *a, **k) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar(total)
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar(total)
    return tqdm(total=total, desc="sweep", unit="run", dynamic_ncols=True)


# ------------------------------------------------------------------------------------------------ the table ---

def first_reaching(curve: Curve, target: Optional[float]) -> Optional[Dict[str, float]]:
    """The first curve row whose accuracy is >= target (None if never, or no target)."""
    if target is None:
        return None
    for r in curve:
        a = r.get("accuracy", math.nan)
        if a == a and a >= target:
            return r
    return None


def estimate(row: Mapping[str, float], link: Link) -> float:
    """Estimated wall time (s) of the run up to ``row`` on ``link`` (bandwidth.Link.time on the node columns)."""
    return link.time(row.get("node_compute_s", math.nan), row.get("node_uplink_bytes", math.nan),
                     row.get("node_downlink_bytes", math.nan), row.get("sync_points", 0.0))


_RESERVED = {"hash", "block", "runner", "method", "compressor_label", "status", "rounds", "final_accuracy",
             "best_accuracy", "target_accuracy", "rounds_to_target", "uplink_bytes", "downlink_bytes",
             "uplink_bytes_to_target", "wall_time_s", "compute_time_s", "diverged", "numel", "error", "params"}


def param_column(key: str) -> str:
    """Table column of a run parameter: its name, or ``param.<name>`` where that would shadow a result column
    (fedsim's ``rounds`` parameter beside the ``rounds`` actually completed)."""
    return f"param.{key}" if key in _RESERVED or key.startswith("est_time") else key


def table_row(spec: RunSpec, result: Optional[Dict[str, Any]], curve: Optional[Curve], links: Mapping[str, Link],
              keys: Sequence[str], label) -> Dict[str, Any]:
    """One row of the results table (see README "Sweeps"): identity, labels, the varying parameters ``keys``
    (columns named by param_column), and the metrics (NaN where unknown: failed or pending runs)."""
    method, comp = label(spec)
    row: Dict[str, Any] = {"hash": spec.hash, "block": spec.block, "runner": spec.runner, "method": method,
                           "compressor_label": comp}
    for k in keys:
        v = spec.params.get(k)
        row[param_column(k)] = canonical_json(v) if isinstance(v, (list, dict)) else v
    row["seed"] = spec.params.get("seed")
    status = "pending" if result is None else result.get("status", "failed")
    row["status"] = status
    row["code"] = result.get("code", "") if status == "ok" else ""
    nan = math.nan
    m: Dict[str, Any] = dict(rounds=nan, final_accuracy=nan, best_accuracy=nan, target_accuracy=nan,
                             rounds_to_target=nan, uplink_bytes=nan, downlink_bytes=nan,
                             uplink_bytes_to_target=nan, wall_time_s=nan, compute_time_s=nan, diverged=None,
                             numel=None)
    for name in links:
        m[f"est_time_s@{name}"] = nan
        m[f"est_time_to_target_s@{name}"] = nan
    if spec.target_accuracy is not None:
        m["target_accuracy"] = spec.target_accuracy
    if status == "ok" and curve:
        last = curve[-1]
        accs = [r["accuracy"] for r in curve if r["accuracy"] == r["accuracy"]]
        summ = result.get("summary", {})
        m.update(rounds=last["round"], final_accuracy=last["accuracy"], best_accuracy=max(accs) if accs else nan,
                 uplink_bytes=last["uplink_bytes"], downlink_bytes=last["downlink_bytes"],
                 wall_time_s=float(summ.get("wall_time_s", last["wall_time_s"])),
                 compute_time_s=last["compute_time_s"], diverged=summ.get("diverged"), numel=summ.get("numel"))
        hit = first_reaching(curve, spec.target_accuracy)
        if hit is not None:
            m.update(rounds_to_target=hit["round"], uplink_bytes_to_target=hit["uplink_bytes"])
        for name, link in links.items():
            m[f"est_time_s@{name}"] = estimate(last, link)
            if hit is not None:
                m[f"est_time_to_target_s@{name}"] = estimate(hit, link)
    row.update(m)
    row["error"] = result.get("error", "") if result is not None and status != "ok" else ""
    row["params"] = canonical_json(spec.params)
    return row


def collect(runs: Sequence[RunSpec], out: str, links: Mapping[str, Link], label, failed: Sequence[Dict] = ()
            ) -> Tuple[List[Dict[str, Any]], Dict[str, Curve]]:
    """Table rows for every run of the grid (finished, failed in this invocation, or pending) and the curves of
    the finished ones, keyed by hash."""
    failed_by_hash = {f["hash"]: f for f in failed}
    keys = [k for k in varying_keys(runs) if k != "seed"]
    rows: List[Dict[str, Any]] = []
    curves: Dict[str, Curve] = {}
    for spec in runs:
        res = load_result(out, spec)
        curve = None
        if res is not None:
            try:
                curve = read_curve(os.path.join(run_dir(out, spec), "curve.csv"))
                curves[spec.hash] = curve
            except OSError as e:
                res = {"status": "failed", "error": f"curve.csv unreadable: {e}"}
        elif spec.hash in failed_by_hash:
            res = failed_by_hash[spec.hash]
        rows.append(table_row(spec, res, curve, links, keys, label))
    return rows, curves


def write_table(rows: Sequence[Dict[str, Any]], out: str, stem: str = "results") -> List[str]:
    """``OUT/results.csv`` and, when pyarrow imports, ``OUT/results.parquet``. Returns the paths written."""
    paths = []
    cols: List[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    path = os.path.join(out, f"{stem}.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else _cell(r.get(k))) for k in cols})
    paths.append(path)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return paths
    # One type per column: numbers -> float64, booleans -> bool, anything else (mixed) -> string.
    data: Dict[str, Any] = {}
    for k in cols:
        vals = [r.get(k) for r in rows]
        present = [v for v in vals if v is not None]
        if present and all(isinstance(v, bool) for v in present):
            data[k] = pa.array(vals, type=pa.bool_())
        elif present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            data[k] = pa.array([None if v is None else float(v) for v in vals], type=pa.float64())
        else:
            data[k] = pa.array([None if v is None else str(v) for v in vals], type=pa.string())
    table = pa.table(data)
    ppath = os.path.join(out, f"{stem}.parquet")
    pq.write_table(table, ppath)
    paths.append(ppath)
    return paths
