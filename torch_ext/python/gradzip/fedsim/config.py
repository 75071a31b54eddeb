"""Configuration of a federated simulation: one dataclass, validated before any work, loadable from JSON/TOML/YAML
and from command-line flags (``--num-clients 100`` sets ``num_clients``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, fields
from typing import Any, Dict, Mapping, Optional, Union

TASKS = ("fmnist", "synthetic_logreg", "synthetic_lsq")
MODELS = ("logreg", "mlp", "cnn")
PARTITIONS = ("iid", "dirichlet", "shards")
ALGORITHMS = ("fedavg", "scaffold", "scallion", "scafcom")


@dataclass
class FedSimConfig:
    """Everything that determines a run; the same config and seed give the same numbers."""

    task: str = "fmnist"  # fmnist | synthetic_logreg | synthetic_lsq
    model: str = "mlp"  # logreg | mlp | cnn (synthetic tasks use their linear model; mlp/cnn are refused there)
    partition: str = "dirichlet"  # iid | dirichlet | shards
    dirichlet_alpha: float = 0.1
    shards_per_client: int = 2
    heterogeneity: float = 1.0  # synthetic tasks: 0 = identical clients
    num_clients: int = 100
    clients_per_round: int = 10
    local_steps: int = 10
    batch_size: int = 32
    lr_local: float = 0.05
    lr_global: float = 1.0
    rounds: int = 100
    algorithm: str = "fedavg"  # fedavg | scaffold | scallion | scafcom
    feedback: str = "none"  # none | ef14 | ef21 | econtrol[:eta=...] (fedavg only)
    compressor: str = "identity"  # uplink compressor spec
    downlink: str = "identity"  # downlink compressor spec (contractive; EF21-style xhat += C(x - xhat))
    alpha: float = -1.0  # SCALLION (< 0: 1 / (1 + omega))
    beta: float = 0.2  # SCAFCOM momentum
    seed: int = 0
    eval_every: int = 1
    data_root: Optional[str] = None
    train_subset: int = 0  # 0 = all training samples
    test_subset: int = 0  # 0 = all test samples
    threads: int = 1  # torch intra-op threads
    hidden: int = 200  # MLP hidden width (two hidden layers: the "2NN" of McMahan et al.)
    synthetic_dim: int = 60  # synthetic tasks: features
    synthetic_samples: int = 200  # synthetic tasks: samples per client
    trainer: str = "batched"  # batched (vmap over clients) | loop (one client at a time; the benchmark baseline)

    # ------------------------------------------------------------------------------------------------------------
    def validate(self) -> "FedSimConfig":
        """Raises ValueError naming the field for anything wrong that can be checked without the C++ layer."""

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"gradzip.fedsim: {msg}")

        need(self.task in TASKS, f"task={self.task!r} is unknown; choose one of {', '.join(TASKS)}")
        need(self.model in MODELS, f"model={self.model!r} is unknown; choose one of {', '.join(MODELS)}")
        if self.task != "fmnist":
            need(self.model == "logreg",
                 f"model={self.model!r}: the synthetic tasks train their own linear model; use model='logreg'")
        need(self.partition in PARTITIONS,
             f"partition={self.partition!r} is unknown; choose one of {', '.join(PARTITIONS)}")
        need(self.algorithm in ALGORITHMS,
             f"algorithm={self.algorithm!r} is unknown; choose one of {', '.join(ALGORITHMS)}")
        need(self.trainer in ("batched", "loop"), f"trainer={self.trainer!r} must be 'batched' or 'loop'")
        for name in ("num_clients", "clients_per_round", "local_steps", "batch_size", "rounds", "eval_every",
                     "shards_per_client", "threads", "hidden", "synthetic_dim", "synthetic_samples"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"{name}={v!r} must be an integer >= 1")
        for name in ("train_subset", "test_subset", "seed"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 0, f"{name}={v!r} must be an integer >= 0")
        need(self.clients_per_round <= self.num_clients,
             f"clients_per_round={self.clients_per_round} exceeds num_clients={self.num_clients}")
        for name in ("lr_local", "lr_global", "dirichlet_alpha"):
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and v > 0 and v == v and v != float("inf"),
                 f"{name}={v!r} must be a finite number > 0")
        need(0 < self.beta <= 1, f"beta={self.beta!r} must be in (0, 1]")
        need(self.alpha < 0 or 0 < self.alpha <= 1, f"alpha={self.alpha!r} must be in (0, 1] (or < 0 for 1/(1+omega))")
        need(self.heterogeneity >= 0, f"heterogeneity={self.heterogeneity!r} must be >= 0")
        if self.feedback.split(":")[0] != "none":
            need(self.algorithm == "fedavg",
                 f"feedback={self.feedback!r} applies to algorithm='fedavg' only (SCAFCOM has its own error feedback; "
                 "SCAFFOLD/SCALLION use control variates)")
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


FIELD_NAMES = tuple(f.name for f in fields(FedSimConfig))


def from_mapping(m: Mapping[str, Any]) -> FedSimConfig:
    """A config from a dict; unknown keys are an error naming them (a typo must not silently run the default)."""
    unknown = sorted(set(m) - set(FIELD_NAMES))
    if unknown:
        raise ValueError(f"gradzip.fedsim: unknown config key(s) {', '.join(unknown)}; known: {', '.join(FIELD_NAMES)}")
    base = FedSimConfig()
    kw = {}
    for f in fields(FedSimConfig):
        if f.name not in m:
            continue
        v = m[f.name]
        default = getattr(base, f.name)
        if isinstance(default, bool):
            kw[f.name] = bool(v)
        elif isinstance(default, int) and not isinstance(v, bool) and isinstance(v, (int, float)) and v == int(v):
            kw[f.name] = int(v)
        elif isinstance(default, float) and isinstance(v, (int, float)) and not isinstance(v, bool):
            kw[f.name] = float(v)
        else:
            kw[f.name] = v
    return FedSimConfig(**kw)


def load_file(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Reads a JSON, TOML or YAML mapping (by extension). A config.json written by a run loads back as is."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"gradzip.fedsim: config file {path} does not exist")
    ext = os.path.splitext(path)[1].lower()
    with open(path, "rb") as f:
        raw = f.read()
    if ext == ".json":
        data = json.loads(raw)
    elif ext == ".toml":
        import tomllib

        data = tomllib.loads(raw.decode())
    elif ext in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(raw)
    else:
        raise ValueError(f"gradzip.fedsim: config file {path}: extension must be .json, .toml, .yaml or .yml")
    if not isinstance(data, dict):
        raise ValueError(f"gradzip.fedsim: config file {path} must hold a mapping of fields")
    data = dict(data.get("config", data)) if "config" in data and isinstance(data["config"], dict) else data
    data.pop("versions", None)
    return data


def add_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per field (--num-clients ...), default None so that a config file's values are not overridden."""
    for f in fields(FedSimConfig):
        default = getattr(FedSimConfig(), f.name)
        typ = type(default) if default is not None else str
        p.add_argument("--" + f.name.replace("_", "-"), type=typ, default=None, dest=f.name,
                       help=f"(default: {default})")


def from_args(ns: argparse.Namespace, config_file: Optional[str] = None) -> FedSimConfig:
    m: Dict[str, Any] = load_file(config_file) if config_file else {}
    for name in FIELD_NAMES:
        v = getattr(ns, name, None)
        if v is not None:
            m[name] = v
    return from_mapping(m).validate()
