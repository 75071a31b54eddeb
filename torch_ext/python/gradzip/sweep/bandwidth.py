"""Bandwidth model: turns the bytes a run moved and the compute time it took into an estimated wall time on a link.

A ``Link`` has an uplink and a downlink rate (bits per second) and a one-way latency. For one node (a federated
client, or one DDP rank) the estimated time of a run is

    t = compute_s + sync_points * latency + 8 * uplink_bytes / uplink_bps + 8 * downlink_bytes / downlink_bps

where every quantity is what that one node does (nodes work in parallel): its compute time, how many times it
waits for a message (two per federated round: the model comes down, the update goes up; one per DDP step), and
the bytes over its own link. Computation and communication do not overlap and the two directions are counted one
after the other — a simple, conservative model that ranks compressors by what they save on a slow link. The task
adapters (``gradzip.sweep.tasks``) say how a run's totals map to one node.

Rates are written like ``"10 Mbit/s"``, ``"100Gbit/s"``, ``"12.5 MB/s"`` (bytes), ``"1e9"`` (bit/s); latencies
like ``"50 ms"``, ``"10us"``, ``"0.2 s"``, ``0.05`` (seconds). Decimal prefixes (k = 1e3, M = 1e6, G = 1e9), as
network rates are quoted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Union

_PREFIX = {"": 1.0, "k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6, "g": 1e9, "G": 1e9, "t": 1e12, "T": 1e12}
_RATE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?:([kKmMgGtT]?)(bit|b|B|byte)(?:/s|ps)?)?\s*$")
_TIME_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(s|ms|us|µs|ns|)\s*$")
_TIME_DIV = {"": 1.0, "s": 1.0, "ms": 1e3, "us": 1e6, "µs": 1e6, "ns": 1e9}  # divide: 10 us == 1e-05 exactly

Number = Union[int, float]


def parse_rate(value: Union[str, Number]) -> float:
    """Bits per second from ``"10 Mbit/s"`` / ``"100 Gbps"`` / ``"12.5 MB/s"`` (B = bytes) / a bare number (bit/s).
    Raises ValueError for anything else or a rate that is not positive and finite."""
    if isinstance(value, bool):
        raise ValueError(f"link rate {value!r}: expected e.g. '10 Mbit/s'")
    if isinstance(value, (int, float)):
        bps = float(value)
    else:
        m = _RATE_RE.match(str(value))
        if not m:
            raise ValueError(f"link rate {value!r}: expected a number and a unit such as '10 Mbit/s', "
                             f"'100 Gbit/s' or '12.5 MB/s'")
        num, prefix, unit = m.group(1), m.group(2) or "", m.group(3) or "bit"
        bps = float(num) * _PREFIX[prefix] * (8.0 if unit in ("B", "byte") else 1.0)
    if not (bps > 0 and math.isfinite(bps)):
        raise ValueError(f"link rate {value!r} must be positive and finite")
    return bps


def parse_latency(value: Union[str, Number]) -> float:
    """Seconds from ``"50 ms"`` / ``"10us"`` / ``"0.2 s"`` / a bare number (seconds). Must be >= 0 and finite."""
    if isinstance(value, bool):
        raise ValueError(f"latency {value!r}: expected e.g. '50 ms'")
    if isinstance(value, (int, float)):
        s = float(value)
    else:
        m = _TIME_RE.match(str(value))
        if not m:
            raise ValueError(f"latency {value!r}: expected a number and a unit such as '50 ms', '10 us' or '0.2 s'")
        s = float(m.group(1)) / _TIME_DIV[m.group(2)]
    if not (s >= 0 and math.isfinite(s)):
        raise ValueError(f"latency {value!r} must be >= 0 and finite")
    return s


def format_rate(bps: float) -> str:
    """``10000000.0`` -> ``'10 Mbit/s'``."""
    for p, f in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if bps >= f:
            return f"{bps / f:g} {p}bit/s"
    return f"{bps:g} bit/s"


def format_latency(s: float) -> str:
    if s == 0:
        return "0 s"
    for unit, f in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= f:
            return f"{s / f:g} {unit}"
    return f"{s / 1e-9:g} ns"


@dataclass(frozen=True)
class Link:
    """One node's network link. ``uplink_bps`` / ``downlink_bps`` in bits per second, ``latency_s`` one way."""

    name: str
    uplink_bps: float
    downlink_bps: float
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        if not re.match(r"^[A-Za-z0-9_.-]+$", self.name):
            raise ValueError(f"link name {self.name!r}: use letters, digits, '_', '-', '.' (it names table columns)")
        for f in ("uplink_bps", "downlink_bps"):
            v = getattr(self, f)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"link {self.name}: {f}={v} must be positive and finite")
        if not (self.latency_s >= 0 and math.isfinite(self.latency_s)):
            raise ValueError(f"link {self.name}: latency_s={self.latency_s} must be >= 0 and finite")

    @classmethod
    def parse(cls, name: str, spec: Union[str, Mapping[str, Any]]) -> "Link":
        """From a mapping ``{uplink = "10 Mbit/s", downlink = "50 Mbit/s", latency = "50 ms"}`` (downlink defaults to
        the uplink, latency to 0) or a string ``"UP[/DOWN][@LATENCY]"`` such as ``"10Mbit/s/50Mbit/s@50ms"`` or
        ``"100Gbit/s@10us"``."""
        if isinstance(spec, str):
            m = re.match(r"^\s*([^@]+?)\s*(?:@\s*(.+))?$", spec)
            if not m:
                raise ValueError(f"link {name}: cannot parse {spec!r}; expected UP[/DOWN][@LATENCY]")
            rates, lat = m.group(1), m.group(2)
            # "10Mbit/s/50Mbit/s": split after a "/s" or "ps" unit; "10e6/50e6": plain numbers
            parts = re.split(r"(?<=/s)/|(?<=ps)/|(?<=[0-9])/(?=[0-9.])", rates)
            if len(parts) > 2:
                raise ValueError(f"link {name}: cannot parse {spec!r}; expected UP[/DOWN][@LATENCY]")
            up = parse_rate(parts[0])
            down = parse_rate(parts[1]) if len(parts) == 2 else up
            return cls(name, up, down, parse_latency(lat) if lat else 0.0)
        unknown = set(spec) - {"uplink", "downlink", "latency"}
        if unknown:
            raise ValueError(f"link {name}: unknown keys {sorted(unknown)}; known: uplink, downlink, latency")
        if "uplink" not in spec:
            raise ValueError(f"link {name}: 'uplink' is required (e.g. uplink = \"10 Mbit/s\")")
        up = parse_rate(spec["uplink"])
        down = parse_rate(spec["downlink"]) if "downlink" in spec else up
        return cls(name, up, down, parse_latency(spec.get("latency", 0.0)))

    def describe(self) -> str:
        down = "" if self.downlink_bps == self.uplink_bps else f" up, {format_rate(self.downlink_bps)} down"
        return f"{self.name}: {format_rate(self.uplink_bps)}{down}, latency {format_latency(self.latency_s)}"

    def comm_time(self, uplink_bytes: float, downlink_bytes: float, sync_points: float = 0.0) -> float:
        """Seconds one node spends communicating: latency per sync point plus its bytes over each direction."""
        return (sync_points * self.latency_s + 8.0 * uplink_bytes / self.uplink_bps
                + 8.0 * downlink_bytes / self.downlink_bps)

    def time(self, compute_s: float, uplink_bytes: float, downlink_bytes: float, sync_points: float = 0.0) -> float:
        """Estimated wall time of one node: ``compute_s + comm_time(...)`` (no overlap; see the module doc)."""
        return compute_s + self.comm_time(uplink_bytes, downlink_bytes, sync_points)

    def to_dict(self) -> Dict[str, float]:
        return {"uplink_bps": self.uplink_bps, "downlink_bps": self.downlink_bps, "latency_s": self.latency_s}


# Two ends of the range: a phone or edge device on a slow uplink, and a cluster interconnect.
DEFAULT_LINKS: Dict[str, Link] = {
    "device": Link("device", 10e6, 50e6, 50e-3),
    "cluster": Link("cluster", 100e9, 100e9, 10e-6),
}


def parse_links(spec: Optional[Mapping[str, Any]]) -> Dict[str, Link]:
    """``{name: spec}`` -> ``{name: Link}``; None or empty gives ``DEFAULT_LINKS``."""
    if not spec:
        return dict(DEFAULT_LINKS)
    return {name: (s if isinstance(s, Link) else Link.parse(name, s)) for name, s in spec.items()}
