"""Latency on the target device: microbenchmarks, tables, compiled lookups, the regulariser.

- :mod:`~dartscc_fast.latency.keys`: configuration keys (:class:`OpConfig`, :class:`BaseConfig`).
- :mod:`~dartscc_fast.latency.table`: the versioned JSON table (:class:`LatencyTable`;
  its schema is documented there), lookups of ``L [edges, k]`` through the
  compiled hash map, :func:`normalise`.
- :mod:`~dartscc_fast.latency.measure`: time every op configuration of a search
  space on this machine (:func:`profile_space`), and whole networks; the table of
  a simulated device (:func:`simulate_table`).
- :mod:`~dartscc_fast.latency.roofline`: the roofline model of simulated devices (named presets).
- :func:`latency_reg`: the fused regulariser ``sum_e sum_m S_type(m) L[e, m] w[e, m]``.

Typical use in a search::

    table = LatencyTable.load("table.json")             # dartscc-fast profile --out table.json
    L = table.supernet_latency(space, normalise_by="uniform")     # [2E, k], normal then reduce rows
    L = L.to(device=w.device, dtype=w.dtype)
    lat = latency_reg(torch.cat([w_normal, w_reduce], -2), L, S, space.type_index().tolist())
"""
from dartscc_fast.latency.keys import BaseConfig, OpConfig, edge_configs, genotype_configs, space_configs
from dartscc_fast.latency.measure import Timing, profile_space, simulate_table, time_callable, time_genotype
from dartscc_fast.latency.roofline import PRESETS as DEVICE_PRESETS
from dartscc_fast.latency.roofline import DevicePreset
from dartscc_fast.latency.table import (
    NORMALISATIONS,
    STRIDE_BALANCE,
    LatencyTable,
    LatencyTableError,
    normalise,
    reference_latency,
)
from dartscc_fast.ops.latency_reg import latency_reg

__all__ = ["BaseConfig", "NORMALISATIONS", "STRIDE_BALANCE", "LatencyTable", "LatencyTableError", "OpConfig",
           "edge_configs", "genotype_configs", "normalise", "reference_latency", "space_configs", "Timing",
           "profile_space", "time_callable", "time_genotype", "DEVICE_PRESETS", "DevicePreset", "simulate_table",
           "latency_reg"]
