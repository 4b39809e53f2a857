"""The machine's pace: one fixed network timed beside every measurement, so that a drift of the machine's
speed can be divided out of it.

A shared virtual CPU changes speed by up to 10 % over minutes (docs/latency.md, "Is the 1-thread tau the
measurement's or the table's?"). Interleaving shares that drift among the networks of one chunk, but not
between chunks, nor between the op configurations `profile` times one after the other. So, with pacing on,
the **anchor** (the space's network base: stem, preprocessing, node sums, classifier, every edge free) is
timed in a **probe** of :data:`PROBE_RUNS` runs, read by its fastest (other work only adds time), before and
after every block of runs: one op configuration's timing in one pass of ``profile`` (its runs scaled by the mean
of the two probes around it), one chunk of networks in ``time_genotypes`` (probed before every round and after the
last; the check and the calibration scale the chunk by the median of its probes). A block's runs are scaled by
``ref / pace``: ``ref`` the reference pace (the median probe of the whole profile; for a check or a calibration,
the table's). A paced figure is the time the run would have taken at the reference pace.

Pacing assumes the drift slows every op alike. Measured, it does not: on a 2-core virtual machine the anchor was
slowed 1.6 to 2.3 times as much as the networks, and pacing the check's measurement helped in one torch run and
hurt in the other (docs/latency.md, "Pacing"); so it is an option, off by default.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

#: Runs per probe of the anchor; the probe reads the fastest.
PROBE_RUNS = 5
#: What the anchor is, in a table's ``meta['pace']``.
ANCHOR = "the network base of the first space (every edge free), fastest of each probe's runs"


@dataclass
class Pace:
    """The probes of the anchor during one measurement (ms). ``measure()`` times one probe and returns its
    fastest run (:func:`dartscc_fast.latency.measure.anchor_pace` builds it on a runtime)."""

    measure: Callable[[], float]
    probes: List[float] = field(default_factory=list)

    def probe(self) -> float:
        """Probe the anchor now and record it."""
        v = float(self.measure())
        self.probes.append(v)
        return v

    def ref_ms(self) -> float:
        """The median probe so far: the measurement's typical pace."""
        if not self.probes:
            raise ValueError("no probe of the anchor has been taken")
        return float(np.median(self.probes))

    def meta(self) -> Dict:
        """What a table records of its pace (``meta['pace']``)."""
        p = np.asarray(self.probes)
        return {"anchor": ANCHOR, "anchor_ms": self.ref_ms(), "probes": len(p), "probe_runs": PROBE_RUNS,
                "spread_pct": float((np.percentile(p, 90) - np.percentile(p, 10)) / np.median(p) * 100)}


def scale(times: Sequence[float], ref_ms: float, pace_ms: float) -> List[float]:
    """Runs taken at ``pace_ms``, as they would have run at ``ref_ms``."""
    if not (pace_ms > 0 and ref_ms > 0):
        raise ValueError(f"paces must be > 0, got ref {ref_ms!r} and block {pace_ms!r}")
    f = ref_ms / pace_ms
    return [t * f for t in times]


def paced_runs(blocks: Sequence[Tuple[Sequence[float], float]], ref_ms: float) -> List[float]:
    """The runs of several blocks, each ``(runs, its pace)``, at the pace ``ref_ms``."""
    return [t for runs, pace_ms in blocks for t in scale(runs, ref_ms, pace_ms)]


def table_ref_ms(meta: Dict) -> Optional[float]:
    """The reference pace a paced table was measured at, or None for a table without one."""
    pace = meta.get("pace")
    return float(pace["anchor_ms"]) if isinstance(pace, dict) and pace.get("anchor_ms") else None
