#!/usr/bin/env python3
"""Writes the fixture of the LibTorch test (tests/torch_ext/libtorch_sync_test.cc): what the Python DDP hook did.

    python tests/torch_ext/libtorch_fixture.py OUT.pt
    python tests/torch_ext/libtorch_fixture.py --check-cpp-state OUT.pt

Two gloo ranks (dist_util.run_world) train scenarios.make_model() (a 4-layer MLP, 22314 parameters; DDP with
bucket_cap_mb=0.04 rebuilds it into two buckets after iteration 0) for STEPS steps per case with gradzip.ddp.hook
behind scenarios.Spy, which records every bucket's parameters, input buffer and output buffer. Per case the fixture
holds, per rank: every step's per-parameter gradient before the hook (the bucket input) and after it (the bucket
output), the bucket layout of the compressed steps (parameter indices in bucket order; it must not change after the
warm-up, or no C++ replay could follow the units), and the hook's state_dict() after SAVE_AT steps.

Written with torch.save (read in C++ with torch::pickle_load):
    {"world": 2, "steps": STEPS, "save_at": SAVE_AT, "shapes": [[...] per parameter],
     "cases": {name: {"compressor", "feedback", "granularity", "warmup_steps", "min_compress_numel", "small_dtype",
                      "seed", "buckets": [[int]], "inputs": [rank][step][param] Tensor, "outputs": same,
                      "states": [rank] state dict, "bytes_sent": [rank] float (hook totals)}}}
If torch or the gradzip package cannot be imported, writes the reason to OUT.skip instead (the C++ test then
skips).

With --check-cpp-state (run after the C++ test, which writes GradSync's own state after SAVE_AT steps to
OUT.cpp_state/<case>.rank<r>.pt): per case, the same two-rank training runs again with the Python hook, the C++
state is loaded into the hook after SAVE_AT steps, and every later bucket output must equal the fixture's bit for
bit (the bucket inputs too, which shows the rerun follows the recorded trajectory). Exit status 1 on a mismatch.
"""

import os
import sys
from typing import Any, Dict, List

STEPS = 6
SAVE_AT = 3
# name -> gradzip.ddp.State options. warmup_steps >= 1 everywhere: DDP rebuilds its buckets after iteration 0, and a
# rebuild at a compressed step replaces units, which a fixed-layout replay cannot follow.
CASES: Dict[str, Dict[str, Any]] = {
    # EControl's first compressed step is uncompressed and linear (all_reduce of the identity payloads).
    "topk_econtrol_bucket": dict(compressor="topk:ratio=0.05", feedback="econtrol", granularity="bucket",
                                 warmup_steps=1, min_compress_numel=4096),
    # One unit per large parameter, the small ones raw, in the same bucket.
    "sign_ef14_param": dict(compressor="sign", feedback="ef14", granularity="param", warmup_steps=2,
                            min_compress_numel=1000),
    # Variable-size payloads: the hook gathers max-size slots, the C++ helper an allgatherv of exact sizes.
    "qsgd_elias_none": dict(compressor="qsgd:levels=7,coding=elias", feedback="none", granularity="bucket",
                            warmup_steps=1, min_compress_numel=1000),
    # Shared-seed Rand-K: linear, all-reduce of the kept values.
    "randk_shared_none": dict(compressor="randk:ratio=0.1", feedback="none", granularity="bucket", warmup_steps=1,
                              min_compress_numel=1000),
    # Stateful codec (warm-started Q) with EF14.
    "lowrank_ef14": dict(compressor="lowrank:rank=2", feedback="ef14", granularity="bucket", warmup_steps=1,
                         min_compress_numel=1000),
    # EF21 per parameter, small parameters in float16 on the wire.
    "topk_ef21_fp16_raw": dict(compressor="topk:ratio=0.1", feedback="ef21", granularity="param", warmup_steps=1,
                               min_compress_numel=1000, small_dtype="fp16"),
    "identity_none": dict(compressor="identity", feedback="none", granularity="bucket", warmup_steps=1,
                          min_compress_numel=0),
}


def record_case(rank: int, world: int, name: str, options: Dict[str, Any]) -> Dict[str, Any]:
    """Runs one case on this rank (inside dist_util's spawned process) and returns what the C++ test replays."""
    import torch

    import gradzip
    import scenarios as S

    opts = dict(options)
    opts.setdefault("small_dtype", "fp32")
    state = gradzip.ddp.State(opts["compressor"], opts["feedback"], warmup_steps=opts["warmup_steps"],
                              min_compress_numel=opts["min_compress_numel"], small_dtype=opts["small_dtype"],
                              seed=11, granularity=opts["granularity"], track_error=False)
    model = S.make_model(seed=5)
    params = list(model.parameters())
    index_of = {p.data_ptr(): i for i, p in enumerate(params)}
    net, opt, spy = S.train(model, state, range(SAVE_AT), spy=True)
    saved = state.state_dict()  # fresh tensors (Unit.state() copies)
    S.run_steps(net, opt, range(SAVE_AT, STEPS), rank)
    assert spy is not None

    inputs: List[List[Any]] = [[None] * len(params) for _ in range(STEPS)]
    outputs: List[List[Any]] = [[None] * len(params) for _ in range(STEPS)]
    layouts: Dict[int, Dict[int, List[int]]] = {}
    for c in spy.calls:
        ids = [index_of[p] for p in c["ptrs"]]
        off = 0
        for i, n in zip(ids, c["numels"]):
            shape = params[i].shape
            inputs[c["step"]][i] = c["input"][off:off + n].reshape(shape).clone()
            outputs[c["step"]][i] = c["output"][off:off + n].reshape(shape).clone()
            off += n
        if c["step"] >= opts["warmup_steps"]:
            layouts.setdefault(c["step"], {})[c["index"]] = ids
    for t in range(STEPS):
        missing = [i for i, x in enumerate(inputs[t]) if x is None]
        assert not missing, f"{name}: step {t}: no hook call covered parameters {missing}"
    first = layouts[opts["warmup_steps"]]
    buckets = [first[k] for k in sorted(first)]
    for t, lay in layouts.items():
        assert [lay[k] for k in sorted(lay)] == buckets, f"{name}: DDP's bucket layout changed at step {t}"
    opts["seed"] = 11
    return {"options": opts, "buckets": buckets, "inputs": inputs, "outputs": outputs, "state": saved,
            "bytes_sent": float(state.totals()["bytes_sent"]), "shapes": [list(p.shape) for p in params]}


def _per_param(spy: Any, params: List[Any], first_step: int) -> Dict[str, List[List[Any]]]:
    index_of = {p.data_ptr(): i for i, p in enumerate(params)}
    got: Dict[str, List[List[Any]]] = {k: [[None] * len(params) for _ in range(STEPS)] for k in ("input", "output")}
    for c in spy.calls:
        if c["step"] < first_step:
            continue
        off = 0
        for p, n in zip(c["ptrs"], c["numels"]):
            i = index_of[p]
            for k in got:
                got[k][c["step"]][i] = c[k][off:off + n].reshape(params[i].shape).clone()
            off += n
    return got


def resume_case(rank: int, world: int, name: str, options: Dict[str, Any], state_file: str,
                inputs: List[List[Any]], outputs: List[List[Any]]) -> List[str]:
    """Trains like record_case, loads the C++ state from ``state_file`` after SAVE_AT steps, and returns the
    differences from the fixture's later inputs and outputs (empty: bit-identical)."""
    import torch

    import gradzip
    import scenarios as S

    state = gradzip.ddp.State(options["compressor"], options["feedback"], warmup_steps=options["warmup_steps"],
                              min_compress_numel=options["min_compress_numel"], small_dtype=options["small_dtype"],
                              seed=options["seed"], granularity=options["granularity"], track_error=False)
    model = S.make_model(seed=5)
    params = list(model.parameters())
    net, opt, spy = S.train(model, state, range(SAVE_AT), spy=True)
    state.load_state_dict(torch.load(state_file, weights_only=False))
    if state.step != SAVE_AT:
        return [f"{name}: the C++ state is at step {state.step}, expected {SAVE_AT}"]
    S.run_steps(net, opt, range(SAVE_AT, STEPS), rank)
    got = _per_param(spy, params, SAVE_AT)
    bad: List[str] = []
    for t in range(SAVE_AT, STEPS):
        for kind, want in (("input", inputs), ("output", outputs)):
            for i, w in enumerate(want[t]):
                g = got[kind][t][i]
                if g is None or not torch.equal(g, w):
                    diff = "missing" if g is None else f"max |diff| {float((g - w).abs().max()):.3g}"
                    bad.append(f"{name}: rank {rank} step {t} parameter {i}: bucket {kind} differs ({diff})")
    return bad


def check_cpp_state(fixture: str) -> int:
    import torch

    import dist_util
    import libtorch_fixture as me

    if os.path.exists(fixture + ".skip"):
        print(f"libtorch_fixture: skipped: {open(fixture + '.skip').read().strip()}")
        return 0
    fx = torch.load(fixture, weights_only=False)
    if (fx["steps"], fx["save_at"]) != (STEPS, SAVE_AT):
        print(f"libtorch_fixture: {fixture} was written with other STEPS/SAVE_AT; regenerate it", file=sys.stderr)
        return 1
    world = fx["world"]
    sdir = fixture + ".cpp_state"
    scenarios = []
    for name, case in fx["cases"].items():
        for r in range(world):
            if not os.path.exists(os.path.join(sdir, f"{name}.rank{r}.pt")):
                print(f"libtorch_fixture: {sdir}/{name}.rank{r}.pt is missing (run the C++ test first)",
                      file=sys.stderr)
                return 1
        # each rank reads its own file and its own recorded inputs/outputs
        scenarios.append((name, me._resume_on_rank, {"name": name, "case": case, "sdir": sdir}))
    results = dist_util.run_world(world, scenarios, timeout_s=120.0)
    bad = [m for name in fx["cases"] for per_rank in [dist_util.results_of(results, name)] for r in per_rank
           for m in r]
    for m in bad[:20]:
        print(m, file=sys.stderr)
    if bad:
        print(f"libtorch_fixture: {len(bad)} mismatches after loading the C++ state", file=sys.stderr)
        return 1
    print(f"libtorch_fixture: the Python hook resumed from GradSync's state in {len(fx['cases'])} cases x "
          f"{world} ranks; steps {SAVE_AT}..{STEPS - 1} bit-identical")
    return 0


def _resume_on_rank(rank: int, world: int, name: str, case: Dict[str, Any], sdir: str) -> List[str]:
    opts = {k: case[k] for k in ("compressor", "feedback", "granularity", "warmup_steps", "min_compress_numel",
                                 "small_dtype", "seed")}
    return resume_case(rank, world, name, opts, os.path.join(sdir, f"{name}.rank{rank}.pt"),
                       case["inputs"][rank], case["outputs"][rank])


def main(argv: List[str]) -> int:
    if len(argv) == 3 and argv[1] == "--check-cpp-state":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        return check_cpp_state(argv[2])
    if len(argv) != 2:
        print(__doc__.splitlines()[2].strip(), file=sys.stderr)
        return 2
    out = argv[1]
    try:
        import torch
    except ImportError as e:
        return _skip(out, f"torch is not importable by {sys.executable} ({e})")
    try:
        import gradzip  # noqa: F401
    except Exception as e:  # not installed, or built against another torch
        return _skip(out, f"the gradzip Python package is not importable by {sys.executable} ({e}); build it with "
                          "`pip install --no-build-isolation -e .`")
    if os.path.exists(out + ".skip"):
        os.remove(out + ".skip")

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    import dist_util
    import libtorch_fixture as me  # the spawned ranks import record_case from this module by name

    world = 2
    scenarios = [(name, me.record_case, {"name": name, "options": opts}) for name, opts in CASES.items()]
    results = dist_util.run_world(world, scenarios, timeout_s=120.0)
    cases: Dict[str, Any] = {}
    shapes = None
    for name in CASES:
        per_rank = dist_util.results_of(results, name)
        shapes = per_rank[0]["shapes"]
        assert all(r["buckets"] == per_rank[0]["buckets"] for r in per_rank), f"{name}: ranks disagree on buckets"
        cases[name] = dict(per_rank[0]["options"], buckets=per_rank[0]["buckets"],
                           inputs=[r["inputs"] for r in per_rank], outputs=[r["outputs"] for r in per_rank],
                           states=[r["state"] for r in per_rank], bytes_sent=[r["bytes_sent"] for r in per_rank])
    torch.save({"world": world, "steps": STEPS, "save_at": SAVE_AT, "shapes": shapes, "cases": cases}, out)
    print(f"libtorch_fixture: wrote {len(cases)} cases x {world} ranks x {STEPS} steps to {out}")
    return 0


def _skip(out: str, reason: str) -> int:
    """No fixture can be made here: OUT.skip tells the C++ test why (it then skips instead of failing). With
    GRADZIP_REQUIRE_TORCH_FIXTURE=1 (scripts/test.sh, where the package was just installed) it is an error."""
    if os.environ.get("GRADZIP_REQUIRE_TORCH_FIXTURE") == "1":
        print(f"libtorch_fixture: error: {reason} (GRADZIP_REQUIRE_TORCH_FIXTURE=1)", file=sys.stderr)
        return 1
    print(f"libtorch_fixture: skipped: {reason}")
    with open(out + ".skip", "w") as f:
        f.write(reason + "\n")
    if os.path.exists(out):
        os.remove(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
