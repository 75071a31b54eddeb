"""Federated-learning simulation over gradzip's controlled-averaging layer: ``python -m gradzip.fedsim``.

    from gradzip.fedsim import FedSimConfig, run
    summary = run(FedSimConfig(algorithm="scafcom", compressor="topk:ratio=0.01", rounds=200), "out/scafcom")

Algorithms: fedavg, scaffold, scallion, scafcom, and fedavg with uplink feedback ef14 / ef21 / econtrol; any
compressor spec on the uplink (pairings the theory forbids are refused before any work) and optionally a contractive
compressor on the downlink. The S clients of a round train in one batched computation (torch.func.vmap); the
algorithm state and updates run in C++ (torch.classes.gradzip.Federation). `--distributed` under torchrun spreads the
clients over the ranks and reproduces the single-process run. See the README section "Federated simulation".
"""

from .config import FedSimConfig, from_mapping, load_file
from .engine import Diverged, Simulation, check, run
from .output import plot_curves, read_rows, summary_line

__all__ = ["Diverged", "FedSimConfig", "Simulation", "check", "from_mapping", "load_file", "plot_curves", "read_rows", "run",
           "summary_line"]
