"""gradzip.sweep: grid expansion, run hashes and resume, sharding, the bandwidth model, the Pareto front, and small
end-to-end sweeps (a fake task in spawned workers; the real fedsim when it is installed) whose table and PNGs are
checked by content."""

import csv
import hashlib
import json
import math
import os
import textwrap

import numpy as np
import pytest

from gradzip import sweep as S
from gradzip.sweep import grid as G
from gradzip.sweep import plots as P

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


# ------------------------------------------------------------------------------------------------ fake task ---

def fake_run(params, out_dir):
    """A deterministic stand-in for fedsim: accuracy 0.9 * (1 - exp(-rate * round)), bytes per round from the
    compressor's ratio. ``fail = true`` raises; ``crash_once`` fails until a marker file exists."""
    if params.get("fail"):
        raise RuntimeError("asked to fail")
    marker = params.get("crash_once")
    if marker and not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt fails")
    rate = {"fedavg": 0.3, "scaffold": 0.6}.get(params.get("algorithm", "fedavg"), 0.1)
    comp = params.get("compressor", "identity")
    ratio = float(comp.split("ratio=")[1]) if "ratio=" in comp else 1.0
    rate *= 0.5 + 0.5 * ratio
    per_round = 4000.0 * ratio + 32.0
    with open(os.path.join(out_dir, "fake.txt"), "w") as f:
        f.write(json.dumps(params))
    curve = []
    for r in range(1, int(params.get("rounds", 5)) + 1):
        curve.append(dict(round=r, accuracy=0.9 * (1 - math.exp(-rate * r)) + 0.001 * params.get("seed", 0),
                          train_loss=math.exp(-rate * r), uplink_bytes=per_round * r * 4,
                          downlink_bytes=4000.0 * r * 4, wall_time_s=0.01 * r, compute_time_s=0.01 * r,
                          node_uplink_bytes=per_round * r, node_downlink_bytes=4000.0 * r, node_compute_s=0.01 * r,
                          sync_points=2.0 * r))
    return {"numel": 1000, "diverged": False}, curve


def fake_validate(params):
    if params.get("algorithm") == "scallion" and "topk" in params.get("compressor", ""):
        raise ValueError("scallion needs an unbiased compressor")


FAKE = S.Task(fake_run, fake_validate)
TASKS = {"fake": FAKE}


def fake_config(**over):
    block = {"name": "toy", "runner": "fake", "algorithm": ["fedavg", "scaffold"],
             "compressor": ["identity", "topk:ratio={r}"], "params": {"r": [0.1, 0.5]}, "seeds": [0, 1],
             "target_accuracy": 0.5, "base": {"rounds": 6}}
    block.update(over)
    return G.parse_config({"sweep": {"name": "t"}, "grid": [block]})


# ---------------------------------------------------------------------------------------------- bandwidth ---

def test_rates_and_latencies_parse():
    assert S.parse_rate("10 Mbit/s") == 10e6
    assert S.parse_rate("100Gbit/s") == 100e9
    assert S.parse_rate("100 Gbps") == 100e9
    assert S.parse_rate("12.5 MB/s") == 100e6  # bytes
    assert S.parse_rate("1e9") == 1e9 and S.parse_rate(5e6) == 5e6
    assert S.parse_latency("50 ms") == pytest.approx(0.05)
    assert S.parse_latency("10us") == pytest.approx(1e-5)
    assert S.parse_latency(0.2) == 0.2
    for bad in ("fast", "10 Mbit/h", "-1 Mbit/s", "0", True):
        with pytest.raises(ValueError):
            S.parse_rate(bad)
    for bad in ("soon", "-5 ms", "1 h"):
        with pytest.raises(ValueError):
            S.parse_latency(bad)


def test_link_arithmetic():
    link = S.Link("l", 8e6, 16e6, 0.05)   # 1 MB/s up, 2 MB/s down
    # 2 s compute + 10 latencies (0.5 s) + 1 MB up (1 s) + 4 MB down (2 s)
    assert link.time(2.0, 1e6, 4e6, 10) == pytest.approx(5.5)
    assert link.comm_time(0, 0, 0) == 0
    assert S.Link.parse("x", "10Mbit/s/50Mbit/s@50ms") == S.Link("x", 10e6, 50e6, 0.05)
    assert S.Link.parse("x", {"uplink": "100 Gbit/s", "latency": "10 us"}) == S.Link("x", 100e9, 100e9, 1e-5)
    with pytest.raises(ValueError, match="unknown keys"):
        S.Link.parse("x", {"uplink": "1 Mbit/s", "speed": 3})
    with pytest.raises(ValueError, match="uplink"):
        S.Link.parse("x", {"latency": "1 ms"})
    with pytest.raises(ValueError):
        S.Link("bad name", 1e6, 1e6)
    # a 10 Mbit/s device link makes bytes matter; a 100 Gbit/s cluster makes them nearly free
    dev, clu = S.DEFAULT_LINKS["device"], S.DEFAULT_LINKS["cluster"]
    assert dev.comm_time(1.25e6, 0, 0) == pytest.approx(1.0)
    assert clu.comm_time(1.25e6, 0, 0) == pytest.approx(1e-4)


# ---------------------------------------------------------------------------------------------------- grid ---

def test_grid_expansion_counts_and_values():
    runs, skipped = G.expand(fake_config())
    assert not skipped
    # 2 algorithms x (identity + topk x 2 ratios) x 2 seeds
    assert len(runs) == 2 * 3 * 2
    combos = {(r.params["algorithm"], r.params["compressor"], r.params["seed"]) for r in runs}
    assert ("scaffold", "topk:ratio=0.5", 1) in combos and ("fedavg", "identity", 0) in combos
    assert all(r.params["rounds"] == 6 and r.block == "toy" and r.target_accuracy == 0.5 for r in runs)
    topk = [r for r in runs if r.params["compressor"].startswith("topk")]
    assert sorted({r.values["r"] for r in topk}) == [0.1, 0.5]
    assert all(r.values == {} for r in runs if r.params["compressor"] == "identity")
    # a placeholder in two axes expands jointly; a scalar key is a fixed parameter
    cfg = fake_config(compressor=["topk:ratio={r}"], downlink="topk:ratio={r}", lr=0.1, seeds=[3])
    runs, _ = G.expand(cfg)
    assert len(runs) == 4
    assert all(r.params["downlink"] == r.params["compressor"] and r.params["lr"] == 0.1 for r in runs)


def test_grid_also_variants_share_the_base():
    cfg = fake_config(algorithm=["fedavg", "scaffold"], seeds=[0],
                      also=[{"algorithm": "fedavg", "feedback": "ef21", "compressor": ["topk:ratio={r}"]},
                            {"algorithm": "scallion", "compressor": "qsgd:levels={q}", "params": {"q": [4, 8]},
                             "base": {"rounds": 9}}])
    runs, _ = G.expand(cfg)
    got = sorted((r.params["algorithm"], r.params.get("feedback", "-"), r.params["compressor"], r.params["rounds"])
                 for r in runs)
    assert got == sorted(
        [(a, "-", c, 6) for a in ("fedavg", "scaffold") for c in ("identity", "topk:ratio=0.1", "topk:ratio=0.5")]
        + [("fedavg", "ef21", c, 6) for c in ("topk:ratio=0.1", "topk:ratio=0.5")]
        + [("scallion", "-", f"qsgd:levels={q}", 9) for q in (4, 8)])
    assert all(r.block == "toy" for r in runs)
    with pytest.raises(ValueError, match="also"):
        G.expand(fake_config(also=[{"name": "x"}]))


def test_grid_exclude_validate_and_errors():
    cfg = fake_config(algorithm=["fedavg", "scallion"], exclude=[{"algorithm": "fedavg", "compressor": "topk*"}])
    runs, skipped = G.expand(cfg, lambda r: fake_validate(r.params))
    assert {(r.params["algorithm"], r.params["compressor"]) for r in runs} == {
        ("fedavg", "identity"), ("scallion", "identity")}
    assert len(skipped) == 4 and all("unbiased" in why for _, why in skipped)
    with pytest.raises(ValueError, match="unbiased"):
        G.expand(G.parse_config({"grid": [{**fake_config(algorithm="scallion").blocks[0], "skip_invalid": False}]}),
                 lambda r: fake_validate(r.params))
    with pytest.raises(ValueError, match=r"\{q\}"):
        G.expand(fake_config(compressor=["qsgd:levels={q}"]))
    with pytest.raises(ValueError, match="appear in no"):
        G.expand(fake_config(params={"r": [0.1], "unused": [1]}))
    with pytest.raises(ValueError, match="both in 'base' and an axis"):
        G.expand(fake_config(rounds=[3, 4]))
    with pytest.raises(ValueError, match="seeds"):
        G.expand(fake_config(seeds=["zero"]))
    with pytest.raises(ValueError, match="unknown top-level"):
        G.parse_config({"grids": []})
    with pytest.raises(ValueError, match="no grid blocks"):
        G.expand(G.parse_config({}))


def test_toml_and_yaml_configs_expand_alike(tmp_path):
    (tmp_path / "g.toml").write_text(textwrap.dedent("""
        [sweep]
        name = "cfg"
        seeds = [0, 1]
        target_accuracy = 0.5
        [links.slow]
        uplink = "1 Mbit/s"
        latency = "100 ms"
        [[grid]]
        name = "toy"
        runner = "fake"
        algorithm = ["fedavg", "scaffold"]
        compressor = ["identity", "topk:ratio={r}"]
        params = { r = [0.1, 0.5] }
        [grid.base]
        rounds = 6
    """))
    (tmp_path / "g.yaml").write_text(textwrap.dedent("""
        sweep: {name: cfg, seeds: [0, 1], target_accuracy: 0.5}
        links:
          slow: {uplink: 1 Mbit/s, latency: 100 ms}
        grid:
          - name: toy
            runner: fake
            compressor: [identity, "topk:ratio={r}"]
            algorithm: [fedavg, scaffold]
            params: {r: [0.1, 0.5]}
            base: {rounds: 6}
    """))
    t, y = G.load_config(str(tmp_path / "g.toml")), G.load_config(str(tmp_path / "g.yaml"))
    rt, ry = G.expand(t)[0], G.expand(y)[0]
    assert sorted(r.hash for r in rt) == sorted(r.hash for r in ry)
    assert {r.hash for r in rt} == {r.hash for r in G.expand(fake_config())[0]}
    assert S.parse_links(t.links) == S.parse_links(y.links) == {"slow": S.Link("slow", 1e6, 1e6, 0.1)}
    (tmp_path / "bad.toml").write_text("[sweep\n")
    with pytest.raises(ValueError, match="bad.toml"):
        G.load_config(str(tmp_path / "bad.toml"))
    with pytest.raises(ValueError, match="format"):
        G.load_config(str(tmp_path / "g.ini"))


def test_run_hash_is_canonical():
    p = {"algorithm": "fedavg", "compressor": "topk:ratio=0.1", "rounds": 10, "seed": 0}
    h = S.run_hash("fedsim", p)
    expect = hashlib.sha256(json.dumps({"v": G.HASH_VERSION, "runner": "fedsim", "params": p}, sort_keys=True,
                                       separators=(",", ":")).encode()).hexdigest()[:16]
    assert h == expect and len(h) == 16
    assert S.run_hash("fedsim", dict(reversed(list(p.items())))) == h       # key order is irrelevant
    assert S.run_hash("fedsim", {**p, "rounds": 10.0}) != h                  # 10 and 10.0 are different configs
    assert S.run_hash("fedsim", {**p, "seed": 1}) != h
    assert S.run_hash("ddp", p) != h
    # labels and targets are not part of a run's identity
    r = G.RunSpec("fedsim", p, block="a", target_accuracy=0.5)
    assert r.hash == G.RunSpec("fedsim", p, block="b", target_accuracy=0.9).hash == h
    with pytest.raises(ValueError, match="NaN"):
        S.run_hash("fedsim", {"lr": float("nan")})


@pytest.mark.parametrize("n", [1, 2, 3, 5, 12, 13])
def test_shards_cover_every_run_exactly_once(n):
    runs, _ = G.expand(fake_config(seeds=[0, 1, 2]))
    assert len(runs) == 18
    shards = [S.shard(runs, i, n) for i in range(n)]
    hashes = [r.hash for s in shards for r in s]
    assert sorted(hashes) == sorted(r.hash for r in runs)       # every run, none twice
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    # independent of the order the grid was written in
    again = [S.shard(list(reversed(runs)), i, n) for i in range(n)]
    assert [[r.hash for r in s] for s in again] == [[r.hash for r in s] for s in shards]


def test_parse_shard():
    assert S.parse_shard("0/4") == (0, 4) and S.parse_shard(" 3 / 4 ") == (3, 4)
    for bad in ("4/4", "1/0", "-1/2", "a/b", "2"):
        with pytest.raises(ValueError, match="i/n|0 <= i < n"):
            S.parse_shard(bad)


# ------------------------------------------------------------------------------------------------- pareto ---

def test_pareto_front_on_hand_made_points():
    # (bytes, accuracy)
    pts = [(10, 0.50), (20, 0.70), (15, 0.40), (30, 0.70), (40, 0.90), (5, 0.30), (40, 0.85), (50, 0.95),
           (60, 0.95), (float("nan"), 0.99), (25, float("nan"))]
    front = P.pareto_front([p[0] for p in pts], [p[1] for p in pts])
    # dominated: (15, .4) by (10, .5); (30, .7) by (20, .7); (40, .85) by (40, .9); (60, .95) by (50, .95)
    assert front == [5, 0, 1, 4, 7]
    assert P.pareto_front([1, 1], [0.5, 0.5]) == [0, 1]          # equal points are both kept
    assert P.pareto_front([], []) == []
    # brute force on random points: nothing on the front is dominated, everything off it is
    rng = np.random.default_rng(0)
    c, v = rng.integers(0, 20, 200).astype(float), rng.integers(0, 20, 200).astype(float)
    f = set(P.pareto_front(c, v))
    for i in range(200):
        dom = any(c[j] <= c[i] and v[j] >= v[i] and (c[j] < c[i] or v[j] > v[i]) for j in range(200))
        assert dom == (i not in f)
    with pytest.raises(ValueError):
        P.pareto_front([1, 2], [1])


# ---------------------------------------------------------------------------------------- resume + e2e ---

def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_resume_skips_finished_runs_and_retries_failures(tmp_path):
    out = str(tmp_path / "sw")
    marker = str(tmp_path / "crash_marker")
    cfg = fake_config(compressor=["identity", "topk:ratio=0.1"], params={}, seeds=[0], crash_once=[marker, ""],
                      algorithm="fedavg")
    logs = []
    res = S.sweep(cfg, out, workers=0, progress=False, tasks=TASKS, report=False, log=logs.append)
    # 2 compressors x crash_once in {marker, ""}: the first run that sees no marker fails, every other succeeds
    assert len(res.runs) == 4 and len(res.outcome.ran) == 3 and len(res.outcome.failed) == 1
    assert any("failed" in m for m in logs)
    failed = res.outcome.failed[0]["hash"]
    assert os.path.exists(os.path.join(out, "runs", failed, "error.txt"))
    rows = {r["hash"]: r for r in _rows(os.path.join(out, "results.csv"))}
    assert rows[failed]["status"] == "failed" and "first attempt" in rows[failed]["error"]
    mtimes = {h: os.path.getmtime(os.path.join(out, "runs", h, "result.json")) for h in rows if h != failed}

    res2 = S.sweep(cfg, out, workers=0, progress=False, tasks=TASKS, report=False, log=logs.append)
    assert len(res2.outcome.reused) == 3 and [s.hash for s in res2.outcome.ran] == [failed]
    assert not res2.outcome.failed
    for h, t in mtimes.items():  # finished runs were not touched
        assert os.path.getmtime(os.path.join(out, "runs", h, "result.json")) == t
    assert all(r["status"] == "ok" for r in _rows(os.path.join(out, "results.csv")))

    # a corrupted result means "not finished"; --force re-runs everything
    some = next(iter(mtimes))
    with open(os.path.join(out, "runs", some, "result.json"), "w") as f:
        f.write("{")
    res3 = S.sweep(cfg, out, workers=0, progress=False, tasks=TASKS, report=False, log=logs.append)
    assert [s.hash for s in res3.outcome.ran] == [some]
    res4 = S.sweep(cfg, out, workers=0, progress=False, tasks=TASKS, report=False, force=True, log=logs.append)
    assert len(res4.outcome.ran) == 4


def test_results_of_other_code_are_run_again(tmp_path, capsys):
    from gradzip.sweep import runner as R

    out = str(tmp_path / "sw")
    cfg = fake_config(compressor=["identity", "topk:ratio=0.1"], params={}, seeds=[0], algorithm="fedavg")
    logs = []
    res = S.sweep(cfg, out, workers=0, progress=False, tasks=TASKS, report=False, log=logs.append)
    assert len(res.outcome.ran) == 2
    code = R.code_version()
    assert len(code) == 12 and int(code, 16) >= 0
    rows = _rows(os.path.join(out, "results.csv"))
    assert [r["code"] for r in rows] == [code, code]
    a, b = (r["hash"] for r in rows)
    # a result written by another build: stale, run again; with keep_stale it is reused
    path = os.path.join(out, "runs", a, "result.json")
    with open(path) as f:
        doc = json.load(f)
    assert doc["code"] == code
    doc["code"] = "000000000000"
    with open(path, "w") as f:
        json.dump(doc, f)
    spec_a = next(r for r in res.runs if r.hash == a)
    assert not R.is_finished(out, spec_a) and R.is_finished(out, spec_a, keep_stale=True)
    kept = S.sweep(cfg, out, workers=0, progress=False, tasks=TASKS, report=False, keep_stale=True,
                   log=logs.append)
    assert len(kept.outcome.reused) == 2 and not kept.outcome.ran
    assert {r["hash"]: r["code"] for r in _rows(os.path.join(out, "results.csv"))}[a] == "000000000000"
    again = S.sweep(cfg, out, workers=0, progress=False, tasks=TASKS, report=False, log=logs.append)
    assert [s.hash for s in again.outcome.ran] == [a] and [s.hash for s in again.outcome.reused] == [b]
    assert any("other gradzip code" in m and "--keep-stale" in m for m in logs)
    with open(path) as f:
        assert json.load(f)["code"] == code


def _check_png(path, size_px):
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[:2] == size_px and img.shape[2] in (3, 4)
    rgb = img[..., :3].reshape(-1, 3)
    assert rgb.std(axis=0).max() > 0.05                        # not a blank canvas
    q = (rgb * 255).astype(np.int64)
    colours = np.unique(q[:, 0] * 65536 + q[:, 1] * 256 + q[:, 2])
    assert len(colours) > 20                                   # markers, lines, text, colour map
    return img


def test_end_to_end_fake_sweep_in_spawned_workers(tmp_path):
    out = str(tmp_path / "sw")
    block2 = {"name": "other", "runner": "fake", "algorithm": "fedavg", "compressor": ["identity", "topk:ratio=0.5"],
              "seeds": [0], "target_accuracy": 0.99, "base": {"rounds": 4}}
    cfg = G.parse_config({"sweep": {"name": "e2e"}, "links": {"slow": {"uplink": "1 Mbit/s", "latency": "0.1 s"},
                                                              "fast": {"uplink": "1 Gbit/s"}},
                          "grid": [fake_config().blocks[0], block2]})
    res = S.sweep(cfg, out, workers=2, progress=False, tasks=TASKS, log=lambda m: None)
    assert len(res.runs) == 14 and len(res.outcome.ran) == 14 and not res.outcome.failed

    rows = _rows(os.path.join(out, "results.csv"))
    assert len(rows) == 14 and all(r["status"] == "ok" for r in rows)
    for col in ("final_accuracy", "best_accuracy", "uplink_bytes", "downlink_bytes", "rounds_to_target",
                "wall_time_s", "est_time_s@slow", "est_time_s@fast", "est_time_to_target_s@slow", "method",
                "compressor_label", "seed", "hash", "params"):
        assert col in rows[0], col
    by = {(r["block"], r["algorithm"], r["compressor"], r["seed"]): r for r in rows}
    r = by[("toy", "scaffold", "topk:ratio=0.1", "0")]
    # fake curve: rate 0.6 * 0.55 = 0.33; accuracy 0.9 (1 - e^{-0.33 t}) first >= 0.5 at t = 3 (0.564)
    assert float(r["rounds_to_target"]) == 3
    assert float(r["final_accuracy"]) == pytest.approx(0.9 * (1 - math.exp(-0.33 * 6)))
    assert float(r["uplink_bytes"]) == pytest.approx((400 + 32) * 6 * 4)
    # estimated time at 1 Mbit/s, 0.1 s latency: compute 0.06 + 12 syncs * 0.1 + 8 * 432 * 6 / 1e6 + 8 * 24000 / 1e6
    assert float(r["est_time_s@slow"]) == pytest.approx(0.06 + 1.2 + 8 * 432 * 6 / 1e6 + 8 * 24000 / 1e6)
    assert by[("other", "fedavg", "identity", "0")]["rounds_to_target"] == "nan"   # 0.99 is never reached

    for name in P.FIGURES:
        assert os.path.exists(os.path.join(out, name)), name
    info = res.plots
    _check_png(info["accuracy_vs_uplink"].path, info["accuracy_vs_uplink"].size_px)
    assert info["accuracy_vs_uplink"].grid == (1, 2)                     # one panel per block
    assert info["accuracy_vs_time"].grid == (2, 2)                       # blocks x links
    assert info["convergence"].grid == (2, 2)                            # blocks x (rounds, bytes)
    for k in ("accuracy_vs_time", "convergence", "rounds_to_target"):
        _check_png(info[k].path, info[k].size_px)
    h, w = info["accuracy_vs_time"].size_px
    assert (h, w) == (round(2 * P.PANEL_IN[1] * P.DPI), round(2 * P.PANEL_IN[0] * P.DPI))

    # the heatmap's numbers: scaffold reaches 0.5 sooner than fedavg; the other block never reaches 0.99
    agg = P.aggregate([{**r, **{k: _f(r[k]) for k in r}} for r in rows], [], S.parse_links(cfg.links))
    methods, comps, val, text = P.heatmap_matrix(agg, "toy")
    assert methods == ["fedavg", "scaffold"] and comps == ["identity", "topk:ratio=0.1", "topk:ratio=0.5"]
    assert np.all(val[1] < val[0])
    _, _, val2, text2 = P.heatmap_matrix(agg, "other")
    assert np.isnan(val2).all() and text2 == [["-", "-"]]

    report = open(res.report).read()
    for name in P.FIGURES:
        assert f"]({name})" in report
    assert "★" in report and "## Results" in report and "slow: 1 Mbit/s" in report

    # second invocation: everything reused, same table
    res2 = S.sweep(cfg, out, workers=2, progress=False, tasks=TASKS, report=False, log=lambda m: None)
    assert len(res2.outcome.reused) == 14 and not res2.outcome.ran


def _f(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def test_cli_flags_list_shard_and_errors(tmp_path, capsys):
    out = str(tmp_path / "cli")
    common = ["--out", out, "--runner", "test_sweep:FAKE", "--algorithm", "fedavg", "scaffold", "--compressor",
              "identity", "topk:ratio={r}", "--param", "r=0.1,0.5", "--seeds", "0", "1", "--set", "rounds=3",
              "--workers", "0", "--no-progress"]
    assert S.main(common + ["--list"]) == 0
    listing = capsys.readouterr().out
    assert "12 runs" in listing and listing.count("todo") == 12
    assert S.main(common + ["--shard", "1/3", "--no-report"]) == 0
    capsys.readouterr()
    assert S.main(common + ["--list", "--shard", "1/3"]) == 0
    listing = capsys.readouterr().out
    assert listing.count("finished") == 4 and listing.count("other") == 8
    assert S.main(common + ["--report-only", "--target", "0.3"]) == 0
    printed = capsys.readouterr().out
    assert "report: " in printed and os.path.exists(os.path.join(out, "report.md"))
    rows = _rows(os.path.join(out, "results.csv"))
    assert sum(r["status"] == "ok" for r in rows) == 4 and sum(r["status"] == "pending" for r in rows) == 8
    # --vary makes any parameter an axis; --set with the same key fixes it again
    out2 = str(tmp_path / "vary")
    assert S.main(common[2:] + ["--out", out2, "--vary", "lr=0.1,0.2", "--list"]) == 0
    assert "24 runs" in capsys.readouterr().out
    assert S.main(["--out", out, "--runner", "nosuch", "--workers", "0"]) == 2
    assert "unknown runner" in capsys.readouterr().err
    assert S.main(common + ["--shard", "3/3"]) == 2
    assert S.main(["--config", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ the ddp runner ---

def _write_idx(root, split, n, g):
    """A tiny Fashion-MNIST look-alike in the IDX format (class = a bright row pair at 2 * label)."""
    import gzip
    import struct

    import torch

    import gradzip

    img, lbl = gradzip.data.FILES[split]
    labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
    images = torch.randint(0, 60, (n, 28, 28), generator=g, dtype=torch.uint8)
    rows = (2 * labels.long()).view(n, 1) + torch.arange(2).view(1, 2)
    images[torch.arange(n).view(n, 1), rows] = 255
    for name, t in ((img, images), (lbl, labels)):
        with gzip.open(os.path.join(root, name), "wb") as f:
            f.write(bytes([0, 0, 8, t.dim()]) + struct.pack(">" + "I" * t.dim(), *t.shape) + t.numpy().tobytes())


def test_ddp_runner_end_to_end(tmp_path):
    import torch

    g = torch.Generator().manual_seed(0)
    data = tmp_path / "data"
    data.mkdir()
    _write_idx(str(data), "train", 512, g)
    _write_idx(str(data), "test", 128, g)
    cfg = G.parse_config({"grid": [{
        "name": "ddp", "runner": "ddp", "compressor": "topk:ratio=0.05", "feedback": "ef14", "seeds": [0],
        "target_accuracy": 0.3,
        "base": {"data_root": str(data), "epochs": 2, "hidden": 32, "batch_size": 32, "warmup_steps": 1,
                 "min_compress_numel": 256, "nproc": 2}}]})
    runs, _ = G.expand(cfg, S.cli.make_validator())
    assert len(runs) == 1
    res = S.sweep(cfg, str(tmp_path / "sw"), workers=0, progress=False, log=lambda m: None)
    assert not res.outcome.failed, res.outcome.failed
    (row,) = res.rows
    assert row["status"] == "ok" and row["rounds"] == 2 and row["method"] == "ddp+ef14"
    assert row["final_accuracy"] > 0.3  # chance is 0.1
    curve = S.runner.read_curve(os.path.join(res.out, "runs", row["hash"], "curve.csv"))
    # bytes: per rank and step, Top-K 5% of the big bucket (< 1/4 of the raw 4 bytes per parameter)
    steps = 512 // (32 * 2)
    assert curve[0]["sync_points"] == steps and curve[1]["sync_points"] == 2 * steps
    per_rank_step = curve[0]["node_uplink_bytes"] / steps
    assert 0 < per_rank_step < row["numel"] * 4 / 4
    assert row["uplink_bytes"] == pytest.approx(2 * curve[1]["node_uplink_bytes"])   # both ranks
    assert row["downlink_bytes"] == pytest.approx(row["uplink_bytes"])             # world 2: (2-1) x sent
    # bad flags are refused before anything runs, with the example's own argparse message
    with pytest.raises(ValueError, match="hook"):
        S.tasks.ddp_validate({"hook": "nosuch"})
    with pytest.raises(ValueError, match="set by the sweep"):
        S.tasks.ddp_validate({"json_out": "x"})


# -------------------------------------------------------------------------------------- the fedsim runner ---

def _fedsim_or_skip():
    try:
        import torch

        import gradzip.fedsim  # noqa: F401

        torch.classes.gradzip.Federation  # noqa: B018  (the C++ side of fedsim is built)
    except (ImportError, RuntimeError, AttributeError) as e:
        pytest.skip(f"gradzip.fedsim is not available: {e}")


def test_fedsim_sweep_end_to_end(tmp_path):
    _fedsim_or_skip()
    cfg = G.parse_config({
        "sweep": {"name": "tiny"},
        "grid": [{"name": "syn", "runner": "fedsim", "seeds": [0], "target_accuracy": 0.6,
                  "algorithm": ["fedavg", "scaffold", "scallion"], "compressor": ["identity", "topk:ratio={r}"],
                  "params": {"r": [0.2]},
                  "base": {"task": "synthetic_logreg", "model": "logreg", "num_clients": 6, "clients_per_round": 3,
                           "local_steps": 2, "rounds": 4, "synthetic_samples": 40, "synthetic_dim": 10}}]})
    out = str(tmp_path / "sw")
    res = S.sweep(cfg, out, workers=0, progress=False, log=lambda m: None)
    # scallion + topk is refused before anything runs (SCALLION needs an unbiased compressor)
    assert len(res.runs) == 5 and len(res.skipped) == 1
    assert res.skipped[0][0].params["algorithm"] == "scallion" and "topk" in res.skipped[0][0].params["compressor"]
    assert not res.outcome.failed, res.outcome.failed
    for row in res.rows:
        d = os.path.join(out, "runs", row["hash"])
        with open(os.path.join(d, "summary.json")) as f:
            summ = json.load(f)
        # the table agrees with fedsim's own summary
        assert row["uplink_bytes"] == summ["uplink_bytes"] and row["downlink_bytes"] == summ["downlink_bytes"]
        assert row["final_accuracy"] == pytest.approx(summ["final_accuracy"])
        assert row["best_accuracy"] == pytest.approx(summ["best_accuracy"])
        assert row["rounds"] == summ["rounds"] == 4
        curve = S.runner.read_curve(os.path.join(d, "curve.csv"))
        assert curve[-1]["node_uplink_bytes"] == pytest.approx(summ["uplink_bytes"] / 3)
        assert curve[-1]["sync_points"] == 8
    up = {(r["method"], r["compressor_label"]): r["uplink_bytes"] for r in res.rows}
    assert up[("fedavg", "topk:ratio=0.2")] < up[("fedavg", "identity")] / 2
    for info in res.plots.values():
        _check_png(info.path, info.size_px)
    res2 = S.sweep(cfg, out, workers=0, progress=False, log=lambda m: None)
    assert len(res2.outcome.reused) == 5 and not res2.outcome.ran


def _rounds_sweep(out):
    cfg = fake_config(algorithm="fedavg", compressor="identity", params={}, seeds=[0], base={}, rounds=[3, 4])
    return S.sweep(cfg, out, workers=0, progress=False, tasks=TASKS, log=lambda m: None)


def test_parameter_named_like_a_result_column(tmp_path):
    # fedsim's `rounds` parameter must not overwrite the `rounds` completed (a run that stops early differs)
    res = _rounds_sweep(str(tmp_path))
    rows = _rows(os.path.join(str(tmp_path), "results.csv"))
    assert sorted((r["param.rounds"], r["rounds"]) for r in rows) == [("3", "3.0"), ("4", "4.0")]
    assert "param.rounds" in open(res.report).read()


def test_parquet_table_when_pyarrow_is_installed(tmp_path):
    pa = pytest.importorskip("pyarrow.parquet")
    _rounds_sweep(str(tmp_path))
    rows = _rows(os.path.join(str(tmp_path), "results.csv"))
    t = pa.read_table(os.path.join(str(tmp_path), "results.parquet"))
    assert t.num_rows == len(rows) and t.column("final_accuracy").type == "double"
