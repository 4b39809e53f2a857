"""The search: one supernet and one hypernetwork trained for every S (and every kappa) at once.

Per mini-batch: S ~ Dirichlet(1) (once per batch, or per sample), the strength t,
alpha = H_a(S, t), gamma ~ GumbelSoftmax(alpha, tau) (soft, or hard: only the drawn
ops run), and

    loss = CE(supernet(x, gamma), y) + kappa(t) * Lat_S(gamma)

with Lat_S from the latency table (normalised so that the uniform architecture
costs 1 on any device). Single-level Adam (the seeds) or DARTS's first-order
bilevel scheme (w on the train split, a on the validation split). Cosine
learning rate for w, gradient clipping, deterministic seeds, a checkpoint every
epoch and every ``checkpoint_every`` steps, written atomically with a hash of its
contents (``--resume`` continues and gives the same result as an uninterrupted
run), DistributedDataParallel under ``torchrun``. The output directory is locked
while a search writes it.

Where each part lives:

- :mod:`~dartscc_fast.search.config`: :class:`SearchConfig`, every setting, checked;
- :mod:`~dartscc_fast.search.hypernet`: alpha = H_a(S) and the strength axis;
- :mod:`~dartscc_fast.search.model`: the supernet + hypernetwork, the latency term, the optimisers;
- :mod:`~dartscc_fast.search.schedules`: temperature, learning rate, strength draws;
- :mod:`~dartscc_fast.search.loop`: the loop (set up or resume, one step per protocol, epochs);
- :mod:`~dartscc_fast.search.result`: :class:`SearchResult` and :func:`load_search`;
- :mod:`~dartscc_fast.search.checkpoint`, :mod:`~dartscc_fast.search.rundir`,
  :mod:`~dartscc_fast.search.distributed`, :mod:`~dartscc_fast.search.log`: the plumbing.
"""
from dartscc_fast.search.config import TABLE_BATCH, SearchConfig, default_warmup
from dartscc_fast.search.loop import NonFiniteError, run_search, spawn_ddp
from dartscc_fast.search.model import SearchModel, build_model, latency_table_for, latency_term, supernet_L
from dartscc_fast.search.result import CHECKPOINT, CHECKPOINT_KEYS, SearchResult, load_search
from dartscc_fast.search.schedules import draw_strength, temperature

__all__ = ["SearchConfig", "SearchModel", "SearchResult", "NonFiniteError", "latency_term", "run_search",
           "load_search", "spawn_ddp", "temperature", "draw_strength", "default_warmup", "build_model",
           "latency_table_for", "supernet_L", "TABLE_BATCH", "CHECKPOINT", "CHECKPOINT_KEYS"]
