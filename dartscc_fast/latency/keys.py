"""Latency-table keys: the canonical string of each op configuration and of a network's fixed part.

One op configuration, :class:`OpConfig`, is keyed by a canonical string in the
style of ProxylessNAS::

    <primitive>:cin<C_in>:cout<C_out>:h<H>:w<W>:s<stride>:n<batch>:<dtype>:<device>
    sep_conv_3x3:cin16:cout16:h28:w28:s1:n64:float32:cpu

H and W are the op's *input* size. ``device`` is a token: ``cpu``, ``cuda``, or
``sim-<preset>`` for a simulated device. The part of a network that the search
does not choose (stem, preprocessing, node sums, concatenation, pooling,
classifier) is timed as the network whose every edge runs a free op (the
input itself, or a strided view of it at stride 2), and keyed by
:class:`BaseConfig`::

    base:<space signature>:<inputs>:n<batch>:<dtype>:<device>
    base:cin1-c16-l3-st4-m4-sm3-hw28-cls10:all:n64:float32:cpu

``inputs`` is ``all`` (every node sums all its incoming edges, as a genotype
derived without top-2) or ``top2`` (two inputs per node, as DARTS derives), since
the node sums cost time too. A whole network is predicted as
``base + sum of its chosen ops``, the base interpolated between the two by
the genotype's number of node sums.
The 'none' primitive costs nothing by definition and is never stored.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import torch

from dartscc_fast.nn.primitives import OPS

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
           "bfloat16": torch.bfloat16}
_TOKEN = r"[A-Za-z0-9_.\-]+"
_OP_KEY = re.compile(r"^(?P<primitive>[a-z0-9_]+):cin(?P<cin>\d+):cout(?P<cout>\d+):h(?P<h>\d+):w(?P<w>\d+)"
                     r":s(?P<stride>\d+):n(?P<batch>\d+):(?P<dtype>[a-z0-9]+):(?P<device>" + _TOKEN + r")$")
_BASE_KEY = re.compile(r"^base:(?P<space>[a-z0-9\-]+):(?P<inputs>all|top2):n(?P<batch>\d+):(?P<dtype>[a-z0-9]+)"
                       r":(?P<device>" + _TOKEN + r")$")


def dtype_name(dtype: Union[str, torch.dtype]) -> str:
    """'float32' for torch.float32 or 'float32'; ValueError for an unsupported dtype."""
    name = str(dtype).replace("torch.", "")
    if name not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
    return name


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[dtype_name(name)]


def device_token(device: Union[str, torch.device]) -> str:
    """The device part of a key: 'cpu', 'cuda' (any index) or 'sim-<preset>' for 'sim:<preset>'."""
    d = str(device)
    if d.startswith("sim:") or d.startswith("sim-"):
        name = d[4:]
        if not name or not re.fullmatch(_TOKEN, name):
            raise ValueError(f"bad simulated device {d!r}; expected sim:<preset>")
        return "sim-" + name
    kind = torch.device(d).type
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {d!r}; expected cpu, cuda or sim:<preset>")
    return kind


@dataclass(frozen=True)
class OpConfig:
    """One candidate op at one shape on one device: a row of the latency table."""
    primitive: str
    cin: int
    cout: int
    h: int
    w: int
    stride: int
    batch: int
    dtype: str = "float32"
    device: str = "cpu"

    def __post_init__(self):
        if self.primitive not in OPS:
            raise ValueError(f"unknown primitive {self.primitive!r} in an op configuration")
        for name in ("cin", "cout", "h", "w", "stride", "batch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"OpConfig.{name} must be >= 1, got {getattr(self, name)}")
        object.__setattr__(self, "dtype", dtype_name(self.dtype))
        object.__setattr__(self, "device", device_token(self.device))

    def key(self) -> str:
        return (f"{self.primitive}:cin{self.cin}:cout{self.cout}:h{self.h}:w{self.w}:s{self.stride}"
                f":n{self.batch}:{self.dtype}:{self.device}")

    @property
    def out_hw(self) -> Tuple[int, int]:
        return (self.h - 1) // self.stride + 1, (self.w - 1) // self.stride + 1

    @classmethod
    def parse(cls, key: str) -> "OpConfig":
        m = _OP_KEY.match(key)
        if not m:
            raise ValueError(f"{key!r} is not an op configuration key "
                             "(<primitive>:cin<C>:cout<C>:h<H>:w<W>:s<stride>:n<batch>:<dtype>:<device>)")
        d = m.groupdict()
        return cls(d["primitive"], int(d["cin"]), int(d["cout"]), int(d["h"]), int(d["w"]), int(d["stride"]),
                   int(d["batch"]), d["dtype"], d["device"])


def space_signature(space) -> str:
    """What the fixed part of a network depends on: everything in the space but the primitives."""
    return (f"cin{space.in_channels}-c{space.C}-l{space.layers}-st{space.steps}-m{space.multiplier}"
            f"-sm{space.stem_multiplier}-hw{space.input_size}-cls{space.num_classes}")


@dataclass(frozen=True)
class BaseConfig:
    """The fixed, non-searchable part of a space's networks (see the module docstring)."""
    space: str  # space_signature(space)
    batch: int
    dtype: str = "float32"
    device: str = "cpu"
    inputs: str = "all"  # 'all': every node sums all its edges; 'top2': two per node

    def __post_init__(self):
        object.__setattr__(self, "dtype", dtype_name(self.dtype))
        object.__setattr__(self, "device", device_token(self.device))
        if self.inputs not in BASE_INPUTS:
            raise ValueError(f"BaseConfig.inputs must be one of {BASE_INPUTS}, got {self.inputs!r}")

    def key(self) -> str:
        return f"base:{self.space}:{self.inputs}:n{self.batch}:{self.dtype}:{self.device}"

    @classmethod
    def of(cls, space, batch: int, dtype="float32", device="cpu", inputs: str = "all") -> "BaseConfig":
        return cls(space_signature(space), batch, dtype, device, inputs)

    @classmethod
    def parse(cls, key: str) -> "BaseConfig":
        m = _BASE_KEY.match(key)
        if not m:
            raise ValueError(f"{key!r} is not a network-base key "
                             "(base:<space>:<all|top2>:n<batch>:<dtype>:<device>)")
        return cls(m["space"], int(m["batch"]), m["dtype"], m["device"], m["inputs"])


BASE_INPUTS = ("all", "top2")


def node_sums(space, genotype=None, inputs: str = "all") -> int:
    """The additions a network's nodes perform: sum over cells and nodes of (inputs - 1)."""
    if genotype is None:
        per_node = [(2 + i if inputs == "all" else min(2, 2 + i)) for i in range(space.steps)]
        return space.layers * sum(max(0, n - 1) for n in per_node)
    return sum(max(0, len(node) - 1) for cell in range(space.layers)
               for node in (genotype.reduce if space.is_reduction(cell) else genotype.normal))


def parse_key(key: str) -> Union[OpConfig, BaseConfig]:
    return BaseConfig.parse(key) if key.startswith("base:") else OpConfig.parse(key)


def edge_configs(space, batch: int, dtype="float32", device="cpu") -> List[List[Optional[OpConfig]]]:
    """For every edge of the supernet (``space.edges()`` order), the config of each candidate (None: 'none')."""
    rows = []
    for e in space.edges():
        rows.append([None if p == "none" else OpConfig(p, e.C, e.C, e.H, e.W, e.stride, batch, dtype, device)
                     for p in space.primitives])
    return rows


def space_configs(space, batch: int, dtype="float32", device="cpu") -> List[OpConfig]:
    """The distinct op configurations of a search space, in the order the network meets them."""
    seen: Dict[str, OpConfig] = {}
    for row in edge_configs(space, batch, dtype, device):
        for c in row:
            if c is not None:
                seen.setdefault(c.key(), c)
    return list(seen.values())


def genotype_configs(space, genotype, batch: int, dtype="float32", device="cpu") -> List[OpConfig]:
    """The op of every chosen edge of a discrete network (all its cells), one config each."""
    return [c for _, _, c in genotype_edges(space, genotype, batch, dtype, device)]


def genotype_edges(space, genotype, batch: int, dtype="float32", device="cpu") -> List[Tuple[int, int, OpConfig]]:
    """``(cell, source node, config)`` of every chosen edge of a discrete network but 'none', in cell order."""
    by_edge = {(e.cell, e.src, e.dst): e for e in space.edges()}
    out = []
    for cell in range(space.layers):
        nodes = genotype.reduce if space.is_reduction(cell) else genotype.normal
        for i, node in enumerate(nodes):
            for prim, src in node:
                if prim == "none":
                    continue
                e = by_edge[(cell, src, i + 2)]
                out.append((cell, src, OpConfig(prim, e.C, e.C, e.H, e.W, e.stride, batch, dtype, device)))
    return out
