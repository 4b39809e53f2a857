"""The Python half of bench/gpu_check.sh: what it measures on one device, as plain lines for its results file.

    python bench/gpu_check.py probe                       # the environment, before anything is built
    python bench/gpu_check.py gate [--device cuda]        # the CUDA gate's first use: selftest, cache, kernels on
    python bench/gpu_check.py bandwidth [--device cuda]   # mixed_sum against a plain device copy (goal >= 75 %)
    python bench/gpu_check.py search [--device cuda]      # the search step, soft and hard, against the reference

``--quick`` shrinks every size so that the CPU tests can run each command in seconds. Exit status: 0 when the
check passed (for bandwidth: the goal met), 1 when not, 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
#: mixed_sum's goal: forward and backward, on tensors well past the L2 cache, at this share of the copy bandwidth.
GOAL = 0.75


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, device, reps: int, warmup: int = 3) -> float:
    """The median time of fn, with CUDA events on a GPU (launch overhead hidden by the queue), else perf_counter."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        if torch.device(device).type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------ probe
def probe(args) -> int:
    """key=value lines the shell script reads; imports torch only (the package is not built yet)."""
    cuda = torch.version.cuda
    available = cuda is not None and torch.cuda.is_available()
    print(f"python={sys.executable}")
    print(f"python_version={platform.python_version()}")
    print(f"torch={torch.__version__}")
    print(f"torch_cuda={cuda or ''}")
    print(f"cuda_available={int(available)}")
    print(f"gpus={torch.cuda.device_count() if available else 0}")
    if available:
        major, minor = torch.cuda.get_device_capability(0)
        print(f"device={torch.cuda.get_device_name(0)}")
        print(f"arch={major}.{minor}")
    else:
        print("device=")
        print("arch=")
    from torch.utils.cpp_extension import CUDA_HOME
    print(f"torch_cuda_home={CUDA_HOME or ''}")
    return 0


# ------------------------------------------------------------------------------------------ gate
def gate(args) -> int:
    """The gate on its first use in a fresh cache: it runs the selftest, caches it, and the kernels then run."""
    import tempfile
    with tempfile.TemporaryDirectory(prefix="gpu-check-cache-") as cache:
        os.environ["XDG_CACHE_HOME"] = cache
        os.environ.pop("DARTSCC_CUDA_KERNELS", None)
        from dartscc_fast import ops
        from dartscc_fast.ops import cuda_gate
        device = torch.device(args.device)
        if device.type not in cuda_gate.GATED_DEVICE_TYPES:
            cuda_gate.GATED_DEVICE_TYPES = cuda_gate.GATED_DEVICE_TYPES + (device.type,)  # the CPU tests' way in
        cuda_gate.reset()
        outs = [torch.randn(4, 8, 6, 6, device=device, requires_grad=True) for _ in range(3)]
        w = torch.softmax(torch.randn(3, device=device), -1).requires_grad_()
        t = time.perf_counter()
        y = ops.mixed_sum(outs, w)
        first = time.perf_counter() - t
        r = cuda_gate.check(device)
        print(f"gate on {r.device}: first use {first:.1f} s (selftest in a child process: "
              f"{'yes' if cuda_gate.SUBPROCESS else 'no'}), from cache: {r.from_cache}")
        print(f"  kernels on: {sorted(r.kernels)}")
        for op, why in sorted(r.failed.items()):
            print(f"  torch path: {op}: {why}")
        written = r.cache_file is not None and os.path.exists(r.cache_file)
        print(f"  cache file: {r.cache_file} ({'written' if written else 'missing'})")
        print(f"  key: {r.key}")
        kernel_ran = type(y.grad_fn).__name__ != "AddBackward0"
        print(f"  mixed_sum ran {'its kernel' if kernel_ran else 'the torch path'} "
              f"(grad_fn {type(y.grad_fn).__name__})")
        cuda_gate.reset()
        t = time.perf_counter()
        again = cuda_gate.check(device)
        print(f"  a second decision: {time.perf_counter() - t:.3f} s, from cache: {again.from_cache}")
        ok = not r.failed and kernel_ran and again.from_cache and again.kernels == r.kernels
    print(f"gate: {'pass' if ok else 'FAIL'}")
    return 0 if ok else 1


# ------------------------------------------------------------------------------------------ bandwidth
def bandwidth(args) -> int:
    from dartscc_fast import reference
    mixed_sum, mixed_sum_backward = torch.ops.dartscc_fast.mixed_sum, torch.ops.dartscc_fast.mixed_sum_backward
    device = args.device
    reps = 5 if args.quick else 20
    n_copy = (16 if args.quick else 256) * 2 ** 20  # float32 elements: 64 MiB or 1 GiB
    a = torch.ones(n_copy, device=device)
    b = torch.empty_like(a)
    copy_s = _median_seconds(lambda: b.copy_(a), device, reps)
    copy_bw = 2 * a.numel() * 4 / copy_s / 1e9
    print(f"copy: {a.numel() * 4 / 1e6:.0f} MB each way, {copy_s * 1e3:.3f} ms, {copy_bw:.1f} GB/s (read + write)")
    a = b = None  # free the copy's 2 GiB before the mixed_sum tensors
    # the goal is read on shapes well past the L2 cache (H100/H200: 50-60 MB); the bench's DARTS shape partly fits
    shapes = [("large", 256, 64, 32, 8), ("large", 256, 64, 32, 3), ("darts", 64, 16, 32, 8)]
    if args.quick:
        shapes = [("large", 16, 16, 32, 8), ("darts", 4, 16, 32, 3)]
    worst = None
    for kind, n, c, hw, k in shapes:
        for per_sample in (False, True):
            outs = [torch.randn(n, c, hw, hw, device=device) for _ in range(k)]
            w = torch.softmax(torch.randn((n, k) if per_sample else (k,), device=device), -1)
            g = torch.randn(n, c, hw, hw, device=device)
            torch.testing.assert_close(mixed_sum(outs, w), reference.mixed_sum(outs, w), atol=1e-4, rtol=1e-4)
            size = n * c * hw * hw * 4
            fwd_s = _median_seconds(lambda: mixed_sum(outs, w), device, reps)
            bwd_s = _median_seconds(lambda: mixed_sum_backward(g, outs, w), device, reps)
            ref_s = _median_seconds(lambda: reference.mixed_sum(outs, w), device, reps)
            label = f"N{n} C{c} {hw}x{hw} k{k} {'per-sample' if per_sample else 'per-edge'} ({kind})"
            for what, secs, moved in (("forward", fwd_s, (k + 1) * size), ("backward", bwd_s, (2 * k + 1) * size)):
                share = moved / secs / 1e9 / copy_bw
                if kind == "large":
                    worst = share if worst is None else min(worst, share)
                print(f"mixed_sum {what:8s} {label:44s} {secs * 1e3:8.3f} ms {moved / secs / 1e9:8.1f} GB/s "
                      f"= {100 * share:5.1f} % of copy" + (f"  (eager reference forward {ref_s / fwd_s:.2f}x "
                                                             "slower)" if what == "forward" else ""))
    met = worst is not None and worst >= GOAL
    print(f"mixed_sum goal (>= {100 * GOAL:.0f} % of copy, forward and backward, large shapes): "
          f"{'met' if met else 'NOT met'} (worst {100 * worst:.1f} %)")
    return 0 if met else 1


# ------------------------------------------------------------------------------------------ search
def _agree(device, dtype, hard: bool, per_sample: bool, n: int):
    """The fast supernet against the reference one on device: output and every gradient, max abs differences."""
    from dartscc_fast import ops
    from dartscc_fast.space import get_space
    space = get_space("fmnist-paper")
    torch.manual_seed(0)
    ref = space.supernet(fast=False)
    fast = space.supernet(fast=True)
    fast.load_state_dict(ref.state_dict())
    ref.to(device=device, dtype=dtype)
    fast.to(device=device, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 28, 28, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    shape = (n, space.num_edges, space.k) if per_sample else (space.num_edges, space.k)
    logits = [torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype) for _ in range(2)]
    wn, wr = (ops.gumbel_softmax(a, 0.5, hard, seed=7 + i).detach().requires_grad_() for i, a in enumerate(logits))
    a, b = ref(x, wn, wr, hard=hard), fast(x, wn, wr, hard=hard)
    pa, pb = [wn, wr] + list(ref.parameters()), [wn, wr] + list(fast.parameters())
    # the hard path runs only the drawn candidates: the others' parameters get no gradient, in both nets
    ga = torch.autograd.grad(a.square().sum(), pa, allow_unused=True)
    gb = torch.autograd.grad(b.square().sum(), pb, allow_unused=True)
    a, b = a.detach(), b.detach()
    out_err = float((a - b).abs().max()) / max(1.0, float(a.abs().max()))
    grad_err = 0.0
    for p, q, like in zip(ga, gb, pa):
        p = torch.zeros_like(like) if p is None else p
        q = torch.zeros_like(like) if q is None else q
        grad_err = max(grad_err, float((p - q).abs().max()) / max(1.0, float(p.abs().max())))
    return out_err, grad_err


def search(args) -> int:
    sys.path.insert(0, HERE)
    from bench_search_step import make_step
    device = args.device
    n = 4 if args.quick else 64
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # both nets, same precision
    ok = True
    tol = {torch.float64: 1e-9, torch.float32: 1e-4}
    for dtype in (torch.float64, torch.float32):
        for hard in (False, True):
            for per_sample in (False, True):
                out_err, grad_err = _agree(device, dtype, hard, per_sample, 2 if args.quick else 8)
                good = max(out_err, grad_err) <= tol[dtype]
                ok &= good
                print(f"search network {'hard' if hard else 'soft'} {'per-sample' if per_sample else 'per-edge'} "
                      f"{str(dtype)[6:]}: ours against the reference, output {out_err:.2e}, gradients {grad_err:.2e} "
                      f"(relative max abs; tolerance {tol[dtype]:.0e}): {'pass' if good else 'FAIL'}")
    rounds = 1 if args.quick else 8
    for hard in (False, True):
        impls = ["ours", "eager", "eager-soft"] if hard else ["ours", "eager"]
        steps = {impl: make_step(impl, hard, device, n) for impl in impls}
        for step in steps.values():  # warm-up (cuDNN's algorithm search, the gate's first decision)
            step()
        _sync(device)
        times = {impl: [] for impl in impls}
        for r in range(rounds):
            for impl in impls[r % len(impls):] + impls[:r % len(impls)]:
                steps[impl]()
                _sync(device)
                t = time.perf_counter()
                steps[impl]()
                _sync(device)
                times[impl].append(time.perf_counter() - t)
        ours = statistics.median(times["ours"])
        parts = []
        for impl in impls[1:]:
            ratios = [t / o for t, o in zip(times[impl], times["ours"])]
            parts.append(f"{impl} {statistics.median(times[impl]) * 1e3:.1f} ms: {statistics.median(ratios):.2f}x "
                         f"({min(ratios):.2f}-{max(ratios):.2f})")
        print(f"search step fmnist-paper batch {n} {'hard' if hard else 'soft'} on {device}, {rounds} interleaved "
              f"rounds: ours {ours * 1e3:.1f} ms | " + " | ".join(parts))
    print(f"search: {'pass' if ok else 'FAIL'}")
    return 0 if ok else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("probe", help="the environment, as key=value lines").set_defaults(func=probe)
    for name, fn in (("gate", gate), ("bandwidth", bandwidth), ("search", search)):
        q = sub.add_parser(name, help=fn.__doc__.split("\n")[0] if fn.__doc__ else name)
        q.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
        q.add_argument("--quick", action="store_true", help="small sizes, one round (for the CPU tests)")
        q.set_defaults(func=fn)
    args = p.parse_args(argv)
    if getattr(args, "device", "cpu").startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check.py {args.cmd}: --device {args.device}, but torch {torch.__version__} sees no CUDA device",
              file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
