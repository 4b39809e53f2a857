"""``dartscc-fast selftest``: every compiled op, forward and backward, against the float64 reference on a device.

Each op runs over a small grid of shapes, dtypes, layouts (contiguous,
channels_last, misaligned, strided), per-edge and per-sample weights and op
strides, on the device, through its public wrapper; the reference runs in
float64 on the CPU on the same values. An op passes when every case's outputs
and input gradients (of one random projection of its outputs) are within the
dtype's tolerance, norm-wise: ``max|ours - ref| <= atol + rtol * max|ref|``.
``--quick`` is the grid the CUDA gate runs (:mod:`dartscc_fast.ops.cuda_gate`).

On the CPU it checks the CPU kernels (CI runs it); on a CUDA device the CUDA
kernels (the CPU-only ops are skipped there: their wrappers run torch's ops).
``--torch-path`` checks instead what the gate falls back to.

``dartscc_fast.ops.selftest(device="cpu", quick=False)`` is :func:`run`.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import types
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple, Union

import torch
from torch import Tensor

from dartscc_fast import ops as fast_ops  # `ops` is run()'s argument: the ops to check
from dartscc_fast import reference
from dartscc_fast._extension import BUILD_INFO
from dartscc_fast.ops import cuda_gate
from dartscc_fast.ops.latency_reg import latency_reg

__all__ = ["run", "SelftestResult", "OpReport", "CaseResult", "OPS", "BREAK_ENV", "VERSION"]

#: Every op the selftest checks: the gated ops (with a CUDA kernel), then the CPU-only ones.
OPS: Tuple[str, ...] = cuda_gate.GATED_OPS + cuda_gate.CPU_ONLY_OPS
#: Test-only: a comma-separated list of ``op`` (its first output), ``op:backward`` (its first input gradient) or
#: ``op:crash`` (abort the process): the harness perturbs what the op returned before comparing, as a wrong kernel
#: would, and the selftest must then fail. The kernels themselves are untouched.
BREAK_ENV = "DARTSCC_SELFTEST_BREAK"
#: Bumped when the grid or the tolerances change: the CUDA gate's cached results then no longer apply.
VERSION = 1

F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
DTYPES = (F32, F64, F16, BF16)
#: (atol, rtol) against the float64 reference, norm-wise over each tensor.
TOL = {F64: (1e-9, 1e-9), F32: (1e-4, 1e-4), F16: (5e-3, 5e-3), BF16: (3e-2, 3e-2)}
_SHORT = {F16: "float16", BF16: "bfloat16", F32: "float32", F64: "float64"}


# ------------------------------------------------------------------------------------ results
@dataclass
class CaseResult:
    desc: str
    fwd_err: float = 0.0        # max |ours - ref| over the outputs
    bwd_err: float = 0.0        # over the input gradients
    ratio: float = 0.0          # the worst error over its tolerance (<= 1 passes)
    error: Optional[str] = None  # an exception, or a wrong dtype/device/shape

    @property
    def passed(self) -> bool:
        return self.error is None and self.ratio <= 1.0

    def why(self) -> str:
        if self.error is not None:
            return f"{self.desc}: {self.error}"
        return f"{self.desc}: forward error {self.fwd_err:.3g}, backward {self.bwd_err:.3g} " \
               f"({self.ratio:.3g} x the tolerance)"


@dataclass
class OpReport:
    op: str
    cases: List[CaseResult] = field(default_factory=list)
    skipped: Optional[str] = None   # why the op has nothing to check on this device

    @property
    def passed(self) -> Optional[bool]:
        return None if self.skipped is not None else all(c.passed for c in self.cases)

    @property
    def detail(self) -> str:
        if self.skipped is not None:
            return self.skipped
        bad = [c for c in self.cases if not c.passed]
        if not bad:
            return "passed"
        return f"{len(bad)} of {len(self.cases)} cases failed, first {bad[0].why()}"

    def table(self) -> str:
        if self.skipped is not None:
            return f"{self.op}: skipped ({self.skipped})"
        width = max([4] + [len(c.desc) for c in self.cases])
        lines = [f"{self.op}: {len(self.cases)} cases, {'pass' if self.passed else 'FAIL'}",
                 f"  {'case':<{width}}  {'fwd err':>9}  {'bwd err':>9}  {'err/tol':>9}  result"]
        for c in self.cases:
            lines.append(f"  {c.desc:<{width}}  {c.fwd_err:9.2e}  {c.bwd_err:9.2e}  {c.ratio:9.2e}  "
                         + ("pass" if c.passed else "FAIL" + (f": {c.error}" if c.error else "")))
        worst = max(self.cases, key=lambda c: (not c.passed, c.ratio), default=None)
        if worst is not None:
            lines.append(f"  {'max':<{width}}  {max(c.fwd_err for c in self.cases):9.2e}  "
                         f"{max(c.bwd_err for c in self.cases):9.2e}  {worst.ratio:9.2e}")
        return "\n".join(lines)


@dataclass
class SelftestResult:
    """What :func:`run` found: one :class:`OpReport` per op."""
    device: str
    impl: str                       # 'kernels' or 'torch' (the gate's fallback)
    quick: bool
    ops: Dict[str, OpReport] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        ran = [r for r in self.ops.values() if r.passed is not None]
        return bool(ran) and all(r.passed for r in ran)

    @property
    def failed(self) -> List[str]:
        return [op for op, r in self.ops.items() if r.passed is False]

    def summary(self) -> str:
        n = sum(len(r.cases) for r in self.ops.values())
        ran = [op for op, r in self.ops.items() if r.passed is not None]
        verdict = "all passed" if self.passed else "FAILED: " + ", ".join(self.failed)
        return f"selftest on {self.device} ({self.impl}): {len(ran)} ops, {n} cases, {verdict} " \
               f"in {self.seconds:.1f} s"

    def table(self) -> str:
        return "\n\n".join(r.table() for r in self.ops.values()) + "\n\n" + self.summary()

    def to_dict(self) -> Dict:
        return {"device": self.device, "impl": self.impl, "quick": self.quick, "passed": self.passed,
                "seconds": self.seconds, "version": VERSION,
                "ops": {op: {"passed": r.passed, "detail": r.detail, "cases": len(r.cases),
                             "max_fwd_err": max((c.fwd_err for c in r.cases), default=0.0),
                             "max_bwd_err": max((c.bwd_err for c in r.cases), default=0.0),
                             "worst_ratio": max((c.ratio for c in r.cases), default=0.0)}
                        for op, r in self.ops.items()}}


# ------------------------------------------------------------------------------------ inputs
@dataclass
class _Trial:
    run: Callable[[], Sequence[Tensor]]    # the op under test, on the device
    ref: Callable[[], Sequence[Tensor]]    # the reference, float64 on the CPU
    leaves: List[Tensor]                   # the op's differentiable inputs
    leaves64: List[Tensor]                 # the reference's, same values
    n_grad: int = 1                        # the leading outputs the backward projects a random gradient on


@dataclass
class _Case:
    op: str
    desc: str
    dtype: torch.dtype
    build: Callable[[torch.device, torch.Generator], _Trial]


def _place(t: Tensor, layout: str) -> Tensor:
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "offset":  # one element into its storage: no 16-byte aligned pointer (the kernels' scalar path)
        v = t.new_empty(t.numel() + 1)[1:].view(t.shape)
    elif layout == "strided":  # every other element of a wider tensor: not dense
        v = t.new_empty(tuple(t.shape[:-1]) + (2 * t.shape[-1],))[..., ::2]
    else:
        raise ValueError(f"selftest: unknown layout {layout!r}")
    return v.copy_(t)


def _pair(gen: torch.Generator, shape, dtype, device, layout="contiguous", grad=True, values=None):
    """The same values twice: on the device in dtype and layout, and float64 on the CPU (both leaves)."""
    v = (torch.randn(shape, generator=gen, dtype=F64) if values is None else values).to(dtype)
    t = _place(v.to(device), layout)
    r = v.double()
    if grad:
        t.requires_grad_()
        r.requires_grad_()
    return t, r


# ------------------------------------------------------------------------------------ the grids
def _mixed_sum_cases(quick: bool) -> Iterator[_Case]:
    def case(dtype, shape, k, per_sample, layout):
        def build(device, gen):
            pairs = [_pair(gen, shape, dtype, device, layout) for _ in range(k)]
            w, w64 = _pair(gen, (shape[0], k) if per_sample else (k,), dtype, device)
            outs, outs64 = [p[0] for p in pairs], [p[1] for p in pairs]
            return _Trial(lambda: (fast_ops.mixed_sum(outs, w),), lambda: (reference.mixed_sum(outs64, w64),),
                          outs + [w], outs64 + [w64])
        return _Case("mixed_sum", f"{_SHORT[dtype]} {list(shape)} k{k} {'sample' if per_sample else 'edge'} {layout}",
                     dtype, build)

    if quick:
        for dtype in DTYPES:
            for per_sample in (False, True):
                yield case(dtype, (3, 16, 17, 17), 3, per_sample, "contiguous")
        for layout in ("channels_last", "offset", "strided"):
            yield case(F32, (3, 16, 17, 17), 3, True, layout)
        yield case(F32, (2, 3, 5, 7), 1, False, "contiguous")
        yield case(F32, (2, 3, 5, 8), 16, True, "contiguous")
        yield case(F32, (2048, 1, 2, 2), 3, True, "contiguous")  # more tiles than a GPU's grid: the grid-stride loop
        return
    for dtype in DTYPES:
        for per_sample in (False, True):
            for layout in ("contiguous", "channels_last", "offset", "strided"):
                for shape, k in (((2, 3, 5, 7), 3), ((3, 16, 17, 17), 8), ((64, 16, 8, 8), 3)):
                    yield case(dtype, shape, k, per_sample, layout)
            yield case(dtype, (7, 4099), 4, per_sample, "contiguous")
            yield case(dtype, (2048, 1, 2, 2), 3, per_sample, "contiguous")
            yield case(dtype, (2, 3, 5, 8), 1, per_sample, "contiguous")
            yield case(dtype, (2, 3, 5, 8), 16, per_sample, "contiguous")


def _gumbel_cases(quick: bool) -> Iterator[_Case]:
    def case(dtype, shape, hard, layout, seed, tau=0.7):
        def build(device, gen):
            logits, l64 = _pair(gen, shape, dtype, device, layout)

            def run():
                return fast_ops.gumbel_softmax(logits, tau, hard, seed=seed, return_soft=True)

            def ref():
                return (reference.gumbel_softmax(l64, tau, hard, seed),
                        reference.gumbel_softmax(l64.detach(), tau, False, seed))
            return _Trial(run, ref, [logits], [l64])
        return _Case("gumbel_softmax", f"{_SHORT[dtype]} {list(shape)} {'hard' if hard else 'soft'} {layout} "
                                       f"seed {seed}", dtype, build)

    big_seed = 2 ** 64 - 5  # the top bit set: the seed's uint64 path
    if quick:
        for dtype in DTYPES:
            yield case(dtype, (4, 14, 8), False, "contiguous", 1234)
        for dtype in (F32, F64):
            yield case(dtype, (4, 14, 8), True, "contiguous", 1234)
        yield case(F32, (64, 14, 8), True, "strided", big_seed)
        yield case(F32, (3, 5, 16), False, "contiguous", 7)
        return
    for dtype in DTYPES:
        shapes = ((14, 8), (4, 14, 8), (64, 14, 8), (3, 5, 16), (1, 1), (0, 5))
        for shape in shapes + (((2048, 14, 8),) if dtype == F32 else ()):
            for hard in ((False, True) if dtype in (F32, F64) else (False,)):
                for layout in ("contiguous", "strided"):
                    yield case(dtype, shape, hard, layout, 1234 if layout == "contiguous" else big_seed)


def _hard_cases(quick: bool) -> Iterator[_Case]:
    def case(dtype, n, k, per_sample, rest, layout):
        def build(device, gen):
            index = torch.randint(0, k, (n,), generator=gen)
            if not per_sample and n:
                index = index[:1].expand(n).contiguous()
            counts = torch.bincount(index, minlength=k).tolist()
            pairs = [_pair(gen, (c,) + rest, dtype, device, layout if len(rest) == 3 else "contiguous")
                     for c in counts]
            one_hot = torch.nn.functional.one_hot(index, k).to(F64) if n else torch.zeros(0, k, dtype=F64)
            if not per_sample:
                one_hot = one_hot[0] if n else torch.eye(k, dtype=F64)[0]
            soft = torch.softmax(torch.randn(one_hot.shape, generator=gen, dtype=F64), -1).to(dtype)
            values = (one_hot.to(dtype) - soft + soft).double()  # straight-through: one-hot up to rounding
            w, w64 = _pair(gen, one_hot.shape, dtype, device, values=values)
            outs, outs64 = [p[0] for p in pairs], [p[1] for p in pairs]
            idx = index.to(device)
            return _Trial(lambda: (fast_ops.hard_mixed_sum(outs, w, idx),),
                          lambda: (reference.hard_mixed_sum(outs64, w64, index),), outs + [w], outs64 + [w64])
        return _Case("hard_mixed_sum", f"{_SHORT[dtype]} n{n} k{k} {list(rest)} "
                                       f"{'sample' if per_sample else 'edge'} {layout}", dtype, build)

    if quick:
        for dtype in DTYPES:
            for per_sample in (False, True):
                yield case(dtype, 9, 4, per_sample, (16, 7, 7), "contiguous")
        yield case(F32, 6, 8, True, (3, 5, 5), "channels_last")  # most of the 8 ops drawn by nobody
        yield case(F32, 33, 3, True, (5, 9, 9), "offset")
        yield case(F32, 2048, 2, True, (1, 2, 2), "contiguous")  # more samples than a GPU's grid
        return
    for dtype in DTYPES:
        for per_sample in (False, True):
            for layout in ("contiguous", "channels_last", "offset"):
                for n, k, rest in ((9, 4, (16, 7, 7)), (6, 8, (3, 5, 5)), (64, 8, (16, 9, 9))):
                    yield case(dtype, n, k, per_sample, rest, layout)
            yield case(dtype, 0, 3, per_sample, (3, 4, 5), "contiguous")
            yield case(dtype, 5, 1, per_sample, (3, 4, 5), "contiguous")
            yield case(dtype, 12, 3, per_sample, (4099,), "contiguous")
            if dtype == F32:  # the reference loops over the samples
                yield case(dtype, 2048, 2, per_sample, (1, 2, 2), "contiguous")


def _free_case(dtype, prims, stride, per_sample, shape, layout, eval_stats=False) -> _Case:
    """One mixed_op_free case: its inputs drawn on the device and in float64 for the reference."""
    def build(device, gen):
        n, c, h, w_ = shape
        ho, wo = (h - 1) // stride + 1, (w_ - 1) // stride + 1
        x, x64 = _pair(gen, shape, dtype, device, layout)
        pairs = [_pair(gen, (n, c, ho, wo), dtype, device, layout) for p in prims if p == "param"]
        w, w64 = _pair(gen, (n, len(prims)) if per_sample else (len(prims),), dtype, device)
        n_pool = sum(p.endswith("pool") for p in prims)
        stats = stats64 = None
        if eval_stats:
            st = torch.stack([torch.randn(n_pool, c, generator=gen, dtype=F64),
                              torch.rand(n_pool, c, generator=gen, dtype=F64) + 0.5], 1)
            stats = st.to(device=device, dtype=F32 if dtype in (F16, BF16) else dtype)
            stats64 = stats.double().cpu()
        params, params64 = [p[0] for p in pairs], [p[1] for p in pairs]

        def ref():
            y = reference.mixed_op_free(x64, params64, w64, prims, stride, 1e-5, stats64)
            if stats64 is not None:
                return y, stats64
            pools = [_pool(x64.detach(), p, stride) for p in prims if p.endswith("pool")]
            st = [torch.stack(torch.var_mean(q, dim=(0, 2, 3), correction=0)[::-1]) for q in pools]
            return y, torch.stack(st) if st else torch.zeros(0, 2, c, dtype=F64)
        return _Trial(lambda: fast_ops.mixed_op_free(x, params, w, prims, stride, 1e-5, stats), ref,
                      [x] + params + [w], [x64] + params64 + [w64])
    desc = f"{_SHORT[dtype]} {list(shape)} s{stride} {'sample' if per_sample else 'edge'} {layout}" + \
        (" eval" if eval_stats else "") + ("" if len(prims) == 6 else " " + "+".join(prims))
    return _Case("mixed_op_free", desc, dtype, build)


def _free_cases(quick: bool) -> Iterator[_Case]:
    def darts(stride):
        return ["none", "max_pool", "avg_pool", "identity" if stride == 1 else "param", "param", "param"]

    if quick:
        for dtype in DTYPES:
            for stride in (1, 2):
                yield _free_case(dtype, darts(stride), stride, True, (3, 4, 15, 17), "contiguous")
        for stride in (1, 2):
            yield _free_case(F32, darts(stride), stride, True, (3, 4, 15, 17), "channels_last")
        yield _free_case(F32, darts(1), 1, False, (2, 3, 7, 6), "contiguous", eval_stats=True)
        yield _free_case(F32, ["max_pool"], 2, False, (2, 1, 1, 1), "contiguous")
        yield _free_case(F32, darts(1), 1, True, (64, 16, 8, 8), "contiguous")  # more planes than a GPU's grid
        return
    for dtype in DTYPES:
        for stride in (1, 2):
            for layout in ("contiguous", "channels_last"):
                for shape in ((3, 4, 7, 6), (4, 3, 15, 17), (2, 1, 1, 1), (5, 2, 2, 3)):
                    for per_sample in (False, True):
                        yield _free_case(dtype, darts(stride), stride, per_sample, shape, layout)
                yield _free_case(dtype, darts(stride), stride, True, (3, 4, 7, 6), layout, eval_stats=True)
            yield _free_case(dtype, darts(stride), stride, True, (8, 8, 28, 28), "contiguous")
            yield _free_case(dtype, darts(stride), stride, True, (64, 16, 8, 8), "channels_last")
            for prim in ("none", "max_pool", "avg_pool") + (("identity",) if stride == 1 else ()):
                yield _free_case(dtype, ["param", prim], stride, False, (3, 4, 7, 6), "contiguous")


def _pool(x: Tensor, kind: str, stride: int) -> Tensor:
    F = torch.nn.functional
    return F.max_pool2d(x, 3, stride, 1) if kind == "max_pool" else F.avg_pool2d(x, 3, stride, 1,
                                                                                 count_include_pad=False)


def _latency_cases(quick: bool) -> Iterator[_Case]:
    def case(dtype, wshape, sshape, layout="contiguous"):
        def build(device, gen):
            k, e, t = wshape[-1], wshape[-2], sshape[-1]
            w, w64 = _pair(gen, wshape, dtype, device, layout, values=torch.rand(wshape, generator=gen, dtype=F64))
            L, L64 = _pair(gen, (e, k), dtype, device, values=torch.rand(e, k, generator=gen, dtype=F64) * 3)
            s = torch.rand(sshape, generator=gen, dtype=F64)
            S, S64 = _pair(gen, sshape, dtype, device, values=s / s.sum(-1, keepdim=True))
            ti = torch.randint(-1, t, (k,), generator=gen).tolist()
            ti[0] = 0  # at least one typed candidate
            return _Trial(lambda: (latency_reg(w, L, S, ti),), lambda: (reference.latency_reg(w64, L64, S64, ti),),
                          [w, L, S], [w64, L64, S64])
        return _Case("latency_reg", f"{_SHORT[dtype]} w{list(wshape)} S{list(sshape)} {layout}", dtype, build)

    layouts = [((5, 3), (3,)), ((4, 5, 3), (3,)), ((5, 3), (4, 3)), ((4, 5, 3), (4, 3)), ((7, 28, 8), (7, 3)),
               ((2, 1, 16), (16,)), ((1, 1), (1,)), ((0, 3), (3,)), ((64, 28, 8), (64, 3)), ((512, 28, 8), (512, 3))]
    if quick:
        for dtype in DTYPES:
            yield case(dtype, (7, 28, 8), (7, 3))
            yield case(dtype, (28, 8), (3,))
        yield case(F32, (7, 28, 8), (3,), "strided")
        yield case(F32, (512, 28, 8), (512, 3))
        return
    for dtype in DTYPES:
        for wshape, sshape in layouts:
            yield case(dtype, wshape, sshape)
        yield case(dtype, (7, 28, 8), (7, 3), "strided")


def _dw_pw_cases(quick: bool) -> Iterator[_Case]:
    def case(dtype, shape, k, stride, dilation, c_out, layout="contiguous"):
        def build(device, gen):
            x, x64 = _pair(gen, shape, dtype, device, layout)
            dw, dw64 = _pair(gen, (shape[1], 1, k, k), dtype, device)
            pw, pw64 = _pair(gen, (c_out, shape[1], 1, 1), dtype, device)
            return _Trial(lambda: (fast_ops.relu_dw_pw_conv(x, dw, pw, stride, dilation),),
                          lambda: (reference.relu_dw_pw_conv(x64, dw64, pw64, stride, dilation),),
                          [x, dw, pw], [x64, dw64, pw64])
        return _Case("relu_dw_pw_conv", f"{_SHORT[dtype]} {list(shape)} {k}x{k} s{stride} d{dilation} "
                                        f"->{c_out} {layout}", dtype, build)

    grid = [(3, 1, 1), (5, 2, 1), (3, 1, 2), (5, 1, 2), (3, 2, 2)]
    if quick:
        for k, stride, dilation in grid:
            yield case(F32, (2, 4, 9, 9), k, stride, dilation, 5)
        yield case(F64, (2, 4, 9, 9), 3, 1, 1, 5)
        yield case(F32, (2, 4, 9, 9), 3, 2, 1, 5, "channels_last")
        return
    for dtype in (F32, F64):
        for k, stride, dilation in grid + [(7, 1, 1), (1, 1, 1)]:
            for shape in ((2, 4, 9, 9), (3, 16, 14, 14)):
                yield case(dtype, shape, k, stride, dilation, 8)
        yield case(dtype, (2, 4, 9, 9), 3, 2, 1, 5, "channels_last")


def _bn_cases(quick: bool) -> Iterator[_Case]:
    def case(dtype, shape, layout="contiguous"):
        def build(device, gen):
            x, x64 = _pair(gen, shape, dtype, device, layout)
            return _Trial(lambda: fast_ops.batch_norm_train(x, 1e-5), lambda: reference.batch_norm_train(x64, 1e-5),
                          [x], [x64])
        return _Case("batch_norm_train", f"{_SHORT[dtype]} {list(shape)} {layout}", dtype, build)

    shapes = ((4, 3, 5, 6), (8, 5), (2, 16, 14, 14))
    for dtype in (F32, F64):
        for shape in shapes[:2] if quick else shapes:
            yield case(dtype, shape)
    yield case(F32, (4, 3, 5, 6), "channels_last")


def _node_sum_cases(quick: bool) -> Iterator[_Case]:
    def case(dtype, k, shape):
        def build(device, gen):
            pairs = [_pair(gen, shape, dtype, device) for _ in range(k)]
            xs, xs64 = [p[0] for p in pairs], [p[1] for p in pairs]
            return _Trial(lambda: (fast_ops.node_sum(xs),), lambda: (reference.node_sum(xs64),), xs, xs64)
        return _Case("node_sum", f"{_SHORT[dtype]} k{k} {list(shape)}", dtype, build)

    for dtype in (F32, F64):
        for k in (1, 2, 5) if not quick or dtype == F32 else (3,):
            yield case(dtype, k, (3, 4, 5, 6))
    if not quick:
        yield case(F32, 4, (64, 16, 28, 28))


_GRIDS: Dict[str, Callable[[bool], Iterator[_Case]]] = {
    "mixed_sum": _mixed_sum_cases, "gumbel_softmax": _gumbel_cases, "hard_mixed_sum": _hard_cases,
    "mixed_op_free": _free_cases, "latency_reg": _latency_cases, "relu_dw_pw_conv": _dw_pw_cases,
    "batch_norm_train": _bn_cases, "node_sum": _node_sum_cases,
}
assert tuple(_GRIDS) == OPS


# ------------------------------------------------------------------------------------ the harness
def _breaks() -> Dict[str, str]:
    """{op: 'forward' | 'backward' | 'crash'} from DARTSCC_SELFTEST_BREAK."""
    out = {}
    for item in filter(None, (s.strip() for s in os.environ.get(BREAK_ENV, "").split(","))):
        op, _, what = item.partition(":")
        if op not in OPS or what not in ("", "forward", "backward", "crash"):
            raise ValueError(f"{BREAK_ENV}: expected op[:forward|backward|crash] with op one of {list(OPS)}, "
                             f"got {item!r}")
        out[op] = what or "forward"
    return out


def _perturb(t: Tensor) -> Tensor:
    """t, one element off by 10 % of t's scale and more: what a wrong kernel returns."""
    bump = torch.zeros(t.shape, dtype=t.dtype, device=t.device)
    bump.view(-1)[0] = 0.1 + 0.1 * t.detach().abs().max().float().item()
    return t + bump


def _error(got: Tensor, want: Tensor, dtype: torch.dtype) -> Tuple[float, float]:
    """(max |got - want|, that over the tolerance), NaNs in the same places agreeing."""
    if tuple(got.shape) != tuple(want.shape):
        raise _Mismatch(f"shape {list(got.shape)}, the reference's {list(want.shape)}")
    if got.numel() == 0:
        return 0.0, 0.0
    a, r = got.detach().to("cpu", F64), want.detach().to(F64)
    both_nan = torch.isnan(a) & torch.isnan(r)
    d = torch.where(both_nan, torch.zeros_like(a), (a - r).abs())
    err = math.inf if torch.isnan(d).any() else float(d.max())
    scale = float(torch.where(torch.isnan(r), torch.zeros_like(r), r.abs()).max())
    atol, rtol = TOL[dtype]
    return err, err / (atol + rtol * scale)


class _Mismatch(Exception):
    """An output of the wrong shape, dtype or device."""


def _run_case(case: _Case, device: torch.device, gen: torch.Generator, broken: Optional[str]) -> CaseResult:
    res = CaseResult(case.desc)
    try:
        trial = case.build(device, gen)
        if broken == "crash":
            os.abort()  # test-only: a kernel that takes its process down
        outs = list(trial.run())
        if outs[0].dtype != case.dtype or outs[0].device != device:
            raise _Mismatch(f"output is {outs[0].dtype} on {outs[0].device}, expected {case.dtype} on {device}")
        if broken == "forward" and outs[0].numel():
            outs[0] = _perturb(outs[0])
        refs = list(trial.ref())
        if len(outs) != len(refs):
            raise _Mismatch(f"{len(outs)} outputs, the reference has {len(refs)}")
        fwd = [_error(a, r, case.dtype) for a, r in zip(outs, refs)]
        gs = [torch.randn(r.shape, generator=gen, dtype=F64) for r in refs[:trial.n_grad]]
        bwd = []
        if trial.leaves and any(o.requires_grad for o in outs[:trial.n_grad]):
            grads = list(torch.autograd.grad(outs[:trial.n_grad], trial.leaves,
                                             [g.to(device=o.device, dtype=o.dtype) for g, o in zip(gs, outs)],
                                             allow_unused=True))
            # the reference's empty outputs may hang off no graph: their gradients are zero
            grads64 = torch.autograd.grad(refs[:trial.n_grad], trial.leaves64, gs, allow_unused=True) \
                if all(r.requires_grad for r in refs[:trial.n_grad]) else [None] * len(trial.leaves64)
            if broken == "backward" and grads[0] is not None and grads[0].numel():
                grads[0] = _perturb(grads[0])
            for a, r, leaf in zip(grads, grads64, trial.leaves):
                a = torch.zeros_like(leaf) if a is None else a
                r = torch.zeros(leaf.shape, dtype=F64) if r is None else r
                bwd.append(_error(a, r, case.dtype))
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # an asynchronous kernel error belongs to this case
        res.fwd_err = max(e for e, _ in fwd)
        res.bwd_err = max((e for e, _ in bwd), default=0.0)
        res.ratio = max(q for _, q in fwd + bwd)
    except Exception as e:  # noqa: BLE001  (a kernel that raises fails its case; the selftest goes on)
        msg = str(e).strip().splitlines()
        res.error = f"{type(e).__name__}: {msg[0][:200] if msg else ''}"
    return res


def _check_device(device: Union[str, torch.device], impl: str) -> torch.device:
    d = torch.device(device)
    if d.type not in ("cpu", "cuda"):
        raise ValueError(f"selftest: device must be cpu or cuda[:N], got {str(device)!r}")
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"selftest: device {str(device)!r} asked for, but torch {torch.__version__} sees no "
                             "CUDA device here")
        if impl == "kernels" and not BUILD_INFO["cuda"]:
            raise ValueError("selftest: this build of dartscc_fast has no CUDA kernels (rebuild with FORCE_CUDA=1); "
                             "--torch-path checks the ops it runs instead")
        if d.index is None:
            d = torch.device("cuda", torch.cuda.current_device())
    return d


def _write_json(path: Optional[str], data: Dict) -> None:
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)


def run(device: Union[str, torch.device] = "cpu", quick: bool = False, *, impl: str = "kernels",
        ops: Optional[Sequence[str]] = None, verbose: bool = True, out: Optional[TextIO] = None,
        json_path: Optional[str] = None) -> SelftestResult:
    """Check every compiled op (or ``ops``), forward and backward, against the float64 reference on ``device``.

    Args:
        device: 'cpu', 'cuda' or 'cuda:N'.
        quick: the small grid the CUDA gate runs, instead of the full one.
        impl: 'kernels' (the compiled ops) or 'torch' (the torch path the CUDA gate falls back to).
        ops: the ops to check (default :data:`OPS`).
        verbose: print each op's table and a summary to ``out`` (default stdout).
        json_path: write the result there as JSON, and before each op which op is running (the gate reads it
            to blame a crash on its op).
    Returns:
        A :class:`SelftestResult`; ``.passed`` is False if any case of any op failed.
    """
    if impl not in ("kernels", "torch"):
        raise ValueError(f"selftest: impl must be 'kernels' or 'torch', got {impl!r}")
    d = _check_device(device, impl)
    names = list(OPS if ops is None else ops)
    unknown = [op for op in names if op not in OPS]
    if unknown:
        raise ValueError(f"selftest: unknown ops {unknown}; expected some of {list(OPS)}")
    breaks = _breaks()
    out = sys.stdout if out is None else out
    result = SelftestResult(str(d), impl, quick)
    if verbose:
        where = torch.cuda.get_device_name(d) if d.type == "cuda" else "CPU"
        what = "the compiled kernels" if impl == "kernels" else "the torch path"
        print(f"dartscc_fast selftest on {d} ({where}), {what}, {'quick' if quick else 'full'} grid; "
              f"dartscc_fast {BUILD_INFO['version']}, torch "
              f"{BUILD_INFO['torch']}, CUDA {BUILD_INFO['cuda']}\n", file=out, flush=True)
    t0 = time.perf_counter()
    with cuda_gate.forced(impl == "kernels"):
        for op in names:
            _write_json(json_path, dict(result.to_dict(), running=op))
            report = OpReport(op)
            if op in cuda_gate.CPU_ONLY_OPS and d.type != "cpu":
                report.skipped = f"no {d.type.upper()} kernel: on {d.type} its wrapper runs the reference"
            elif op in cuda_gate.CPU_ONLY_OPS and impl == "torch":
                report.skipped = "not gated: no torch path of its own"
            else:
                for i, case in enumerate(_GRIDS[op](quick)):
                    gen = torch.Generator().manual_seed(1000 * OPS.index(op) + i)
                    report.cases.append(_run_case(case, d, gen, breaks.get(op)))
            result.ops[op] = report
            if verbose:
                print(report.table() + "\n", file=out, flush=True)
    result.seconds = time.perf_counter() - t0
    _write_json(json_path, dict(result.to_dict(), running=None))
    if verbose:
        print(result.summary(), file=out, flush=True)
    return result


class _CallableModule(types.ModuleType):
    """``dartscc_fast.selftest(...)`` runs :func:`run`, and ``dartscc_fast.selftest`` stays this module (a function
    of that name in the package would hide the module from ``import dartscc_fast.ops.selftest as m``)."""

    def __call__(self, *args, **kwargs) -> SelftestResult:
        return run(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
