"""The search model (supernet + hypernetwork), its latency term and its optimisers."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from dartscc_fast import ops
from dartscc_fast.latency import LatencyTable, latency_reg, normalise, simulate_table
from dartscc_fast.nn.optim import adam
from dartscc_fast.nn.primitives import OP_TYPES
from dartscc_fast.search.config import TABLE_BATCH, SearchConfig
from dartscc_fast.search.hypernet import Hypernet, StrengthHypernet, build_hypernet, parse_S
from dartscc_fast.space import SearchSpace


def latency_term(w: Tensor, L: Tensor, S: Tensor, type_index: Sequence[int]) -> Tensor:
    """Lat_S(w) = sum_e sum_m S_type(m) L[e, m] w[e, m]: the one place the regulariser is computed.

    ``w [E, k]`` or ``[N, E, k]``, ``S [T]`` or ``[N, T]``; a scalar or ``[N]``.
    """
    return latency_reg(w, L, S, type_index)


def free_ops(space: SearchSpace) -> Tensor:
    """``[2E, k]`` bool: the parameter-free candidates of each row (normal rows, then reduction rows): a pool
    at any stride, an identity at stride 1 (at stride 2 it is a FactorizedReduce, with weights)."""
    types = space.type_index()
    strides = torch.tensor(space.row_strides())
    return (types == OP_TYPES.index("pool"))[None, :] | \
        ((types == OP_TYPES.index("identity"))[None, :] & (strides == 1)[:, None])


def edge_scale(gamma: Tensor, free: Tensor, u: Tensor, p: float) -> Tensor:
    """Inverted dropout of the drawn parameter-free candidates: ``[.., 2E]`` scales of the rows' outputs, 0
    where the drawn op is free and ``u < p``, ``1 / (1 - p)`` where it is free and kept, 1 elsewhere.

    ``gamma [.., 2E, k]`` hard weights (the drawn op is the argmax), ``free [2E, k]`` (:func:`free_ops`),
    ``u`` uniform draws shaped like ``gamma[..., 0]``.
    """
    drawn = gamma.detach().argmax(-1)
    is_free = free.to(gamma.device).expand(gamma.shape).gather(-1, drawn.unsqueeze(-1)).squeeze(-1)
    kept = (u >= p).to(gamma.dtype) / (1.0 - p)
    return torch.where(is_free, kept, torch.ones_like(kept))


def latency_table_for(cfg: SearchConfig, space: SearchSpace) -> LatencyTable:
    """The latency table of a search: the file given, else a simulated device's (``latency_device``,
    default ``sim:mobile-cpu``), built from the roofline model in no time."""
    if cfg.latency_table:
        return LatencyTable.load(cfg.latency_table)
    return simulate_table(space, cfg.latency_device or "sim:mobile-cpu", batch=TABLE_BATCH)


def supernet_L(table, space: SearchSpace, cfg: SearchConfig) -> Tuple[Tensor, Tensor]:
    """``(L_ms, L_norm)``: ``[2E, k]`` per cell type (normal rows, then reduction rows)."""
    L = table.supernet_latency(space, per="cell_type")
    return L.float(), normalise(L, cfg.normalise, space.type_index().tolist(), space.row_strides(),
                                cfg.stride_balance, space.row_cells()).float()


class SearchModel(nn.Module):
    """Supernet + hypernetwork; ``forward`` draws gamma and runs the supernet (one DDP unit)."""

    def __init__(self, supernet: nn.Module, hypernet: Hypernet, free: Optional[Tensor] = None):
        super().__init__()
        self.supernet = supernet
        self.hypernet = hypernet
        self.free = free  # free_ops(space); a plain attribute, so that checkpoints hold the same keys as before

    def forward(self, x: Tensor, S: Tensor, tau: float, hard: bool, seeds: Tensor,
                uniform: bool = False, t: Optional[Tensor] = None, drop_u: Optional[Tensor] = None,
                drop_p: float = 0.0) -> Tuple[Tensor, Tensor, Tensor]:
        """Returns ``(logits, gamma [.., 2E, k], alpha [.., 2E, k])``; S ``[T]`` or ``[N, T]``.

        ``uniform``: draw gamma from uniform logits instead of H(S) (the weight warm-up).
        ``t``: the strength (``[]`` or ``[N]``), for a hypernetwork with a strength axis.
        ``drop_u``, ``drop_p``: drop the drawn parameter-free candidates (:func:`edge_scale`); gamma, and so
        the latency term, is the op drawn.
        """
        an, ar = self.hypernet(S) if t is None else self.hypernet(S, t)
        if uniform:
            an, ar = an.detach() * 0, ar.detach() * 0
        gn = ops.gumbel_softmax(an, tau, hard, seed=seeds[0])
        gr = ops.gumbel_softmax(ar, tau, hard, seed=seeds[1])
        gamma = torch.cat([gn, gr], -2)
        if drop_u is None or drop_p <= 0:
            return self.supernet(x, gn, gr, hard=hard), gamma, torch.cat([an, ar], -2)
        if not hard or self.free is None:
            raise ValueError("dropping parameter-free candidates needs hard weights and the space's free_ops")
        logits = self.supernet(x, gn, gr, hard=hard, edge_scale=edge_scale(gamma, self.free, drop_u, drop_p))
        return logits, gamma, torch.cat([an, ar], -2)


def build_model(cfg: SearchConfig, space: SearchSpace, fast: bool = True, L: Optional[Tensor] = None) -> SearchModel:
    """The search model, seeded; with ``L`` (normalised) and ``cfg.prior_scale``, the hypernetwork's
    S-dependent part starts at the latency term's own preference (see ``Hypernet.latency_prior``)."""
    torch.manual_seed(cfg.seed)
    supernet = space.supernet(fast=fast)
    if cfg.strength:
        hyper = StrengthHypernet(cfg.hypernet, space.num_edges, space.k, len(OP_TYPES), cfg.strength_knots,
                                 hidden=cfg.hidden, knots=cfg.knots)
    else:
        hyper = build_hypernet(cfg.hypernet, space.num_edges, space.k, len(OP_TYPES), hidden=cfg.hidden,
                               knots=cfg.knots)
    if L is not None and cfg.prior_scale > 0 and cfg.strength:
        hyper.init_latency_prior(L, space.type_index().tolist(), cfg.prior_scale * cfg.kappa_max / cfg.tau_end,
                                 cfg.kappa_max, cfg.strength_curve)
    elif L is not None and cfg.prior_scale > 0:
        scale = cfg.prior_scale * cfg.kappa / cfg.tau_end
        hyper.init_latency_prior(L, space.type_index().tolist(), scale)
        if cfg.fixed_S is not None and cfg.hypernet == "constant":
            # the S-independent baselines get the same start, for their one S
            P = hyper.latency_prior(L, space.type_index().tolist(), len(OP_TYPES), scale)
            with torch.no_grad():
                hyper.A0.add_(torch.tensordot(parse_S(cfg.fixed_S), P, dims=([0], [0])))
    return SearchModel(supernet, hyper, free_ops(space))


def optimizers(cfg: SearchConfig, model: SearchModel):
    w_params = list(model.supernet.parameters())
    a_params = list(model.hypernet.parameters())
    if cfg.optimizer == "adam":
        opt_w = adam(w_params, lr=cfg.lr_w, weight_decay=cfg.wd_w)
    else:
        opt_w = torch.optim.SGD(w_params, lr=cfg.lr_w, momentum=cfg.momentum, weight_decay=cfg.wd_w)
    opt_a = adam(a_params, lr=cfg.lr_a, betas=(0.5, 0.999), weight_decay=cfg.wd_a)
    return opt_w, opt_a
