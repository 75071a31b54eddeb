"""Data for the federated simulator: Fashion-MNIST split over clients (IID, Dirichlet label skew, k shards per
client), and generated synthetic tasks that need no files (heterogeneous logistic / least-squares regression).

Every random choice comes from a NumPy/torch generator seeded from the run's seed, so a config fixes the data split
and every minibatch. Minibatches: client i in round r draws its K batches of B samples uniformly *with replacement*
from its own data with a generator seeded by (seed, r, i) — independent of which other clients are sampled and of
which process trains it (what makes the distributed simulation reproduce the single-process one)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch

from .config import FedSimConfig


@dataclass
class Task:
    name: str
    kind: str  # "classification" | "regression"
    x_train: torch.Tensor  # float32 [n, ...]
    y_train: torch.Tensor  # int64 [n] (classification) or float32 [n] (regression)
    x_test: torch.Tensor
    y_test: torch.Tensor
    client_indices: List[torch.Tensor]  # int64 indices into x_train, one tensor per client (each non-empty)
    num_classes: int  # 1 for regression
    seed: int

    @property
    def input_shape(self) -> Sequence[int]:
        return tuple(self.x_train.shape[1:])

    def batch_indices(self, round_: int, clients: Sequence[int], steps: int, batch: int) -> torch.Tensor:
        """Global sample indices [len(clients), steps, batch] of the clients' minibatches of round `round_`."""
        out = torch.empty((len(clients), steps, batch), dtype=torch.long)
        for j, c in enumerate(clients):
            idx = self.client_indices[c]
            g = torch.Generator().manual_seed(mix_seed(self.seed, round_, c))
            out[j] = idx[torch.randint(len(idx), (steps, batch), generator=g)]
        return out

    def sizes(self) -> List[int]:
        return [len(i) for i in self.client_indices]


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix64 steps), so nearby (seed, round, client) give unrelated streams."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        h = (h + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        h = z ^ (z >> 31)
    return h & 0x7FFFFFFFFFFFFFFF


# ----------------------------------------------------------------------------------------------------------------
# Partitions of labelled data over clients.

def partition_iid(n: int, clients: int, rng: np.random.Generator) -> List[np.ndarray]:
    perm = rng.permutation(n)
    return [np.sort(p) for p in np.array_split(perm, clients)]


def partition_dirichlet(labels: np.ndarray, clients: int, alpha: float, rng: np.random.Generator,
                        min_size: int = 10, max_tries: int = 100) -> List[np.ndarray]:
    """Label skew: for every class, proportions over clients ~ Dirichlet(alpha * 1). Redrawn (same generator) until
    every client holds at least min_size samples, as in the usual implementations (Hsu et al. 2019; Wang et al. 2020)."""
    classes = np.unique(labels)
    n = len(labels)
    if n < clients * min_size:
        raise ValueError(f"gradzip.fedsim: {n} samples cannot give {clients} clients {min_size} samples each")
    for _ in range(max_tries):
        parts: List[List[int]] = [[] for _ in range(clients)]
        for c in classes:
            idx = np.flatnonzero(labels == c)
            rng.shuffle(idx)
            p = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(p) * len(idx)).astype(np.int64)[:-1]
            for i, chunk in enumerate(np.split(idx, cuts)):
                parts[i].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ValueError(f"gradzip.fedsim: Dirichlet(alpha={alpha}) left a client with < {min_size} samples after "
                     f"{max_tries} draws; raise dirichlet_alpha or lower num_clients")


def partition_shards(labels: np.ndarray, clients: int, shards_per_client: int,
                     rng: np.random.Generator) -> List[np.ndarray]:
    """McMahan et al.'s pathological split: sort by label, cut into clients * k shards, deal k shards per client."""
    order = np.argsort(labels, kind="stable")
    total = clients * shards_per_client
    if total > len(labels):
        raise ValueError(f"gradzip.fedsim: {clients} clients x {shards_per_client} shards exceed {len(labels)} samples")
    shards = np.array_split(order, total)
    assign = rng.permutation(total)
    return [np.sort(np.concatenate([shards[s] for s in assign[i * shards_per_client:(i + 1) * shards_per_client]]))
            for i in range(clients)]


def split(labels: np.ndarray, cfg: FedSimConfig, rng: np.random.Generator) -> List[np.ndarray]:
    if cfg.partition == "iid":
        return partition_iid(len(labels), cfg.num_clients, rng)
    if cfg.partition == "dirichlet":
        return partition_dirichlet(labels, cfg.num_clients, cfg.dirichlet_alpha, rng)
    return partition_shards(labels, cfg.num_clients, cfg.shards_per_client, rng)


# ----------------------------------------------------------------------------------------------------------------
# Tasks.

def fashion_mnist(cfg: FedSimConfig) -> Task:
    from .. import data

    try:
        xi, yi = data.load_fashion_mnist("train", cfg.data_root)
        xt, yt = data.load_fashion_mnist("test", cfg.data_root)
    except data.DatasetNotFound as e:
        raise ValueError(str(e)) from None
    if cfg.train_subset:
        xi, yi = xi[:cfg.train_subset], yi[:cfg.train_subset]
    if cfg.test_subset:
        xt, yt = xt[:cfg.test_subset], yt[:cfg.test_subset]
    rng = np.random.default_rng(mix_seed(cfg.seed, 0xDA7A))
    parts = split(yi.numpy(), cfg, rng)
    x_train = data.normalize(xi)
    x_test = data.normalize(xt)
    if cfg.model != "cnn":
        x_train = x_train.reshape(len(x_train), -1)
        x_test = x_test.reshape(len(x_test), -1)
    return Task("fmnist", "classification", x_train.contiguous(), yi, x_test.contiguous(), yt,
                [torch.from_numpy(p) for p in parts], 10, cfg.seed)


def synthetic(cfg: FedSimConfig) -> Task:
    """Heterogeneous synthetic data in the style of Synthetic(alpha, beta) (Shamir et al.; Li et al. 2020, FedProx):
    client i has its own model W_i = W* + h U_i and feature mean m_i ~ N(0, h^2 I), h = heterogeneity; 20% of each
    client's samples are held out, and the pooled held-out samples are the test set.
      synthetic_logreg: 10 classes, y = argmax(W_i x + b_i);
      synthetic_lsq:    y = w_i . x + 0.1 noise (one output, squared loss)."""
    d, n, h = cfg.synthetic_dim, cfg.synthetic_samples, cfg.heterogeneity
    classes = 10 if cfg.task == "synthetic_logreg" else 1
    g = torch.Generator().manual_seed(mix_seed(cfg.seed, 0x5E7))
    w_star = torch.randn(classes, d, generator=g) / d ** 0.5
    b_star = torch.randn(classes, generator=g) * 0.1
    xs, ys, parts_train, xts, yts = [], [], [], [], []
    start = 0
    hold = max(1, n // 5)
    for i in range(cfg.num_clients):
        w = w_star + h * torch.randn(classes, d, generator=g) / d ** 0.5
        b = b_star + h * 0.1 * torch.randn(classes, generator=g)
        mean = h * torch.randn(d, generator=g)
        x = mean + torch.randn(n + hold, d, generator=g)
        z = x @ w.T + b
        if classes > 1:
            y = z.argmax(dim=1)
        else:
            y = (z[:, 0] + 0.1 * torch.randn(n + hold, generator=g)).float()
        xs.append(x[:n])
        ys.append(y[:n])
        xts.append(x[n:])
        yts.append(y[n:])
        parts_train.append(torch.arange(start, start + n))
        start += n
    return Task(cfg.task, "classification" if classes > 1 else "regression", torch.cat(xs).contiguous(),
                torch.cat(ys), torch.cat(xts).contiguous(), torch.cat(yts), parts_train, max(classes, 1), cfg.seed)


def build(cfg: FedSimConfig) -> Task:
    return fashion_mnist(cfg) if cfg.task == "fmnist" else synthetic(cfg)


def label_histogram(task: Task, clients: Optional[Sequence[int]] = None) -> np.ndarray:
    """[clients, classes] label counts (classification tasks), e.g. to show how skewed a partition is."""
    ids = range(len(task.client_indices)) if clients is None else clients
    y = task.y_train.numpy()
    return np.stack([np.bincount(y[task.client_indices[i].numpy()], minlength=task.num_classes) for i in ids])
