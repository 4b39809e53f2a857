"""Which of the family's architectures the report retrains for the front (report.front_picks)."""
from types import SimpleNamespace

import pytest

from dartscc_fast import report


class _Genotype(SimpleNamespace):
    def to_json(self) -> str:
        return self.name


def _family(*points):
    """Derived-like architectures from (name, predicted ms, validation accuracy with inherited weights)."""
    return [SimpleNamespace(genotype=_Genotype(name=n), predicted_ms=ms, val=acc) for n, ms, acc in points]


@pytest.fixture
def val_acc(monkeypatch):
    seen = []

    def inherited(supernet, space, genotype, loader):
        assert loader == "val", "the picks must never look at the test images"
        seen.append(genotype.name)
        return next(d.val for d in FAMILY if d.genotype.name == genotype.name)

    monkeypatch.setattr(report, "inherited_accuracy", inherited)
    return seen


FAMILY = _family(("a", 28.0, 0.70), ("b", 30.5, 0.76), ("c", 31.0, 0.74), ("d", 40.0, 0.80), ("e", 45.0, 0.79))


def test_one_pick_per_budget_by_validation_accuracy(val_acc):
    picks = report.front_picks(None, None, FAMILY, [("fbnet 1", 31.0), ("fbnet 2", 29.0), ("darts", 60.0)],
                               "val", 3)
    # cheapest budget first: 29 ms holds only a; 31 ms (+2 %) holds a, b, c, of which b is best; 60 ms holds all
    assert picks == {"a": "budget of fbnet 2", "b": "budget of fbnet 1", "d": "budget of darts"}
    assert len(set(val_acc)) == 5 and len(val_acc) == 5  # each architecture evaluated once


def test_fills_with_the_spread_and_skips_what_is_retrained_anyway(val_acc):
    picks = report.front_picks(None, None, FAMILY, [("fbnet", 31.0)], "val", 3, already={"b"})
    # b (a profile's architecture) takes no place: all three places go to the spread, cheapest, middle, dearest
    assert picks == {"b": "budget of fbnet", "a": "spread over latency", "c": "spread over latency",
                     "e": "spread over latency"}


def test_budget_below_every_architecture_and_nothing_to_retrain(val_acc):
    assert report.front_picks(None, None, FAMILY, [("fbnet", 10.0)], "val", 1) == {"a": "spread over latency"}
    assert report.front_picks(None, None, FAMILY, [("fbnet", 31.0)], "val", 0) == {}
    assert val_acc == []


def test_front_comparison_tells_a_shortfall_within_noise_from_a_loss():
    def row(label, ms, acc, retrained=True):
        return {"label": label, "predicted_ms": ms, "test_acc": acc, **({"retrain": {}} if retrained else {})}

    rep = {"split": {"test": 2000}, "searches": {"hypernet": 1, "fbnet": 3},
           "profiles": [row("A", 30.0, 0.790), row("B", 20.0, 0.700)],
           "grid": [row("g", 40.0, 0.900, retrained=False)],  # inherited accuracy only: never on the front
           "baselines": {"darts": [], "fbnet": [row("k1", 30.5, 0.780), row("k2", 31.0, 0.800),
                                                row("k3", 32.0, 0.850), row("k4", 19.0, 0.5)]}}
    fr = report.front_comparison(rep)
    got = {r["baseline"]: (r["family_acc"], r["family_at_least_as_good"], r.get("within_noise")) for r in fr["rows"]}
    # 2 SE of the difference at 79-80 % on 2,000 images is about 2.5 points
    assert got == {"k1": (0.790, True, True), "k2": (0.790, False, True), "k3": (0.790, False, False),
                   "k4": (None, False, None)}
    assert (fr["matched"], fr["within_noise"], fr["of"]) == (1, 2, 4)
