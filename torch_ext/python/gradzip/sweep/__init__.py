"""Bandwidth-versus-accuracy sweeps: grids of training runs (federated simulation or the DDP example) over
algorithms, compressors, compression parameters and seeds, run in parallel and resumably, summarised as a table,
PNG plots (accuracy vs bytes with the Pareto front, accuracy vs estimated time per link, convergence curves,
rounds-to-target heatmap) and a markdown report. Command line: ``python -m gradzip.sweep --help``.

Modules: ``grid`` (config files, expansion, run hashes, sharding), ``tasks`` (runners: fedsim, ddp, pluggable),
``runner`` (worker pool, resume, results table), ``bandwidth`` (link model), ``plots`` (figures, report),
``cli`` (``sweep()`` and ``main()``).
"""

from .bandwidth import DEFAULT_LINKS, Link, parse_latency, parse_links, parse_rate
from .cli import SweepResult, main, sweep
from .grid import (RunSpec, SweepConfig, expand, expand_block, load_config, parse_config, parse_shard, run_hash,
                   shard)
from .plots import pareto_front
from .runner import collect, execute, is_finished, run_sweep, write_table
from .tasks import CURVE_COLUMNS, TASKS, Task, get_task

__all__ = [
    "CURVE_COLUMNS",
    "DEFAULT_LINKS",
    "Link",
    "RunSpec",
    "SweepConfig",
    "SweepResult",
    "TASKS",
    "Task",
    "collect",
    "execute",
    "expand",
    "expand_block",
    "get_task",
    "is_finished",
    "load_config",
    "main",
    "pareto_front",
    "parse_config",
    "parse_latency",
    "parse_links",
    "parse_rate",
    "parse_shard",
    "run_hash",
    "run_sweep",
    "shard",
    "sweep",
    "write_table",
]
