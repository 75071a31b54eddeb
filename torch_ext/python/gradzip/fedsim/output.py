"""What a simulation leaves behind: config.json (the resolved config plus versions: rerun with --config), one row
per evaluated round (rounds.csv or rounds.jsonl), summary.json, and two PNG plots (accuracy against rounds and
against cumulative uplink bytes)."""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Dict, List, Optional

from .config import FedSimConfig

COLUMNS = ("round", "train_loss", "test_loss", "test_accuracy", "uplink_bytes", "downlink_bytes", "wall_time_s",
           "compute_time_s")


def versions() -> Dict[str, str]:
    import torch

    from .. import __version__

    return {"gradzip": __version__, "torch": torch.__version__}


def _clean(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


class RunWriter:
    def __init__(self, out_dir: "os.PathLike[str] | str", cfg: FedSimConfig, fmt: str, numel: int):
        self.dir = os.fspath(out_dir)
        os.makedirs(self.dir, exist_ok=True)
        self.cfg, self.fmt, self.numel = cfg, fmt, numel
        self.rows: List[Dict[str, Any]] = []
        with open(os.path.join(self.dir, "config.json"), "w") as f:
            json.dump({"config": cfg.to_dict(), "versions": versions(), "numel": numel}, f, indent=2)
        self.path = os.path.join(self.dir, "rounds." + fmt)
        self._f = open(self.path, "w", newline="")
        if fmt == "csv":
            self._w = csv.DictWriter(self._f, fieldnames=COLUMNS)
            self._w.writeheader()

    def add(self, row: Dict[str, Any]) -> None:
        self.rows.append(row)
        if self.fmt == "csv":
            self._w.writerow(row)
        else:
            self._f.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
        self._f.flush()

    def finish(self, summary: Dict[str, Any], plots: bool) -> None:
        self._f.close()
        with open(os.path.join(self.dir, "summary.json"), "w") as f:
            json.dump({k: _clean(v) if not isinstance(v, dict) else v for k, v in summary.items()}, f, indent=2)
        if plots and self.rows:
            plot_curves({f"{self.cfg.algorithm} {self.cfg.compressor}": self.rows}, self.dir)


def summarize(cfg: FedSimConfig, rows: List[Dict[str, Any]], numel: int, diverged: bool, wall: float, up: int,
              down: int, compute: float) -> Dict[str, Any]:
    accs = [r["test_accuracy"] for r in rows if r["test_accuracy"] == r["test_accuracy"]]
    last = rows[-1] if rows else {}
    rounds = int(last.get("round", 0))
    return {
        "config": cfg.to_dict(),
        "rounds": rounds,
        "final_accuracy": last.get("test_accuracy", float("nan")),
        "best_accuracy": max(accs) if accs else float("nan"),
        "final_train_loss": last.get("train_loss", float("nan")),
        "final_test_loss": last.get("test_loss", float("nan")),
        "uplink_bytes": up,
        "downlink_bytes": down,
        "wall_time_s": wall,
        "compute_time_s": compute,
        "numel": numel,
        "uplink_bytes_per_client_round": up / max(rounds * cfg.clients_per_round, 1),
        "diverged": diverged,
    }


def summary_line(s: Dict[str, Any]) -> str:
    c = s["config"]
    acc = s["final_accuracy"]
    acc_s = f"{100 * acc:.2f}%" if isinstance(acc, float) and acc == acc else "n/a"
    best = s["best_accuracy"]
    best_s = f"{100 * best:.2f}%" if isinstance(best, float) and best == best else "n/a"
    return (f"gradzip.fedsim: {c['task']} {c['model']} {c['algorithm']} uplink={c['compressor']} "
            f"feedback={c['feedback']} N={c['num_clients']} S={c['clients_per_round']} K={c['local_steps']}: "
            f"{s['rounds']} rounds, accuracy {acc_s} (best {best_s}), test loss {s['final_test_loss']:.4f}, "
            f"uplink {s['uplink_bytes'] / 1e6:.2f} MB ({s['uplink_bytes_per_client_round']:.0f} B/client/round), "
            f"downlink {s['downlink_bytes'] / 1e6:.2f} MB, {s['wall_time_s']:.1f} s"
            + (" [DIVERGED]" if s["diverged"] else ""))


def plot_curves(runs: Dict[str, List[Dict[str, Any]]], out_dir: str, prefix: str = "") -> List[str]:
    """accuracy_vs_rounds.png and accuracy_vs_uplink.png (test loss when the task has no accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "test_accuracy"
    if all(all(r["test_accuracy"] != r["test_accuracy"] for r in rows) for rows in runs.values()):
        metric = "test_loss"
    paths = []
    for xkey, xlabel, name in (("round", "round", "accuracy_vs_rounds.png"),
                               ("uplink_bytes", "cumulative uplink bytes (all clients)", "accuracy_vs_uplink.png")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, rows in runs.items():
            xs = [r[xkey] for r in rows]
            ys = [r[metric] for r in rows]
            ax.plot(xs, ys, label=label, linewidth=1.4)
        if xkey == "uplink_bytes":
            ax.set_xscale("log")
        if metric == "test_loss":
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy" if metric == "test_accuracy" else "test loss")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, prefix + name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def read_rows(path: str) -> List[Dict[str, Any]]:
    """Rows of a rounds.csv / rounds.jsonl file as dicts of numbers."""
    rows: List[Dict[str, Any]] = []
    if path.endswith(".jsonl"):
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                rows.append({k: (float("nan") if v is None else v) for k, v in r.items()})
        return rows
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append({k: (int(v) if k in ("round", "uplink_bytes", "downlink_bytes") else float(v))
                         for k, v in r.items()})
    return rows


def load_summary(out_dir: str) -> Optional[Dict[str, Any]]:
    p = os.path.join(out_dir, "summary.json")
    if not os.path.isfile(p):
        return None
    with open(p) as f:
        return json.load(f)
