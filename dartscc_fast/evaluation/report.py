"""The report: profiles A, B, C and a grid over the simplex, against the baselines.

For every architecture: accuracy (with the split it was measured on),
parameters, predicted and measured latency, ops by type. Written as Markdown
and JSON, with three plots: the op distribution per profile, the
accuracy-versus-latency front of the hypernetwork's family against the
baselines, and a map of predicted latency and accuracy over the simplex.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from dartscc_fast.evaluation.derive import Derived, derive, derive_from_alphas, edges_changed, table_only
from dartscc_fast.evaluation.evaluate import (
    RetrainConfig,
    dearest_within_noise,
    difference_se,
    genotype_weights,
    inherited_accuracies,
    inherited_accuracy,
    random_matched,
    retrain,
    within_noise,
)
from dartscc_fast.latency.measure import time_genotypes
from dartscc_fast.nn.primitives import OP_TYPES
from dartscc_fast.search.hypernet import PROFILE_NAMES, PROFILES, format_S, parse_S, simplex_grid
from dartscc_fast.space import Genotype

__all__ = ["make_report", "write_report", "markdown", "check_claims", "CLAIM_PARTS", "learned", "coverage",
           "random_accuracy", "matched_random_draws", "row_genotype", "report_retraining", "STRENGTH_LEVELS",
           "RANDOM_DRAWS"]

#: Trade-offs on a strength axis (as fractions t of it) whose architectures form the family for the front.
STRENGTH_LEVELS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
#: Random architectures of matched latency retrained per profile; "over random" is against their mean. Draws of
#: one seed spread by an sd of 0.2-2.2 points, so one draw decided a seed's margin (docs/design.md).
RANDOM_DRAWS = 3


def _row(d: Derived, kind: str, **extra) -> Dict:
    row = d.to_dict()
    row["kind"] = kind
    row.update(extra)
    return row


def make_report(result, loaders, baselines: Optional[Dict] = None, grid_steps: int = 4,
                retrain_cfg: Optional[RetrainConfig] = None, front_retrain: int = 6, random_baselines: bool = True,
                measure: bool = True, threads: Optional[int] = None, profile_rounds: int = 8, log=print,
                cache: Optional[Dict] = None, random_draws: int = RANDOM_DRAWS) -> Dict:
    """Derive, evaluate and collect everything the report shows.

    Args:
        result: the hypernetwork search (:func:`dartscc_fast.search.load_search`).
        loaders: ``make_loaders(...)`` of the same data and split.
        baselines: ``{"darts": SearchResult, "fbnet": [SearchResult, ...]}`` (optional).
        grid_steps: the simplex grid has components in multiples of 1/grid_steps.
        retrain_cfg: retraining settings; None evaluates with inherited weights only.
        front_retrain: retrain this many distinct family architectures for the front, chosen by
            :func:`front_picks` (per baseline's latency budget its inherited-accuracy pick and its
            dearest architecture, then others spread over the predicted latency); the others keep
            inherited-weight accuracy.
        measure: time every derived network here (the table's device and layout): all the distinct
            ones together, interleaved over ``profile_rounds`` rounds of 3 runs each.
        cache: a dict kept between reports of one search (at several kappas): architectures retrained or
            timed for one report are not retrained or timed again.
        random_draws: random architectures matched to each profile's latency (the closest ones drawn), all
            retrained; the profile is scored against their mean.
    """
    if int(random_draws) < 1:
        raise ValueError(f"random_draws must be at least 1, got {random_draws}")
    t0 = time.perf_counter()
    b = _ReportBuilder(result, loaders, retrain_cfg, log, cache)
    b.derive_all(grid_steps, baselines, random_draws if random_baselines else 0)
    b.pick_front(front_retrain)
    if measure and result.table is not None:
        b.measure(threads, profile_rounds)
    report = b.assemble()
    report["seconds"] = time.perf_counter() - t0
    report["claims"] = check_claims(report)
    report["front"] = front_comparison(report)
    report["learned"] = learned(report)
    report["coverage"] = coverage(report, _cheapest_ms(result))
    return report


class _ReportBuilder:
    """The architectures of one report, derived first, then evaluated once each (retrained, timed)."""

    def __init__(self, result, loaders, retrain_cfg: Optional[RetrainConfig], log, cache: Optional[Dict]):
        self.result, self.loaders, self.retrain_cfg, self.log = result, loaders, retrain_cfg, log
        self.space, self.table = result.space, result.table
        # genotype JSON -> its evaluation (shared by equal architectures, and by the reports sharing `cache`)
        self.evaluated: Dict[str, Dict] = cache if cache is not None else {}
        self.inherited: Dict[tuple, float] = {}  # (supernet, genotype JSON) -> accuracy with the supernet's weights

    def evaluate(self, d: Derived, supernet, do_retrain: bool, what: str) -> Dict:
        """Inherited accuracy with ``supernet`` (if given) and, if asked, the retrained one, each computed once."""
        ev = self.evaluated.setdefault(d.genotype.to_json(), {})
        if "measured_ms" in ev:
            d.measured_ms, d.measured_iqr_ms = ev["measured_ms"], ev["measured_iqr_ms"]
        out = {}
        if supernet is not None:
            key = (id(supernet), d.genotype.to_json())
            if key not in self.inherited:
                self.inherited[key] = inherited_accuracy(supernet, self.space, d.genotype, self.loaders.test)
            out["inherited_acc"] = self.inherited[key]
        if do_retrain and self.retrain_cfg is not None:
            if "retrain" not in ev:
                self.log(f"retraining {what} ({self.retrain_cfg.epochs} epochs)")
                ev["retrain"] = retrain(self.space, d.genotype, self.loaders, self.retrain_cfg,
                                        desc=f"retrain {what}")
            out["retrain"] = ev["retrain"]
            out["test_acc"] = ev["retrain"]["test_acc"]
        else:
            out["test_acc"] = out.get("inherited_acc")
            out["acc_kind"] = "inherited"
        return out

    # ------------------------------------------------------------------ derivation
    def derive_all(self, grid_steps: int, baselines: Optional[Dict], random_draws: int) -> None:
        """Every architecture first: the profiles, the simplex grid, the family along the strength axis,
        the table-only picks, the baselines' and the random ones."""
        result = self.result
        self.derived = {name: derive(result, name, label=name) for name in PROFILES}
        self.grid = [(derive(result, S), S) for S in simplex_grid(grid_steps)]
        self.family = _strength_family(result, grid_steps)
        self.tables = {name: table_only(result, name, label=f"table-only {name}") for name in PROFILES}
        # one table-only architecture per S: the family repeats the grid's S at every strength level
        by_S = {tuple(t.S): t for t in self.tables.values()}
        for d in list(self.derived.values()) + [d for d, _ in self.grid] + self.family:
            _annotate(result, d, by_S)
        self.searches = {"hypernet": 1}
        self.base_derived = self._baselines(baselines)
        self.random_derived = self._randoms(random_draws) if random_draws and self.table is not None else []

    def _baselines(self, baselines: Optional[Dict]) -> Dict[str, List]:
        out: Dict[str, List] = {"darts": [], "fbnet": []}
        for kind in ("darts", "fbnet"):
            runs = (baselines or {}).get(kind) or []
            runs = runs if isinstance(runs, (list, tuple)) else [runs]
            self.searches[kind] = len(runs)
            for r in runs:
                an, ar = r.alphas(parse_S(r.config.fixed_S or PROFILES["A"]))
                d = derive_from_alphas(self.space, an, ar, r.config.fixed_S or PROFILES["A"], self.table,
                                       label=f"{kind} kappa={r.config.kappa:g}")
                out[kind].append((r, d))
        return out

    def _randoms(self, draws: int) -> List:
        """``(profile, draw, Derived)`` for :func:`matched_random_draws` of every profile (labelled ``random ~A``, then
        ``random ~A #2``, ...)."""
        out = []
        for name, k, g, _ in matched_random_draws(self.space, self.table, {n: self.derived[n] for n in PROFILES}, draws,
                                          self.result.config.seed):
            d = derive_from_alphas(self.space, *_onehot(self.space, g), PROFILES["A"], self.table,
                                   label=f"random ~{name}" + (f" #{k + 1}" if k else ""))
            d.genotype = g
            out.append((name, k, d))
        return out

    def pick_front(self, front_retrain: int) -> None:
        """The grid and family architectures retrained for the front: first, for each baseline's predicted
        latency, the one a user with that budget would take from the family without retraining
        (front_picks), then others spread over the predicted latency."""
        self.seen = {}
        for d in [d for d, _ in self.grid] + self.family:
            self.seen.setdefault(d.genotype.to_json(), d)
        budgets = [(d.label, d.predicted_ms) for runs in self.base_derived.values() for _, d in runs]
        self.retrained_for = front_picks(self.result.supernet, self.space, list(self.seen.values()), budgets,
                                         self.loaders.val, front_retrain,
                                         already={d.genotype.to_json() for d in self.derived.values()})
        self.log("retraining for the front: " + ("; ".join(f"S={self.seen[key].S_text} ({why})"
                                                        for key, why in self.retrained_for.items()) or "none"))

    def measure(self, threads: Optional[int], rounds: int) -> None:
        # the family's other architectures keep their predicted latency only: timing them all costs minutes
        picked = [d for d in self.family if d.genotype.to_json() in self.retrained_for]
        every = list(self.derived.values()) + [d for d, _ in self.grid] + picked + list(self.tables.values()) + \
            [d for runs in self.base_derived.values() for _, d in runs] + [d for _, _, d in self.random_derived]
        _measure(self.space, self.table, every, self.evaluated, threads, rounds, self.log)

    # ------------------------------------------------------------------ evaluation
    def profile_rows(self) -> List[Dict]:
        rows = []
        for name, d in self.derived.items():
            rows.append(_row(d, "profile", profile=PROFILE_NAMES[name],
                             **self.evaluate(d, self.result.supernet, True, f"profile {name}")))
            self.log(f"profile {name}: {d.op_counts}, {d.params:,} parameters")
        return rows

    def grid_rows(self) -> List[Dict]:
        rows = []
        for d, S in self.grid:
            why = self.retrained_for.get(d.genotype.to_json())
            ev = self.evaluate(d, self.result.supernet, why is not None, f"S={format_S(S)}")
            rows.append(_row(d, "grid", **ev, **({"retrained_for": why} if why else {})))
        return rows

    def family_rows(self) -> List[Dict]:
        rows, listed = [], set()
        for d in self.family:  # the distinct architectures along the strength axis, at their first (kappa, S)
            key = d.genotype.to_json()
            if key in listed:
                continue
            listed.add(key)
            why = self.retrained_for.get(key)
            # the supernet's accuracy only where retrained (the test split's inherited figure costs a pass per row)
            ev = self.evaluate(d, self.result.supernet if why else None, why is not None,
                               f"S={d.S_text} kappa={d.extra['kappa']:.3g}")
            rows.append(_row(d, "family", **ev, **({"retrained_for": why} if why else {})))
        return rows

    def baseline_rows(self) -> Dict[str, List[Dict]]:
        # what the latency table alone picks for each profile, retrained beside the search's pick
        table_rows = [_row(d, "table-only", matched=name, **self.evaluate(d, self.result.supernet, True, d.label))
                      for name, d in self.tables.items()]
        rows: Dict[str, List[Dict]] = {"darts": [], "fbnet": [], "random": [], "table": table_rows}
        for kind, runs in self.base_derived.items():
            for r, d in runs:
                ev = self.evaluate(d, r.supernet, True, d.label)
                rows[kind].append(_row(d, kind, kappa=r.config.kappa, search_seconds=r.seconds, **ev))
        for name, k, d in self.random_derived:
            rows["random"].append(_row(d, "random", matched=name, draw=k, **self.evaluate(d, None, True, d.label)))
        return rows

    def assemble(self) -> Dict:
        """Evaluate everything (in the order: profiles, grid, family, table-only, baselines) into the report."""
        result, table = self.result, self.table
        profiles, grid_rows, family_rows = self.profile_rows(), self.grid_rows(), self.family_rows()
        self.log(f"grid: {len(grid_rows)} points; family: {len(self.family)} (S, kappa) points; "
                 f"{len(self.seen)} distinct architectures")
        return {
            "split": self.loaders.split.as_dict(), "split_text": str(self.loaders.split),
            "space": self.space.to_dict(),
            "search": {"config": result.config.to_dict(), "epochs": result.epoch, "seconds": result.seconds,
                       "history": result.history},
            "latency_table": {k: (table.meta.get(k) if table is not None else None)
                              for k in ("device", "device_name", "batch", "dtype", "threads", "memory_format")},
            "profiles": profiles, "grid": grid_rows, "family": family_rows, "baselines": self.baseline_rows(),
            "searches": self.searches, "strength": _strength_info(result),
            "retrain": None if self.retrain_cfg is None else {"epochs": self.retrain_cfg.epochs,
                                                              "lr": self.retrain_cfg.lr},
        }


def _measure(space, table, every: Sequence[Derived], evaluated: Dict, threads, rounds: int, log) -> None:
    """Time every distinct network not timed yet, interleaved, on this CPU at the table's batch and layout:
    a burst of load lands on all of them alike (timed one after another, single networks came out up to
    1.5x slow). The figures go into ``evaluated``, keyed by genotype JSON."""
    distinct = [(k, g) for k, g in {d.genotype.to_json(): d.genotype for d in every}.items()
                if "measured_ms" not in evaluated.get(k, {})]
    log(f"measuring the latency of {len(distinct)} distinct networks, interleaved ({rounds} rounds)")
    times = time_genotypes(space, [g for _, g in distinct], batch=table.batch or 64, threads=threads,
                           memory_format=table.memory_format, rounds=rounds, runtime=table.runtime)
    for (key, _), tm in zip(distinct, times):
        evaluated.setdefault(key, {}).update(measured_ms=tm.value(table.statistic), measured_iqr_ms=tm.iqr)


# ---------------------------------------------------------------------- the strength axis
def _strength_info(result) -> Optional[Dict]:
    if not result.has_strength:
        return None
    c = result.config
    return {"kappa": c.kappa, "kappa_max": c.kappa_max, "curve": c.strength_curve, "levels": list(STRENGTH_LEVELS)}


def _strength_family(result, grid_steps: int) -> List[Derived]:
    """The architectures of the simplex grid at every level of STRENGTH_LEVELS (none without the axis)."""
    if not result.has_strength:
        return []
    return [derive(result, S, kappa=result.config.kappa_at(t)) for t in STRENGTH_LEVELS
            for S in simplex_grid(grid_steps)]


def _annotate(result, d: Derived, by_S: Dict[tuple, Derived]) -> None:
    """Add what tells a search's pick from the table's: the edges it changes against the table-only
    architecture of its S (taken from, or added to, ``by_S``), and its ops by type on the stride-1 rows
    (where skip connections cost nothing)."""
    t = by_S.get(tuple(d.S))
    if t is None:
        t = by_S[tuple(d.S)] = table_only(result, d.S)
    d.extra["table_only_edges_changed"] = edges_changed(result.space, d.genotype, t.genotype)
    d.extra["table_only_predicted_ms"] = t.predicted_ms
    d.extra["stride1_ops"] = stride1_ops(result.space, d.genotype)


def stride1_ops(space, genotype) -> Dict[str, int]:
    """Ops by type on the stride-1 rows of the normal and the reduction cell (one row per edge)."""
    w = torch.cat(genotype_weights(space, genotype))
    rows = w[torch.tensor(space.row_strides()) == 1]
    types = space.op_types()
    out = {t: 0 for t in OP_TYPES}
    for m in rows.argmax(-1)[rows.sum(-1) > 0].tolist():
        if types[m] is not None:
            out[types[m]] += 1
    return out


def _cheapest_ms(result) -> Optional[float]:
    """The predicted latency of the space's cheapest architecture: the least latency on every row."""
    if result.table is None:
        return None
    E = result.space.num_edges
    a = -result.L_ms.float()
    d = derive_from_alphas(result.space, a[:E], a[E:], PROFILES["A"], result.table)
    return d.predicted_ms


def matched_random_draws(space, table, profiles: Dict[str, Derived], draws: int, seed: int) -> List[Tuple]:
    """``[(profile, draw, genotype, predicted_ms)]``: for each profile the ``draws`` random architectures closest
    to its predicted latency (:func:`random_matched`, profiles in turn, draw 0 the closest), none of them a
    profile and no two alike. Deterministic in ``seed``, so the draws of a saved report can be drawn again."""
    names = list(profiles)
    # distinct from the profiles: on one table the draw closest to C was C itself
    exclude = [p.genotype.to_json() for p in profiles.values()]
    picks = random_matched(space, table, [profiles[n].predicted_ms for n in names] * draws, seed=seed,
                           exclude=exclude)
    return [(names[i % len(names)], i // len(names), g, ms) for i, (g, ms) in enumerate(picks)]


def row_genotype(row: Dict) -> Genotype:
    """The architecture of a row of a saved report (a profile, a baseline, a member of the family)."""
    return Genotype.from_json(json.dumps(row["genotype"]))


def report_retraining(report: Dict, seed: int) -> RetrainConfig:
    """The retraining protocol a saved report used (epochs, learning rate, step cap), with ``seed``: what
    retrains another architecture comparably to the report's rows."""
    return RetrainConfig(epochs=report["retrain"]["epochs"], lr=report["retrain"]["lr"], seed=seed,
                         max_steps_per_epoch=report["demo"]["config"].get("retrain_max_steps"))


def random_accuracy(report: Dict, name: str) -> Optional[float]:
    """The mean test accuracy of the random architectures matched to profile ``name``'s latency (None if none
    was evaluated)."""
    accs = [r["test_acc"] for r in report["baselines"].get("random", [])
            if r.get("matched") == name and r.get("test_acc") is not None]
    return sum(accs) / len(accs) if accs else None


def learned(report: Dict) -> Dict:
    """Per profile: edges changed against the table-only pick, and the accuracy over it and over the mean of
    the random architectures matched to the profile's latency (points), where they are retrained."""
    tables = {r["matched"]: r for r in report["baselines"].get("table", [])}
    out = {}
    for p in report["profiles"]:
        name, acc = p["label"], p.get("test_acc")
        row = {"edges_changed": p.get("table_only_edges_changed"),
               "random_draws": sum(r.get("matched") == name for r in report["baselines"].get("random", []))}
        table = tables.get(name, {}).get("test_acc")
        for what, other in (("table", table), ("random", random_accuracy(report, name))):
            if other is not None and acc is not None and "retrain" in p:
                row[f"over_{what}"] = 100 * (acc - other)
        out[name] = row
    return out


def coverage(report: Dict, cheapest_ms: Optional[float]) -> Dict:
    """How far the family's predicted latency reaches: its cheapest and dearest architecture, against the
    space's cheapest and the DARTS baseline's."""
    fam = [r["predicted_ms"] for r in report["grid"] + report.get("family", []) + report["profiles"]
           if r.get("predicted_ms") is not None]
    darts = [r["predicted_ms"] for r in report["baselines"]["darts"]]
    out = {"family_min_ms": min(fam) if fam else None, "family_max_ms": max(fam) if fam else None,
           "cheapest_ms": cheapest_ms, "darts_ms": darts[0] if darts else None}
    if fam and cheapest_ms is not None:
        out["reaches_cheapest"] = out["family_min_ms"] <= cheapest_ms * (1 + LATENCY_TOLERANCE)
    if fam and darts:
        out["reaches_darts"] = out["family_max_ms"] >= darts[0] * (1 - LATENCY_TOLERANCE)
    return out


def _onehot(space, g):
    return genotype_weights(space, g)


# ------------------------------------------------------------------------------- checks
def check_claims(report: Dict) -> Dict:
    """The seeds' qualitative claim, checked on the profiles A, B, C, one part a key.

    ``B_fewest_conv`` and ``C_no_pool`` are the claim as worded ("B has the fewest convolutions", "C has
    no pools"); ``B_almost_no_conv`` and ``C_almost_no_pool`` (at most a tenth of the edges) are the seeds'
    "penalising a type removes it", read with a margin. :data:`CLAIM_PARTS` names the parts that make up
    the whole claim in one seed (C the most accurate counts in the mean over seeds, not per seed).
    """
    p = {r["label"]: r for r in report["profiles"]}
    A, B, C = p["A"], p["B"], p["C"]
    n = {k: sum(r["op_counts"].values()) or 1 for k, r in p.items()}
    out = {
        "B_fewest_conv": B["op_counts"]["conv"] <= min(A["op_counts"]["conv"], C["op_counts"]["conv"]),
        "B_almost_no_conv": B["op_counts"]["conv"] <= 0.1 * n["B"],
        "B_fewest_params": B["params"] <= min(A["params"], C["params"]),
        "C_no_pool": C["op_counts"]["pool"] == 0,
        "C_almost_no_pool": C["op_counts"]["pool"] <= 0.1 * n["C"],
        "C_most_params": C["params"] >= max(A["params"], B["params"]),
        "C_best_acc": (C.get("test_acc") or 0) >= max(A.get("test_acc") or 0, B.get("test_acc") or 0),
        "predicted_order_B<A<C": (B["predicted_ms"] or 0) < (A["predicted_ms"] or 0) < (C["predicted_ms"] or 0),
    }
    if all(r.get("measured_ms") is not None for r in (A, B, C)):
        out["measured_order_B<A<C"] = B["measured_ms"] < A["measured_ms"] < C["measured_ms"]
    return out


#: The parts of the claim that must hold in every seed, as the claim words them.
CLAIM_PARTS = ("B_fewest_conv", "B_fewest_params", "C_no_pool", "C_most_params", "predicted_order_B<A<C",
               "measured_order_B<A<C")


def _pareto(points: Sequence[Dict], x: str) -> List[Dict]:
    """Points no other point beats in both latency (lower) and accuracy (higher)."""
    pts = sorted((q for q in points if q.get(x) is not None and q.get("test_acc") is not None),
                 key=lambda q: (q[x], -q["test_acc"]))
    front, best = [], -1.0
    for q in pts:
        if q["test_acc"] > best:
            front.append(q)
            best = q["test_acc"]
    return front


LATENCY_TOLERANCE = 0.02


def _within(latency: Optional[float], budget: float) -> bool:
    """A latency no more than the budget, allowing LATENCY_TOLERANCE above it (the table's timing noise)."""
    return latency is not None and latency <= budget * (1 + LATENCY_TOLERANCE)


def front_picks(supernet, space, distinct: Sequence[Derived], budgets: Sequence, val_loader, count: int,
                already: Sequence[str] = ()) -> Dict[str, str]:
    """Which of the family's distinct architectures to retrain for the front, and why.

    Two candidates per (label, latency) budget, among the architectures whose
    predicted latency is within it (plus LATENCY_TOLERANCE):

    - the one with the best accuracy on the validation part with the supernet's
      weights, which is how a user picks from the family without retraining
      (no test image is seen); budgets cheapest first;
    - the dearest one, which fills the budget; budgets dearest first. The
      inherited accuracy ranks the cheap, latency-pushed architectures the
      supernet trained most above the dear ones that retrain better
      (docs/design.md, "The front's picks").

    After the budgets' candidates, architectures spread evenly over the
    predicted latency, until ``count`` are chosen. Architectures in
    ``already`` (the profiles, retrained anyway) are kept but take no place.
    Once retrained, :func:`front_comparison` picks among a budget's candidates
    on their validation accuracy (:func:`dearest_within_noise`).

    Returns ``{genotype JSON: reason}``.
    """
    if count <= 0:
        return {}
    distinct = sorted(distinct, key=lambda d: d.predicted_ms or 0.0)
    budgets = sorted((b for b in budgets if b[1] is not None), key=lambda b: b[1])
    within = {label: [d for d in distinct if _within(d.predicted_ms, budget)] for label, budget in budgets}
    val_acc: Dict[str, float] = {}
    chosen: Dict[str, str] = {}

    def used() -> int:
        return sum(key not in already for key in chosen)

    for label, _ in budgets:
        if used() >= count:
            break
        cands = within[label]
        todo = [d.genotype for d in cands if d.genotype.to_json() not in val_acc]
        for g, acc in zip(todo, inherited_accuracies(supernet, space, todo, val_loader) if todo else []):
            val_acc[g.to_json()] = acc  # one copy of the supernet for all of them
        if cands:
            best = max(cands, key=lambda d: val_acc[d.genotype.to_json()])
            chosen.setdefault(best.genotype.to_json(), f"budget of {label}")
    for label, _ in reversed(budgets):
        if used() >= count:
            break
        if within[label]:
            chosen.setdefault(within[label][-1].genotype.to_json(), f"fills the budget of {label}")
    n = len(distinct)
    spread = [distinct[round(i * (n - 1) / (count - 1))] for i in range(count)] if count > 1 and n > 1 \
        else distinct[:1]
    for d in spread + distinct:
        if used() >= count:
            break
        chosen.setdefault(d.genotype.to_json(), "spread over latency")
    return chosen


def front_comparison(report: Dict, x: str = "predicted_ms") -> Dict:
    """For each baseline search: the family's pick at no more latency (retrained points only), and its accuracy.

    The pick is made on the *validation* accuracy after retraining, of the
    retrained family architectures within the baseline's latency: the dearest
    of those level with the best within two standard errors
    (:func:`dearest_within_noise`); its test accuracy is compared. Taking the
    best test accuracy would select on the test images, and more retrained
    candidates would then look better by chance alone. Where a split has no
    validation part, the best test accuracy picks, and ``picked_by`` says so.

    "No more" allows LATENCY_TOLERANCE (2 %) above the baseline's latency: the
    table's own timing noise is of that order. Each row also says whether a
    shortfall is within the test set's noise: within two standard errors of
    the difference of two accuracies on ``report["split"]["test"]`` images.
    """
    family = [r for r in report["grid"] + report.get("family", []) + report["profiles"] if "retrain" in r]
    n_test, n_val = ((report.get("split") or {}).get(k) for k in ("test", "val"))
    rows = []
    for b in report["baselines"].get("fbnet", []) + report["baselines"].get("darts", []):
        cands = [f for f in family if _within(f[x], b[x])]
        by_val = bool(cands) and bool(n_val) and all(f["retrain"].get("val_acc") is not None for f in cands)
        if not cands:
            best = None
        elif by_val:
            best = dearest_within_noise(cands, lambda f: f["retrain"]["val_acc"], lambda f: f[x], n_val)
        else:
            best = max(cands, key=lambda f: (f["test_acc"], -f[x]))
        row = {"baseline": b["label"], "latency": b[x], "acc": b["test_acc"],
               "family_acc": best["test_acc"] if best else None,
               "family_latency": best[x] if best else None, "candidates": len(cands),
               "picked_by": "val_acc, dearest within 2 SE" if by_val else "test_acc",
               "family_at_least_as_good": bool(best and best["test_acc"] >= b["test_acc"] - 1e-9)}
        if best and n_test:
            p, q = b["test_acc"], best["test_acc"]
            row["difference_se"] = difference_se(p, q, n_test)
            row["within_noise"] = row["family_at_least_as_good"] or within_noise(p, q, n_test)
        rows.append(row)
    n = len(rows)
    return {"latency": x, "rows": rows, "matched": sum(r["family_at_least_as_good"] for r in rows), "of": n,
            "within_noise": sum(bool(r.get("within_noise")) for r in rows), "searches": report["searches"]}


# ----------------------------------------------------------------------------- markdown
def _fmt(v, pct=False, digits=1):
    if v is None:
        return "-"
    return f"{100 * v:.1f} %" if pct else f"{v:,.{digits}f}"


_HEAD = ("| profile | S | kappa | test acc | inherited acc | parameters | predicted ms | measured ms "
         "| pool | identity | conv | stride-1 conv | edges vs table |")
_SEP = "| --- " * 13 + "|"


def _line(r: Dict, name: str) -> str:
    """One architecture's row of the report's tables (columns: :data:`_HEAD`)."""
    oc, s1 = r["op_counts"], r.get("stride1_ops") or {}
    kappa = r.get("kappa")
    return (f"| {name} | {r['S_text']} | {'-' if kappa is None else f'{kappa:.3g}'} "
            f"| {_fmt(r.get('test_acc'), True)} | {_fmt(r.get('inherited_acc'), True)} "
            f"| {r['params']:,} | {_fmt(r['predicted_ms'])} | {_fmt(r.get('measured_ms'))} | {oc['pool']} "
            f"| {oc['identity']} | {oc['conv']} | {s1.get('conv', '-')} "
            f"| {r.get('table_only_edges_changed', '-')} |")


def markdown(report: Dict) -> str:
    """The report's tables as Markdown."""
    lat = report["latency_table"]
    lines = [f"Split: {report['split_text']}.",
             f"Latency: table for device `{lat['device']}` ({lat['device_name']}), batch {lat['batch']}, "
             f"{lat.get('memory_format') or 'contiguous'}; measured on this machine at the same batch and layout "
             f"(whole network, median).", ""]
    retrain = report.get("retrain")
    acc_note = (f"test acc: retrained from scratch for {retrain['epochs']} epochs" if retrain else
                "test acc: inherited weights")
    lines += ["### Profiles", "", f"({acc_note}; op counts over the whole network, every cell)", "", _HEAD, _SEP]
    lines += [_line(r, f"{r['label']} {r['profile']}") for r in report["profiles"]]
    lines += _learned_lines(report)
    lines += ["", "### Baselines", "",
              "(table-only: the op of least S-weighted latency on every edge, what the latency term alone picks "
              "with no data; random: matched to the profile's predicted latency)", "",
              _HEAD.replace("profile", "baseline"), _SEP]
    for kind in ("table", "darts", "fbnet", "random"):
        lines += [_line(r, r["label"]) for r in report["baselines"].get(kind, [])]
    lines += ["", f"### Grid over the simplex (step 1/{_grid_steps(report)})", "",
              "(test acc: retrained where marked *, else inherited weights; * b: picked for a baseline's "
              "latency budget by validation accuracy with inherited weights, * f: the dearest within a "
              "baseline's latency budget, * s: spread over latency)", "",
              _HEAD.replace("profile", "#"), _SEP]
    for i, r in enumerate(report["grid"]):
        lines.append(_line(r, f"{i}{_front_mark(r)}"))
    lines += _family_lines(report, _HEAD, _SEP, _line)
    lines += _front_lines(report.get("front"))
    lines += _claim_lines(report)
    return "\n".join(lines) + "\n"


def _front_lines(fr: Optional[Dict]) -> List[str]:
    if not fr:
        return []
    s = fr["searches"]
    lines = ["", "### Front", "",
             f"Searches: hypernetwork {s.get('hypernet', 1)} (every S), FBNet-style {s.get('fbnet', 0)} "
             f"(one per kappa), DARTS {s.get('darts', 0)}. The family is at least as accurate at no more "
             f"predicted latency (within {LATENCY_TOLERANCE:.0%}) for {fr['matched']} of {fr['of']} baseline "
             "searches. The family's points are its retrained architectures: the profiles, and for each "
             "baseline's latency two candidates within it, the one with the best validation accuracy with "
             "the supernet's weights (what a user picks without retraining) and the dearest, then others "
             "spread over latency. Of those within a baseline's latency, the family's pick is the dearest whose "
             "validation accuracy after retraining is within two standard errors of the best one's; its test "
             "accuracy is shown.", "",
             f"| baseline | latency ms | acc | family pick's acc at <= latency (+{LATENCY_TOLERANCE:.0%}) "
             "| its latency ms | family - baseline, points (2 SE) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in fr["rows"]:
        diff = "-" if r["family_acc"] is None else f"{(r['family_acc'] - r['acc']) * 100:+.1f}" + (
            f" ({2 * r['difference_se'] * 100:.1f})" if "difference_se" in r else "")
        lines.append(f"| {r['baseline']} | {_fmt(r['latency'])} | {_fmt(r['acc'], True)} "
                     f"| {_fmt(r['family_acc'], True)} | {_fmt(r['family_latency'])} | {diff} |")
    if "within_noise" in fr:
        lines += ["", f"Counting a shortfall within two standard errors of the difference (the test "
                      f"images cannot tell it apart) as a match: {fr['within_noise']} of {fr['of']}."]
    return lines


def _claim_lines(report: Dict) -> List[str]:
    c = report.get("claims")
    if not c:
        return []
    lines = ["", "### The seeds' claim", ""] + [f"- {k}: {'yes' if v else 'NO'}" for k, v in c.items()]
    n_test = (report.get("split") or {}).get("test")
    accs = {r["label"]: r.get("test_acc") for r in report["profiles"]}
    if n_test and all(a is not None for a in accs.values()):
        # a binomial standard error: accuracies closer than about two of them are not told apart
        se = max(math.sqrt(a * (1 - a) / n_test) for a in accs.values())
        lines += ["", "Test accuracy " + ", ".join(f"{k} {v:.1%}" for k, v in accs.items())
                  + f" on {n_test} test images: standard error up to {se:.1%}, so differences under "
                    f"{2 * se:.1%} are within noise."]
    return lines


def _learned_lines(report: Dict) -> List[str]:
    lr = report.get("learned")
    if not lr:
        return []
    out = ["", "Did the search learn? Edges (of the 2E rows) where the profile's architecture differs from the "
               "table-only one, and its retrained accuracy over the table-only and the random matched ones:", "",
           "| profile | edges changed | over table-only, points | over random (their mean), points | random draws |",
           "| --- | --- | --- | --- | --- |"]
    f = lambda v: "-" if v is None else f"{v:+.1f}"  # noqa: E731
    for name, r in lr.items():
        out.append(f"| {name} | {r.get('edges_changed', '-')} | {f(r.get('over_table'))} | {f(r.get('over_random'))} "
                   f"| {r.get('random_draws', 1)} |")
    return out


def _front_mark(r: Dict) -> str:
    """Why a grid or family row was retrained: * b budget pick, * f fills a budget, * s spread, * otherwise."""
    if "retrain" not in r:
        return ""
    why = r.get("retrained_for", "")
    return " * b" if why.startswith("budget") else " * f" if why.startswith("fills") else \
        " * s" if why.startswith("spread") else " *"


def _family_lines(report: Dict, head: str, sep: str, line) -> List[str]:
    fam, st, cov = report.get("family") or [], report.get("strength"), report.get("coverage") or {}
    out = []
    if st:
        out += ["", f"### Family along the strength axis (kappa 0 to {st['kappa_max']:g})", "",
                f"(each distinct architecture at the first (kappa, S) that gives it; t in {st['levels']}; "
                "test acc where retrained for the front (marked as in the grid), else not measured)", "",
                head.replace("profile", "#"), sep]
        out += [line(r, f"{i}{_front_mark(r)}") for i, r in enumerate(fam)]
    if cov.get("family_min_ms") is not None:
        out += ["", f"Coverage: the family's predicted latency runs {cov['family_min_ms']:.1f}-"
                    f"{cov['family_max_ms']:.1f} ms; the space's cheapest architecture "
                    f"{_fmt(cov.get('cheapest_ms'))} ms, the DARTS baseline's {_fmt(cov.get('darts_ms'))} ms."]
    return out


def _grid_steps(report: Dict) -> int:
    vals = [v for r in report["grid"] for v in r["S"].values() if v > 1e-6]
    return round(1 / min(vals)) if vals else 1


# -------------------------------------------------------------------------------- plots
def plot_op_distribution(report: Dict, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    rows = report["profiles"]
    width = 0.8 / len(OP_TYPES)
    for j, t in enumerate(OP_TYPES):
        ax.bar([i + (j - 1) * width for i in range(len(rows))], [r["op_counts"][t] for r in rows], width, label=t)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{r['label']} ({r['profile']})\n{r['S_text'].replace(',', ' ')}" for r in rows],
                       fontsize=6)
    ax.set_ylabel("operations (whole network)")
    ax.set_title("Operations by type per profile")
    ax.set_ylim(0, max(max(r["op_counts"].values()) for r in rows) * 1.25 + 1)  # room for the legend
    ax.legend(ncol=len(OP_TYPES), loc="upper center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_front(report: Dict, path: Path, x: str = "measured_ms") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if not all(r.get(x) is not None for r in report["profiles"]):
        x = "predicted_ms"
    fig, ax = plt.subplots(figsize=(6, 4))
    fam = [r for r in report["grid"] + report.get("family", []) + report["profiles"] if "retrain" in r]
    ax.scatter([r[x] for r in fam], [r["test_acc"] for r in fam], c="C0", label="hypernetwork family (1 search)")
    front = _pareto(fam, x)
    ax.plot([r[x] for r in front], [r["test_acc"] for r in front], c="C0")
    for r in report["profiles"]:
        ax.annotate(r["label"], (r[x], r["test_acc"]), textcoords="offset points", xytext=(4, 4))
    b = report["baselines"]
    if b["fbnet"]:
        ax.scatter([r[x] for r in b["fbnet"]], [r["test_acc"] for r in b["fbnet"]], c="C1", marker="s",
                   label=f"FBNet-style ({len(b['fbnet'])} searches)")
        fr = _pareto(b["fbnet"], x)
        ax.plot([r[x] for r in fr], [r["test_acc"] for r in fr], c="C1", ls="--")
        for r in b["fbnet"]:
            ax.annotate(f"k={r['kappa']:g}", (r[x], r["test_acc"]), fontsize=7, textcoords="offset points",
                        xytext=(4, -8))
    if b["darts"]:
        ax.scatter([r[x] for r in b["darts"]], [r["test_acc"] for r in b["darts"]], c="C3", marker="^",
                   label="DARTS (no latency term)")
    if b["random"]:
        ax.scatter([r[x] for r in b["random"]], [r["test_acc"] for r in b["random"]], c="gray", marker="x",
                   label="random, matched latency")
    table = [r for r in b.get("table", []) if r.get("test_acc") is not None and r.get(x) is not None]
    if table:
        ax.scatter([r[x] for r in table], [r["test_acc"] for r in table], c="C2", marker="D",
                   label="table-only (no search)")
    ax.set_xlabel(("measured" if x == "measured_ms" else "predicted") + " latency (ms)")
    ax.set_ylabel("test accuracy (retrained)")
    ax.set_title("Accuracy vs latency", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _ternary(S: Dict[str, float]):
    # pool at the left corner, identity at the right, conv at the top
    return S["identity"] + 0.5 * S["conv"], math.sqrt(3) / 2 * S["conv"]


def plot_simplex(report: Dict, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    xy = [_ternary(r["S"]) for r in report["grid"]]
    for ax, key, title in ((axes[0], "predicted_ms", "predicted latency (ms)"),
                           (axes[1], "test_acc", "accuracy (inherited / retrained*)")):
        vals = [r.get(key) if r.get(key) is not None else float("nan") for r in report["grid"]]
        sc = ax.scatter([p[0] for p in xy], [p[1] for p in xy], c=vals, s=160, cmap="viridis")
        fig.colorbar(sc, ax=ax, shrink=0.8)
        ax.plot([0, 1, 0.5, 0], [0, 0, math.sqrt(3) / 2, 0], c="k", lw=0.8)
        for (px, py), name in (((0, 0), "pool"), ((1, 0), "identity"), ((0.5, math.sqrt(3) / 2), "conv")):
            ax.annotate(name, (px, py), textcoords="offset points", xytext=(-10, -12 if py == 0 else 6))
        for r in report["profiles"]:
            px, py = _ternary(r["S"])
            ax.annotate(r["label"], (px, py), color="red", ha="center", va="center", fontweight="bold")
        ax.set_title(title, fontsize=10)
        ax.set_aspect("equal")
        ax.axis("off")
    fig.suptitle("Over the simplex S = (pool, identity, conv)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(report: Dict, out_dir) -> Dict[str, Path]:
    """report.md, report.json and the three plots; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "json": out / "report.json"}
    paths["markdown"].write_text("# dartscc_fast report\n\n" + markdown(report))
    paths["json"].write_text(json.dumps(report, indent=1, default=str) + "\n")
    try:
        paths["ops_plot"] = plot_op_distribution(report, out / "op_distribution.png")
        paths["front_plot"] = plot_front(report, out / "front.png")
        paths["simplex_plot"] = plot_simplex(report, out / "simplex.png")
    except ImportError:
        print("matplotlib is not installed: plots skipped (pip install matplotlib)")
    return paths
