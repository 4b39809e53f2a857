"""Architectures for a latency budget in ms: the most accurate of the trained family that fits.

After one search, every (S, kappa) gives an architecture. For a budget T this module takes the
family over a fine simplex grid (and, with a strength axis, over the kappa levels), keeps the
architectures whose predicted latency is within T, and picks the one with the best validation
accuracy with the supernet's weights: what a user can tell without retraining, on images the test
split never shares. That ranking favours the cheap architectures the supernet trained most; with
``retrain`` the pick and the dearest architecture within T are retrained, and the dearer is
taken unless the other is better on the validation split by more than two standard errors
(docs/design.md, the front's picks). The prediction
comes with an interval from the table's own spread, and with ``measure`` the network is timed here
and checked against T.

    picks = derive_for_budget(load_search("runs/search"), [30.0, 40.0], measure=True)
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence

import torch

from dartscc_fast.evaluation.derive import Derived, derive, measure_latency
from dartscc_fast.evaluation.evaluate import RetrainConfig, dearest_within_noise, inherited_accuracies, retrain
from dartscc_fast.latency.keys import space_configs
from dartscc_fast.progress import Progress
from dartscc_fast.search.hypernet import simplex_grid

__all__ = ["BudgetError", "BudgetPick", "family_for_budgets", "derive_for_budget", "fit_ms", "STRENGTH_LEVELS"]

#: Fractions t of a strength axis whose architectures join the family (kappa = kappa_of_t(t)).
STRENGTH_LEVELS = tuple(i / 16 for i in range(17))


class BudgetError(ValueError):
    """No architecture of the family fits the budget."""


@dataclasses.dataclass
class BudgetPick:
    """The architecture picked for one budget, and what is known about it."""
    budget_ms: float
    derived: Derived
    val_acc: float                  # validation accuracy with the supernet's weights
    spread_ms: float                # the prediction's half-interval from the table's spreads
    candidates: int                 # distinct family architectures within the budget
    conservative: bool = False      # the top of the interval, not the prediction, fits the budget
    retrained: Optional[Dict] = None  # with retrain: the pick's retraining (val_acc, test_acc, epochs, ...)
    rival: Optional[Dict] = None      # with retrain: the other candidate, retrained and not picked

    @property
    def predicted_ms(self) -> float:
        return float(self.derived.predicted_ms)

    @property
    def meets_budget(self) -> Optional[bool]:
        """Whether the measured latency is within the budget (None until measured)."""
        m = self.derived.measured_ms
        return None if m is None else m <= self.budget_ms

    def to_dict(self) -> Dict:
        return {"budget_ms": self.budget_ms, **self.derived.to_dict(), "val_acc": self.val_acc,
                "predicted_interval_ms": [self.predicted_ms - self.spread_ms, self.predicted_ms + self.spread_ms],
                "candidates": self.candidates, "conservative": self.conservative, "meets_budget": self.meets_budget,
                "retrained": self.retrained, "rival": self.rival}


def family_for_budgets(result, grid_steps: int = 6, levels: Sequence[float] = STRENGTH_LEVELS,
                       progress: bool = True) -> List[Derived]:
    """The distinct architectures of a search over the simplex grid (and the strength levels), each at the
    first (S, kappa) that gives it, cheapest first. Needs a latency table in the search."""
    if result.table is None:
        raise BudgetError("this search has no latency table, so no architecture has a predicted latency in ms")
    kappas = [result.config.kappa_at(t) for t in levels] if result.has_strength else [None]
    grid = simplex_grid(grid_steps)
    seen: Dict[str, Derived] = {}
    bar = Progress(total=len(kappas) * len(grid), desc="deriving the family", enabled=None if progress else False)
    for kappa in kappas:
        for S in grid:
            d = derive(result, S, kappa=kappa)
            seen.setdefault(d.genotype.to_json(), d)
            bar.update()
    bar.close()
    return sorted(seen.values(), key=lambda d: d.predicted_ms)


def derive_for_budget(result, budgets_ms: Sequence[float], loaders=None, grid_steps: int = 6,
                      levels: Sequence[float] = STRENGTH_LEVELS, measure: bool = False,
                      threads: Optional[int] = None, max_batches: Optional[int] = None,
                      progress: bool = True, table=None, conservative: bool = False,
                      retrain: Optional[RetrainConfig] = None) -> List[BudgetPick]:
    """For each budget (ms, on the search's latency table), the family's most accurate architecture within it.

    Args:
        result: a search (:func:`dartscc_fast.search.load_search`) with a latency table.
        budgets_ms: one or more budgets; each gets one pick (the same architecture may serve several).
        loaders: the search's data (default: its own seeded split); the validation split ranks.
        grid_steps, levels: how finely the simplex and the strength axis are walked.
        measure: also time each pick here (the table's batch and layout) and say whether it meets its budget.
        max_batches: rank on this many validation batches only (quicker, noisier).
        table: predict (and measure) on this :class:`~dartscc_fast.latency.LatencyTable` instead of the
            search's, e.g. one measured on the runtime you deploy with (``profile --runtime onnxruntime``).
            The family is the search's either way: its architectures do not depend on the table.
        conservative: fit the top of the prediction's interval (predicted + the table's spread) within the
            budget, not the prediction: a pick predicted just under its budget measures over it about half
            the time (docs/latency.md, budget hits).
        retrain: retrain the pick and the dearest within each budget with these settings; the dearer is kept
            unless the other is better on validation by over 2 SE (``BudgetPick.retrained``, ``.rival``).

    Raises :class:`BudgetError` for a budget below the family's cheapest architecture, naming it.
    """
    budgets = [float(b) for b in budgets_ms]
    if not budgets:
        raise ValueError("derive_for_budget needs at least one budget")
    bad = [b for b in budgets if not b > 0]
    if bad:
        raise ValueError(f"budgets must be positive milliseconds, got {bad}")
    result = _with_table(result, table)
    family = family_for_budgets(result, grid_steps, levels, progress)
    need = {d.genotype.to_json(): fit_ms(result, d, conservative) for d in family}

    def bound(d: Derived) -> float:
        return need[d.genotype.to_json()]

    cheapest = min(family, key=bound)
    for b in budgets:
        if b < bound(cheapest):
            raise BudgetError(f"no architecture of this search fits {b:g} ms: the cheapest, at "
                              f"S = {cheapest.S_text}{_kappa_text(cheapest)}, is predicted at "
                              f"{cheapest.predicted_ms:.2f} ms"
                              f"{f' (at most {bound(cheapest):.2f} ms)' if conservative else ''} on "
                              f"{_table_text(result.table)}")
    loaders = loaders if loaders is not None else result.config.loaders()
    ranked = _rank(result, [d for d in family if bound(d) <= max(budgets)], loaders.val, max_batches, progress)
    picks = []
    for b in budgets:
        within = [d for d in family if bound(d) <= b]
        # the best validation accuracy; of equals, the cheaper
        best = max(within, key=lambda d: (ranked[d.genotype.to_json()], -d.predicted_ms))
        spread = result.table.predict_spread(result.space, best.genotype)
        picks.append(BudgetPick(b, best, ranked[best.genotype.to_json()], spread, len(within), conservative))
    if retrain is not None:
        _retrain_choice(result, picks, family, bound, ranked, loaders, retrain)
    if measure:
        _measure(result, picks, threads)
    return picks


def fit_ms(result, d: Derived, conservative: bool = False) -> float:
    """What has to fit a budget on the search's table: the predicted latency, or with ``conservative`` the top
    of its interval (predicted + the table's spread)."""
    return d.predicted_ms + (result.table.predict_spread(result.space, d.genotype) if conservative else 0.0)


def _with_table(result, table):
    """The search predicting on ``table`` (None: its own), which must cover the search's space."""
    if table is None:
        return result
    missing = [c.key() for c in space_configs(result.space, table.batch or 64, table.dtype, table.device)
               if c.key() not in table]
    if missing:
        raise BudgetError(f"{table._where()} does not cover the search's space {result.space.name}: "
                          f"{len(missing)} configuration(s) missing, e.g. {missing[0]!r}")
    return dataclasses.replace(result, table=table)


def _rank(result, candidates, val_loader, max_batches, progress) -> Dict[str, float]:
    """Validation accuracy with the supernet's weights of every candidate."""
    accs = inherited_accuracies(result.supernet, result.space, [d.genotype for d in candidates], val_loader,
                                max_batches, progress="ranking on the validation split" if progress else None)
    return {d.genotype.to_json(): a for d, a in zip(candidates, accs)}


def _retrain_choice(result, picks: List[BudgetPick], family: List[Derived], bound, ranked: Dict[str, float],
                    loaders, cfg: RetrainConfig) -> None:
    """Each pick against the dearest architecture within its budget, both retrained: the dearer one unless
    the other is better on the validation split by more than two standard errors
    (:func:`dearest_within_noise`) becomes the pick."""
    n_val = len(loaders.val.dataset)
    if not n_val:
        raise ValueError("retraining picks by validation accuracy, and this split has no validation images")
    done: Dict[str, Dict] = {}

    def retrained(d: Derived) -> Dict:
        key = d.genotype.to_json()
        if key not in done:
            done[key] = retrain(result.space, d.genotype, loaders, cfg, desc=f"retrain S={d.S_text}")
        return done[key]

    for p in picks:
        dearest = max((d for d in family if bound(d) <= p.budget_ms), key=lambda d: d.predicted_ms)
        pair = [p.derived] + ([dearest] if dearest.genotype.to_json() != p.derived.genotype.to_json() else [])
        best = dearest_within_noise(pair, lambda d: retrained(d)["val_acc"], lambda d: d.predicted_ms, n_val)
        other = next((d for d in pair if d is not best), None)
        if best is not p.derived:
            p.derived, p.val_acc = best, ranked[best.genotype.to_json()]
            p.spread_ms = result.table.predict_spread(result.space, best.genotype)
        p.retrained = retrained(best)
        p.rival = None if other is None else {"S": other.S_text, "kappa": other.extra.get("kappa"),
                                              "predicted_ms": other.predicted_ms, **retrained(other)}


def _measure(result, picks: List[BudgetPick], threads: Optional[int]) -> None:
    table = result.table
    done: Dict[str, Dict] = {}
    for p in picks:
        key = p.derived.genotype.to_json()
        if key not in done:
            torch.manual_seed(0)
            done[key] = measure_latency(result.space, p.derived.genotype, batch=table.batch or 64, threads=threads,
                                        memory_format=table.memory_format, runtime=table.runtime)
        p.derived.measured_ms, p.derived.measured_iqr_ms = done[key][table.statistic], done[key]["iqr"]


def _kappa_text(d: Derived) -> str:
    k = d.extra.get("kappa")
    return "" if k is None else f", kappa = {k:.3g}"


def _table_text(table) -> str:
    m = table.meta
    return f"the table of {m.get('device_name') or m.get('device')} ({m.get('threads')} threads, batch {table.batch})"
