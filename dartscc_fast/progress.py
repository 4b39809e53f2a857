"""Progress bars for long work (tqdm), quiet when asked and short in logs."""
from __future__ import annotations

import math
import os
import sys
from typing import Dict, Iterable, Iterator, Optional, TypeVar

from tqdm import tqdm

T = TypeVar("T")

#: Set to 0 to silence every progress bar of the package.
ENV = "DARTSCC_PROGRESS"


class _Lines:
    """A log stream for tqdm: each redraw (tqdm starts it with a carriage return) becomes its own line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, s: str) -> None:
        s = s.replace("\r", "").rstrip()
        if s:
            self.stream.write(s + "\n")

    def flush(self) -> None:
        self.stream.flush()


class Progress:
    """``for x in Progress(items, desc="profiling"): ...``, or ``bar = Progress(total=n)``, then
    ``bar.set(loss=0.3)``, ``bar.update()`` and ``bar.close()``: a tqdm bar.

    Redraws at most every 0.2 s on a terminal. Where the stream (stderr by default) is not a
    terminal (CI, logs) it writes one line per 10% instead, so logs stay short; with no total
    it writes nothing there. ``enabled=False``, or ``DARTSCC_PROGRESS=0``, silences it.
    """

    def __init__(self, iterable: Optional[Iterable[T]] = None, total: Optional[int] = None, desc: str = "",
                 stream=None, enabled: Optional[bool] = None):
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.desc = desc
        self.stream = stream or sys.stderr
        self.enabled = enabled if enabled is not None else os.getenv(ENV, "1") != "0"
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.n = 0
        self.fields: Dict[str, object] = {}
        if self.tty:
            kw = dict(file=self.stream, mininterval=0.2)
        else:  # every tenth of the total, never more often (maxinterval would lower miniters on slow work)
            kw = dict(file=_Lines(self.stream), mininterval=0, maxinterval=math.inf,
                      miniters=max(1, math.ceil((self.total or 0) / 10)))
        self._bar = tqdm(total=self.total, desc=desc or None, disable=not self.enabled or not (self.tty or self.total),
                         dynamic_ncols=self.tty, **kw)

    def set(self, **fields) -> None:
        """Show these values (loss=..., acc=...) after the count, from the next redraw."""
        self.fields.update(fields)
        self._bar.set_postfix_str(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in self.fields.items()), refresh=False)

    def update(self, n: int = 1) -> None:
        self.n += n
        self._bar.update(n)

    def __iter__(self) -> Iterator[T]:
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
