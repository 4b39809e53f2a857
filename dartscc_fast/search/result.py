"""A finished (or interrupted) search, loaded from its checkpoint: alphas for any S and kappa."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from dartscc_fast.latency import LatencyTable
from dartscc_fast.search.checkpoint import checkpoint_part, load_checkpoint
from dartscc_fast.search.config import SearchConfig
from dartscc_fast.search.hypernet import Hypernet, StrengthHypernet, hypernet_from_config, parse_S
from dartscc_fast.search.model import latency_term
from dartscc_fast.space import SearchSpace

CHECKPOINT = "checkpoint.pt"
#: What every search checkpoint holds, those of older versions included.
CHECKPOINT_KEYS = ("config", "space", "hypernet_config", "model", "epoch", "step", "history", "L_ms", "L", "split")


@dataclass
class SearchResult:
    """A finished (or interrupted) search, loaded from its checkpoint."""
    config: SearchConfig
    space: SearchSpace
    hypernet: Hypernet
    supernet: nn.Module
    L_ms: Tensor            # [2E, k] per cell type, in the table's unit
    L: Tensor               # [2E, k] normalised
    table: object           # the LatencyTable
    split: Dict
    history: List[Dict]
    epoch: int
    seconds: float

    @property
    def has_strength(self) -> bool:
        """Whether the hypernetwork takes a strength t (any kappa in [0, kappa_max]) beside S."""
        return isinstance(self.hypernet, StrengthHypernet)

    def check_kappa(self, kappa: Optional[float]) -> Optional[float]:
        """The trade-off to derive at: ``kappa`` (default: the search's ``kappa``), checked against the axis."""
        if not self.has_strength:
            if kappa is not None and abs(kappa - self.config.kappa) > 1e-12:
                raise ValueError(f"this search was trained at one kappa ({self.config.kappa:g}) and has no strength "
                                 f"axis; it cannot give architectures for kappa {kappa:g}")
            return None
        kappa = self.config.kappa if kappa is None else float(kappa)
        self.config.t_at(kappa)  # raises on a kappa outside [0, kappa_max]
        return kappa

    @torch.no_grad()
    def alphas(self, S, kappa: Optional[float] = None) -> Tuple[Tensor, Tensor]:
        """alpha = H_a(S) (and the strength of ``kappa``, default the search's) for any S (a string, a mapping
        or a ``[T]`` tensor), no training."""
        S = parse_S(S) if not isinstance(S, Tensor) or S.dim() == 1 else S
        kappa = self.check_kappa(kappa)
        if kappa is None:
            return self.hypernet(S)
        t = torch.full(S.shape[:-1], self.config.t_at(kappa))
        return self.hypernet(S, t)

    def expected_latency(self, S, kappa: Optional[float] = None) -> float:
        """Lat_S of softmax(alpha(S)) in normalised units."""
        S = parse_S(S)
        an, ar = self.alphas(S, kappa)
        w = torch.cat([an, ar], 0).softmax(-1)
        return float(latency_term(w, self.L, S, self.space.type_index().tolist()))


def _resolve_checkpoint(path: Union[str, os.PathLike]) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT
    if not p.is_file():
        raise FileNotFoundError(f"no search checkpoint at {p} (run `dartscc-fast search --out {p.parent}` first)")
    return p


def load_search(path: Union[str, os.PathLike]) -> SearchResult:
    """Load a search from its output directory or checkpoint file.

    Raises :class:`~dartscc_fast.search.checkpoint.CheckpointError` for a file that is not a readable, intact
    search checkpoint of this package (it is read with ``weights_only=True``: never run).
    """
    p = _resolve_checkpoint(path)
    ck = load_checkpoint(p, required=CHECKPOINT_KEYS)
    with checkpoint_part(p, "its settings are not valid for this dartscc_fast"):
        cfg = SearchConfig.from_dict(ck["config"])
        space = SearchSpace.from_dict(ck["space"])
    with checkpoint_part(p, "its weights do not fit the networks it describes"):
        supernet = space.supernet(fast=True)
        supernet.load_state_dict(ck["model"]["supernet"])
        hyper = hypernet_from_config(ck["hypernet_config"])
        hyper.load_state_dict(ck["model"]["hypernet"])
    supernet.eval()
    hyper.eval()
    with checkpoint_part(p, "its latency table does not load"):
        table = LatencyTable.from_dict(ck["latency_table"]) if ck.get("latency_table") else None
    return SearchResult(cfg, space, hyper, supernet, ck["L_ms"], ck["L"], table, ck["split"], ck["history"],
                        ck["epoch"], ck.get("seconds", 0.0))
