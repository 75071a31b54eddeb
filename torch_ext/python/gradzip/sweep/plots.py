"""Plots (matplotlib, Agg canvas, PNG) and the markdown report of a sweep.

Figures, one panel per grid block (blocks usually differ in task, so their accuracies are not comparable):

* ``accuracy_vs_uplink.png``: final accuracy against total uplink bytes, one point per run (colour = method,
  marker = compressor), the Pareto front (fewest bytes for at least that accuracy) drawn as a step line and ringed;
* ``accuracy_vs_time.png``: the same against the bandwidth model's estimated wall time, one column per link;
* ``convergence.png``: accuracy per round and against cumulative uplink bytes, mean over seeds per configuration;
* ``rounds_to_target.png``: heatmap of rounds to the target accuracy, method x compressor (mean over the seeds that
  reached it, best configuration per cell; grey "-" = never reached, white = not in the grid).

Figures are drawn on ``matplotlib.figure.Figure`` with an Agg canvas, never through pyplot, so importing this
module changes no global matplotlib state. Their pixel size is fixed (``PANEL_IN`` x ``DPI`` per panel).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .bandwidth import Link
from .tasks import Curve

DPI = 100
PANEL_IN = (5.6, 4.2)      # width, height of one panel in inches
HEAT_PANEL_IN = (6.4, 4.2)
MARKERS = "osD^vP*Xh<>p"
FIGURES = ("accuracy_vs_uplink.png", "accuracy_vs_time.png", "convergence.png", "rounds_to_target.png")


@dataclass
class PlotInfo:
    """A written figure: its path, panel grid (rows, cols) and pixel size (height, width)."""

    path: str
    grid: Tuple[int, int]
    size_px: Tuple[int, int]


def pareto_front(cost: Sequence[float], value: Sequence[float]) -> List[int]:
    """Indices of the points no other point dominates (another point with cost <= and value >=, one of them
    strictly), sorted by cost then by value descending. Points with a NaN coordinate take no part. Equal points are
    all kept."""
    c = np.asarray(cost, dtype=np.float64)
    v = np.asarray(value, dtype=np.float64)
    if c.shape != v.shape or c.ndim != 1:
        raise ValueError(f"pareto_front: cost and value must be 1-D and of equal length ({c.shape} vs {v.shape})")
    ok = np.flatnonzero(~(np.isnan(c) | np.isnan(v)))
    if ok.size == 0:
        return []
    cc, vv = c[ok], v[ok]
    le = cc[None, :] <= cc[:, None]          # [i, j]: j costs no more than i
    ge = vv[None, :] >= vv[:, None]          # j is worth no less than i
    strict = (cc[None, :] < cc[:, None]) | (vv[None, :] > vv[:, None])
    dominated = (le & ge & strict).any(axis=1)
    front = ok[~dominated]
    return sorted(front.tolist(), key=lambda i: (c[i], -v[i]))


# ---------------------------------------------------------------------------------------------- aggregation ---

def config_key(row: Mapping[str, Any], keys: Sequence[str]) -> Tuple:
    return tuple([row["block"], row["method"], row["compressor_label"]] + [str(row.get(k)) for k in keys])


def aggregate(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], links: Mapping[str, Link]
              ) -> List[Dict[str, Any]]:
    """One entry per configuration (block, method, compressor and the other varying ``keys``; seeds pooled):
    counts, mean/std of final accuracy, means of the other metrics over the finished seeds, rounds to target as the
    mean over the seeds that reached it plus how many did."""
    groups: Dict[Tuple, List[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(config_key(r, keys), []).append(r)
    out = []
    for key, rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]
        fin = [r["final_accuracy"] for r in ok if _finite(r["final_accuracy"])]
        reach = [r["rounds_to_target"] for r in ok if _finite(r["rounds_to_target"])]
        a: Dict[str, Any] = {
            "block": key[0], "method": key[1], "compressor_label": key[2],
            **{k: rs[0].get(k) for k in keys}, "hashes": [r["hash"] for r in ok],
            "runs": len(rs), "ok": len(ok), "failed": sum(r["status"] == "failed" for r in rs),
            "final_accuracy": _mean(fin), "final_accuracy_std": statistics.stdev(fin) if len(fin) > 1 else 0.0,
            "best_accuracy": _mean([r["best_accuracy"] for r in ok]),
            "rounds": _mean([r["rounds"] for r in ok]),
            "rounds_to_target": _mean(reach), "reached": len(reach),
            "target_accuracy": rs[0].get("target_accuracy"),
            "uplink_bytes": _mean([r["uplink_bytes"] for r in ok]),
            "downlink_bytes": _mean([r["downlink_bytes"] for r in ok]),
            "wall_time_s": _mean([r["wall_time_s"] for r in ok]),
        }
        for name in links:
            a[f"est_time_s@{name}"] = _mean([r[f"est_time_s@{name}"] for r in ok])
        out.append(a)
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _mean(xs: Iterable[Any]) -> float:
    v = [float(x) for x in xs if _finite(x)]
    return sum(v) / len(v) if v else math.nan


def _blocks(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    out: List[str] = []
    for r in rows:
        if r["block"] not in out:
            out.append(r["block"])
    return out


# -------------------------------------------------------------------------------------------------- figures ---

def _figure(nrows: int, ncols: int, panel: Tuple[float, float] = PANEL_IN):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    size = (panel[0] * ncols, panel[1] * nrows)
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes, (int(round(size[1] * DPI)), int(round(size[0] * DPI)))


def _save(fig, path: str, grid: Tuple[int, int], size_px: Tuple[int, int]) -> PlotInfo:
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=DPI, format="png")
    os.replace(tmp, path)
    return PlotInfo(path, grid, size_px)


def _styles(rows: Sequence[Mapping[str, Any]]) -> Tuple[Dict[str, Any], Dict[str, str]]:
    import matplotlib

    methods, comps = [], []
    for r in rows:
        if r["method"] not in methods:
            methods.append(r["method"])
        if r["compressor_label"] not in comps:
            comps.append(r["compressor_label"])
    cmap = matplotlib.colormaps["tab10" if len(methods) <= 10 else "tab20"]
    colors = {m: cmap(i % cmap.N) for i, m in enumerate(methods)}
    markers = {c: MARKERS[i % len(MARKERS)] for i, c in enumerate(comps)}
    return colors, markers


def _xscale(ax, xs: Sequence[float]) -> None:
    """Log scale when the positive values span more than a factor of 20 (bytes across compressors), else linear
    (times on a fast link differ by fractions of a percent, where log ticks are unreadable)."""
    v = [x for x in xs if _finite(x) and x > 0]
    if v and max(v) > 20 * min(v):
        ax.set_xscale("log")
    else:
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4), useOffset=False)


def _scatter_panel(ax, rows: Sequence[Mapping[str, Any]], xkey: str, colors, markers, xlabel: str,
                   title: str) -> None:
    pts = [r for r in rows if r["status"] == "ok" and _finite(r.get(xkey)) and _finite(r.get("final_accuracy"))
           and r.get(xkey) > 0]
    if not pts:
        ax.text(0.5, 0.5, "no finished runs with an accuracy", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=10)
        return
    seen = set()
    for r in pts:
        lab = f"{r['method']} | {r['compressor_label']}"
        ax.scatter(r[xkey], r["final_accuracy"], color=colors[r["method"]], marker=markers[r["compressor_label"]],
                   s=36, alpha=0.85, label=None if lab in seen else lab, zorder=3)
        seen.add(lab)
    front = pareto_front([r[xkey] for r in pts], [r["final_accuracy"] for r in pts])
    fx = [pts[i][xkey] for i in front]
    fy = [pts[i]["final_accuracy"] for i in front]
    ax.step(fx, fy, where="post", color="black", lw=1.2, ls="--", zorder=2, label="Pareto front")
    ax.scatter(fx, fy, s=140, facecolors="none", edgecolors="black", lw=1.2, zorder=4)
    _xscale(ax, [r[xkey] for r in pts])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("final test accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6.5, loc="lower right", framealpha=0.8)


def plot_accuracy_vs_uplink(rows: Sequence[Mapping[str, Any]], path: str) -> PlotInfo:
    blocks = _blocks(rows)
    ncols = min(3, max(1, len(blocks)))
    nrows = max(1, math.ceil(len(blocks) / ncols))
    fig, axes, px = _figure(nrows, ncols)
    colors, markers = _styles(rows)
    for i, ax in enumerate(axes.flat):
        if i >= len(blocks):
            ax.set_axis_off()
            continue
        b = blocks[i]
        _scatter_panel(ax, [r for r in rows if r["block"] == b], "uplink_bytes", colors, markers,
                       "uplink bytes (all nodes, whole run)", f"{b}: accuracy vs uplink bytes")
    return _save(fig, path, (nrows, ncols), px)


def plot_accuracy_vs_time(rows: Sequence[Mapping[str, Any]], links: Mapping[str, Link], path: str) -> PlotInfo:
    blocks = _blocks(rows)
    names = list(links)
    fig, axes, px = _figure(max(1, len(blocks)), max(1, len(names)))
    colors, markers = _styles(rows)
    for i, b in enumerate(blocks or [""]):
        for j, name in enumerate(names or [""]):
            ax = axes[i, j]
            if not b or not name:
                ax.set_axis_off()
                continue
            _scatter_panel(ax, [r for r in rows if r["block"] == b], f"est_time_s@{name}", colors, markers,
                           "estimated wall time (s)", f"{b} @ {links[name].describe()}")
    return _save(fig, path, axes.shape, px)


def _mean_curves(rows: Sequence[Mapping[str, Any]], curves: Mapping[str, Curve], keys: Sequence[str],
                 label_keys: Sequence[str] = ()) -> List[Tuple[str, str, str, np.ndarray, np.ndarray, np.ndarray]]:
    """(method, compressor, label, rounds, mean accuracy, mean uplink bytes) per configuration, over the seeds'
    common rounds; ``label_keys`` name the configuration in the legend."""
    groups: Dict[Tuple, List[Curve]] = {}
    meta: Dict[Tuple, Tuple[str, str, str]] = {}
    for r in rows:
        if r["status"] != "ok" or r["hash"] not in curves:
            continue
        k = config_key(r, keys)
        groups.setdefault(k, []).append(curves[r["hash"]])
        extra = ", ".join(f"{kk}={r.get(kk)}" for kk in label_keys)
        meta[k] = (r["method"], r["compressor_label"],
                   f"{r['method']} | {r['compressor_label']}" + (f" ({extra})" if extra else ""))
    out = []
    for k, cs in groups.items():
        common = sorted(set.intersection(*[{c["round"] for c in cv} for cv in cs]))
        if not common:
            continue
        acc = np.array([[next(c["accuracy"] for c in cv if c["round"] == rd) for rd in common] for cv in cs])
        up = np.array([[next(c["uplink_bytes"] for c in cv if c["round"] == rd) for rd in common] for cv in cs])
        with np.errstate(all="ignore"):
            out.append((*meta[k], np.array(common), np.nanmean(acc, axis=0) if np.isfinite(acc).any()
                        else np.full(len(common), np.nan), np.nanmean(up, axis=0)))
    return out


def plot_convergence(rows: Sequence[Mapping[str, Any]], curves: Mapping[str, Curve],
                     keys: Mapping[str, Sequence[str]], path: str) -> PlotInfo:
    """``keys[block]``: the parameters (besides method and compressor) that tell a block's configurations apart."""
    blocks = _blocks(rows)
    all_keys = list(dict.fromkeys(k for ks in keys.values() for k in ks))
    fig, axes, px = _figure(max(1, len(blocks)), 2)
    colors, markers = _styles(rows)
    for i, b in enumerate(blocks or [""]):
        ax_r, ax_b = axes[i, 0], axes[i, 1]
        brows = [r for r in rows if r["block"] == b]
        series = _mean_curves(brows, curves, all_keys, keys.get(b, ()))
        if not series:
            for ax in (ax_r, ax_b):
                ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
            continue
        target = next((r.get("target_accuracy") for r in brows if _finite(r.get("target_accuracy"))), None)
        for method, comp, label, rounds, acc, up in series:
            kw = dict(color=colors[method], marker=markers[comp], markevery=max(1, len(rounds) // 8), ms=4,
                      lw=1.2, label=label)
            ax_r.plot(rounds, acc, **kw)
            pos = up > 0
            ax_b.plot(up[pos], acc[pos], **kw)
        for ax in (ax_r, ax_b):
            if target is not None:
                ax.axhline(target, color="gray", lw=0.8, ls=":")
            ax.set_ylabel("test accuracy (mean over seeds)")
            ax.grid(True, alpha=0.3)
        ax_r.set_xlabel("round" if not any(r["runner"] == "ddp" for r in brows) else "round / epoch")
        ax_b.set_xlabel("cumulative uplink bytes (all nodes)")
        _xscale(ax_b, [float(x) for _, _, _, _, _, up in series for x in up if x > 0])
        ax_r.set_title(f"{b}: convergence", fontsize=10)
        ax_b.set_title(f"{b}: accuracy vs bytes sent so far", fontsize=10)
        ax_r.legend(fontsize=6, loc="lower right", framealpha=0.8)
    return _save(fig, path, axes.shape, px)


def heatmap_matrix(agg: Sequence[Mapping[str, Any]], block: str
                   ) -> Tuple[List[str], List[str], np.ndarray, List[List[str]]]:
    """(methods, compressors, values, cell texts) of one block: the best (fewest rounds) configuration per cell;
    NaN and "-" where no configuration reached the target; "n (k/m)" when only k of its m seeds did."""
    rows = [a for a in agg if a["block"] == block]
    methods = list(dict.fromkeys(a["method"] for a in rows))
    comps = list(dict.fromkeys(a["compressor_label"] for a in rows))
    val = np.full((len(methods), len(comps)), np.nan)
    text = [["" for _ in comps] for _ in methods]
    for a in rows:
        i, j = methods.index(a["method"]), comps.index(a["compressor_label"])
        if a["ok"] == 0:
            text[i][j] = text[i][j] or "n/a"
            continue
        v = a["rounds_to_target"]
        if _finite(v) and not (val[i, j] <= v):
            val[i, j] = v
            text[i][j] = f"{v:.3g}" + (f" ({a['reached']}/{a['ok']})" if a["reached"] < a["ok"] else "")
        elif not _finite(val[i, j]):
            text[i][j] = "-"
    return methods, comps, val, text


def plot_rounds_to_target(agg: Sequence[Mapping[str, Any]], path: str) -> PlotInfo:
    blocks = list(dict.fromkeys(a["block"] for a in agg))
    ncols = min(2, max(1, len(blocks)))
    nrows = max(1, math.ceil(len(blocks) / ncols))
    fig, axes, px = _figure(nrows, ncols, HEAT_PANEL_IN)
    import matplotlib

    cmap = matplotlib.colormaps["viridis_r"].with_extremes(bad="#c8c8c8")
    for n, ax in enumerate(axes.flat):
        if n >= len(blocks):
            ax.set_axis_off()
            continue
        b = blocks[n]
        methods, comps, val, text = heatmap_matrix(agg, b)
        target = next((a["target_accuracy"] for a in agg if a["block"] == b and _finite(a["target_accuracy"])),
                      None)
        im = ax.imshow(np.ma.masked_invalid(val), cmap=cmap, aspect="auto")
        absent = np.array([[t == "" for t in row] for row in text], dtype=bool).reshape(val.shape)
        if absent.any():  # combinations not in the grid: white, unlike grey "never reached"
            overlay = np.zeros(val.shape + (4,))
            overlay[absent] = (1.0, 1.0, 1.0, 1.0)
            ax.imshow(overlay, aspect="auto")
        ax.set_xticks(range(len(comps)), comps, rotation=30, ha="right", fontsize=7)
        ax.set_yticks(range(len(methods)), methods, fontsize=8)
        finite = val[np.isfinite(val)]
        mid = (finite.min() + finite.max()) / 2 if finite.size else 0
        for i in range(len(methods)):
            for j in range(len(comps)):
                dark = np.isfinite(val[i, j]) and val[i, j] > mid  # viridis_r: many rounds are dark
                ax.text(j, i, text[i][j], ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
        t = f"{target:g}" if target is not None else "none set"
        ax.set_title(f"{b}: rounds to accuracy {t}", fontsize=10)
        if finite.size:
            fig.colorbar(im, ax=ax, shrink=0.8, label="rounds")
    return _save(fig, path, axes.shape, px)


def make_plots(rows: Sequence[Mapping[str, Any]], curves: Mapping[str, Curve], agg: Sequence[Mapping[str, Any]],
               keys: Mapping[str, Sequence[str]], links: Mapping[str, Link], out: str) -> Dict[str, PlotInfo]:
    """All four figures into ``out``; ``keys[block]`` as for plot_convergence."""
    return {
        "accuracy_vs_uplink": plot_accuracy_vs_uplink(rows, os.path.join(out, FIGURES[0])),
        "accuracy_vs_time": plot_accuracy_vs_time(rows, links, os.path.join(out, FIGURES[1])),
        "convergence": plot_convergence(rows, curves, keys, os.path.join(out, FIGURES[2])),
        "rounds_to_target": plot_rounds_to_target(agg, os.path.join(out, FIGURES[3])),
    }


# --------------------------------------------------------------------------------------------------- report ---

def _fmt_bytes(b: float) -> str:
    if not _finite(b):
        return "–"
    for unit, f in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= f:
            return f"{b / f:.3g} {unit}"
    return f"{b:.0f} B"


def _fmt_time(s: float) -> str:
    if not _finite(s):
        return "–"
    if s >= 3600:
        return f"{s / 3600:.3g} h"
    if s >= 60:
        return f"{s / 60:.3g} min"
    if s >= 1:
        return f"{s:.3g} s"
    return f"{s * 1e3:.3g} ms"


def _md(s: Any) -> str:
    return str(s).replace("|", "\\|")


def write_report(path: str, *, name: str, source: Optional[str], rows: Sequence[Mapping[str, Any]],
                 agg: Sequence[Mapping[str, Any]], keys: Mapping[str, Sequence[str]], links: Mapping[str, Link],
                 plots: Mapping[str, PlotInfo], tables: Sequence[str],
                 skipped: Sequence[Tuple[Any, str]] = (), shard: Optional[Tuple[int, int]] = None) -> str:
    """``report.md``: what ran, the links, the figures, and one table row per configuration (seeds pooled);
    ``keys[block]`` are the parameters shown as columns of that block's table."""
    d = os.path.dirname(path)
    n_ok = sum(r["status"] == "ok" for r in rows)
    n_failed = sum(r["status"] == "failed" for r in rows)
    n_pending = sum(r["status"] == "pending" for r in rows)
    L: List[str] = [f"# Sweep `{name}`", ""]
    L.append(f"{len(rows)} runs in the grid: {n_ok} finished, {n_failed} failed, {n_pending} pending"
             + (f" (this machine ran shard {shard[0]}/{shard[1]})" if shard else "") + ". "
             + (f"Config: `{source}`. " if source else "")
             + f"Written {time.strftime('%Y-%m-%d %H:%M:%S')}.")
    L.append("")
    L.append("Per-run table: " + ", ".join(f"[`{os.path.basename(t)}`]({os.path.basename(t)})" for t in tables)
             + " (one row per run: final and best accuracy, bytes up/down, rounds to the target, wall time, "
               "estimated time per link). Each run's files are in `runs/<hash>/`.")
    L.append("")
    L.append("## Bandwidth model")
    L.append("")
    L.append("Estimated wall time of one node = compute + sync points × latency + 8 × uplink bytes / uplink rate + "
             "8 × downlink bytes / downlink rate (no overlap; fedsim: the sampled clients work in parallel, two "
             "sync points per round; DDP: one per step). Links:")
    L.append("")
    for link in links.values():
        L.append(f"- {link.describe()}")
    L.append("")
    L.append("## Figures")
    L.append("")
    titles = {"accuracy_vs_uplink": "Final accuracy against uplink bytes (Pareto front dashed and ringed)",
              "accuracy_vs_time": "Final accuracy against estimated wall time per link",
              "convergence": "Convergence (mean over seeds)",
              "rounds_to_target": "Rounds to the target accuracy"}
    for k, info in plots.items():
        rel = os.path.relpath(info.path, d)
        L += [f"### {titles.get(k, k)}", "", f"![{k}]({rel})", ""]
    L.append("## Results (mean over seeds)")
    L.append("")
    all_keys = keys
    for b in dict.fromkeys(a["block"] for a in agg):
        brows = [a for a in agg if a["block"] == b]
        keys = list(all_keys.get(b, ()))
        front = set(pareto_front([a["uplink_bytes"] for a in brows], [a["final_accuracy"] for a in brows]))
        target = next((a["target_accuracy"] for a in brows if _finite(a["target_accuracy"])), None)
        L.append(f"### {b}")
        L.append("")
        head = (["method", "compressor"] + list(keys)
                + ["seeds ok", "final acc.", "best acc.", f"rounds to {target:g}" if target is not None
                   else "rounds to target", "uplink", "downlink", "wall time"]
                + [f"est. time @{n}" for n in links] + ["Pareto"])
        L.append("| " + " | ".join(head) + " |")
        L.append("|" + "|".join(["---"] * (2 + len(keys)) + ["---:"] * (len(head) - 3 - len(keys)) + [":-:"]) + "|")
        for i, a in enumerate(brows):
            acc = (f"{100 * a['final_accuracy']:.2f}%" + (f" ± {100 * a['final_accuracy_std']:.2f}"
                                                         if a["ok"] > 1 else "")
                   if _finite(a["final_accuracy"]) else "–")
            best = f"{100 * a['best_accuracy']:.2f}%" if _finite(a["best_accuracy"]) else "–"
            rtt = (f"{a['rounds_to_target']:.3g}" + (f" ({a['reached']}/{a['ok']})" if a["reached"] < a["ok"] else "")
                   if _finite(a["rounds_to_target"]) else "–")
            cells = ([_md(a["method"]), f"`{_md(a['compressor_label'])}`"] + [_md(a.get(k)) for k in keys]
                     + [f"{a['ok']}/{a['runs']}", acc, best, rtt, _fmt_bytes(a["uplink_bytes"]),
                        _fmt_bytes(a["downlink_bytes"]), _fmt_time(a["wall_time_s"])]
                     + [_fmt_time(a[f"est_time_s@{n}"]) for n in links] + ["★" if i in front else ""])
            L.append("| " + " | ".join(cells) + " |")
        L.append("")
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        L += ["## Failed runs", ""]
        for r in failed:
            L.append(f"- `{r['hash']}` {r['method']} | `{r['compressor_label']}` seed {r['seed']}: "
                     f"{_md(r['error'])[:300]} (`runs/{r['hash']}/error.txt`)")
        L.append("")
    if skipped:
        L += [f"## Skipped combinations ({len(skipped)})", "",
              "Left out of the grid because the runner refused their configuration:", ""]
        for spec, why in list(skipped)[:50]:
            p = {k: v for k, v in spec.params.items() if k in ("algorithm", "feedback", "compressor", "downlink")}
            L.append(f"- {spec.block}: {_md(p)}: {_md(why.splitlines()[0])[:200]}")
        if len(skipped) > 50:
            L.append(f"- ... and {len(skipped) - 50} more")
        L.append("")
    with open(path, "w") as f:
        f.write("\n".join(L))
    return path
