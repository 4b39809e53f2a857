"""The CUDA gate: the compiled CUDA kernels run only once they have passed the selftest on this GPU.

The first time an op with a CUDA kernel (:data:`GATED_OPS`) meets a tensor on a
CUDA device, the gate runs the quick selftest (:mod:`dartscc_fast.ops.selftest`) on
that device, in a child process so that a kernel that crashes or hangs cannot
take the caller down with it. The result is cached per device name, driver and
build (package version, torch, CUDA and the compiled library) in
``$XDG_CACHE_HOME/dartscc_fast/`` (default ``~/.cache/dartscc_fast/``), so the
selftest runs once per machine and build, not once per process. An op whose
kernel passed runs it; one whose kernel failed runs the torch path instead (the
reference ops, on cuDNN and ATen: :data:`TORCH_PATHS`), and the process gets one
warning (:class:`CudaKernelWarning`) naming the op and the command whose output
to report.

``DARTSCC_CUDA_KERNELS`` overrides the gate: ``1`` runs the kernels untested,
``0`` runs the torch path, ``auto`` (the default) decides as above. Under
``torch.compile`` the decision is made while tracing and baked into the graph.
CPU tensors never reach the gate (the CPU kernels are tested by the test suite
and ``dartscc-fast selftest``); tests point it at them through
:data:`GATED_DEVICE_TYPES` to exercise it without a GPU.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from dartscc_fast import _extension, reference
from dartscc_fast.ops.kernel_spec import PRIM_CODES, hard_out_shape, stats_dtype

__all__ = ["CudaKernelWarning", "GateResult", "ENV", "GATED_OPS", "check", "kernels_mode", "reset", "torch_path_for",
           "cache_dir", "cache_key", "cache_path"]

#: The environment variable that overrides the gate: 0, 1 or auto.
ENV = "DARTSCC_CUDA_KERNELS"
#: The ops the gate decides on: those with a CUDA kernel.
GATED_OPS: Tuple[str, ...] = ("mixed_sum", "gumbel_softmax", "hard_mixed_sum", "mixed_op_free", "latency_reg")
#: Ops whose compiled kernel is CPU-only: on other devices their wrappers run the reference, ungated.
CPU_ONLY_OPS: Tuple[str, ...] = ("relu_dw_pw_conv", "batch_norm_train", "node_sum")
#: Device types whose tensors go through the gate. Tests add "cpu" to exercise the dispatch without a GPU.
GATED_DEVICE_TYPES: Tuple[str, ...] = ("cuda",)
#: Run the gate's selftest in a child process (a crashing kernel then cannot end the caller's process).
SUBPROCESS = True
#: Seconds the child process may take (CUDA start-up and a first PTX compilation included).
SELFTEST_TIMEOUT_S = 300
#: Bumped when the cache file's layout changes.
CACHE_FORMAT = 1


class CudaKernelWarning(RuntimeWarning):
    """A CUDA kernel failed its selftest (or cannot run) and its op runs on the torch path instead."""


@dataclass
class GateResult:
    """The gate's decision for one device."""
    device: str
    mode: str                           # 'auto', '0' or '1'
    kernels: FrozenSet[str]             # the ops whose compiled kernels run
    failed: Dict[str, str] = field(default_factory=dict)   # op -> why its kernel does not run
    key: Optional[Dict[str, str]] = None
    cache_file: Optional[str] = None
    from_cache: bool = False
    seconds: float = 0.0                # spent deciding (the selftest, or reading the cache)

    def uses_kernel(self, op: str) -> bool:
        return op in self.kernels


# ------------------------------------------------------------------------------- the torch path
def _acc(t: Tensor) -> Tensor:
    """t in the kernels' accumulation type: float32 for the half types (rounding once, at the end, as they do)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _torch_mixed_sum(outputs: Sequence[Tensor], weights: Tensor) -> Tensor:
    return reference.mixed_sum([_acc(o) for o in outputs], _acc(weights)).to(weights.dtype)


class _StraightThrough(torch.autograd.Function):
    """The exact one-hot in value (MixedOp's hard path tests for it), the soft sample's gradient."""

    @staticmethod
    def forward(ctx, soft: Tensor, one_hot: Tensor) -> Tensor:
        return one_hot.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


@torch.library.custom_op("dartscc_fast::torch_path_gumbel_noise", mutates_args=())
def _gumbel_noise(seed: Tensor, like: Tensor) -> Tensor:
    """The kernels' Philox noise (reference.philox_gumbel) for like's elements; an op, so torch.compile can trace
    the torch path whole."""
    noise = torch.from_numpy(reference.philox_gumbel(int(seed), like.numel())).reshape(like.shape)
    return noise.to(device=like.device, dtype=like.dtype)


@_gumbel_noise.register_fake
def _(seed, like):
    return torch.empty(like.shape, dtype=like.dtype, device=like.device)


def _torch_gumbel_softmax(logits: Tensor, seed: Tensor, tau: float, hard: bool) -> Tuple[Tensor, Tensor]:
    soft = torch.softmax((logits + _gumbel_noise(seed, logits.detach())) / tau, dim=-1)
    if not hard:
        return soft, soft
    if soft.numel() == 0:
        return soft.clone(), soft
    one_hot = torch.zeros_like(soft).scatter_(-1, soft.detach().argmax(-1, keepdim=True), 1.0)
    return _StraightThrough.apply(soft, one_hot), soft


def _torch_hard_mixed_sum(outputs: Sequence[Tensor], weights: Tensor, index: Tensor) -> Tensor:
    """reference.hard_mixed_sum without its loop over samples: the drawn rows scattered back in one index_copy."""
    n, k = index.shape[0], len(outputs)
    shape = hard_out_shape(outputs, index)
    drawn = [o for o in outputs if o.dim() >= 1 and o.shape[0] > 0]
    if n == 0 or not drawn:
        o0 = outputs[0]
        return o0.new_zeros(shape) * weights.sum()
    w = _acc(weights if weights.dim() == 2 else weights.expand(n, k))
    order = torch.argsort(index, stable=True)  # outputs[m] holds, in sample order, the samples that drew m
    stacked = _acc(torch.cat(drawn))
    rows = stacked.new_zeros(shape).index_copy(0, order, stacked)
    w_drawn = w.gather(1, index[:, None]).squeeze(1)
    rest = w.sum(1) - w_drawn  # the ops not drawn: zero in value, the straight-through gradient sum(g[n])
    view = (-1,) + (1,) * (rows.dim() - 1)
    return (w_drawn.reshape(view) * rows + rest.reshape(view)).to(weights.dtype)


def _torch_mixed_op_free(x: Tensor, param_outputs: Sequence[Tensor], weights: Tensor, prims: Sequence[int],
                         stride: int, eps: float, bn_stats: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    names = {code: name for name, code in PRIM_CODES.items()}
    st_dtype = stats_dtype(x.dtype)
    outs, stats, params = [], [], iter(param_outputs)
    for code in prims:
        kind = names[int(code)]
        if kind == "param":
            outs.append(next(params))
        elif kind == "none":
            outs.append(torch.zeros_like(x[:, :, ::stride, ::stride]))
        elif kind == "identity":
            outs.append(x)
        else:
            p = F.max_pool2d(x, 3, stride, 1) if kind == "max_pool" else \
                F.avg_pool2d(x, 3, stride, 1, count_include_pad=False)
            q = p.to(st_dtype)  # BatchNorm in float32 for the half types, as the kernels: else ill-conditioned
            if bn_stats is None:
                var, mean = torch.var_mean(q.detach(), dim=(0, 2, 3), correction=0)
                st = torch.stack([mean, var])
                outs.append(F.batch_norm(q, None, None, training=True, eps=eps).to(x.dtype))
            else:
                st = bn_stats[len(stats)].to(st_dtype)
                outs.append(F.batch_norm(q, st[0], st[1], training=False, eps=eps).to(x.dtype))
            stats.append(st)
    y = reference.mixed_sum(outs, weights)
    return y, torch.stack(stats) if stats else x.new_empty((0, 2, x.shape[1]), dtype=st_dtype)


def _torch_latency_reg(w: Tensor, L: Tensor, S: Tensor, type_index: Sequence[int]) -> Tensor:
    return reference.latency_reg(_acc(w), _acc(L), _acc(S), list(type_index)).to(w.dtype)


_ops = torch.ops.dartscc_fast
#: What each gated op runs when its kernel does not: the compiled op (OpOverload) -> (name, torch-path function),
#: called with the op's own arguments.
TORCH_PATHS: Dict[object, Tuple[str, Callable]] = {
    _ops.mixed_sum.default: ("mixed_sum", _torch_mixed_sum),
    _ops.gumbel_softmax.default: ("gumbel_softmax", _torch_gumbel_softmax),
    _ops.hard_mixed_sum.default: ("hard_mixed_sum", _torch_hard_mixed_sum),
    _ops.mixed_op_free.default: ("mixed_op_free", _torch_mixed_op_free),
    _ops.latency_reg.default: ("latency_reg", _torch_latency_reg),
}
assert sorted(name for name, _ in TORCH_PATHS.values()) == sorted(GATED_OPS)


# ------------------------------------------------------------------------------------ dispatch
_DECISIONS: Dict[str, GateResult] = {}
_LOCK = threading.RLock()
_FORCED: Optional[bool] = None   # set by forced(): True runs the kernels, False the torch path, on every device


def torch_path_for(op, args: Sequence) -> Optional[Callable]:
    """The torch-path function to call with ``args`` instead of the compiled ``op``, or None to run the op.

    ``args`` are the op's arguments; the first (a tensor, or a list of them) says the device."""
    t = args[0]
    if isinstance(t, (list, tuple)):
        if not t:
            return None
        t = t[0]
    if _FORCED is None:
        if not isinstance(t, Tensor) or t.device.type not in GATED_DEVICE_TYPES:
            return None
    elif _FORCED:
        return None
    entry = TORCH_PATHS.get(op)
    if entry is None:
        return None
    if _FORCED is None and _uses_kernel(entry[0], t.device):
        return None
    return entry[1]


def _uses_kernel(op: str, device: torch.device) -> bool:
    if torch.compiler.is_compiling():
        return _uses_kernel_when_traced(op, str(device))
    decided = _DECISIONS.get(str(device))
    if decided is None:
        decided = check(device)
    return op in decided.kernels


@torch.compiler.assume_constant_result
def _uses_kernel_when_traced(op: str, device: str) -> bool:
    """Under torch.compile: decided while tracing (the selftest, or the cache, runs then), and the decision is
    baked into the graph, so a traced graph never reads the gate's state."""
    return op in check(device).kernels


@contextlib.contextmanager
def forced(kernels: bool):
    """Within: every gated op runs its kernel (True) or its torch path (False) on every device, undecided.
    The selftest's harness uses it; it is not thread-safe."""
    global _FORCED
    before, _FORCED = _FORCED, bool(kernels)
    try:
        yield
    finally:
        _FORCED = before


def reset() -> None:
    """Forget this process's decisions (the cache files stay): the next use of a device decides again."""
    with _LOCK:
        _DECISIONS.clear()


def kernels_mode() -> str:
    """``DARTSCC_CUDA_KERNELS``: '0', '1' or 'auto' (the default)."""
    mode = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if mode not in ("0", "1", "auto"):
        raise ValueError(f"{ENV} must be 0, 1 or auto, got {os.environ.get(ENV)!r}")
    return mode


# -------------------------------------------------------------------------------- the decision
def _device(device: Union[str, torch.device]) -> torch.device:
    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device())
    return d


def check(device: Union[str, torch.device]) -> GateResult:
    """The gate's decision for ``device``, made on its first use in this process (selftest or cache) and kept.

    Any device type can be checked (tests check 'cpu'); the dispatch asks only for :data:`GATED_DEVICE_TYPES`."""
    d = _device(device)
    with _LOCK:
        decided = _DECISIONS.get(str(d))
        if decided is None:
            decided = _decide(d)
            _DECISIONS[str(d)] = decided
            if decided.failed:
                _warn(decided)
        return decided


def _decide(d: torch.device) -> GateResult:
    mode = kernels_mode()
    t0 = time.perf_counter()
    if mode == "1":
        return GateResult(str(d), mode, frozenset(GATED_OPS))
    if mode == "0":
        return GateResult(str(d), mode, frozenset())
    if d.type == "cuda" and not _extension.BUILD_INFO["cuda"]:
        why = "this build of dartscc_fast has no CUDA kernels (rebuild with FORCE_CUDA=1 to get them)"
        return GateResult(str(d), mode, frozenset(), {op: why for op in GATED_OPS})
    key = cache_key(d)
    path = cache_path(key)
    results, from_cache = _read_cache(path, key), True
    if results is None:
        results, cacheable = _run_selftest(d)
        from_cache = False
        if cacheable:
            _write_cache(path, key, results)
    failed = {op: r["detail"] for op, r in results.items() if not r["passed"]}
    return GateResult(str(d), mode, frozenset(op for op in GATED_OPS if op not in failed), failed, key, path,
                      from_cache, time.perf_counter() - t0)


def _warn(r: GateResult) -> None:
    names = ", ".join(op for op in GATED_OPS if op in r.failed)
    by_why: Dict[str, List[str]] = {}
    for op in GATED_OPS:
        if op in r.failed:
            by_why.setdefault(r.failed[op], []).append(op)
    details = "; ".join(f"{', '.join(ops)}: {why}" for why, ops in by_why.items())
    ident = ""
    if r.key is not None:
        driver = f", driver {r.key['driver']}" if r.key["driver"] else ""
        ident = f" ({r.key['device_name']}{driver}; dartscc_fast {r.key['dartscc_fast']}, torch {r.key['torch']}, " \
                f"CUDA {r.key['cuda']})"
    where = "" if r.cache_file is None else f" The result is cached in {r.cache_file}."
    warnings.warn(
        f"dartscc_fast: the compiled kernel of {names} did not pass its selftest on {r.device}{ident}, so "
        f"{'it runs' if len(r.failed) == 1 else 'they run'} on the torch path (the reference ops, on cuDNN and "
        f"ATen) instead. {details}. Please report it with the output of "
        f"`dartscc-fast selftest --device {r.device}`.{where} {ENV}=1 runs the kernels anyway, {ENV}=0 never.",
        CudaKernelWarning, stacklevel=_caller_level())


def _caller_level() -> int:
    """The stacklevel of the first frame outside this package, so the warning names the caller's line."""
    here, f, level = os.path.dirname(os.path.abspath(__file__)), sys._getframe(1), 1  # level 1: _warn's frame
    while f is not None and os.path.abspath(f.f_code.co_filename).startswith(here + os.sep):
        f, level = f.f_back, level + 1
    return level


# ------------------------------------------------------------------------------------ the cache
def cache_dir() -> str:
    """``$XDG_CACHE_HOME/dartscc_fast`` (default ``~/.cache/dartscc_fast``)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "dartscc_fast")


def _driver_version() -> str:
    """The NVIDIA driver's version, from the kernel module, else nvidia-smi; 'unknown' if neither answers."""
    try:
        with open("/proc/driver/nvidia/version") as f:
            m = re.search(r"Kernel Module\s+(\S+)", f.read())
        if m:
            return m.group(1)
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def _device_identity(d: torch.device) -> Tuple[str, str, str]:
    """(device name, compute capability, driver) of d; for a CPU, its processor and no driver."""
    if d.type == "cuda":
        major, minor = torch.cuda.get_device_capability(d)
        return torch.cuda.get_device_name(d), f"{major}.{minor}", _driver_version()
    return platform.processor() or platform.machine() or d.type, "", ""


def _library_id() -> str:
    """Size and modification time of the compiled library: a rebuild of the same version is another build."""
    try:
        st = os.stat(_extension._C.__file__)
        return f"{st.st_size}-{st.st_mtime_ns}"
    except (OSError, AttributeError, TypeError):
        return "unknown"


def _selftest():
    """The selftest module, imported on the gate's first decision: it checks the ops, whose wrappers call this
    gate, so a module-level import would close the cycle ops -> cuda_gate -> selftest -> ops."""
    from dartscc_fast.ops import selftest  # allowed in tests/test_layering.py, for the reason above
    return selftest


def cache_key(device: Union[str, torch.device]) -> Dict[str, str]:
    """What a cached result is valid for: the device (name, capability, driver) and the build."""
    d = _device(device)
    name, capability, driver = _device_identity(d)
    info = _extension.BUILD_INFO
    return {"device_type": d.type, "device_name": name, "capability": capability, "driver": driver,
            "dartscc_fast": str(info["version"]), "torch": str(info["torch"]), "cuda": str(info["cuda"]),
            "library": _library_id(), "selftest": str(_selftest().VERSION)}


def cache_path(key: Dict[str, str]) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return os.path.join(cache_dir(), f"selftest-{key['device_type']}-{digest}.json")


def _read_cache(path: str, key: Dict[str, str]) -> Optional[Dict[str, Dict]]:
    """The cached per-op results for key, or None: missing, unreadable, corrupt or for another key."""
    try:
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or data.get("key") != key:
            return None
        ops = data["ops"]
        if all(isinstance(ops[op]["passed"], bool) and isinstance(ops[op]["detail"], str) for op in GATED_OPS):
            return ops
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _write_cache(path: str, key: Dict[str, str], ops: Dict[str, Dict]) -> None:
    """Atomically (a corrupt or stale file is replaced whole); a cache that cannot be written is skipped."""
    data = {"format": CACHE_FORMAT, "key": key, "ops": ops, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".selftest-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass


# -------------------------------------------------------------------------------- the selftest
def _op_results(report: Dict, crashed: Optional[str] = None) -> Dict[str, Dict]:
    """{op: {passed, detail}} for the gated ops, from a selftest report (SelftestResult.to_dict())."""
    out = {}
    for op in GATED_OPS:
        r = report.get("ops", {}).get(op)
        if r is not None and r.get("passed") is not None:
            out[op] = {"passed": bool(r["passed"]), "detail": "passed" if r["passed"] else str(r.get("detail"))}
        elif op == crashed:
            out[op] = {"passed": False, "detail": "the selftest's process died in this op"}
        else:
            out[op] = {"passed": False, "detail": "not run" + (f" (the selftest died in {crashed})" if crashed else "")}
    return out


def _run_selftest(d: torch.device) -> Tuple[Dict[str, Dict], bool]:
    """The quick selftest on d, in a child process unless SUBPROCESS is off: ({op: {passed, detail}}, whether
    to cache it). A timeout is not cached (a busy machine can cause one); a crash is, blamed on the op it hit."""
    if not SUBPROCESS:
        return _run_in_process(d), True
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder that holds dartscc_fast/
    with tempfile.TemporaryDirectory(prefix="dartscc-selftest-") as tmp:
        report_path = os.path.join(tmp, "report.json")
        cmd = [sys.executable, "-m", "dartscc_fast.cli", "selftest", "--device", str(d), "--quick",
               "--json", report_path]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        if d.type == "cuda":
            env["CUDA_LAUNCH_BLOCKING"] = "1"  # an asynchronous kernel error is then reported by the op that made it
        timed_out = False
        try:
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=SELFTEST_TIMEOUT_S,
                           env=env)
        except subprocess.TimeoutExpired:
            timed_out = True
        except OSError:
            return _run_in_process(d), True
        try:
            with open(report_path) as f:
                report = json.load(f)
        except (OSError, ValueError):
            if not timed_out:
                return _run_in_process(d), True  # the child never began the selftest: its start-up failed
            report = {}
    running = report.get("running")
    results = _op_results(report, crashed=None if timed_out else running)
    if timed_out:
        for r in results.values():
            if not r["passed"]:
                r["detail"] = f"the selftest took over {SELFTEST_TIMEOUT_S} s" + (f" (in {running})" if running else "")
    return results, not timed_out


def _run_in_process(d: torch.device) -> Dict[str, Dict]:
    report = _selftest().run(d, quick=True, ops=GATED_OPS, verbose=False)
    return _op_results(report.to_dict())

