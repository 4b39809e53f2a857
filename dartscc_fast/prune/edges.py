"""Prunable edges of a ResNet, the gate that skips them, and their measured time.

An edge is a block's residual branch that can be dropped without breaking the
graph: the block has an identity shortcut and, on a dummy forward, its branch
returns the shape it was given. :func:`find_edges` checks both (a block is any
module with ``residual`` and ``shortcut`` children, as
:class:`~dartscc_fast.prune.resnet.BasicBlock`); shape-changing blocks are
listed apart with the reason.

:class:`PrunableNet` puts a :class:`GatedBlock` in place of each edge's block.
The gate computes ``relu(x + gamma_e * residual(x))``; with ``gamma_e`` a hard 0
that needs no gradient it returns ``x`` without running the branch, so the
measured latency really drops. (``relu(x) = x`` there because a block's input
is the output of a ReLU: the stem's or the previous block's.)

T(e) is the branch's forward time on the input it sees in the network,
measured with the latency package's microbenchmark
(:func:`dartscc_fast.latency.measure.time_callable`: warm-up, then runs until
the median is stable, ``torch.inference_mode``, fixed thread count). The unit
the search uses is T normalised by the whole network's time (``t_norm``), so
``T^T 1`` is the fraction of the forward time the edges hold and lambda is in
loss units (nats) per whole-network latency; milliseconds are reported beside.
"""
from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from dartscc_fast.latency.measure import Timing, num_threads, time_callable

__all__ = ["Edge", "find_edges", "GatedBlock", "PrunableNet", "measure_edge_times", "time_module"]


@dataclass
class Edge:
    """One prunable residual branch: its block's module name, shapes, and time (ms, and / whole net)."""
    name: str
    in_shape: Tuple[int, ...]
    out_shape: Tuple[int, ...]
    time_ms: float = float("nan")
    t_norm: float = float("nan")

    def to_dict(self) -> Dict:
        d = asdict(self)
        d["in_shape"], d["out_shape"] = list(self.in_shape), list(self.out_shape)
        return d


def _is_block(m: nn.Module) -> bool:
    return isinstance(getattr(m, "residual", None), nn.Module) and isinstance(getattr(m, "shortcut", None), nn.Module)


def _is_identity(m: nn.Module) -> bool:
    return isinstance(m, nn.Identity) or (isinstance(m, nn.Sequential) and len(m) == 0)


def find_edges(model: nn.Module, input_shape: Sequence[int]) -> Tuple[List[Edge], List[Dict]]:
    """The prunable edges of ``model`` in forward order, and the blocks rejected with why.

    Runs one forward on zeros of ``input_shape`` (``[N, C, H, W]``) in eval
    mode, recording each block's input and branch-output shapes.

    Raises:
        ValueError: when no edge is prunable (the message lists what was found).
    """
    blocks = [(n, m) for n, m in model.named_modules() if _is_block(m)]
    seen: Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...]]] = {}
    order: List[str] = []
    hooks = []
    for name, m in blocks:
        def hook(mod, inp, out, name=name):
            order.append(name)
            seen[name] = (tuple(inp[0].shape), tuple(out.shape))
        hooks.append(m.residual.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(*input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    by_name = dict(blocks)
    edges, rejected = [], []
    for name in order:
        i, o = seen[name]
        if not _is_identity(by_name[name].shortcut):
            rejected.append({"name": name, "in_shape": list(i), "out_shape": list(o),
                             "reason": "shortcut is a projection (the block changes shape)"})
        elif i != o:
            rejected.append({"name": name, "in_shape": list(i), "out_shape": list(o),
                             "reason": "branch output shape differs from its input"})
        else:
            edges.append(Edge(name, i, o))
    if not edges:
        found = f"{len(blocks)} residual block(s), none with an identity shortcut and matching shapes" if blocks \
            else "no residual block (a module with 'residual' and 'shortcut' children)"
        raise ValueError(f"the model has no prunable edges: {found}; pruning needs blocks whose residual branch "
                         f"can be skipped")
    return edges, rejected


class GatedBlock(nn.Module):
    """``relu(x + gamma * block.residual(x))``; skips the branch when gamma is a hard 0 without gradient."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block
        self.gamma: Optional[Tensor] = None  # set by PrunableNet: None (on), [] or [N]

    def forward(self, x: Tensor) -> Tensor:
        g = self.gamma
        if g is None:
            return self.block(x)
        if g.dim() == 0:
            if not g.requires_grad and float(g) == 0.0:
                return x
            return torch.relu(x + g * self.block.residual(x))
        return torch.relu(x + g.view(-1, *([1] * (x.dim() - 1))) * self.block.residual(x))


class PrunableNet(nn.Module):
    """A model with its prunable blocks gated: ``net(x, gamma)``, gamma ``[E]``, ``[N, E]`` or None (all on)."""

    def __init__(self, model: nn.Module, input_shape: Sequence[int]):
        super().__init__()
        self.edges, self.rejected = find_edges(model, input_shape)
        self.model = model
        self.gates: List[GatedBlock] = []
        for e in self.edges:
            parent_name, _, child = e.name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            gate = GatedBlock(getattr(parent, child))
            setattr(parent, child, gate)
            self.gates.append(gate)

    @property
    def num_edges(self) -> int:
        return len(self.edges)

    def t_norm(self) -> Tensor:
        return torch.tensor([e.t_norm for e in self.edges], dtype=torch.float32)

    def set_gamma(self, gamma: Optional[Tensor]) -> None:
        E = self.num_edges
        if gamma is not None and (gamma.dim() not in (1, 2) or gamma.shape[-1] != E):
            raise ValueError(f"gamma must have shape [{E}] or [N, {E}] (one entry per prunable edge), "
                             f"got {list(gamma.shape)}")
        for i, gate in enumerate(self.gates):
            gate.gamma = None if gamma is None else gamma[..., i]

    def forward(self, x: Tensor, gamma: Optional[Tensor] = None) -> Tensor:
        self.set_gamma(gamma)
        try:
            return self.model(x)
        finally:
            self.set_gamma(None)


def time_module(fn, threads: int = 1, max_seconds: float = 0.5) -> Timing:
    """Median forward time of ``fn()`` (ms) with the latency package's microbenchmark, on ``threads`` threads.

    With one thread it uses the thread-CPU clock where the latency package has
    it, so other processes on a shared machine do not inflate the time.
    """
    kw = {}
    with num_threads(threads) as n:
        if n == 1 and "clock" in inspect.signature(time_callable).parameters:
            kw["clock"] = "thread"
        return time_callable(fn, "cpu", warmup=3, min_runs=10, max_runs=200, max_seconds=max_seconds,
                             rel_ci=0.02, **kw)


def measure_edge_times(net: PrunableNet, input_shape: Sequence[int], threads: int = 1,
                       max_seconds: float = 0.5) -> Dict[str, float]:
    """Fill each edge's ``time_ms`` and ``t_norm``; returns the whole network's time in ms and the method."""
    net.eval()
    inputs: Dict[str, Tensor] = {}
    hooks = [g.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0].detach().clone()))
             for i, g in enumerate(net.gates)]
    x = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    full = time_module(lambda: net(x), threads, max_seconds)
    for i, (e, g) in enumerate(zip(net.edges, net.gates)):
        xi = inputs[i]
        t = time_module(lambda: g.block.residual(xi), threads, max_seconds)
        e.time_ms = t.median
        e.t_norm = t.median / full.median
    return {"full_ms": full.median, "full_iqr_ms": full.iqr, "batch": int(input_shape[0]), "threads": threads,
            "clock": "thread" if threads == 1 and "clock" in inspect.signature(time_callable).parameters
            else "wall"}


def gamma_key(gamma: Union[Tensor, Sequence[int]]) -> str:
    """``'110101'``: the hard gamma as a bit string, edge order."""
    vals = gamma.tolist() if isinstance(gamma, Tensor) else list(gamma)
    return "".join("1" if v > 0.5 else "0" for v in vals)
