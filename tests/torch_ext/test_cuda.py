"""GPU tests: DDP over NCCL with CUDA buckets (moved through the CPU ops). Skipped cleanly without CUDA."""

import pytest
import torch

import dist_util
import scenarios as S

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("compressor,feedback", [("topk:ratio=0.05", "econtrol"), ("qsgd:levels=7,coding=elias", "none"),
                                                 ("randk:ratio=0.1", "none"),
                                                 ("scaled(randk:ratio=0.1,shared=0)", "econtrol"),
                                                 ("topk:ratio=0.05+qsgd:levels=7", "ef14"),
                                                 ("randk:ratio=0.1,shared=0+qsgd:levels=7", "none")])
def test_ddp_hook_on_cuda_with_nccl(compressor, feedback):
    world = min(2, torch.cuda.device_count())
    res = dist_util.run_world(world, [("cuda", S.cuda_hook, {"compressor": compressor, "feedback": feedback})],
                              backend="nccl")
    for r in dist_util.results_of(res, "cuda"):
        assert r["finite"] and r["identical_params"]
        assert r["metrics"]["compressed_buckets"] >= 1


needs_cuda_ops = pytest.mark.skipif(
    not torch.cuda.is_available() or not hasattr(torch.ops.gradzip, "cuda_step"),
    reason="needs a CUDA device and gradzip built with CUDA kernels")


@needs_cuda_ops
@pytest.mark.parametrize("spec", ["identity", "fp16", "bf16", "sign", "natural", "qsgd:levels=7", "topk:ratio=0.01",
                                  "randk:ratio=0.05", "randk:ratio=0.1,shared=0", "scaled(qsgd:levels=7)",
                                  "topk:ratio=0.01+qsgd:levels=7", "randk:ratio=0.05+qsgd:levels=7",
                                  "randk:ratio=0.1,shared=0,mode=contractive+natural",
                                  "scaled(randk:ratio=0.05+qsgd:levels=7)", "randk:ratio=0.05+scaled(qsgd:levels=7)"])
@pytest.mark.parametrize("n", [1, 4097, 1000003])
def test_cuda_ops_match_cpu_ops_bitwise(spec, n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=g)
    ref = torch.ops.gradzip.encode(x, spec, 7, 3, 1, 2)
    dev = torch.ops.gradzip.encode(x.cuda(), spec, 7, 3, 1, 2)
    assert dev.is_cuda and torch.equal(dev.cpu(), ref)
    y_ref = torch.ops.gradzip.decode(ref, spec, n, 7, 3, 1, 2)
    y_dev = torch.ops.gradzip.decode(ref.cuda(), spec, n, 7, 3, 1, 2)
    assert torch.equal(y_dev.cpu().view(torch.int32), y_ref.view(torch.int32))


@needs_cuda_ops
def test_cuda_ops_errors():
    x = torch.ones(100, device="cuda")
    x[5] = float("nan")
    with pytest.raises(RuntimeError, match="NonFinite"):
        torch.ops.gradzip.encode(x, "fp16")
    p = torch.ops.gradzip.encode(torch.ones(100, device="cuda"), "topk:k=3")
    bad = p.clone()
    bad[0] ^= 1
    with pytest.raises(RuntimeError, match="InvalidPayload"):
        torch.ops.gradzip.decode(bad, "topk:k=3", 100)
    assert torch.ops.gradzip.cuda_supported("topk:ratio=0.01")
    assert torch.ops.gradzip.cuda_supported("qsgd:levels=7,coding=elias")  # chunked Elias wire (issue 8)
    assert torch.ops.gradzip.cuda_supported("scaled(qsgd:levels=7)")
    assert torch.ops.gradzip.cuda_supported("topk:ratio=0.01+qsgd:levels=7")
    assert torch.ops.gradzip.cuda_supported("randk:ratio=0.01+qsgd:levels=7")
    assert not torch.ops.gradzip.cuda_supported("randk:ratio=0.01+qsgd:levels=7,coding=elias")
    # lowrank has kernels, but its warm-started Q is state the hook's device step does not carry: host path
    from gradzip import _cuda_path

    assert torch.ops.gradzip.cuda_supported("lowrank:rank=2")
    assert not _cuda_path.codec_supported("lowrank:rank=2") and _cuda_path.codec_supported("topk:ratio=0.01")
    g = torch.randn(4096, device="cuda")
    out = torch.empty(1 << 16, dtype=torch.uint8, device="cuda")
    st = torch.zeros(1, dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match="keeps state across calls"):
        torch.ops.gradzip.cuda_step(g, g, g, g, out, st, "lowrank:rank=2", "none", 0.0, 0, 0, 0, 0)
