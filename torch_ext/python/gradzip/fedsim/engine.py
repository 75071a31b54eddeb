"""The round loop of the federated simulator. Python orchestrates; the algorithm runs in C++
(torch.classes.gradzip.Federation, see torch_ext/csrc/fed_ops.cc):

    clients = fed.sample(r); mine = clients this process trains
    Y = [xhat] * len(mine); corr = fed.corrections(mine)           # c - c_i (SCAFFOLD family)
    K times: G = grads of every client at its row of Y (one vmap'd computation); fed.local_step(Y, G, corr, lr)
    payloads = fed.finish(mine, Y)                                  # delta, feedback, compression, c_i / v_i
    [distributed: all_gather the payload rows]; fed.aggregate(clients, payloads)   # decode, x, c, downlink
"""

from __future__ import annotations

import math
import os
import time
import warnings
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from . import models as models_mod
from . import output, tasks
from .config import FedSimConfig, from_mapping


class Diverged(RuntimeError):
    pass


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def check(cfg: Union[FedSimConfig, Dict[str, Any]], numel: int = 1 << 16) -> FedSimConfig:
    """Validates a config without loading data or training: the fields, then the algorithm/compressor/feedback/
    downlink pairing as the C++ layer judges it (a one-client federation over a numel-float model). Raises
    ValueError naming the problem; returns the validated config."""
    if isinstance(cfg, dict):
        cfg = from_mapping(cfg)
    cfg.validate()
    from .. import _C  # noqa: F401  (registers torch.classes.gradzip)

    try:
        torch.classes.gradzip.Federation(cfg.algorithm, cfg.compressor, cfg.downlink, cfg.feedback, 1, 1,
                                         cfg.local_steps, cfg.lr_local, cfg.lr_global, cfg.alpha, cfg.beta, cfg.seed,
                                         torch.zeros(numel), 0, 1)
    except RuntimeError as e:  # kInvalidArgument arrives as ValueError already; anything else is a bug here
        raise ValueError(str(e).splitlines()[0]) from None
    return cfg


def econtrol_eta_hint(cfg: FedSimConfig, numel: int) -> Optional[str]:
    """A warning for FedAvg + EControl with eta=auto under partial participation when auto resolves below 0.1: the
    measured FMNIST runs (README, "Federated simulation") drift there and were stable at eta=0.1. None otherwise."""
    kind, _, opts = cfg.feedback.partition(":")
    if cfg.algorithm != "fedavg" or kind != "econtrol" or cfg.clients_per_round >= cfg.num_clients:
        return None
    eta = dict(kv.split("=", 1) for kv in opts.split(",") if "=" in kv).get("eta", "auto")
    if eta != "auto":
        return None
    delta = float(torch.classes.gradzip.Codec(cfg.compressor).traits(numel)[1])
    if min(0.1, delta) >= 0.1:
        return None
    return (f"gradzip.fedsim: EControl eta=auto = min(0.1, delta) = {min(0.1, delta):.3g} for {cfg.compressor!r}; "
            f"with {cfg.clients_per_round} of {cfg.num_clients} clients per round the measured FMNIST runs drifted "
            "at such eta and were stable at eta=0.1 (README, 'Federated simulation'): consider "
            "--feedback econtrol:eta=0.1")


class Simulation:
    """One federation; `step()` runs a round. Build with a validated config; `dist` may be a process group module
    (torch.distributed, initialised) to spread the clients over its ranks."""

    def __init__(self, cfg: FedSimConfig, task: Optional[tasks.Task] = None, distributed: bool = False):
        self.cfg = cfg.validate()
        torch.set_num_threads(cfg.threads)
        self.dist = _dist() if distributed else None
        if distributed and self.dist is None:
            raise ValueError("gradzip.fedsim: --distributed needs torch.distributed initialised (run under torchrun)")
        self.rank = self.dist.get_rank() if self.dist else 0
        self.world = self.dist.get_world_size() if self.dist else 1
        self.task = task if task is not None else tasks.build(cfg)
        self.model = models_mod.build(cfg.model, self.task.input_shape, self.task.num_classes, cfg.hidden,
                                      self.task.kind == "regression")
        self.trainer = (models_mod.BatchedTrainer if cfg.trainer == "batched" else models_mod.LoopTrainer)(self.model)
        x0 = self.model.init(tasks.mix_seed(cfg.seed, 0x1A17))
        from .. import _C  # noqa: F401  (registers torch.classes.gradzip)

        self.fed = torch.classes.gradzip.Federation(
            cfg.algorithm, cfg.compressor, cfg.downlink, cfg.feedback, cfg.num_clients, cfg.clients_per_round,
            cfg.local_steps, cfg.lr_local, cfg.lr_global, cfg.alpha, cfg.beta, cfg.seed, x0, self.rank, self.world)
        self.uses_control = cfg.algorithm != "fedavg"
        self.compute_s = 0.0
        self.last_train_loss = float("nan")

    @property
    def round(self) -> int:
        return int(self.fed.round())

    def step(self) -> Tuple[int, int]:
        """One round. Returns (uplink bytes, downlink bytes) of the round; raises Diverged on NaN/Inf."""
        cfg, fed = self.cfg, self.fed
        t0 = time.perf_counter()
        r = self.round
        clients = list(fed.sample(r))
        mine = [c for c in clients if fed.owns(c)]
        d = int(fed.numel())
        loss_sum = torch.zeros(2, dtype=torch.float64)
        if mine:
            y = fed.client_model().expand(len(mine), d).contiguous()
            corr = fed.corrections(mine) if self.uses_control else torch.empty(0)
            idx = self.task.batch_indices(r, mine, cfg.local_steps, cfg.batch_size)
            xs, ys = self.task.x_train[idx], self.task.y_train[idx]  # one gather per round: [m, K, B, ...]
            for k in range(cfg.local_steps):
                g, losses = self.trainer.grads(y, xs[:, k], ys[:, k])
                fed.local_step(y, g, corr, cfg.lr_local)
                loss_sum[0] += float(losses.double().sum())
                loss_sum[1] += len(mine)
            if not math.isfinite(float(loss_sum[0])):
                raise Diverged(f"round {r}: local training loss is not finite")
            try:
                payloads, sizes = fed.finish(mine, y)
            except RuntimeError as e:
                if "NonFinite" in str(e):
                    raise Diverged(f"round {r}: {e}") from None
                raise
        else:
            payloads = torch.zeros((0, int(fed.slot_bytes())), dtype=torch.uint8)
            sizes = torch.zeros(0, dtype=torch.long)
        if self.dist:
            payloads, sizes = self._gather(clients, mine, payloads, sizes)
            if self.dist.get_backend() == "nccl":
                loss_sum = loss_sum.cuda()
                self.dist.all_reduce(loss_sum)
                loss_sum = loss_sum.cpu()
            else:
                self.dist.all_reduce(loss_sum)
        try:
            up, down = fed.aggregate(clients, payloads, sizes)
        except RuntimeError as e:
            if "NonFinite" in str(e):
                raise Diverged(f"round {r}: {e}") from None
            raise
        self.last_train_loss = float(loss_sum[0] / max(float(loss_sum[1]), 1.0))
        self.compute_s += time.perf_counter() - t0
        return int(up), int(down)

    def _gather(self, clients: List[int], mine: List[int], payloads: torch.Tensor,
                sizes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Every rank's payload rows, in the order of `clients` (the owner of client i is rank i % world)."""
        S, slot = len(clients), int(self.fed.slot_bytes())
        full = torch.zeros((S, slot), dtype=torch.uint8)
        full_sizes = torch.zeros(S, dtype=torch.long)
        pos = {c: j for j, c in enumerate(clients)}
        rows = torch.tensor([pos[c] for c in mine], dtype=torch.long)
        if len(mine):
            full[rows] = payloads
            full_sizes[rows] = sizes
        # NCCL moves CUDA tensors only: the payloads (a few kB per client) take a round trip through the device; the
        # C++ Federation and the training stay on the CPU.
        dev = torch.device("cuda", torch.cuda.current_device()) if self.dist.get_backend() == "nccl" else None
        if dev is not None:
            full, full_sizes = full.to(dev), full_sizes.to(dev)
        parts = [torch.empty_like(full) for _ in range(self.world)]
        self.dist.all_gather(parts, full)
        self.dist.all_reduce(full_sizes)  # each row is non-zero on its owner only
        owner = torch.tensor([c % self.world for c in clients], dtype=torch.long)
        stacked = torch.stack(parts).cpu()  # [world, S, slot]
        return stacked[owner, torch.arange(S)].contiguous(), full_sizes.cpu()

    def evaluate(self) -> Tuple[float, float]:
        """(test loss, test accuracy) of the server model."""
        return self.model.evaluate(self.fed.model(), self.task.x_test, self.task.y_test)


def run(cfg: Union[FedSimConfig, Dict[str, Any]], out_dir: Union[str, os.PathLike], *, progress: bool = True,
        plots: bool = True, fmt: str = "csv", distributed: bool = False) -> Dict[str, Any]:
    """Runs a simulation, writing config.json, rounds.csv|jsonl, summary.json and the plots into out_dir.
    Returns the summary. Every rank of a distributed run returns the same summary; rank 0 writes the files."""
    cfg = check(cfg)  # every configuration/pairing error before the data is loaded
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"gradzip.fedsim: fmt={fmt!r} must be 'csv' or 'jsonl'")
    sim = Simulation(cfg, distributed=distributed)
    lead = sim.rank == 0
    hint = econtrol_eta_hint(cfg, sim.model.numel)
    if hint and lead:
        warnings.warn(hint, stacklevel=2)
    out = output.RunWriter(out_dir, cfg, fmt, sim.model.numel) if lead else None
    t_start = time.perf_counter()
    up_total = down_total = 0
    diverged = False
    bar = None
    if progress and lead:
        from tqdm import tqdm

        bar = tqdm(total=cfg.rounds, desc=f"{cfg.algorithm}/{cfg.compressor}", unit="round", dynamic_ncols=True)
    rows: List[Dict[str, Any]] = []
    for r in range(cfg.rounds):
        try:
            up, down = sim.step()
        except Diverged as e:
            diverged = True
            if bar is not None:
                bar.write(f"gradzip.fedsim: diverged: {e}")
            break
        up_total += up
        down_total += down
        done = r + 1
        if done % cfg.eval_every == 0 or done == cfg.rounds:
            test_loss, acc = sim.evaluate() if lead else (0.0, 0.0)
            row = {"round": done, "train_loss": sim.last_train_loss, "test_loss": test_loss, "test_accuracy": acc,
                   "uplink_bytes": up_total, "downlink_bytes": down_total,
                   "wall_time_s": time.perf_counter() - t_start, "compute_time_s": sim.compute_s}
            rows.append(row)
            if out is not None:
                out.add(row)
            if bar is not None:
                bar.set_postfix(acc=f"{acc:.4f}" if acc == acc else "n/a", loss=f"{sim.last_train_loss:.4f}")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    summary = output.summarize(cfg, rows, sim.model.numel, diverged, time.perf_counter() - t_start, up_total,
                               down_total, sim.compute_s)
    if out is not None:
        out.finish(summary, plots)
    if sim.dist:
        box = [summary]
        sim.dist.broadcast_object_list(box, src=0)
        summary = box[0]
    return summary
