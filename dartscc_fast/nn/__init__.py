"""The package's production modules for search.

- :mod:`~dartscc_fast.nn.primitives`: the DARTS candidate operations (quark0/darts names and keys);
- :mod:`~dartscc_fast.nn.mixed_op`: the drop-in fast ``MixedOp``, and the in-place conversions
  ``replace_mixed_ops`` and ``fuse_preprocessing``;
- :mod:`~dartscc_fast.nn.supernet`: the search network (:class:`Network`, :class:`Cell`) and its layout;
- :mod:`~dartscc_fast.nn.batch_norm`, :mod:`~dartscc_fast.nn.conv1x1`: BatchNorm and 1x1 convolutions
  through the package's kernels where they are faster;
- :mod:`~dartscc_fast.nn.tuning`: where those modules hand work back to torch (:data:`TUNING`, :func:`tuned`);
- :mod:`~dartscc_fast.nn.optim`: the optimiser the training loops use.

The pure-PyTorch oracle they are tested against, :mod:`dartscc_fast.reference`, imports none of them.
"""
from dartscc_fast.nn.supernet import Cell, Network, edge_pairs, edge_stride, is_reduction, num_edges
from dartscc_fast.nn.tuning import TUNING, Tuning, tuned

__all__ = ["Cell", "Network", "edge_pairs", "edge_stride", "is_reduction", "num_edges", "TUNING", "Tuning", "tuned"]
