"""The DDP hook's device path: a CUDA bucket is compressed, exchanged and decoded on the GPU, on the current stream,
with no host round trip (issue 8).

Used by ``gradzip.ddp.State`` when the bucket is a CUDA float32 tensor, the extension has CUDA kernels
(``gradzip._C.cuda_kernels``), the codec has them (``torch.ops.gradzip.cuda_supported``, i.e.
``Compressor::has_cuda()``: also ``scaled(<codec with kernels>)``, QSGD ``coding=elias`` and
``topk|randk:...+<quantizer with kernels>``) and keeps no state across calls (not low rank: codec_supported),
``granularity="bucket"`` and the bucket has at least ``min_compress_numel`` elements; everything else keeps the host path of ``_comm``.
Per bucket (keyed by DDP's bucket index and size; a size change resets the memories, logged once):

  worker   torch.ops.gradzip.cuda_step: the feedback rule (none / ef14 / ef21 / econtrol, all math in C++/CUDA)
           writes this rank's payload into a fixed slot (max_encoded_bytes rounded up to 16 bytes);
  collect  all_gather_into_tensor of the slots (NCCL, async);
  server   torch.ops.gradzip.cuda_decode_mean: the mean of the decoded payloads, accumulated onto h_bar for EF21 /
           EControl (D = h_bar) or written over the bucket (none / EF14 with gamma = 1).
EF21 / EControl send their first step uncompressed (init=uncompressed): an all_reduce of g / world, h = g, e = 0.
Device-side errors (a corrupted payload) go to an int32 status word per bucket that is checked, with one
synchronisation, every ``check_every`` steps (and by ``State.check_device_status()``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import torch
import torch.distributed as dist

log = logging.getLogger("gradzip.ddp")


def available() -> bool:
    try:
        from . import _C  # noqa: F401
        return bool(getattr(_C, "cuda_kernels", 0)) and hasattr(torch.ops.gradzip, "cuda_step")
    except Exception:  # pragma: no cover - import problems surface elsewhere
        return False


def codec_supported(spec: str) -> bool:
    """The codec has CUDA kernels and keeps no state across calls (lowrank's warm-started Q is per unit on the host
    path; the device step carries none, and a cold start every step would be another algorithm)."""
    if not (available() and bool(torch.ops.gradzip.cuda_supported(spec))):
        return False
    try:
        return not bool(torch.classes.gradzip.Codec(spec).traits(1 << 16)[5])
    except RuntimeError:  # traits refused for this size: let the host path report it
        return False


def resolve_eta(feedback: str, compressor: str, numel: int) -> float:
    """EControl's eta for this bucket: the number, or auto = min(0.1, delta), theory = delta / 400 (feedback.h)."""
    m = re.search(r"eta=([^,]+)", feedback)
    val = m.group(1) if m else "auto"
    if val in ("auto", "theory"):
        delta = float(torch.classes.gradzip.Codec(compressor).traits(numel)[1])
        return min(0.1, delta) if val == "auto" else delta / 400.0
    return float(val)


@dataclass
class BucketState:
    numel: int
    e: torch.Tensor
    h: torch.Tensor
    scratch: torch.Tensor
    hbar: torch.Tensor
    out: torch.Tensor
    status: torch.Tensor
    slot: int
    eta: float
    steps: int = 0
    gathered: Optional[torch.Tensor] = None  # world * slot bytes, reused every step (stream-ordered)


class CudaPath:
    def __init__(self, compressor: str, feedback: str, seed: int, check_every: int = 100) -> None:
        self.compressor = compressor
        self.feedback = feedback
        self.kind = feedback.split(":")[0]
        self.seed = seed
        self.check_every = check_every
        self.buckets: Dict[int, BucketState] = {}
        self._gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

    def _state(self, index: int, buf: torch.Tensor) -> BucketState:
        st = self.buckets.get(index)
        n = buf.numel()
        if st is not None and st.numel == n:
            return st
        if st is not None:
            log.warning("gradzip.ddp (CUDA): bucket %d changed size %d -> %d; its memories restart from zero",
                        index, st.numel, n)
        codec = torch.classes.gradzip.Codec(self.compressor)
        slot = (int(codec.max_encoded_bytes(n)) + 15) // 16 * 16
        z = lambda: torch.zeros(n, dtype=torch.float32, device=buf.device)  # noqa: E731
        needs_e = self.kind in ("ef14", "econtrol")
        needs_h = self.kind in ("ef21", "econtrol")
        empty = torch.empty(0, dtype=torch.float32, device=buf.device)
        st = BucketState(numel=n, e=z() if needs_e else empty, h=z() if needs_h else empty,
                         scratch=z() if needs_h else empty, hbar=z() if needs_h else empty,
                         out=torch.zeros(slot, dtype=torch.uint8, device=buf.device),
                         status=torch.zeros(1, dtype=torch.int32, device=buf.device), slot=slot,
                         eta=resolve_eta(self.feedback, self.compressor, n) if self.kind == "econtrol" else 0.0)
        self.buckets[index] = st
        return st

    def check(self) -> None:
        for st in self.buckets.values():
            torch.ops.gradzip.cuda_take_status(st.status)

    def launch(self, index: int, buf: torch.Tensor, group: Optional[dist.ProcessGroup], world: int, rank: int,
               step: int, on_done: Optional[Callable[[Dict[str, float]], None]]) -> torch.futures.Future:
        st = self._state(index, buf)
        m: Dict[str, float] = dict(bytes_sent=0.0, bytes_received=0.0, raw_bytes=float(buf.numel() * 4),
                                   payload_bytes=0.0, err2=0.0, norm2=0.0, encode_s=0.0, decode_s=0.0,
                                   compressed=1.0, uncompressed=0.0)
        if self.kind in ("ef21", "econtrol") and st.steps == 0:
            # Uncompressed first step: h = g, e = 0, h_bar = mean g.
            st.h.copy_(buf)
            if self.kind == "econtrol":
                st.e.zero_()
            buf.div_(world)
            fut = dist.all_reduce(buf, group=group, async_op=True).get_future()
            st.steps += 1
            m["bytes_sent"] = float(buf.numel() * 4)
            m["bytes_received"] = float((world - 1) * buf.numel() * 4)
            m["payload_bytes"] = m["bytes_sent"]

            def first(f: torch.futures.Future) -> torch.Tensor:
                f.value()
                st.hbar.copy_(buf)
                if on_done is not None:
                    on_done(m)
                return buf

            return fut.then(first)
        written = int(torch.ops.gradzip.cuda_step(buf, st.e, st.h, st.scratch, st.out, st.status, self.compressor,
                                                  self.kind, st.eta, self.seed, step, rank, index))
        gathered = st.gathered
        if gathered is None or gathered.numel() != world * st.slot:
            gathered = st.gathered = torch.empty(world * st.slot, dtype=torch.uint8, device=buf.device)
        fut = self._gather(gathered, st.out, group=group, async_op=True).get_future()
        st.steps += 1
        m["payload_bytes"] = float(written)
        m["bytes_sent"] = float(st.slot)
        m["bytes_received"] = float((world - 1) * st.slot)
        check_now = self.check_every > 0 and st.steps % self.check_every == 0

        def finish(f: torch.futures.Future) -> torch.Tensor:
            f.value()
            if self.kind in ("ef21", "econtrol"):
                torch.ops.gradzip.cuda_decode_mean(gathered, st.slot, world, st.hbar, st.status, self.compressor, True,
                                                   self.seed, step, index)
                buf.copy_(st.hbar)
            else:
                torch.ops.gradzip.cuda_decode_mean(gathered, st.slot, world, buf, st.status, self.compressor, False,
                                                   self.seed, step, index)
            if check_now:
                torch.ops.gradzip.cuda_take_status(st.status)
            if on_done is not None:
                on_done(m)
            return buf

        return fut.then(finish)


def _unused(*_: Any) -> None:  # keeps linters quiet about typing-only imports
    return None
