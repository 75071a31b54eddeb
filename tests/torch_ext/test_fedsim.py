"""gradzip.fedsim: configuration errors before any work, data partitions, the batched trainer against per-client
autograd, FedAvg/SCAFFOLD rounds against a float64 torch reference written from algorithms.md §5, outputs (CSV/JSONL,
summary, real PNGs), state save/load, and the distributed run (torchrun, 2 ranks) against the single-process one."""

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import gradzip  # noqa: F401
from gradzip.fedsim import FedSimConfig, Simulation, run, tasks
from gradzip.fedsim import config as config_mod
from gradzip.fedsim import models

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = dict(task="synthetic_lsq", model="logreg", num_clients=8, clients_per_round=3, local_steps=4, batch_size=8,
             lr_local=0.05, rounds=6, synthetic_dim=12, synthetic_samples=40, heterogeneity=1.0, seed=3)


def has_fmnist():
    try:
        gradzip.data.find_root()
        return True
    except gradzip.data.DatasetNotFound:
        return False


# ----------------------------------------------------------------------------------------------------------------
# Configuration and bad input: clear errors before any work.

@pytest.mark.parametrize("bad,needle", [
    (dict(algorithm="fedprox"), "algorithm='fedprox' is unknown"),
    (dict(clients_per_round=9), "clients_per_round=9 exceeds num_clients=8"),
    (dict(local_steps=0), "local_steps=0"),
    (dict(lr_local=-1.0), "lr_local=-1.0"),
    (dict(model="mlp"), "synthetic tasks train their own linear model"),
    (dict(algorithm="scaffold", feedback="ef14"), "applies to algorithm='fedavg' only"),
    (dict(partition="pathological"), "partition='pathological' is unknown"),
])
def test_bad_config_is_refused_naming_the_field(bad, needle, tmp_path):
    with pytest.raises(ValueError, match=None) as e:
        run({**SMALL, **bad}, tmp_path / "x", progress=False)
    assert needle in str(e.value)
    assert not (tmp_path / "x").exists(), "nothing may be written for a refused config"


def test_unknown_key_and_compressor_pairings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown config key"):
        run({**SMALL, "num_client": 5}, tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="unknown compressor"):
        run({**SMALL, "compressor": "topq:ratio=0.1"}, tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="SCALLION needs an unbiased"):
        run({**SMALL, "algorithm": "scallion", "compressor": "topk:ratio=0.1"}, tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="SCAFCOM needs a contractive"):
        run({**SMALL, "algorithm": "scafcom", "compressor": "qsgd:bits=4"}, tmp_path / "d", progress=False)
    with pytest.raises(ValueError, match=r"scaled\("):
        run({**SMALL, "feedback": "econtrol", "compressor": "randk:ratio=0.2"}, tmp_path / "e", progress=False)
    with pytest.raises(ValueError, match="downlink"):
        run({**SMALL, "downlink": "qsgd:bits=4"}, tmp_path / "f", progress=False)
    for d in "abcdef":
        assert not (tmp_path / d).exists()


def test_check_judges_pairings_without_data():
    from gradzip.fedsim import check

    assert check({**SMALL, "algorithm": "scafcom", "compressor": "sign"}).algorithm == "scafcom"
    with pytest.raises(ValueError, match="SCALLION needs an unbiased"):
        check(dict(task="fmnist", model="mlp", algorithm="scallion", compressor="topk:ratio=0.01",
                   data_root="/nonexistent"))  # the pairing is judged before the (missing) data is looked at


def test_missing_dataset_gives_install_hint(tmp_path):
    with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist"):
        run(dict(task="fmnist", model="mlp", data_root=str(tmp_path / "nowhere"), rounds=1), tmp_path / "o",
            progress=False)


def test_cli_reports_errors_with_exit_code_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gradzip.fedsim", "--out", str(tmp_path / "o"), "--task",
                        "synthetic_lsq", "--model", "logreg", "--num-clients", "4", "--clients-per-round", "5"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "clients_per_round=5 exceeds num_clients=4" in r.stderr


def test_config_files_round_trip(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('algorithm = "scafcom"\ncompressor = "topk:ratio=0.1"\nnum_clients = 8\nclients_per_round = 2\n'
                    'task = "synthetic_logreg"\nmodel = "logreg"\n')
    yml = tmp_path / "c.yaml"
    yml.write_text("algorithm: scafcom\ncompressor: topk:ratio=0.1\nnum_clients: 8\nclients_per_round: 2\n"
                   "task: synthetic_logreg\nmodel: logreg\n")
    a = config_mod.from_mapping(config_mod.load_file(toml)).validate()
    b = config_mod.from_mapping(config_mod.load_file(yml)).validate()
    assert a == b and a.algorithm == "scafcom" and a.num_clients == 8
    s = run({**SMALL, "rounds": 2}, tmp_path / "run", progress=False, plots=False)
    again = config_mod.from_mapping(config_mod.load_file(tmp_path / "run" / "config.json"))
    assert again.to_dict() == s["config"]


# ----------------------------------------------------------------------------------------------------------------
# Partitions.

def test_partitions_cover_every_sample_once_and_dirichlet_skews():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 300)
    rng.shuffle(labels)
    cfg = FedSimConfig(num_clients=20)
    for part in ("iid", "dirichlet", "shards"):
        cfg.partition = part
        parts = tasks.split(labels, cfg, np.random.default_rng(1))
        allidx = np.concatenate(parts)
        assert len(parts) == 20 and len(allidx) == len(labels) and len(np.unique(allidx)) == len(labels), part
        assert min(len(p) for p in parts) >= 10
    # Label skew: classes per client. IID: all 10; shards with k = 2: at most 2 (+1 at shard borders);
    # Dirichlet(0.1): most of a client's data from few classes.
    def top_share(parts):
        return np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts])
    iid = tasks.partition_iid(len(labels), 20, np.random.default_rng(1))
    dirich = tasks.partition_dirichlet(labels, 20, 0.1, np.random.default_rng(1))
    shards = tasks.partition_shards(labels, 20, 2, np.random.default_rng(1))
    assert top_share(iid) < 0.2
    assert top_share(dirich) > 0.6
    assert max(len(np.unique(labels[p])) for p in shards) <= 3
    # Same seed, same split; another seed, another split.
    again = tasks.partition_dirichlet(labels, 20, 0.1, np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(dirich, again))
    other = tasks.partition_dirichlet(labels, 20, 0.1, np.random.default_rng(2))
    assert not all(np.array_equal(a, b) for a, b in zip(dirich, other))


def test_minibatches_depend_only_on_seed_round_and_client():
    task = tasks.build(FedSimConfig(**{**SMALL}).validate())
    a = task.batch_indices(5, [1, 4, 6], 3, 8)
    b = task.batch_indices(5, [6, 4], 3, 8)
    assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[0])
    for j, c in enumerate([1, 4, 6]):
        assert set(a[j].flatten().tolist()) <= set(task.client_indices[c].tolist())
    assert not torch.equal(a, task.batch_indices(6, [1, 4, 6], 3, 8))


# ----------------------------------------------------------------------------------------------------------------
# The batched trainer against per-client autograd.

@pytest.mark.parametrize("kind,regression,shape", [("logreg", False, (20,)), ("logreg", True, (20,)),
                                                    ("mlp", False, (20,)), ("cnn", False, (1, 16, 16))])
def test_batched_gradients_equal_per_client_autograd(kind, regression, shape):
    torch.manual_seed(0)
    m = models.build(kind, shape, 1 if regression else 5, 16, regression)
    y = torch.stack([m.init(s) for s in range(4)])
    xb = torch.randn(4, 6, *shape)
    yb = torch.randn(4, 6) if regression else torch.randint(0, 5, (4, 6))
    g1, l1 = models.BatchedTrainer(m).grads(y, xb, yb)
    g2, l2 = models.LoopTrainer(m).grads(y, xb, yb)
    assert g1.shape == (4, m.numel) and g1.is_contiguous()
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-6)
    # Against float64 autograd too (a reference that shares no code path with the batched one).
    for j in range(4):
        w = y[j].double().requires_grad_(True)
        p = {k: v.double() for k, v in m.unflatten(w).items()}
        out = m.forward(p, xb[j].double())
        loss = 0.5 * ((out[:, 0] - yb[j].double()) ** 2).mean() if regression else \
            torch.nn.functional.cross_entropy(out, yb[j])
        (g,) = torch.autograd.grad(loss, w)
        torch.testing.assert_close(g1[j].double(), g, rtol=1e-3, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Rounds against a float64 reference of algorithms.md §5.1/§5.3 (FedAvg; SCAFFOLD single upload).

def _reference(cfg, rounds):
    sim = Simulation(cfg)
    task, m = sim.task, sim.model
    x = sim.fed.model().double()
    c = torch.zeros_like(x)
    ci = {i: torch.zeros_like(x) for i in range(cfg.num_clients)}
    E = cfg.local_steps * cfg.lr_local
    for r in range(rounds):
        clients = list(sim.fed.sample(r))
        idx = task.batch_indices(r, clients, cfg.local_steps, cfg.batch_size)
        deltas = []
        for j, i in enumerate(clients):
            y = x.clone()
            for k in range(cfg.local_steps):
                w = y.clone().requires_grad_(True)
                p = {n: v for n, v in m.unflatten(w).items()}
                xb = task.x_train[idx[j, k]].double()
                out = m.forward(p, xb)
                loss = 0.5 * ((out[:, 0] - task.y_train[idx[j, k]].double()) ** 2).mean()
                (g,) = torch.autograd.grad(loss, w)
                y = y - cfg.lr_local * (g + (c - ci[i] if cfg.algorithm == "scaffold" else 0))
            if cfg.algorithm == "fedavg":
                deltas.append(y - x)
            else:
                d = (x - y) / E - c
                ci[i] = ci[i] + d
                deltas.append(d)
        mean = torch.stack(deltas).mean(0)
        if cfg.algorithm == "fedavg":
            x = x + cfg.lr_global * mean
        else:
            x = x - cfg.lr_global * E * (c + mean)
            c = c + torch.stack(deltas).sum(0) / cfg.num_clients
        sim.step()
        torch.testing.assert_close(sim.fed.model().double(), x, rtol=2e-4, atol=2e-5,
                                   msg=lambda s: f"{cfg.algorithm} round {r}: {s}")
    return sim


@pytest.mark.parametrize("alg", ["fedavg", "scaffold"])
def test_rounds_match_float64_reference(alg):
    cfg = FedSimConfig(**{**SMALL, "algorithm": alg}).validate()
    _reference(cfg, 5)


def test_state_save_load_resumes_bit_identically():
    cfg = FedSimConfig(**{**SMALL, "algorithm": "fedavg", "feedback": "econtrol", "compressor": "topk:ratio=0.25",
                          "downlink": "topk:ratio=0.5"}).validate()
    a = Simulation(cfg)
    for _ in range(3):
        a.step()
    blob = a.fed.state()
    for _ in range(3):
        a.step()
    b = Simulation(cfg)
    b.fed.load_state(blob)
    assert b.round == 3
    for _ in range(3):
        b.step()
    assert torch.equal(a.fed.model(), b.fed.model())
    assert torch.equal(a.fed.state(), b.fed.state())
    other = Simulation(FedSimConfig(**{**SMALL, "algorithm": "fedavg", "feedback": "ef14",
                                       "compressor": "topk:ratio=0.25", "downlink": "topk:ratio=0.5"}).validate())
    before = other.fed.state()
    with pytest.raises((ValueError, RuntimeError)):
        other.fed.load_state(blob)
    assert torch.equal(before, other.fed.state())


# ----------------------------------------------------------------------------------------------------------------
# Outputs.

def test_outputs_csv_jsonl_summary_and_real_pngs(tmp_path):
    import matplotlib.image as mpimg

    s = run({**SMALL, "task": "synthetic_logreg", "algorithm": "scafcom", "compressor": "topk:ratio=0.2",
             "rounds": 8, "eval_every": 2}, tmp_path / "csv", progress=False)
    with open(tmp_path / "csv" / "rounds.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["round"]) for r in rows] == [2, 4, 6, 8]
    assert list(rows[0]) == ["round", "train_loss", "test_loss", "test_accuracy", "uplink_bytes", "downlink_bytes",
                             "wall_time_s", "compute_time_s"]
    up = [int(r["uplink_bytes"]) for r in rows]
    assert up == sorted(up) and up[-1] == s["uplink_bytes"] > 0
    acc = [float(r["test_accuracy"]) for r in rows]
    assert all(0 <= a <= 1 for a in acc) and s["best_accuracy"] == max(acc)
    summ = json.loads((tmp_path / "csv" / "summary.json").read_text())
    assert summ["rounds"] == 8 and summ["diverged"] is False and summ["numel"] == 10 * 12 + 10
    # Top-K 20% of 130 floats: 26 (index, value) pairs per client per round plus the header, far below 4 d.
    assert summ["uplink_bytes_per_client_round"] < 4 * summ["numel"] / 2
    for name in ("accuracy_vs_rounds.png", "accuracy_vs_uplink.png"):
        img = mpimg.imread(tmp_path / "csv" / name)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
        assert float(img[..., :3].std()) > 0.05, f"{name} looks blank"
    run({**SMALL, "rounds": 3}, tmp_path / "jl", progress=False, fmt="jsonl", plots=False)
    lines = (tmp_path / "jl" / "rounds.jsonl").read_text().splitlines()
    assert len(lines) == 3
    first = json.loads(lines[0])
    assert first["test_accuracy"] is None  # regression task: no accuracy (NaN written as null)
    assert first["test_loss"] > 0


def test_divergence_is_reported_not_crashed(tmp_path):
    s = run({**SMALL, "lr_local": 50.0, "rounds": 30}, tmp_path / "d", progress=False, plots=False)
    assert s["diverged"] is True
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["diverged"] is True


# ----------------------------------------------------------------------------------------------------------------
# Distributed: 2 ranks reproduce the single-process run.

def test_distributed_two_ranks_reproduce_single_process(tmp_path):
    args = ["--task", "synthetic_logreg", "--model", "logreg", "--num-clients", "10", "--clients-per-round", "5",
            "--local-steps", "3", "--rounds", "6", "--algorithm", "scafcom", "--compressor", "topk:ratio=0.2",
            "--synthetic-dim", "16", "--synthetic-samples", "40", "--seed", "5", "--no-progress", "--no-plots"]
    single = subprocess.run([sys.executable, "-m", "gradzip.fedsim", "--out", str(tmp_path / "one"), *args],
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    env = dict(os.environ, OMP_NUM_THREADS="1")
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "gradzip.fedsim", "--distributed", "--out", str(tmp_path / "two"), *args],
                         capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stdout + two.stderr

    def table(d):
        with open(tmp_path / d / "rounds.csv") as f:
            return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in csv.DictReader(f)]

    a, b = table("one"), table("two")
    assert len(a) == len(b) == 6
    for ra, rb in zip(a, b):
        assert ra["round"] == rb["round"] and ra["uplink_bytes"] == rb["uplink_bytes"]
        assert ra["downlink_bytes"] == rb["downlink_bytes"]
        for k in ("train_loss", "test_loss", "test_accuracy"):
            assert math.isclose(float(ra[k]), float(rb[k]), rel_tol=1e-5, abs_tol=1e-6), (k, ra, rb)


@pytest.mark.skipif(not has_fmnist(), reason="Fashion-MNIST not installed")
def test_fashion_mnist_mlp_learns_in_a_few_rounds(tmp_path):
    s = run(dict(task="fmnist", model="mlp", num_clients=20, clients_per_round=5, local_steps=5, rounds=10,
                 eval_every=10, partition="iid", train_subset=6000, test_subset=1000, hidden=64), tmp_path / "f",
            progress=False, plots=False)
    assert s["final_accuracy"] > 0.6, s


def test_econtrol_eta_hint_only_where_the_measured_runs_drifted():
    from gradzip.fedsim.engine import econtrol_eta_hint

    def hint(**kw):
        base = dict(task="synthetic_logreg", model="logreg", num_clients=100, clients_per_round=10,
                    algorithm="fedavg", compressor="topk:ratio=0.01", feedback="econtrol")
        base.update(kw)
        return econtrol_eta_hint(FedSimConfig(**base).validate(), 199210)

    h = hint()
    assert h is not None and "eta=auto" in h and "0.01" in h and "econtrol:eta=0.1" in h
    assert hint(feedback="econtrol:eta=auto") is not None
    assert hint(feedback="econtrol:eta=0.1") is None          # explicit eta
    assert hint(feedback="econtrol:eta=0.01") is None         # explicit, even if small
    assert hint(clients_per_round=100) is None                # full participation
    assert hint(compressor="topk:ratio=0.5") is None          # auto = min(0.1, 0.5) = 0.1
    assert hint(feedback="ef21") is None and hint(feedback="ef14") is None
    assert hint(algorithm="scafcom", feedback="none") is None
