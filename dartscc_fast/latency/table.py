"""Latency tables: the versioned JSON file, merging, lookups for a supernet, normalisation.

Keys are the canonical strings of :mod:`dartscc_fast.latency.keys`.

File format (schema ``dartscc_fast.latency_table``, version 1)
---------------------------------------------------------------
A JSON object::

    {
      "schema": "dartscc_fast.latency_table",   # identifies the file
      "version": 1,                             # this format; readers refuse newer ones
      "unit": "ms",                             # every time in the file (version 1: always ms)
      "meta": {                                 # how and where it was measured
        "device": "cpu",                        # the device token of the keys
        "device_name": "<CPU model>",           # CPU model / GPU name / preset description
        "torch": "2.13.0+cpu", "dartscc_fast": "0.1.0", "python": "3.11.7",
        "threads": 2,                           # torch.get_num_threads() (CPU), else null
        "date": "2025-01-01T12:00:00+00:00",    # ISO 8601, UTC
        "method": "...",                        # timer, warm-up, stopping rule, statistic
        "batch": 64, "dtype": "float32",        # the defaults of lookups
        "memory_format": "channels_last",       # the layout the ops and networks ran in (absent: contiguous)
        "runtime": "onnxruntime",               # what ran them: torch (eager; absent: torch) or onnxruntime
        "runtime_version": "1.32.0", "provider": "CPUExecutionProvider",
        "optimisation": "ORT_ENABLE_ALL, ...",  # the runtime's graph optimisation level and execution mode
        "op_timing": "in context",              # each op timed alone ('isolated') or inside its network
        "load_average": 0.1, "busy_cpus": 0.0,  # the machine when it was measured (a busy one warns)
        "governor": "performance",              # CPU frequency governor where Linux exposes it, else null
        "calibration": {"scale": 0.8, "offset_ms": 1.5, ...},  # optional: predict = base + scale*sum + offset
        "statistic": "median",                  # which field of the entries lookups read: median (absent) or min
        "pace": {"anchor_ms": 27.1, ...},       # optional: the entries are scaled to this pace of the anchor
        "spaces": ["fmnist-paper"],             # the search spaces it was made for
        ...                                     # free-form extras (host, preset parameters)
      },
      "entries": {                              # key -> one measurement
        "sep_conv_3x3:cin16:...:cpu": {
          "median": 1.234,                      # the latency (required, finite, >= 0)
          "iqr": 0.021,                         # spread: interquartile range of the runs
          "runs": 57,                           # timed runs (0: computed, not measured)
          "min": 1.201,                         # fastest run (optional)
          "edges": 6, "context_median": 60.1,   # in context: the edges running it, its network's time
          "unpaced": {"median": 1.25, ...}      # paced tables: the median, iqr and min as measured
        }, ...
      }
    }

Tables measured separately (other spaces, batch sizes) merge with
:meth:`LatencyTable.merge`, which refuses to mix devices or machines unless
told to. Every load error names the file and what is wrong with it.
"""
from __future__ import annotations

import copy
import json
import math
import os
import warnings
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from dartscc_fast import _extension  # noqa: F401  (registers the compiled LatencyTable class)
from dartscc_fast.latency import roofline
from dartscc_fast.latency._time import utc_now
from dartscc_fast.latency.keys import (
    BASE_INPUTS,
    BaseConfig,
    OpConfig,
    device_token,
    dtype_name,
    edge_configs,
    genotype_configs,
    genotype_edges,
    node_sums,
    parse_key,
)
from dartscc_fast.nn.primitives import OP_TYPES

SCHEMA = "dartscc_fast.latency_table"
VERSION = 1
UNIT = "ms"

#: What :func:`normalise` (and ``SearchConfig.normalise``, ``--normalise``) accepts.
NORMALISATIONS = ("uniform", "cheapest", "type", "type-stride", "type-cell")
#: How far 'type-stride' draws pooling and convolution to the same price on each stride's edges (0: 'type',
#: 1: the same total); why 0.5: docs/design.md, "Normalisation".
STRIDE_BALANCE = 0.5
#: The statistics of an entry a table can predict with (``meta['statistic']``): the median run, or the fastest,
#: which leaves out the time other work on a shared machine adds (docs/latency.md, "Which statistic").
STATISTICS = ("median", "min")


class LatencyTableError(ValueError):
    """A latency table that is corrupt, of another version, or does not fit the request."""


# ----------------------------------------------------------------------------- the table
def _entry(d: Mapping, where: str) -> Dict:
    if not isinstance(d, Mapping):
        raise LatencyTableError(f"{where}: an entry must be an object with a 'median', got {type(d).__name__}")
    if "median" not in d:
        raise LatencyTableError(f"{where}: the entry has no 'median'")
    out = dict(d)
    for name in ("median", "iqr", "min"):
        if name in out:
            out[name] = _ms(out[name], where, name)
    if ("shared" in out) != ("per_edge" in out):
        raise LatencyTableError(f"{where}: an entry has both 'shared' and 'per_edge' or neither")
    for part in ("shared", "per_edge"):
        if part in out:
            _check_split(out[part], f"{where}: '{part}'")
    if "shared" in out and not isinstance(out["shared"].get("group"), str):
        raise LatencyTableError(f"{where}: 'shared' must name its 'group' (a string)")
    runs = out.get("runs", 0)
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 0:
        raise LatencyTableError(f"{where}: 'runs' must be an integer >= 0, got {runs!r}")
    out["runs"] = runs
    return out


def _ms(v, where: str, name: str) -> float:
    """A time of an entry, checked: a finite number >= 0."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise LatencyTableError(f"{where}: '{name}' must be a finite number >= 0, got {v!r}")
    return float(v)


def _check_split(d, where: str) -> None:
    if not isinstance(d, Mapping) or "median" not in d:
        raise LatencyTableError(f"{where} must be an object with a 'median', got {d!r}")
    for name in ("median", "min"):
        if name in d:
            _ms(d[name], where, name)


#: the group of a split entry whose op shares no work with the other edges leaving its node
NO_SHARED_WORK = "-"


class LatencyTable:
    """A latency table: op configurations -> measured (or simulated) times, in ms, with metadata.

    ``table[key_or_config]`` is the median time. :meth:`supernet_latency` gives
    the ``L`` of the regulariser through the compiled lookup
    (``torch.classes.dartscc_fast.LatencyTable``); :meth:`predict` the latency
    of a discrete architecture.
    """

    def __init__(self, entries: Optional[Mapping[str, Mapping]] = None, meta: Optional[Mapping] = None,
                 source: Optional[str] = None):
        self.meta: Dict = dict(meta or {})
        self.source = source  # the file it came from, for error messages
        self.entries: Dict[str, Dict] = {}
        self._compiled = None
        self._prepared: Dict = {}
        for key, e in (entries or {}).items():
            self._check_key(key)
            self.entries[key] = _entry(e, self._where(key))

    # -- basics ----------------------------------------------------------------
    def _where(self, key: Optional[str] = None) -> str:
        name = f"latency table {self.source}" if self.source else "latency table"
        return f"{name}, entry {key!r}" if key is not None else name

    def _check_key(self, key: str) -> None:
        try:
            parse_key(key)
        except ValueError as e:
            raise LatencyTableError(f"{self._where()}: bad key: {e}") from None

    @staticmethod
    def _key(k: Union[str, OpConfig, BaseConfig]) -> str:
        return k if isinstance(k, str) else k.key()

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, k) -> bool:
        return self._key(k) in self.entries

    def __getitem__(self, k) -> float:
        key = self._key(k)
        if key not in self.entries:
            raise KeyError(self._missing_message([key]))
        return self._time(key)

    def _time(self, key: str) -> float:
        """The entry's latency under the table's :attr:`statistic`."""
        return self.entries[key][self.statistic]

    def keys(self) -> List[str]:
        return list(self.entries)

    def add(self, k: Union[str, OpConfig, BaseConfig], median: float, iqr: float = 0.0, runs: int = 0,
            **extra) -> None:
        """Set one entry (replacing any)."""
        key = self._key(k)
        self._check_key(key)
        entry = _entry(dict(extra, median=median, iqr=iqr, runs=runs), self._where(key))
        if self.statistic not in entry:
            raise LatencyTableError(f"{self._where(key)}: the table reads {self.statistic!r}, which the entry lacks")
        self.entries[key] = entry
        self._compiled = None
        self._prepared.clear()

    @property
    def device(self) -> Optional[str]:
        return self.meta.get("device")

    @property
    def batch(self) -> Optional[int]:
        return self.meta.get("batch")

    @property
    def dtype(self) -> str:
        return self.meta.get("dtype", "float32")

    @property
    def memory_format(self) -> str:
        """The layout the table's ops ran in: 'channels_last' or 'contiguous' (tables from before
        the field existed were measured contiguous)."""
        return self.meta.get("memory_format", "contiguous")

    @property
    def runtime(self) -> str:
        """What ran the ops: 'torch' (eager; tables from before the field existed) or 'onnxruntime'
        (:mod:`dartscc_fast.latency.runtimes`)."""
        return self.meta.get("runtime") or "torch"

    @property
    def statistic(self) -> str:
        """Which run of each entry lookups and predictions read: 'median' (tables from before the field
        existed) or 'min' (:meth:`with_statistic`)."""
        return self.meta.get("statistic") or "median"

    def with_statistic(self, statistic: str) -> "LatencyTable":
        """A copy whose lookups read ``statistic`` ('median' or 'min') of every entry. The whole-network
        calibration is dropped when the statistic changes: it was fitted to the other one, so refit it
        (:func:`dartscc_fast.latency.measure.calibrate`, ``dartscc-fast table calibrate``)."""
        out = self._copy()
        if statistic != out.statistic:
            out.meta.pop("calibration", None)
        out.meta["statistic"] = statistic
        out._check_statistic()
        return out

    def unpaced(self) -> "LatencyTable":
        """A copy whose entries are the runs as measured, before :mod:`~dartscc_fast.latency.pace` scaled them
        to the profile's pace (``profile --pace``). The calibration is dropped: it was fitted at the pace, so
        refit it (``dartscc-fast table calibrate``)."""
        if "pace" not in self.meta:
            raise LatencyTableError(f"{self._where()}: the table was not paced (profile --pace), so it has no "
                                    f"unpaced entries")
        out = self._copy()
        for key, e in out.entries.items():
            if "unpaced" not in e:
                raise LatencyTableError(f"{self._where(key)}: a paced table's entry lacks 'unpaced'")
            e.update(e.pop("unpaced"))
        out.meta.pop("pace")
        out.meta.pop("calibration", None)
        return out

    def _copy(self) -> "LatencyTable":
        """A deep copy, with no compiled lookup or prepared tensors yet."""
        return LatencyTable.from_dict(copy.deepcopy(self.to_dict()), source=self.source)

    def _check_statistic(self) -> None:
        statistic = self.statistic
        if statistic not in STATISTICS:
            raise LatencyTableError(f"{self._where()}: 'statistic' must be one of {', '.join(STATISTICS)}, got "
                                    f"{statistic!r}")
        lacking = [k for k, e in self.entries.items() if statistic not in e]
        if lacking:
            raise LatencyTableError(f"{self._where()}: {len(lacking)} of {len(self)} entries have no {statistic!r} "
                                    f"(e.g. {lacking[0]!r}); profile the table again to record it")

    def __repr__(self) -> str:
        return (f"LatencyTable({len(self)} entries, device={self.device!r}, batch={self.batch}, "
                f"dtype={self.dtype!r}{', from ' + self.source if self.source else ''})")

    # -- file --------------------------------------------------------------------
    def to_dict(self) -> Dict:
        return {"schema": SCHEMA, "version": VERSION, "unit": UNIT, "meta": self.meta,
                "entries": {k: self.entries[k] for k in sorted(self.entries)}}

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the table as JSON (atomically: a crash leaves the old file intact)."""
        path = os.fspath(path)
        tmp = path + ".tmp"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
        self.source = path

    @classmethod
    def from_dict(cls, d, source: Optional[str] = None) -> "LatencyTable":
        where = f"latency table {source}" if source else "latency table"
        if not isinstance(d, dict):
            raise LatencyTableError(f"{where}: expected a JSON object, got {type(d).__name__}")
        if d.get("schema") != SCHEMA:
            raise LatencyTableError(f"{where}: not a dartscc_fast latency table (schema is {d.get('schema')!r}, "
                                    f"expected {SCHEMA!r})")
        version = d.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise LatencyTableError(f"{where}: 'version' must be an integer, got {version!r}")
        if version > VERSION:
            raise LatencyTableError(f"{where}: schema version {version} is newer than this dartscc_fast reads "
                                    f"({VERSION}); upgrade dartscc_fast")
        if version < 1:
            raise LatencyTableError(f"{where}: unknown schema version {version}")
        if d.get("unit") != UNIT:
            raise LatencyTableError(f"{where}: unit must be {UNIT!r} (schema version {VERSION}), got "
                                    f"{d.get('unit')!r}")
        meta = d.get("meta", {})
        if not isinstance(meta, dict):
            raise LatencyTableError(f"{where}: 'meta' must be an object, got {type(meta).__name__}")
        entries = d.get("entries")
        if not isinstance(entries, dict):
            raise LatencyTableError(f"{where}: 'entries' must be an object mapping keys to measurements")
        table = cls(entries, meta, source)
        table._check_statistic()
        return table

    @classmethod
    def load(cls, path: Union[str, os.PathLike], device: Optional[str] = None) -> "LatencyTable":
        """Read a table; with ``device``, also check that it was made for that device."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"latency table {path}: no such file (make one with "
                                    f"`dartscc-fast profile --out {path}`)")
        try:
            with open(path) as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise LatencyTableError(f"latency table {path}: corrupt JSON ({e})") from None
        except UnicodeDecodeError as e:
            raise LatencyTableError(f"latency table {path}: not a text file ({e})") from None
        t = cls.from_dict(d, source=path)
        if device is not None and t.device != device_token(device):
            raise LatencyTableError(f"latency table {path}: made for device {t.device!r}, not "
                                    f"{device_token(device)!r}")
        return t

    # -- merging -----------------------------------------------------------------
    _SAME_MACHINE = ("device", "device_name", "threads")

    def merge(self, *others: "LatencyTable", on_conflict: str = "error", strict: bool = True) -> "LatencyTable":
        """A new table with the entries of this one and of ``others``.

        Args:
            on_conflict: a key in several tables with different times: 'error',
                'first' (keep the earliest table's) or 'last'.
            strict: refuse tables whose device, device name or thread count differ.
        """
        if on_conflict not in ("error", "first", "last"):
            raise ValueError(f"on_conflict must be 'error', 'first' or 'last', got {on_conflict!r}")
        out = LatencyTable(self.entries, copy.deepcopy(self.meta))
        sources = [self.source or "(unsaved)"]
        for o in others:
            if strict:
                if self.runtime != o.runtime:
                    raise LatencyTableError(f"cannot merge {o._where()} into {self._where()}: measured on different "
                                            f"runtimes ({o.runtime} vs {self.runtime})")
                if self.memory_format != o.memory_format:
                    raise LatencyTableError(
                        f"cannot merge {o._where()} into {self._where()}: measured in different memory formats "
                        f"({o.memory_format} vs {self.memory_format})")
                for f in self._SAME_MACHINE:
                    if self.meta.get(f) != o.meta.get(f):
                        raise LatencyTableError(
                            f"cannot merge {o._where()} into {self._where()}: their {f} differ "
                            f"({o.meta.get(f)!r} vs {self.meta.get(f)!r}); pass strict=False to merge anyway")
            for key, e in o.entries.items():
                if key in out.entries and out.entries[key]["median"] != e["median"]:
                    if on_conflict == "error":
                        raise LatencyTableError(f"cannot merge {o._where()}: {key!r} is in both tables with "
                                                f"different times ({e['median']} vs {out.entries[key]['median']} "
                                                f"ms); choose on_conflict='first' or 'last'")
                    if on_conflict == "first":
                        continue
                out.entries[key] = dict(e)
            sources.append(o.source or "(unsaved)")
            spaces = list(out.meta.get("spaces", []))
            out.meta["spaces"] = spaces + [s for s in o.meta.get("spaces", []) if s not in spaces]
        if any(o.meta.get("pace") != self.meta.get("pace") for o in others):
            out.meta.pop("pace", None)  # entries at several paces: the merged table has no one pace to scale to
        out.meta["merged_from"] = sources
        out.meta["merged"] = utc_now()
        out._check_statistic()  # the first table's statistic, which every merged entry must carry
        return out

    # -- lookups -------------------------------------------------------------------
    def compiled(self):
        """The table as a ``torch.classes.dartscc_fast.LatencyTable`` (C++ hash map), cached."""
        if self._compiled is None:
            t = torch.classes.dartscc_fast.LatencyTable()
            keys = list(self.entries)
            t.insert_many(keys, [self._time(k) for k in keys])
            self._compiled = t
        return self._compiled

    def _missing_message(self, missing: Sequence[str]) -> str:
        shown = ", ".join(repr(k) for k in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3
                                                           else "")
        have = sorted({(c.device, c.batch, c.dtype) for c in map(parse_key, self.entries)})
        have_s = "; ".join(f"device {d}, batch {b}, {t}" for d, b, t in have[:4]) or "nothing"
        return (f"{self._where()} has no latency for {shown}. The table holds {len(self)} entries for {have_s}. "
                f"Measure the missing ones (`dartscc-fast profile`) or pass fallback='roofline' to estimate them")

    def _fallback_estimates(self, missing: Sequence[str], fallback) -> Dict[str, float]:
        if callable(fallback):
            est = {k: float(fallback(parse_key(k))) for k in missing}
            how = "the given fallback function"
        elif fallback == "roofline":
            est, how = roofline.calibrated_estimates(self, [parse_key(k) for k in missing])
        else:
            raise ValueError(f"fallback must be None, 'roofline' or a function of an OpConfig, got {fallback!r}")
        shown = ", ".join(f"{k} ~ {v:.4g} ms" for k, v in list(est.items())[:5])
        warnings.warn(f"{self._where()} lacks {len(missing)} configuration(s); estimated with {how}: {shown}"
                      + (" ..." if len(est) > 5 else ""), stacklevel=3)
        return est

    def _prepare(self, keys: Sequence[str], fallback) -> Tuple[Tensor, Optional[Tensor]]:
        """Hash the keys once: (slots, fallback estimates or None); errors and warnings happen here."""
        t = self.compiled()
        slots = t.resolve(list(keys), True)
        missing_at = (slots == -2).nonzero().flatten().tolist()
        if not missing_at:
            return slots, None
        missing = list(dict.fromkeys(keys[i] for i in missing_at))
        if fallback is None:
            raise LatencyTableError(self._missing_message(missing))
        est = self._fallback_estimates(missing, fallback)
        return slots, torch.tensor([est.get(key, math.nan) for key in keys], dtype=torch.float64)

    def lookup(self, keys: Sequence[str], k: int, fallback: Union[None, str, Callable] = None) -> Tensor:
        """``L [len(keys) / k, k]`` (float64, CPU) through the compiled table; '' (the 'none' op) costs 0.

        A key the table lacks is an error naming it, unless ``fallback`` is
        'roofline' (a roofline estimate scaled to this table's measurements) or
        a function ``OpConfig -> ms``; estimated entries trigger a warning.
        """
        keys = list(keys)
        slots, fb = self._prepare(keys, fallback)
        return self.compiled().gather(slots, k, fb)

    def _lookup_args(self, batch, dtype, device):
        batch = batch if batch is not None else self.batch
        if batch is None:
            raise LatencyTableError(f"{self._where()}: its meta names no batch size; pass batch=")
        return int(batch), dtype_name(dtype if dtype is not None else self.dtype), \
            device_token(device if device is not None else (self.device or "cpu"))

    def supernet_latency(self, space, per: str = "cell_type", batch: Optional[int] = None, dtype=None,
                         device=None, fallback: Union[None, str, Callable] = None,
                         normalise_by: Optional[str] = None, balance: float = STRIDE_BALANCE) -> Tensor:
        """The ``L`` of the regulariser for a whole supernet, float64 on the CPU.

        The configurations are those of the table's target (its meta's device,
        batch and dtype) unless given: a search on one device can target another.

        Args:
            per: 'edge': ``[layers * E, k]``, one row per edge of the network
                (``space.edges()`` order); 'cell_type': ``[2 * E, k]``, the
                normal cells' edges summed, then the reduction cells', matching
                architecture weights ``torch.cat([w_normal, w_reduce], -2)``.
            fallback: None (a missing configuration is an error), 'roofline' or
                a function ``OpConfig -> ms`` (estimates, with a warning).
            normalise_by: one of :data:`NORMALISATIONS`: divide by that reference architecture's
                latency (:func:`normalise`, which ``balance`` is passed to).
        """
        if per not in ("edge", "cell_type"):
            raise ValueError(f"per must be 'edge' or 'cell_type', got {per!r}")
        # The keys are hashed once per (space, target, fallback); later calls only gather.
        ck = (space, self._lookup_args(batch, dtype, device), fallback if isinstance(fallback, (str, type(None)))
              else id(fallback))
        if ck not in self._prepared:
            rows = edge_configs(space, *ck[1])
            keys = ["" if c is None else c.key() for row in rows for c in row]
            E = space.num_edges
            index = torch.tensor([e.edge + (E if e.reduction else 0) for e in space.edges()])
            self._prepared[ck] = self._prepare(keys, fallback) + (index,)
        slots, fb, index = self._prepared[ck]
        L = self.compiled().gather(slots, space.k, fb)
        if per == "cell_type":
            L = L.new_zeros(2 * space.num_edges, space.k).index_add_(0, index, L)
        if normalise_by is None:
            return L
        strides = space.row_strides() if per == "cell_type" else [e.stride for e in space.edges()]
        cells = space.row_cells() if per == "cell_type" else [int(e.reduction) for e in space.edges()]
        return normalise(L, normalise_by, space.type_index().tolist(), strides, balance, cells)

    def base(self, space, genotype=None, batch: Optional[int] = None, dtype=None, device=None) -> float:
        """The time of the fixed part of a network of the space (0 if the table has no base entry).

        With a genotype, the base is interpolated linearly in its number of node
        sums between the 'top2' and 'all' entries (whichever the table has).
        """
        args = self._lookup_args(batch, dtype, device)
        have = {}
        for inputs in BASE_INPUTS:
            key = BaseConfig.of(space, *args, inputs=inputs).key()
            if key in self.entries:
                have[inputs] = self._time(key)
        if not have:
            return 0.0
        if genotype is None or len(have) == 1:
            return have.get("all", next(iter(have.values())))
        n, n_all, n_top2 = node_sums(space, genotype), node_sums(space), node_sums(space, inputs="top2")
        if n_all == n_top2:
            return have["all"]
        return have["top2"] + (have["all"] - have["top2"]) * (n - n_top2) / (n_all - n_top2)

    def predict(self, space, genotype, batch: Optional[int] = None, dtype=None, device=None,
                include_base: bool = True, fallback: Union[None, str, Callable] = None, shared: bool = True) -> float:
        """Predicted latency (ms) of a discrete architecture: base + the sum of its chosen ops; on a calibrated
        table (``meta['calibration']``, see :meth:`calibration`) base + scale x sum + offset.

        Where every chosen op's entry splits its cost into work shared by the edges leaving one node and work
        per edge (tables profiled in context, :func:`~dartscc_fast.latency.measure.profile_space`), the sum
        counts each node's shared work once (the largest of its edges' ``shared`` of one group) and each edge's
        ``per_edge``; ``shared=False``: every edge's average cost in context instead."""
        args = self._lookup_args(batch, dtype, device)
        total = self._ops_time(genotype_edges(space, genotype, *args), fallback, shared)
        if not include_base:
            return total
        scale, offset = self.calibration()
        return scale * total + self.base(space, genotype, *args) + offset

    def _ops_time(self, edges, fallback, shared: bool) -> float:
        """The chosen ops' summed time (:meth:`predict`); ``edges`` as :func:`~.keys.genotype_edges` gives them."""
        keys = [c.key() for _, _, c in edges]
        if not keys:
            return 0.0
        stat = self.statistic
        if not (shared and all(self._split(k, stat) for k in keys)):
            return float(self.lookup(keys, 1, fallback).sum())
        once, total = {}, 0.0
        for (cell, src, _), key in zip(edges, keys):
            e = self.entries[key]
            total += e["per_edge"][stat]
            node = (cell, src, e["shared"]["group"])
            once[node] = max(once.get(node, 0.0), e["shared"][stat])
        return total + sum(once.values())

    def shared_work_entries(self) -> int:
        """How many entries split off work that the edges leaving one node share (ops timed in context on a graph
        runtime, :func:`~dartscc_fast.latency.measure.profile_space`); entries whose op shares nothing
        (group :data:`NO_SHARED_WORK`) are not counted."""
        return sum(e.get("shared", {}).get("group", NO_SHARED_WORK) != NO_SHARED_WORK for e in self.entries.values())

    def _split(self, key: str, stat: str) -> bool:
        """Whether the entry splits its ``stat`` into shared and per-edge work."""
        e = self.entries.get(key, {})
        return "shared" in e and stat in e["shared"] and stat in e["per_edge"]

    def calibration(self) -> Tuple[float, float]:
        """(scale, offset in ms) of the whole-network calibration: what a runtime's graph does to the per-op sum
        (fusions, shared work, layout changes), fitted on measured random networks when the table was profiled
        (:func:`dartscc_fast.latency.measure.calibrate`); (1, 0) for an uncalibrated table."""
        c = self.meta.get("calibration") or {}
        return float(c.get("scale", 1.0)), float(c.get("offset_ms", 0.0))

    def predict_spread(self, space, genotype, batch: Optional[int] = None, dtype=None, device=None) -> float:
        """Half the summed interquartile ranges of the entries :meth:`predict` adds (its ops and the larger of
        the network-base entries): ``predict(...) ± predict_spread(...)`` is the interval the table's own
        run-to-run spread allows. 0 where the entries carry no spread (simulated tables)."""
        args = self._lookup_args(batch, dtype, device)
        keys = [c.key() for c in genotype_configs(space, genotype, *args)]
        iqr = sum(float(self.entries[k].get("iqr") or 0.0) for k in keys if k in self.entries)
        bases = [float(self.entries[k].get("iqr") or 0.0) for k in
                 (BaseConfig.of(space, *args, inputs=i).key() for i in BASE_INPUTS) if k in self.entries]
        return 0.5 * (self.calibration()[0] * iqr + max(bases, default=0.0))


# ---------------------------------------------------------------------- normalisation
def reference_latency(L: Tensor, reference: str = "uniform", type_index: Optional[Sequence[int]] = None) -> Tensor:
    """The latency of a reference architecture under ``L [E, k]`` (a 0-dim tensor).

    'uniform': every candidate weighted 1/k (the supernet at initialisation);
    'cheapest': the cheapest typed candidate on every edge ('none', type -1 in
    ``type_index``, is left out, else the all-cheapest network would cost 0).
    """
    if reference == "uniform":
        return L.mean(dim=-1).sum()
    if reference == "cheapest":
        cols = list(range(L.shape[-1])) if type_index is None else \
            [m for m, t in enumerate(type_index) if int(t) >= 0]
        if not cols:
            raise ValueError("reference='cheapest' needs at least one candidate with a type")
        return L[..., cols].min(dim=-1).values.sum()
    raise ValueError(f"reference must be 'uniform' or 'cheapest', got {reference!r}")


def normalise(L: Tensor, reference: str = "uniform", type_index: Optional[Sequence[int]] = None,
              row_strides: Optional[Sequence[int]] = None, balance: float = STRIDE_BALANCE,
              row_cells: Optional[Sequence[int]] = None) -> Tensor:
    """``L / reference_latency(L)``: the reference architecture then costs 1 on any device,
    so a regularisation weight kappa means the same everywhere.

    ``reference='type'`` divides each operation type's columns by the latency of
    that type's own uniform architecture (every edge on the mean of the type's
    candidates), so every type's architecture costs 1. Within a type the
    measured ratios stay (stride, position, kernel); across types they go, and
    S_t alone sets a type's price, as the seeds' experiment penalised it: with
    the plain latency a type that is cheap on the device (pooling, identity) is
    hardly penalised by any S. 'none' (type -1) keeps its cost of 0.

    ``reference='type-stride'`` is 'type', then, among the rows of each stride
    (``row_strides``, one per row of L: the edge's stride), the pooling and the
    convolution columns are drawn towards the same total, their mean m: each
    is scaled by ``(m / total) ** balance``. With 'type', a type's price on an
    edge also carries how that edge's stride compares with the type's other
    edges (a stride-2 pool is cheap against pooling at stride 1, a stride-2
    separable convolution dear against convolution at stride 1), which tilts
    the uniform S towards pooling on the reduction edges. ``balance`` 1 gives
    the two types the same total, so that at the uniform S a pool and a
    convolution on one edge cost about the same and the cross-entropy alone
    decides between them; 0 is 'type'; the default 0.5 takes the square root
    of 'type''s convolution-to-pooling price ratio. Identity keeps its 'type'
    price (free at stride 1, a FactorizedReduce at stride 2).

    ``reference='type-cell'`` is 'type-stride' with pooling and convolution
    priced within each cell type apart (``row_cells``, one per row: 0 for a
    normal cell's edge, 1 for a reduction cell's): each cell type's pool (and
    conv) edges cost 1 / (number of cell types) at the uniform mix, then the
    stride balance is drawn within each cell type. With 'type-stride' a type's
    price on the reduction edges depends on what that type costs in the normal
    cell, which the table's thread count moves a lot (a stride-1 pool on the
    normal cell's large planes); here each cell type prices its own edges.
    Identity keeps its 'type' price (free at stride 1).
    """
    if reference not in NORMALISATIONS:
        raise ValueError(f"reference must be one of {NORMALISATIONS}, got {reference!r}")
    if reference == "type-cell":
        if row_cells is None:
            raise ValueError(f"reference='type-cell' needs one cell type per row of L ({L.shape[0]}), got None")
        return _normalise_type_stride(L, type_index, row_strides, balance, row_cells)
    if reference == "type-stride":
        return _normalise_type_stride(L, type_index, row_strides, balance)
    if reference == "type":
        return _normalise_type(L, type_index)
    d = reference_latency(L, reference, type_index)
    if not bool(d > 0):
        raise ValueError(f"the {reference} reference architecture has latency {float(d)}; cannot normalise by it")
    return L / d


def _normalise_type_stride(L: Tensor, type_index, row_strides, balance: float, row_cells=None) -> Tensor:
    """'type', then pooling and convolution drawn towards one total on each stride's rows (see :func:`normalise`);
    with ``row_cells`` ('type-cell'), pooling and convolution priced within each cell type first."""
    name = "type-stride" if row_cells is None else "type-cell"
    for what, given in [("stride", row_strides)] + ([("cell type", row_cells)] if row_cells is not None else []):
        if given is None or len(given) != L.shape[0]:
            raise ValueError(f"reference={name!r} needs one {what} per row of L ({L.shape[0]}), "
                             f"got {None if given is None else len(given)}")
    if not 0.0 <= float(balance) <= 1.0:
        raise ValueError(f"balance must be in [0, 1], got {balance}")
    out = normalise(L, "type", type_index)
    cols = [torch.tensor([m for m, u in enumerate(type_index) if int(u) == OP_TYPES.index(t)])
            for t in ("pool", "conv")]
    if not all(len(c) for c in cols):
        return out  # one of the two types is not in the space: nothing to balance
    labels = [0] * L.shape[0] if row_cells is None else [int(c) for c in row_cells]
    groups = [[r for r, c in enumerate(labels) if c == cell] for cell in sorted(set(labels))]
    for group in groups:
        if row_cells is not None:  # each cell type's pool (and conv) edges cost 1 / len(groups) at the uniform mix
            for c in cols:
                block = L[torch.tensor(group)[:, None], c[None, :]]
                total = reference_latency(block, "uniform")
                if bool(total > 0):
                    out[torch.tensor(group)[:, None], c[None, :]] = block / (total * len(groups))
        for stride in sorted({int(row_strides[r]) for r in group}):
            rows = torch.tensor([r for r in group if int(row_strides[r]) == stride])
            blocks = [out[rows[:, None], c[None, :]] for c in cols]
            totals = [reference_latency(b, "uniform") for b in blocks]
            target = sum(totals) / len(totals)
            for c, block, total in zip(cols, blocks, totals):
                if bool(total > 0):
                    out[rows[:, None], c[None, :]] = block * (target / total) ** float(balance)
    return out


def _normalise_type(L: Tensor, type_index) -> Tensor:
    """Each operation type's columns divided by that type's uniform architecture (see :func:`normalise`)."""
    if type_index is None or len(type_index) != L.shape[-1]:
        raise ValueError(f"reference='type' needs one type per candidate ({L.shape[-1]}), got {type_index}")
    out = L.clone()
    for t in sorted({int(t) for t in type_index if int(t) >= 0}):
        cols = [m for m, u in enumerate(type_index) if int(u) == t]
        d = reference_latency(L[..., cols], "uniform")
        if not bool(d > 0):
            raise ValueError(f"operation type {t} has latency {float(d)} in every position; cannot normalise "
                             "by it")
        out[..., cols] = L[..., cols] / d
    return out
