"""python -m gradzip.fedsim --out DIR [--config FILE] [--<field> VALUE ...] [--distributed]

Every FedSimConfig field is a flag (--num-clients 100, --compressor topk:ratio=0.01, ...); flags override the config
file. Under torchrun, --distributed spreads the clients over the ranks (gloo on CPU; nccl when --backend nccl)."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    from . import config as config_mod

    p = argparse.ArgumentParser(prog="python -m gradzip.fedsim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (config.json, rounds.csv, summary.json, PNGs)")
    p.add_argument("--config", default=None, help="JSON/TOML/YAML file of FedSimConfig fields (flags override it)")
    p.add_argument("--format", default="csv", choices=["csv", "jsonl"], help="per-round table format")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--distributed", action="store_true", help="spread clients over torch.distributed ranks (torchrun)")
    p.add_argument("--backend", default="gloo", help="process-group backend with --distributed (gloo | nccl)")
    config_mod.add_arguments(p)
    ns = p.parse_args(argv)
    try:
        cfg = config_mod.from_args(ns, ns.config)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import torch

    from . import engine, output

    dist = None
    if ns.distributed:
        import torch.distributed as dist

        if "RANK" not in os.environ:
            print("error: --distributed needs torchrun (RANK/WORLD_SIZE/MASTER_ADDR not set)", file=sys.stderr)
            return 2
        if ns.backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(ns.backend)
    try:
        # Configuration, data and pairing errors surface here, before the first round.
        summary = engine.run(cfg, ns.out, progress=not ns.no_progress, plots=not ns.no_plots, fmt=ns.format,
                             distributed=ns.distributed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist is not None and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    if not dist or int(os.environ.get("RANK", "0")) == 0:
        print(output.summary_line(summary))
        print(f"gradzip.fedsim: results in {os.path.abspath(ns.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
