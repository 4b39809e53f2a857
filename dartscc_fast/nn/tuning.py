"""Where the fast modules hand work to torch: every tuning switch of :mod:`dartscc_fast.nn`, in one place.

Each value was chosen by a benchmark that re-derives it (docs/design.md, "Tuning switches"). Read them as
``TUNING.<name>``; change them for a block with :func:`tuned`, or for the process with ``TUNING.<name> = ...``.

    with dartscc_fast.nn.tuned(fused_conv_min_pixels=0):   # fuse every separable unit
        ...
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator

__all__ = ["Tuning", "TUNING", "tuned"]


@dataclasses.dataclass
class Tuning:
    """The switches, with their defaults."""
    #: Output planes with fewer pixels run 3x3 and 1x1 separable units as torch modules (oneDNN): the fused
    #: unit wins from 14x14 up and on every dilated or 5x5 kernel, loses on 7x7 planes of 64-128 channels
    #: (``bench/bench_relu_dw_pw_conv.py``). 0 fuses everything; a large number only dilated/5x5 kernels.
    fused_conv_min_pixels: int = 196
    #: Training BatchNorm on planes with fewer pixels goes to torch's kernel, where the custom op's per-call
    #: overhead outweighs its faster statistics pass (``bench/bench_batch_norm.py``).
    batch_norm_min_pixels: int = 196
    #: 1x1 convolutions on planes with fewer pixels keep oneDNN's backward: batched products of narrow
    #: matrices are slower there (``bench/bench_conv1x1.py``).
    conv1x1_min_pixels: int = 196
    #: In a cell's grid scope (opened by :func:`~dartscc_fast.nn.mixed_op.fuse_preprocessing`), the edges
    #: leaving one state compute its pooling + BatchNorm once and share it (5 pools instead of 14 in an
    #: ``fmnist-paper`` cell; ``bench/bench_search_step.py``). Off: every edge pools in its own kernel.
    share_pools: bool = True

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type in ("int", int) and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"Tuning.{f.name} must be an int >= 0, got {v!r}")
            if f.type in ("bool", bool) and not isinstance(v, bool):
                raise ValueError(f"Tuning.{f.name} must be True or False, got {v!r}")


#: The process's switches, read by the modules at every forward.
TUNING = Tuning()


@contextlib.contextmanager
def tuned(**changes) -> Iterator[Tuning]:
    """Change some switches of :data:`TUNING` for the block (checked as :class:`Tuning` checks them)."""
    saved = dataclasses.asdict(TUNING)
    new = Tuning(**{**saved, **changes})  # unknown names and bad values raise here, before any change
    for k, v in dataclasses.asdict(new).items():
        setattr(TUNING, k, v)
    try:
        yield TUNING
    finally:
        for k, v in saved.items():
            setattr(TUNING, k, v)
