"""Sweep grids: loading a config file, expanding it into runs, hashing runs, and sharding.

A sweep is a list of blocks (``[[grid]]`` in TOML, ``grid:`` in YAML). Each block is a Cartesian product:

    [[grid]]
    name = "synthetic"                 # plots and tables are grouped by name; blocks may share one
    runner = "fedsim"                  # fedsim | ddp | "package.module:function" (see gradzip.sweep.tasks)
    seeds = [0, 1]
    target_accuracy = 0.8              # rounds-to-target threshold (analysis only, not part of a run's hash)
    algorithm = ["fedavg", "scaffold"] # any other key is an axis (a list) or a fixed value (a scalar)
    compressor = ["identity", "topk:ratio={ratio}", "qsgd:levels={levels}"]
    params = { ratio = [0.01, 0.1], levels = [4, 16] }   # compression parameters: fill {placeholders}
    exclude = [{ algorithm = "scallion", compressor = "topk*" }]   # fnmatch patterns on the final values
    [grid.base]                        # fixed parameters of every run of the block
    task = "synthetic_logreg"
    rounds = 40

``{name}`` placeholders in any string value are filled from ``params``; a template expands only over the
parameters it names, so ``identity`` stays one run while ``topk:ratio={ratio}`` becomes one run per ratio. The
sweep-wide table ``[sweep]`` holds defaults (``name``, ``out``, ``workers``, ``seeds``, ``target_accuracy``) and
``[links.NAME]`` the bandwidth model's links (``gradzip.sweep.bandwidth``).

A run is ``(runner, params)``; its id is a hash of exactly that (canonical JSON), so a finished run is recognised
whatever block, file or order produced it, and labels or targets can change without re-running anything.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

HASH_VERSION = 1
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_BLOCK_KEYS = {"name", "runner", "seeds", "seed", "target_accuracy", "base", "params", "exclude", "skip_invalid",
               "also"}
_SWEEP_KEYS = {"name", "out", "workers", "seeds", "target_accuracy", "runner", "skip_invalid"}
_TOP_KEYS = {"sweep", "links", "grid"}
# Axis order in a run's expansion (and in the results table); other axes follow in file order.
_AXIS_ORDER = ("algorithm", "feedback", "hook", "compressor", "downlink")


@dataclass
class RunSpec:
    """One run of the grid. ``runner`` and ``params`` define it (and its hash); ``block``, ``target_accuracy`` and
    ``values`` (the compression parameters that filled its templates) are labels for the analysis."""

    runner: str
    params: Dict[str, Any]
    block: str = ""
    target_accuracy: Optional[float] = None
    values: Dict[str, Any] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        return run_hash(self.runner, self.params)

    def to_dict(self) -> Dict[str, Any]:
        return {"hash": self.hash, "runner": self.runner, "params": self.params, "block": self.block,
                "target_accuracy": self.target_accuracy, "values": self.values}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunSpec":
        return cls(d["runner"], dict(d["params"]), d.get("block", ""), d.get("target_accuracy"),
                   dict(d.get("values") or {}))


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, floats as Python writes them; NaN/Inf refused (they are no valid config)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def run_hash(runner: str, params: Mapping[str, Any]) -> str:
    """16 hex digits of SHA-256 over ``{"v": HASH_VERSION, "runner": ..., "params": ...}`` in canonical JSON.
    Integers and floats differ (``rounds = 10`` vs ``10.0``); key order does not matter."""
    try:
        text = canonical_json({"v": HASH_VERSION, "runner": runner, "params": dict(params)})
    except (TypeError, ValueError) as e:
        raise ValueError(f"run parameters must be JSON scalars, lists or tables without NaN/Inf: {e}") from None
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class SweepConfig:
    """A parsed sweep: settings, links (raw specs, parsed by bandwidth.parse_links) and blocks."""

    name: str = "sweep"
    out: Optional[str] = None
    workers: Optional[int] = None
    seeds: List[int] = field(default_factory=lambda: [0])
    target_accuracy: Optional[float] = None
    runner: str = "fedsim"
    skip_invalid: bool = True
    links: Dict[str, Any] = field(default_factory=dict)
    blocks: List[Dict[str, Any]] = field(default_factory=list)
    source: Optional[str] = None


def load_config_file(path: str) -> Dict[str, Any]:
    """A ``.toml`` (tomllib) or ``.yaml``/``.yml`` (PyYAML) file as a dict."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".toml":
        import tomllib

        with open(path, "rb") as f:
            try:
                return tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                raise ValueError(f"{path}: {e}") from None
    if ext in (".yaml", ".yml"):
        import yaml

        with open(path) as f:
            try:
                data = yaml.safe_load(f)
            except yaml.YAMLError as e:
                raise ValueError(f"{path}: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        return data
    if ext == ".json":
        with open(path) as f:
            return json.load(f)
    raise ValueError(f"{path}: unknown config format {ext!r}; use .toml, .yaml/.yml or .json")


def parse_config(data: Mapping[str, Any], source: Optional[str] = None) -> SweepConfig:
    """Checks the structure (unknown top-level or [sweep] keys are errors) and returns a SweepConfig."""
    where = source or "config"
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown top-level keys {sorted(unknown)}; known: {sorted(_TOP_KEYS)}")
    sw = dict(data.get("sweep") or {})
    unknown = set(sw) - _SWEEP_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown [sweep] keys {sorted(unknown)}; known: {sorted(_SWEEP_KEYS)}")
    cfg = SweepConfig(source=source)
    cfg.name = str(sw.get("name", os.path.splitext(os.path.basename(source))[0] if source else "sweep"))
    cfg.out = sw.get("out")
    cfg.workers = sw.get("workers")
    if "seeds" in sw:
        cfg.seeds = _int_list(sw["seeds"], f"{where}: [sweep] seeds")
    cfg.target_accuracy = _opt_float(sw.get("target_accuracy"), f"{where}: [sweep] target_accuracy")
    cfg.runner = str(sw.get("runner", cfg.runner))
    cfg.skip_invalid = bool(sw.get("skip_invalid", True))
    links = data.get("links") or {}
    if not isinstance(links, Mapping):
        raise ValueError(f"{where}: [links] must be a table of NAME = {{uplink = ..., latency = ...}}")
    cfg.links = dict(links)
    blocks = data.get("grid") or []
    if isinstance(blocks, Mapping):
        blocks = [blocks]
    if not isinstance(blocks, list) or not all(isinstance(b, Mapping) for b in blocks):
        raise ValueError(f"{where}: 'grid' must be a list of tables ([[grid]] in TOML)")
    cfg.blocks = [dict(b) for b in blocks]
    return cfg


def load_config(path: str) -> SweepConfig:
    return parse_config(load_config_file(path), source=path)


def _int_list(v: Any, what: str) -> List[int]:
    vals = v if isinstance(v, list) else [v]
    if not vals or not all(isinstance(x, int) and not isinstance(x, bool) for x in vals):
        raise ValueError(f"{what}: expected an integer or a non-empty list of integers, got {v!r}")
    return list(vals)


def _opt_float(v: Any, what: str) -> Optional[float]:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{what}: expected a number, got {v!r}")
    return float(v)


def _fill(value: Any, values: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda m: _fmt(values[m.group(1)]), value)
    if isinstance(value, list):
        return [_fill(v, values) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, values) for k, v in value.items()}
    return value


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    return str(v)


def _placeholders(value: Any) -> List[str]:
    if isinstance(value, str):
        return _PLACEHOLDER.findall(value)
    if isinstance(value, list):
        return [p for v in value for p in _placeholders(v)]
    if isinstance(value, dict):
        return [p for v in value.values() for p in _placeholders(v)]
    return []


def _matches(pattern: Any, value: Any) -> bool:
    if isinstance(pattern, list):
        return any(_matches(p, value) for p in pattern)
    if isinstance(pattern, str):
        return isinstance(value, str) and fnmatch.fnmatchcase(value, pattern)
    return pattern == value


def expand_block(block: Mapping[str, Any], cfg: SweepConfig, index: int = 0) -> List[RunSpec]:
    """The runs of one block, in expansion order (axes in _AXIS_ORDER first, then file order, seeds last)."""
    b = dict(block)
    name = str(b.get("name", f"grid{index}"))
    where = f"grid block '{name}'"
    runner = str(b.get("runner", cfg.runner))
    if "seed" in b and "seeds" in b:
        raise ValueError(f"{where}: give 'seeds' or 'seed', not both")
    seeds = _int_list(b.get("seeds", b.get("seed", cfg.seeds)), f"{where}: seeds")
    target = _opt_float(b.get("target_accuracy", cfg.target_accuracy), f"{where}: target_accuracy")
    base = b.get("base") or {}
    params = b.get("params") or {}
    exclude = b.get("exclude") or []
    if not isinstance(base, Mapping):
        raise ValueError(f"{where}: 'base' must be a table of fixed run parameters")
    if not isinstance(params, Mapping):
        raise ValueError(f"{where}: 'params' must be a table NAME = [values] of compression parameters")
    if isinstance(exclude, Mapping):
        exclude = [exclude]
    if not isinstance(exclude, list) or not all(isinstance(e, Mapping) and e for e in exclude):
        raise ValueError(f"{where}: 'exclude' must be a list of non-empty tables of patterns")
    params = {k: (v if isinstance(v, list) else [v]) for k, v in params.items()}
    for k, v in params.items():
        if not v:
            raise ValueError(f"{where}: compression parameter '{k}' has no values")

    axes: Dict[str, List[Any]] = {}
    for k, v in b.items():
        if k in _BLOCK_KEYS:
            continue
        vals = v if isinstance(v, list) else [v]
        if not vals:
            raise ValueError(f"{where}: axis '{k}' has no values")
        axes[k] = vals
    for k in list(base):
        if k in axes:
            raise ValueError(f"{where}: '{k}' is both in 'base' and an axis")
        if k == "seed":
            raise ValueError(f"{where}: set seeds with 'seeds', not base.seed")
    if "seed" in axes:
        raise ValueError(f"{where}: use 'seeds' for the seed axis")
    order = [k for k in _AXIS_ORDER if k in axes] + [k for k in axes if k not in _AXIS_ORDER]

    used = set(_placeholders(dict(base)))
    for k in order:
        used.update(_placeholders(axes[k]))
    missing = used - set(params)
    if missing:
        raise ValueError(f"{where}: placeholders {sorted('{' + m + '}' for m in missing)} have no values in "
                         f"'params' (have: {sorted(params)})")
    unused = set(params) - used
    if unused:
        raise ValueError(f"{where}: compression parameters {sorted(unused)} appear in no {{placeholder}}")

    runs: List[RunSpec] = []
    for combo in itertools.product(*(axes[k] for k in order)):
        point = dict(zip(order, combo))
        names = sorted(set(_placeholders(list(point.values()))) | set(_placeholders(dict(base))))
        for vals in itertools.product(*(params[n] for n in names)):
            pv = dict(zip(names, vals))
            filled = {k: _fill(v, pv) for k, v in point.items()}
            run_params = {**_fill(copy.deepcopy(dict(base)), pv), **filled}
            if any(all(k in run_params and _matches(p, run_params[k]) for k, p in ex.items()) for ex in exclude):
                continue
            for s in seeds:
                runs.append(RunSpec(runner, {**run_params, "seed": s}, name, target, dict(pv)))
    return runs


def block_variants(block: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The block itself plus one block per entry of its ``also`` list: the parent with the entry's keys replacing
    its own (``base`` and ``params`` are merged, the entry winning). A union of sub-grids that share a base:

        [[grid]]                     # algorithms x compressors ...
        algorithm = ["fedavg", "scaffold"]
        compressor = ["identity", "topk:ratio=0.1"]
        [[grid.also]]                # ... plus FedAvg with EF21, same base, same name
        algorithm = "fedavg"
        feedback = "ef21"
    """
    b = dict(block)
    also = b.pop("also", None) or []
    if isinstance(also, Mapping):
        also = [also]
    if not isinstance(also, list) or not all(isinstance(a, Mapping) for a in also):
        raise ValueError(f"grid block '{b.get('name', '?')}': 'also' must be a list of tables ([[grid.also]])")
    out = [b]
    for a in also:
        if "also" in a or "name" in a:
            raise ValueError(f"grid block '{b.get('name', '?')}': an 'also' entry cannot set 'also' or 'name'")
        v = {**b, **{k: x for k, x in a.items() if k not in ("base", "params")}}
        v["base"] = {**(b.get("base") or {}), **(a.get("base") or {})}
        v["params"] = {**(b.get("params") or {}), **(a.get("params") or {})}
        if "exclude" not in a:
            v.pop("exclude", None)
        for k in list(v["base"]):  # a key the entry makes an axis leaves the merged base
            if k in a and k != "base":
                v["base"].pop(k)
        used = set(_placeholders({k: x for k, x in v.items() if k not in _BLOCK_KEYS or k == "base"}))
        own = set(a.get("params") or {})
        v["params"] = {k: x for k, x in v["params"].items() if k in used or k in own}  # inherited, unused: dropped
        out.append(v)
    return out


def expand(cfg: SweepConfig, validate: Optional[Callable[[RunSpec], None]] = None
           ) -> Tuple[List[RunSpec], List[Tuple[RunSpec, str]]]:
    """All runs of all blocks, duplicates (same hash) removed, first occurrence kept. With ``validate`` (raises
    ValueError for an invalid run) and ``cfg.skip_invalid``, invalid runs are left out and returned beside the list
    as ``(run, reason)``; with ``skip_invalid = false`` the first invalid run raises."""
    if not cfg.blocks:
        raise ValueError(f"{cfg.source or 'config'}: no grid blocks ([[grid]]) to run")
    runs: List[RunSpec] = []
    skipped: List[Tuple[RunSpec, str]] = []
    seen = set()
    for i, b in enumerate(cfg.blocks):
        for r in [r for v in block_variants(b) for r in expand_block(v, cfg, i)]:
            h = r.hash
            if h in seen:
                continue
            seen.add(h)
            if validate is not None:
                try:
                    validate(r)
                except ValueError as e:
                    skip = bool(cfg.blocks[i].get("skip_invalid", cfg.skip_invalid))
                    if not skip:
                        raise ValueError(f"grid block '{r.block}', run {r.params}: {e}") from None
                    skipped.append((r, str(e)))
                    continue
            runs.append(r)
    return runs, skipped


def parse_shard(text: str) -> Tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n (shards are numbered from 0)."""
    m = re.match(r"^\s*(\d+)\s*/\s*(\d+)\s*$", text or "")
    if not m:
        raise ValueError(f"--shard {text!r}: expected i/n, e.g. 0/4 (shards are numbered 0..n-1)")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text!r}: need n >= 1 and 0 <= i < n (shards are numbered 0..n-1)")
    return i, n


def shard(runs: Sequence[RunSpec], i: int, n: int) -> List[RunSpec]:
    """Shard i of n: the runs sorted by hash, every n-th starting at i. Independent of block and file order, so
    machines that expand the same grid agree; the n shards partition the grid and differ in size by at most one."""
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {i}/{n}: need n >= 1 and 0 <= i < n")
    ordered = sorted(runs, key=lambda r: r.hash)
    return [r for j, r in enumerate(ordered) if j % n == i]


def varying_keys(runs: Iterable[RunSpec]) -> List[str]:
    """Parameter keys whose value differs between runs (or is missing in some), in a stable order."""
    runs = list(runs)
    keys: List[str] = []
    for r in runs:
        for k in r.params:
            if k not in keys:
                keys.append(k)
    out = []
    for k in keys:
        vals = {canonical_json(r.params.get(k)) if k in r.params else "\0missing" for r in runs}
        if len(vals) > 1:
            out.append(k)
    head = [k for k in _AXIS_ORDER if k in out]
    return head + [k for k in out if k not in head]
