"""A small progress bar for long work (no dependency), quiet when output is not a terminal."""
from __future__ import annotations

import os
import sys
import time
from typing import Dict, Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")


class Progress:
    """``for x in Progress(items, desc="profiling"): ...; bar.set(loss=0.3)``.

    Redraws at most every 0.2 s on a terminal. Where stderr is not a terminal
    (CI, logs) it prints one line per 10% instead, so logs stay short.
    Set ``DARTSCC_PROGRESS=0`` to silence it.
    """

    def __init__(self, iterable: Optional[Iterable[T]] = None, total: Optional[int] = None, desc: str = "",
                 stream=None, enabled: Optional[bool] = None):
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.desc = desc
        self.stream = stream or sys.stderr
        self.enabled = enabled if enabled is not None else os.getenv("DARTSCC_PROGRESS", "1") != "0"
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.n = 0
        self.fields: Dict[str, object] = {}
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._last_decile = -1

    def set(self, **fields) -> None:
        """Show these values (loss=..., acc=...) after the count."""
        self.fields.update(fields)

    def update(self, n: int = 1) -> None:
        self.n += n
        self._draw()

    def __iter__(self) -> Iterator[T]:
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.start
        parts = [self.desc] if self.desc else []
        if self.total:
            frac = min(self.n / self.total, 1.0)
            bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
            eta = elapsed / self.n * (self.total - self.n) if self.n else 0.0
            parts.append(f"[{bar}] {self.n}/{self.total} {elapsed:.0f}s<{eta:.0f}s")
        else:
            parts.append(f"{self.n} {elapsed:.0f}s")
        for k, v in self.fields.items():
            parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
        return " ".join(parts)

    def _draw(self, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty:
            if final or now - self._last_draw > 0.2:
                self.stream.write("\r" + self._line()[:160].ljust(80))
                self.stream.flush()
                self._last_draw = now
        elif self.total:
            decile = int(10 * self.n / self.total)
            if decile != self._last_decile and (decile > self._last_decile or final):
                self._last_decile = decile
                self.stream.write(self._line() + "\n")
                self.stream.flush()

    def close(self) -> None:
        self._draw(final=True)
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
