"""H100 benchmarks that need torch (run by tests/gpu/run_gpu_checks.sh after the extension is built):

  * torch.topk(|x|, 1%) at 25M and 100M floats (CUDA events, median), the baseline for gradzip's Top-K encode
    (timed in the same run by gradzip_cuda_codecs_bench);
  * a DDP training step, world size 1 over NCCL, for an MLP with ~50M parameters: no hook, gradzip Top-K 1% + EControl
    (the device path: compression, exchange and decoding on the GPU), torch's PowerSGD hook (rank 4).
Writes JSON to --out and prints a table.
"""

import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.nn as nn


def cuda_median_ms(fn, iters=30, warmup=5):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def bench_topk(res):
    for n in (25_000_000, 100_000_000):
        x = torch.randn(n, device="cuda")
        k = n // 100
        ms = cuda_median_ms(lambda: torch.topk(x.abs(), k, sorted=False))
        copy = torch.empty_like(x)
        cms = cuda_median_ms(lambda: copy.copy_(x))
        res.append({"what": "torch.topk(|x|, 1%)", "numel": n, "ms": ms, "copy_ms": cms})
        print(f"torch.topk 1%   n={n:>11,}  {ms:8.4f} ms   (copy_ {cms:.4f} ms)")
        del x, copy


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 2048),
                         nn.ReLU(), nn.Linear(2048, 1024)).cuda()


def bench_ddp(res, batch, steps=40, warm=10):
    import gradzip
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd
    from torch.nn.parallel import DistributedDataParallel as DDP

    x = torch.randn(batch, 4096, device="cuda")
    target = torch.randn(batch, 1024, device="cuda")
    configs = ["none", "gradzip topk:ratio=0.01 + econtrol", "powersgd rank 4"]
    out = {}
    for cfg in configs:
        model = DDP(make_model(), bucket_cap_mb=25)
        state = None
        if cfg.startswith("gradzip"):
            state = gradzip.ddp.State(compressor="topk:ratio=0.01", feedback="econtrol", warmup_steps=1)
            model.register_comm_hook(state, gradzip.ddp.hook)
        elif cfg.startswith("powersgd"):
            ps = psgd.PowerSGDState(process_group=None, matrix_approximation_rank=4, start_powerSGD_iter=2)
            model.register_comm_hook(ps, psgd.powerSGD_hook)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        ts = []
        for i in range(steps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=False)
            loss = ((model(x) - target) ** 2).mean()
            loss.backward()
            opt.step()
            torch.cuda.synchronize()
            if i >= warm:
                ts.append((time.perf_counter() - t0) * 1e3)
        ms = statistics.median(ts)
        params = sum(p.numel() for p in model.parameters())
        extra = {}
        if state is not None:
            state.check_device_status()
            extra = {"device_path": bool(state._cuda), "metrics": state.last_metrics}
        out[cfg] = ms
        res.append({"what": "ddp_step", "batch": batch, "config": cfg, "median_ms": ms, "params": params, "loss": float(loss.detach()), **extra})
        print(f"DDP step batch {batch:>5} {cfg:<36} {ms:8.3f} ms  ({params:,} params, loss {float(loss.detach()):.4f}) {extra.get('device_path', '')}")
    base = out["none"]
    for cfg, ms in out.items():
        print(f"  batch {batch:>5} {cfg:<36} x{ms / base:.3f} of no hook")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="torch_bench.json")
    a = ap.parse_args()
    res = [{"device": torch.cuda.get_device_name(), "torch": torch.__version__}]
    bench_topk(res)
    torch.cuda.empty_cache()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("nccl", rank=0, world_size=1)
    for batch in (256, 4096):
        bench_ddp(res, batch)
    dist.destroy_process_group()
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
