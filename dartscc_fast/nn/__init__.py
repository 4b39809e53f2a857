"""The package's production modules for search.

- :mod:`~dartscc_fast.nn.supernet`: the search network (:class:`Network`, :class:`Cell`) and its
  layout (edges, strides, reduction cells).

The candidates live in :mod:`dartscc_fast.primitives`, the fast ``MixedOp`` and the in-place
conversions (``replace_mixed_ops``, ``fuse_preprocessing``) in :mod:`dartscc_fast.mixed_op`. The
pure-PyTorch oracle they are tested against, :mod:`dartscc_fast.reference`, imports none of them.
"""
from dartscc_fast.nn.supernet import Cell, Network, edge_pairs, edge_stride, is_reduction, num_edges

__all__ = ["Cell", "Network", "edge_pairs", "edge_stride", "is_reduction", "num_edges"]
