"""Deriving architectures from a trained hypernetwork, for any S, without training.

``alpha = H_a(S)``; the argmax per edge (or, as DARTS, the two strongest
incoming edges per node) is the genotype. For each genotype: the standalone
discrete ``nn.Module`` (no search machinery), its parameter count, its ops by
type, the latency the table predicts and the latency measured on this device,
and an export to TorchScript or ONNX.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from dartscc_fast.latency import LatencyTable, time_genotype
from dartscc_fast.search.hypernet import SLike, format_S, parse_S
from dartscc_fast.space import (
    DiscreteNetwork,
    Genotype,
    SearchSpace,
    count_parameters,
    derive_genotype,
    genotype_weights,
)

__all__ = ["Derived", "derive", "derive_from_alphas", "describe", "export_model", "measure_latency",
           "predicted_latency", "table_only_alphas", "table_only", "edges_changed"]


@dataclass
class Derived:
    """One derived architecture and what is known about it."""
    S: List[float]                      # (pool, identity, conv)
    genotype: Genotype
    params: int
    op_counts: Dict[str, int]           # over the whole network (every cell)
    predicted_ms: Optional[float]       # latency table: base + the chosen ops
    measured_ms: Optional[float] = None  # this device, whole network, the table's batch
    measured_iqr_ms: Optional[float] = None
    label: str = ""
    extra: Dict = field(default_factory=dict)

    @property
    def S_text(self) -> str:
        return format_S(self.S)

    def to_dict(self) -> Dict:
        return {"label": self.label, "S": dict(zip(("pool", "identity", "conv"), self.S)), "S_text": self.S_text,
                "genotype": json.loads(self.genotype.to_json()), "params": self.params,
                "op_counts": self.op_counts, "predicted_ms": self.predicted_ms, "measured_ms": self.measured_ms,
                "measured_iqr_ms": self.measured_iqr_ms, **self.extra}


def predicted_latency(table: Optional[LatencyTable], space: SearchSpace, genotype: Genotype) -> Optional[float]:
    """The table's latency (ms) of a discrete architecture: its base plus its chosen ops."""
    if table is None:
        return None
    return float(table.predict(space, genotype))


def measure_latency(space: SearchSpace, genotype: Genotype, batch: int = 64, threads: Optional[int] = None,
                    max_seconds: float = 0.3, memory_format: Optional[str] = None,
                    runtime: str = "torch") -> Dict[str, float]:
    """Measured forward latency (ms) of the whole discrete network on this CPU, as the profiler times ops,
    in ``memory_format`` on ``runtime`` (give the latency table's, so that prediction and measurement
    describe the same network). Its median run and its fastest: compare with the table's ``statistic``."""
    t = time_genotype(space, genotype, batch=batch, threads=threads, max_seconds=max_seconds,
                      memory_format=memory_format, runtime=runtime)
    return {"median": t.median, "min": t.min, "iqr": t.iqr, "runs": t.runs}


def derive_from_alphas(space: SearchSpace, alpha_normal: Tensor, alpha_reduce: Tensor, S: SLike,
                       table: Optional[LatencyTable] = None, top2: bool = False, measure: bool = False,
                       batch: Optional[int] = None, threads: Optional[int] = None, label: str = "") -> Derived:
    """A :class:`Derived` from logits (any S-independent search: DARTS, FBNet)."""
    g = derive_genotype(space, alpha_normal, alpha_reduce, top2=top2)
    torch.manual_seed(0)
    params = count_parameters(DiscreteNetwork(space, g))
    d = Derived(parse_S(S).tolist(), g, params, g.op_counts(space), predicted_latency(table, space, g), label=label)
    if measure:
        b = batch or (table.batch if table is not None and table.batch else 64)
        m = measure_latency(space, g, batch=b, threads=threads,
                            memory_format=table.memory_format if table is not None else None,
                            runtime=table.runtime if table is not None else "torch")
        d.measured_ms, d.measured_iqr_ms = m[table.statistic if table is not None else "median"], m["iqr"]
    return d


def derive(result, S: SLike, top2: bool = False, measure: bool = False, threads: Optional[int] = None,
           label: str = "", kappa: Optional[float] = None) -> Derived:
    """The architecture of a search (:class:`~dartscc_fast.search.SearchResult`) for this S.

    ``kappa``: the trade-off on a search's strength axis (default: the search's
    ``kappa``); a search without the axis gives its one kappa only.
    Deterministic: the same search, S and kappa always give the same genotype.
    """
    S_t = parse_S(S)
    kappa = result.check_kappa(kappa)
    an, ar = result.alphas(S_t, kappa)
    d = derive_from_alphas(result.space, an, ar, S_t, result.table, top2, measure, threads=threads, label=label)
    d.extra["expected_latency"] = result.expected_latency(S_t, kappa)
    d.extra["kappa"] = result.config.kappa if kappa is None else kappa
    return d


def table_only_alphas(L: Tensor, S: SLike, type_index) -> Tuple[Tensor, Tensor]:
    """The logits the latency term alone favours for S, with no data: ``-S_type(m) * L[e, m]``.

    ``L [2E, k]`` is the search's normalised latency (normal rows, then
    reduction rows); the argmax of each row is the op of least S-weighted
    latency, which is what any search with a strong enough latency term ends
    at. 'none' (type -1) is never picked (the genotype rule skips it).
    """
    S_t = parse_S(S)
    ti = torch.as_tensor(list(type_index), dtype=torch.long)
    price = torch.where(ti >= 0, S_t[ti.clamp_min(0)], torch.zeros(()))
    alpha = -(L.float() * price)
    E = L.shape[0] // 2
    return alpha[:E], alpha[E:]


def table_only(result, S: SLike, top2: bool = False, label: str = "") -> Derived:
    """The table-only architecture for S of a search's latency table (:func:`table_only_alphas`)."""
    an, ar = table_only_alphas(result.L, S, result.space.type_index().tolist())
    return derive_from_alphas(result.space, an, ar, S, result.table, top2, label=label)


def edges_changed(space: SearchSpace, a: Genotype, b: Genotype) -> int:
    """How many of the 2E rows (normal and reduction cell edges) pick a different op, or keep a different
    set of edges, in genotype ``a`` than in ``b``."""
    wa, wb = torch.cat(genotype_weights(space, a)), torch.cat(genotype_weights(space, b))
    return int((wa != wb).any(-1).sum())


def export_model(model: nn.Module, space: SearchSpace, path: Union[str, os.PathLike], fmt: str = "torchscript",
                 batch: int = 1) -> Path:
    """Write the discrete model as TorchScript (``torch.jit.trace``) or ONNX (``torch.onnx.export``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    x = torch.randn(batch, space.in_channels, space.input_size, space.input_size)
    if fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(model, x)
        traced.save(str(path))
    elif fmt == "onnx":
        try:
            import onnx  # noqa: F401
        except ImportError as e:
            raise ValueError("ONNX export needs the onnx package (pip install onnx); "
                             "or export --format torchscript") from e
        # the TorchScript-based exporter: the dynamo one needs onnxscript, and both give the same graph here
        torch.onnx.export(model, (x,), str(path), input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    else:
        raise ValueError(f"export format must be 'torchscript' or 'onnx', got {fmt!r}")
    return path


def describe(d: Derived) -> str:
    """A few lines a person reads."""
    ops = ", ".join(f"{k} {v}" for k, v in d.op_counts.items())
    kappa = f", kappa = {d.extra['kappa']:g}" if d.extra.get("kappa") is not None else ""
    lines = [f"S = {d.S_text}{kappa}" + (f"  ({d.label})" if d.label else ""),
             f"  parameters: {d.params:,}", f"  ops by type (whole network): {ops}"]
    if d.predicted_ms is not None:
        lines.append(f"  predicted latency: {d.predicted_ms:.2f} ms (latency table)")
    if d.measured_ms is not None:
        lines.append(f"  measured latency:  {d.measured_ms:.2f} ms (median, IQR {d.measured_iqr_ms:.2f} ms, "
                     f"this device)")
    lines.append(f"  normal cell: {d.genotype.normal}")
    lines.append(f"  reduce cell: {d.genotype.reduce}")
    return "\n".join(lines)
