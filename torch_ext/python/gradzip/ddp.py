"""gradzip as a DistributedDataParallel communication hook.

    state = gradzip.ddp.State(compressor="topk:ratio=0.01", feedback="econtrol", warmup_steps=10)
    model.register_comm_hook(state, gradzip.ddp.hook)

What happens to one bucket (all math in C++: gradzip._C):
  * steps < warmup_steps: plain averaging (all_reduce of the bucket / world), exactly torch's allreduce_hook;
  * otherwise the bucket is split into *units* (normally one unit = the whole bucket); each unit runs one
    error-feedback step (compress, update the memories) in C++; the payloads travel by all_gather (or all_reduce for
    linear payloads), and every rank decodes and averages all payloads in rank order into the bucket, so every rank
    applies the same direction;
  * units smaller than ``min_compress_numel`` elements travel uncompressed (``small_dtype`` "fp32": the bucket's own
    dtype; "fp16": float16 on the wire, like torch's fp16_compress_hook);
  * fp16/bf16 buckets are compressed in float32 and the result is written back in the bucket's dtype.

Units and DDP's bucket rebuild. State is keyed by *parameters*, not by bucket index: a unit is an ordered list of
parameter keys, and a parameter's key is (bucket index, position) of where DDP put it the first time this process
saw it (DDP's first-iteration layout is deterministic, so the keys are the same after a restart). When DDP rebuilds
its buckets after the first iteration (or whenever a bucket's parameters change), units whose parameters now lie in
one bucket are reused (gathered and scattered if needed); units split across buckets cannot be, and are replaced by
fresh units (their feedback memories restart from zero) with one WARNING on the ``gradzip.ddp`` logger per layout
change. No state is ever applied to parameters it was not built from. Use warmup_steps >= 1 to let DDP settle its
layout before any memory exists.

Checkpoints. ``state.state_dict()`` holds this rank's units (feedback memories, aggregator replica, lowrank Q, step
counters; randomness is counter-based, so (seed, step counters) is the whole generator state) and the step.
Save one per rank; after a restart, ``load_state_dict`` restores them and the first iteration (DDP's one-bucket
layout) processes each saved unit exactly as the uninterrupted run would have, so training continues with the same
parameters. Save between steps (after optimizer.step()), never during backward. A state saved by the C++
GradSync (gradzip/torch.h; ``torch.load`` reads its files) names parameters by GradSync's buckets: its units are
taken in id order by the first units of the same sizes this hook makes, as GradSync itself loads states, so resume
with DDP buckets equal to GradSync's (units of other sizes are dropped with the warning above).

Metrics: ``state.metrics()`` (the last completed step), ``state.totals()`` (cumulative), ``on_metrics`` (called once
per step with the same dict). Keys: step, bytes_sent, bytes_received, raw_bytes, payload_bytes, compression_ratio
(raw_bytes / bytes_sent), rel_error (sqrt(sum ||D(C(v)) - v||^2 / sum ||v||^2) over compressed units, None if none),
compressed_buckets, uncompressed_buckets, encode_s, decode_s. Bytes are per rank, see gradzip._comm.
"""

import logging
import math
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import torch
import torch.distributed as dist

from . import _comm, _cuda_path
from ._core import validate

__all__ = ["State", "hook"]

log = logging.getLogger("gradzip.ddp")

Key = Tuple[int, ...]  # (bucket index, position, numel[, step]) of a parameter's first appearance
_FORMAT = "gradzip.ddp.State/1"
_METRIC_SUMS = ("bytes_sent", "bytes_received", "raw_bytes", "payload_bytes", "err2", "norm2", "encode_s",
                "decode_s", "compressed", "uncompressed")


_GRADSYNC_WRITER = "gradzip::libtorch::GradSync"


@dataclass
class _Unit:
    uid: int
    keys: Tuple[Key, ...]
    numel: int
    obj: Any  # torch.classes.gradzip.Unit


class State:
    """Configuration and per-rank state of the gradzip DDP hook (pass it to ``register_comm_hook``).

    Args:
        compressor: compressor spec, e.g. "topk:ratio=0.01", "qsgd:bits=4", "sign", "lowrank:rank=4",
            "topk:ratio=0.01+qsgd:levels=4", "scaled(qsgd:bits=4)"; see gradzip.describe_compressors().
        feedback: "none", "ef14", "ef21[:init=...]", "econtrol[:eta=0.1|theory][,init=...]".
        warmup_steps: steps averaged uncompressed before compression starts.
        min_compress_numel: units with fewer elements travel uncompressed.
        small_dtype: wire dtype of uncompressed small units: "fp32" (the bucket's dtype, exact) or "fp16".
        group: process group (None: the default group).
        seed: seed of every random draw (shared by all ranks; per-rank streams differ by rank).
        track_error: compute rel_error each step (one extra decode per unit).
        on_metrics: called with the metrics dict after every completed step.
        granularity: "bucket" (one compression unit per DDP bucket: one norm / scale / Top-K budget for the whole
            bucket) or "param" (one unit per parameter tensor, all of a bucket's payloads in one collective:
            per-layer scales, which scaled sign and QSGD need when layers differ in magnitude).

    Raises ValueError for an invalid compressor, feedback or pairing (the message lists what is valid).
    """

    def __init__(self, compressor: str = "topk:ratio=0.01", feedback: str = "ef14", warmup_steps: int = 0,
                 min_compress_numel: int = 4096, small_dtype: str = "fp32",
                 group: Optional[dist.ProcessGroup] = None, seed: int = 0, track_error: bool = True,
                 on_metrics: Optional[Callable[[Dict[str, Any]], None]] = None, granularity: str = "bucket") -> None:
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"gradzip.ddp.State: warmup_steps={warmup_steps!r} must be an int >= 0")
        if isinstance(min_compress_numel, bool) or not isinstance(min_compress_numel, int) or min_compress_numel < 0:
            raise ValueError(f"gradzip.ddp.State: min_compress_numel={min_compress_numel!r} must be an int >= 0")
        if granularity not in ("bucket", "param"):
            raise ValueError(f"gradzip.ddp.State: granularity={granularity!r} must be 'bucket' or 'param'")
        if small_dtype not in ("fp32", "fp16"):
            raise ValueError(f"gradzip.ddp.State: small_dtype={small_dtype!r} must be 'fp32' or 'fp16'")
        if not isinstance(seed, int) or seed < 0 or seed >= 1 << 64:
            raise ValueError(f"gradzip.ddp.State: seed={seed!r} must be an int in [0, 2^64)")
        # A representative size for the pairing check (the per-unit check runs again when units are made).
        self.compressor, self.feedback = validate(compressor, feedback, max(min_compress_numel, 1 << 16))
        self.warmup_steps = warmup_steps
        self.min_compress_numel = min_compress_numel
        self.small_dtype = small_dtype
        self.group = group
        self.seed = seed
        self.track_error = track_error
        self.on_metrics = on_metrics
        self.granularity = granularity
        self.step = 0  # optimizer steps (hook rounds) completed

        self._rank: Optional[int] = None
        self._world: Optional[int] = None
        self._pkeys: Dict[int, Key] = {}  # data_ptr -> key
        self._used_keys: Set[Key] = set()
        self._units: Dict[int, _Unit] = {}
        # Units loaded from a C++ GradSync state (its keys name GradSync's buckets, not this process's DDP layout):
        # adopted in id order by the first units of matching size this hook makes (_build_plan).
        self._adopt: List[_Unit] = []
        self._next_uid = 0
        self._plans: Dict[int, _comm.BufferPlan] = {}
        self._raw_keys: Set[Key] = set()
        self._raw_order: Dict[Key, int] = {}
        self._step_raw_keys: List[Key] = []
        self._step_units: Set[int] = set()
        self._layout_changed = False
        self._lock = threading.Lock()
        self._open: Dict[int, Dict[str, Any]] = {}
        self._last: Dict[str, Any] = {}
        self._totals: Dict[str, float] = {k: 0.0 for k in _METRIC_SUMS}
        self._totals["steps"] = 0.0
        # Device path for CUDA buckets (_cuda_path.py); set False to force the host path.
        self.cuda_path = True
        self._cuda: Any = None

    # ------------------------------------------------------------------ public API
    @property
    def rank(self) -> int:
        self._ensure_group()
        assert self._rank is not None
        return self._rank

    @property
    def world_size(self) -> int:
        self._ensure_group()
        assert self._world is not None
        return self._world

    def metrics(self) -> Dict[str, Any]:
        """Metrics of the last completed step ({} before the first)."""
        with self._lock:
            return dict(self._last)

    @property
    def last_metrics(self) -> Dict[str, Any]:
        return self.metrics()

    def totals(self) -> Dict[str, Any]:
        """Cumulative bytes and times over all completed steps (keys as in metrics(), plus steps)."""
        with self._lock:
            t: Dict[str, Any] = {k: v for k, v in self._totals.items() if k not in ("err2", "norm2")}
        t["compression_ratio"] = t["raw_bytes"] / t["bytes_sent"] if t["bytes_sent"] else None
        return t

    def num_units(self) -> int:
        return len(self._units)

    def memories(self) -> Dict[int, List[torch.Tensor]]:
        """Copies of each unit's [e, h_i or G_i, hbar or Gbar] (empty tensors where the algorithm has none)."""
        return {u.uid: list(u.obj.memories()) for u in self._units.values()}

    def state_dict(self) -> Dict[str, Any]:
        """This rank's state (save one per rank). Call between steps."""
        units = []
        for u in sorted(self._units.values(), key=lambda u: u.uid):
            units.append({"id": u.uid, "keys": [list(k) for k in u.keys], "numel": u.numel,
                          "state": list(u.obj.state())})
        return {"format": _FORMAT, "compressor": self.compressor, "feedback": self.feedback, "seed": self.seed,
                "rank": self.rank, "world_size": self.world_size, "step": self.step, "next_unit_id": self._next_uid,
                "warmup_steps": self.warmup_steps, "min_compress_numel": self.min_compress_numel,
                "units": units,
                "raw_keys": [list(k) for k in sorted(self._raw_keys, key=lambda k: self._raw_order.get(k, 0))]}

    def load_state_dict(self, sd: Dict[str, Any]) -> None:
        """Restores state_dict() of the same rank, compressor and feedback (ValueError otherwise)."""
        if not isinstance(sd, dict) or sd.get("format") != _FORMAT:
            raise ValueError(f"gradzip.ddp.State.load_state_dict: not a {_FORMAT} state dict "
                             f"(format={sd.get('format') if isinstance(sd, dict) else type(sd).__name__!r})")
        if (sd["compressor"], sd["feedback"]) != (self.compressor, self.feedback):
            raise ValueError(f"gradzip.ddp.State.load_state_dict: the state was saved with compressor="
                             f"{sd['compressor']!r}, feedback={sd['feedback']!r}, but this State runs compressor="
                             f"{self.compressor!r}, feedback={self.feedback!r}")
        if (sd["rank"], sd["world_size"]) != (self.rank, self.world_size):
            raise ValueError(f"gradzip.ddp.State.load_state_dict: the state belongs to rank {sd['rank']} of "
                             f"{sd['world_size']}, this is rank {self.rank} of {self.world_size} (feedback memories "
                             "are per rank: load each rank's own file)")
        units: Dict[int, _Unit] = {}
        for rec in sd["units"]:
            uid, numel = int(rec["id"]), int(rec["numel"])
            obj = torch.classes.gradzip.Unit(self.compressor, self.feedback, numel, self.rank, self.world_size,
                                             int(sd["seed"]), uid, 1.0)
            obj.load_state([t.cpu() for t in rec["state"]])
            units[uid] = _Unit(uid, tuple(tuple(int(x) for x in k) for k in rec["keys"]), numel, obj)
        self.seed = int(sd["seed"])
        self.step = int(sd["step"])
        self._next_uid = int(sd["next_unit_id"])
        self._units = units
        # GradSync (C++, gradzip/torch.h) names parameters by its own buckets and matches saved units by order and
        # size; do the same with its states.
        self._adopt = sorted(units.values(), key=lambda u: u.uid) if sd.get("writer") == _GRADSYNC_WRITER else []
        raw_keys = [tuple(int(x) for x in k) for k in sd["raw_keys"]]
        self._raw_keys = set(raw_keys)
        self._raw_order = {k: i for i, k in enumerate(raw_keys)}
        self._plans.clear()
        self._step_units.clear()
        self._step_raw_keys.clear()

    # ------------------------------------------------------------------ hook internals
    def _ensure_group(self) -> None:
        if self._rank is None:
            if not dist.is_available() or not dist.is_initialized():
                raise RuntimeError("gradzip.ddp.State: torch.distributed is not initialized")
            self._rank = dist.get_rank(self.group)
            self._world = dist.get_world_size(self.group)

    def _key_of(self, p: torch.Tensor, index: int, pos: int) -> Key:
        ptr = p.data_ptr()
        k = self._pkeys.get(ptr)
        if k is None or k[2] != p.numel():
            k = (index, pos, p.numel())
            if k in self._used_keys:  # first seen in a later step at a position another parameter already named
                k = (index, pos, p.numel(), self.step)
            self._pkeys[ptr] = k
            self._used_keys.add(k)
        return k

    def _new_unit(self, keys: List[Key]) -> _Unit:
        numel = sum(k[2] for k in keys)
        if self._adopt and self._adopt[0].numel == numel:  # the next unit of a GradSync state, renamed
            u = self._adopt.pop(0)
            u.keys = tuple(keys)
            return u
        self._adopt = []  # out of step with the saved units: the rest are dropped at the end of the step
        uid = self._next_uid
        self._next_uid += 1
        obj = torch.classes.gradzip.Unit(self.compressor, self.feedback, numel, self.rank, self.world_size,
                                         self.seed, uid, 1.0)
        u = _Unit(uid, tuple(keys), numel, obj)
        self._units[uid] = u
        return u

    def _build_plan(self, bucket: "dist.GradBucket", buf: torch.Tensor,
                    signature: Tuple[int, ...]) -> _comm.BufferPlan:
        index = bucket.index()
        params = bucket.parameters()
        where: Dict[Key, Tuple[int, int]] = {}
        keys: List[Key] = []
        off = 0
        for pos, p in enumerate(params):
            k = self._key_of(p, index, pos)
            keys.append(k)
            where[k] = (off, p.numel())
            off += p.numel()
        if off != buf.numel():
            raise RuntimeError(f"gradzip.ddp: bucket {index} holds {buf.numel()} elements but its parameters add up "
                               f"to {off}; unsupported bucket layout")
        reusable = [u for u in sorted(self._units.values(), key=lambda u: u.uid) if all(k in where for k in u.keys)]
        reused_ids = {u.uid for u in reusable}
        self._adopt = [u for u in self._adopt if u.uid not in reused_ids]
        covered = {k for u in reusable for k in u.keys}
        leftover = [k for k in keys if k not in covered]
        raw = [k for k in leftover if k in self._raw_keys]
        rest = [k for k in leftover if k not in self._raw_keys]
        units = list(reusable)
        if self.granularity == "param":
            for k in rest:  # one unit per parameter tensor: per-layer norms, scales and Top-K budgets
                if k[2] >= max(self.min_compress_numel, 1):
                    units.append(self._new_unit([k]))
                else:
                    raw.append(k)
        elif rest:
            if sum(k[2] for k in rest) >= max(self.min_compress_numel, 1):
                units.append(self._new_unit(rest))
            else:
                raw.extend(rest)
        plan = _comm.BufferPlan(numel=buf.numel(), signature=signature,
                                raw_wire=torch.float16 if self.small_dtype == "fp16" else None)
        if units:
            cplan = torch.classes.gradzip.Plan(buf.numel(), self.world_size)
            for u in units:
                segs = _comm.merge_segments([where[k] for k in u.keys])
                cplan.add(u.obj, [x for s in segs for x in s])
            plan.cplan = cplan
            plan.unit_ids = [u.uid for u in units]
        if raw:
            # Known raw keys keep the order of the step they were last sent in, so that a restart's first (one-bucket)
            # iteration all-reduces the same elements in the same order (same gloo/NCCL chunking, same bits).
            raw.sort(key=lambda k: (self._raw_order.get(k, len(self._raw_order)), keys.index(k)))
            plan.raw = _comm.merge_segments([where[k] for k in raw])
            plan.raw_keys = raw
        if index in self._plans:
            self._layout_changed = True
        log.info("gradzip.ddp: bucket %d (%d elements) -> units %s (reused %d), %d uncompressed elements",
                 index, buf.numel(), plan.unit_ids, len(reusable), sum(n for _, n in plan.raw))
        return plan

    def _warmup_plan(self, numel: int) -> _comm.BufferPlan:
        return _comm.BufferPlan(numel=numel, raw=[(0, numel)])

    def _run(self, bucket: dist.GradBucket) -> torch.futures.Future:
        self._ensure_group()
        buf = bucket.buffer()
        step = self.step
        try:
            if step >= self.warmup_steps and self._use_cuda_path(buf):
                with self._lock:
                    rec = self._open.setdefault(step, {"launched": 0, "completed": 0, "closed": False,
                                                       **{k: 0.0 for k in _METRIC_SUMS}})
                    rec["launched"] += 1
                assert self._cuda is not None
                return self._cuda.launch(bucket.index(), buf, self.group, self.world_size, self.rank, step,
                                         lambda m, s=step: self._bucket_done(s, m))
            if step < self.warmup_steps:
                # Still name the parameters now: keys come from this process's first layout.
                for pos, p in enumerate(bucket.parameters()):
                    self._key_of(p, bucket.index(), pos)
                plan = self._warmup_plan(buf.numel())
            else:
                signature = tuple(p.data_ptr() for p in bucket.parameters())
                plan = self._plans.get(bucket.index())
                if plan is None or plan.signature != signature or plan.numel != buf.numel():
                    plan = self._build_plan(bucket, buf, signature)
                    self._plans[bucket.index()] = plan
                self._step_units.update(plan.unit_ids)
                self._step_raw_keys.extend(plan.raw_keys)
            with self._lock:
                rec = self._open.setdefault(step, {"launched": 0, "completed": 0, "closed": False,
                                                   **{k: 0.0 for k in _METRIC_SUMS}})
                rec["launched"] += 1
            fut = _comm.launch(plan, buf, self.group, self.world_size, self.track_error,
                               lambda m, s=step: self._bucket_done(s, m))
        finally:
            if bucket.is_last():
                self._end_step(step)
        return fut

    def _use_cuda_path(self, buf: torch.Tensor) -> bool:
        """Whether this bucket takes the device path (_cuda_path.py): CUDA float32 bucket, CUDA kernels for the codec,
        granularity="bucket", at least min_compress_numel elements, EF21/EControl with the default init."""
        if not (self.cuda_path and buf.is_cuda and buf.dtype == torch.float32 and self.granularity == "bucket"
                and buf.numel() >= max(self.min_compress_numel, 1)):
            return False
        if self._cuda is None:
            kind = self.feedback.split(":")[0]
            ok = (kind in ("none", "ef14", "ef21", "econtrol") and "init=compressed" not in self.feedback
                  and "init=zero" not in self.feedback and _cuda_path.codec_supported(self.compressor))
            self._cuda = _cuda_path.CudaPath(self.compressor, self.feedback, self.seed) if ok else False
        return bool(self._cuda)

    def check_device_status(self) -> None:
        """Raises if a CUDA decode found a corrupted payload since the last check (synchronises the stream)."""
        if self._cuda:
            self._cuda.check()

    def _end_step(self, step: int) -> None:
        if step >= self.warmup_steps:
            stale = [u for uid, u in self._units.items() if uid not in self._step_units]
            for u in stale:
                del self._units[u.uid]
            if stale:
                log.warning("gradzip.ddp: DDP's bucket layout changed at step %d (DDP rebuilds its buckets after the "
                            "first iteration); %d unit(s) in use, %d unit(s) with %d elements no longer matched and "
                            "were dropped: their parameters got fresh units whose error-feedback memories start "
                            "from zero. Use warmup_steps >= 1 to avoid this.", step, len(self._step_units),
                            len(stale), sum(u.numel for u in stale))
            elif self._layout_changed:
                log.info("gradzip.ddp: DDP's bucket layout changed at step %d; all %d unit(s) were reused", step,
                         len(self._step_units))
            self._raw_keys = set(self._step_raw_keys)
            self._raw_order = {k: i for i, k in enumerate(self._step_raw_keys)}
            self._step_units.clear()
            self._step_raw_keys.clear()
            self._layout_changed = False
        self.step = step + 1
        self._close(step)

    # ------------------------------------------------------------------ metrics
    def _bucket_done(self, step: int, m: Dict[str, float]) -> None:
        with self._lock:
            rec = self._open.get(step)
            if rec is None:
                return
            for k in _METRIC_SUMS:
                rec[k] += m[k]
            rec["completed"] += 1
            ready = rec["closed"] and rec["completed"] == rec["launched"]
        if ready:
            self._finalize(step)

    def _close(self, step: int) -> None:
        with self._lock:
            rec = self._open.get(step)
            if rec is None:
                return
            rec["closed"] = True
            ready = rec["completed"] == rec["launched"]
        if ready:
            self._finalize(step)

    def _finalize(self, step: int) -> None:
        with self._lock:
            rec = self._open.pop(step, None)
            if rec is None:
                return
            out: Dict[str, Any] = {"step": step}
            for k in ("bytes_sent", "bytes_received", "raw_bytes", "payload_bytes", "encode_s", "decode_s"):
                out[k] = rec[k]
            out["compression_ratio"] = rec["raw_bytes"] / rec["bytes_sent"] if rec["bytes_sent"] else None
            out["rel_error"] = math.sqrt(rec["err2"] / rec["norm2"]) if rec["norm2"] > 0 else None
            out["compressed_buckets"] = int(rec["compressed"])
            out["uncompressed_buckets"] = int(rec["uncompressed"])
            for k in _METRIC_SUMS:
                self._totals[k] += rec[k]
            self._totals["steps"] += 1
            self._last = out
        if self.on_metrics is not None:
            self.on_metrics(dict(out))


def hook(state: State, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: ``model.register_comm_hook(state, gradzip.ddp.hook)``."""
    return state._run(bucket)
