"""The CUDA gate, exercised on the CPU: the dispatch is pointed at CPU tensors (GATED_DEVICE_TYPES), so a kernel
made wrong for the selftest's harness (DARTSCC_SELFTEST_BREAK) must switch its op to the torch path."""
import json
import os
import warnings

import pytest
import torch

import dartscc_fast
from dartscc_fast import _extension, ops, reference
from dartscc_fast.ops import cuda_gate, selftest
from dartscc_fast.ops.latency_reg import latency_reg

ALL = frozenset(cuda_gate.GATED_OPS)


@pytest.fixture
def gate(monkeypatch, tmp_path):
    """The gate as on a CUDA machine, for CPU tensors: fresh cache dir, auto mode, in-process selftest."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(cuda_gate.ENV, raising=False)
    monkeypatch.delenv(selftest.BREAK_ENV, raising=False)
    monkeypatch.setattr(cuda_gate, "GATED_DEVICE_TYPES", ("cpu", "cuda"))
    monkeypatch.setattr(cuda_gate, "SUBPROCESS", False)
    cuda_gate.reset()
    yield tmp_path
    cuda_gate.reset()


@pytest.fixture
def spies(monkeypatch):
    """Count the calls of each op's torch path."""
    calls = {name: 0 for name in cuda_gate.GATED_OPS}
    for op, (name, fn) in list(cuda_gate.TORCH_PATHS.items()):
        def spy(*args, _name=name, _fn=fn):
            calls[_name] += 1
            return _fn(*args)
        monkeypatch.setitem(cuda_gate.TORCH_PATHS, op, (name, spy))
    return calls


@pytest.fixture
def runs(monkeypatch):
    """Replace the selftest run by one that passes every op, counting its runs."""
    count = []

    def fake(d):
        count.append(str(d))
        return {op: {"passed": True, "detail": "passed"} for op in cuda_gate.GATED_OPS}, True

    monkeypatch.setattr(cuda_gate, "_run_selftest", fake)
    return count


def mixed_sum_inputs():
    outs = [torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    w = torch.softmax(torch.randn(2, 3, dtype=torch.float64), -1).requires_grad_()
    return outs, w


def test_a_wrong_kernel_switches_its_op_to_the_torch_path_with_one_warning(gate, spies, monkeypatch):
    monkeypatch.setenv(selftest.BREAK_ENV, "mixed_sum")
    outs, w = mixed_sum_inputs()
    with pytest.warns(cuda_gate.CudaKernelWarning) as record:
        y = dartscc_fast.mixed_sum(outs, w)
    assert len(record) == 1
    msg = str(record[0].message)
    assert "kernel of mixed_sum did not pass" in msg and "dartscc-fast selftest --device cpu" in msg
    assert "torch path" in msg and cuda_gate.ENV in msg and "gumbel_softmax" not in msg
    assert record[0].filename == __file__  # the warning names the caller's line
    assert spies["mixed_sum"] == 1 and type(y.grad_fn).__name__ != "_EagerAutogradBackward"
    torch.testing.assert_close(y, reference.mixed_sum(outs, w))
    g = torch.autograd.grad(y.sum(), outs + [w])
    torch.testing.assert_close(g, torch.autograd.grad(reference.mixed_sum(outs, w).sum(), outs + [w]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per process and device, not one per call
        dartscc_fast.mixed_sum(outs, w)
        dartscc_fast.gumbel_softmax(torch.randn(14, 8), 0.5, seed=3)  # its kernel passed: it runs
    assert spies["mixed_sum"] == 2 and spies["gumbel_softmax"] == 0
    r = cuda_gate.check("cpu")
    assert r.kernels == ALL - {"mixed_sum"} and set(r.failed) == {"mixed_sum"} and not r.from_cache
    assert "cases failed" in r.failed["mixed_sum"]
    cached = json.load(open(r.cache_file))
    assert cached["ops"]["mixed_sum"]["passed"] is False and cached["ops"]["latency_reg"]["passed"] is True


def test_the_torch_path_runs_every_gated_op_through_its_wrapper(gate, spies, monkeypatch):
    monkeypatch.setenv(cuda_gate.ENV, "0")
    from dartscc_fast.nn.mixed_op import MixedOp
    op = MixedOp(4, 1).double()
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    w = torch.softmax(torch.randn(3, 8, dtype=torch.float64), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # DARTSCC_CUDA_KERNELS=0 is the user's choice: no warning
        y = op(x, w)
        dartscc_fast.mixed_sum([x, x], w[:, :2])
        ref = reference.MixedOp(4, 1).double()
        ref.load_state_dict(op.state_dict())
        torch.testing.assert_close(y, ref(x, w))
        hard, soft = dartscc_fast.gumbel_softmax(torch.randn(3, 8, dtype=torch.float64), 0.5, True, seed=5,
                                                 return_soft=True)
        assert set(hard.unique().tolist()) == {0.0, 1.0}  # exact one-hot, as MixedOp's hard path needs
        y_hard = op(x, hard, hard=True)
        torch.testing.assert_close(y_hard, ref(x, hard, hard=True))
        latency_reg(hard, torch.rand(3, 8, dtype=torch.float64), torch.rand(3, dtype=torch.float64), [0, 1, 2] * 2
                    + [-1, 0])
    assert all(spies[name] for name in cuda_gate.GATED_OPS), spies
    assert cuda_gate.check("cpu").kernels == frozenset()


def test_torch_path_gumbel_draws_the_kernels_sample(gate):
    logits = torch.randn(4, 14, 8)
    y_kernel, soft_kernel = dartscc_fast.gumbel_softmax(logits, 0.7, True, seed=2 ** 64 - 9, return_soft=True)
    with cuda_gate.forced(False):
        y_torch, soft_torch = dartscc_fast.gumbel_softmax(logits, 0.7, True, seed=2 ** 64 - 9, return_soft=True)
    assert torch.equal(y_kernel, y_torch)
    torch.testing.assert_close(soft_kernel, soft_torch)


def test_passing_kernels_run_without_a_warning(gate, spies):
    outs, w = mixed_sum_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = dartscc_fast.mixed_sum(outs, w)
    assert spies["mixed_sum"] == 0 and type(y.grad_fn).__name__ == "_EagerAutogradBackward"
    r = cuda_gate.check("cpu")
    assert r.kernels == ALL and r.failed == {}
    data = json.load(open(r.cache_file))
    assert data["key"] == cuda_gate.cache_key("cpu") and all(v["passed"] for v in data["ops"].values())
    assert os.path.dirname(r.cache_file) == os.path.join(str(gate), "dartscc_fast")


def test_cpu_tensors_are_not_gated_by_default(monkeypatch, spies, runs):
    monkeypatch.setattr(cuda_gate, "GATED_DEVICE_TYPES", ("cuda",))
    monkeypatch.setenv(selftest.BREAK_ENV, "mixed_sum")
    cuda_gate.reset()
    outs, w = mixed_sum_inputs()
    dartscc_fast.mixed_sum(outs, w)
    assert runs == [] and spies["mixed_sum"] == 0


def test_cache_is_keyed_by_device_name_driver_and_build(gate, runs, monkeypatch):
    ident = {"v": ("GPU A", "9.0", "550.54")}
    monkeypatch.setattr(cuda_gate, "_device_identity", lambda d: ident["v"])

    def decide():
        cuda_gate.reset()
        return cuda_gate.check("cpu")

    first = decide()
    assert len(runs) == 1 and not first.from_cache and os.path.exists(first.cache_file)
    key = first.key
    assert (key["device_name"], key["capability"], key["driver"]) == ("GPU A", "9.0", "550.54")
    info = _extension.BUILD_INFO
    assert (key["dartscc_fast"], key["torch"], key["cuda"]) == (info["version"], info["torch"], str(info["cuda"]))
    again = decide()
    assert len(runs) == 1 and again.from_cache and again.kernels == ALL
    files = {first.cache_file}
    changes = [lambda: ident.update(v=("GPU A", "9.0", "560.1")),                   # the driver
               lambda: ident.update(v=("GPU B", "9.0", "550.54")),                  # the device
               lambda: monkeypatch.setitem(_extension.BUILD_INFO, "torch", "9.9"),  # the build: torch
               lambda: monkeypatch.setitem(_extension.BUILD_INFO, "cuda", "99.0"),  # its CUDA
               lambda: monkeypatch.setitem(_extension.BUILD_INFO, "version", "9.9.9"),
               lambda: monkeypatch.setattr(cuda_gate, "_library_id", lambda: "rebuilt"),
               lambda: monkeypatch.setattr(selftest, "VERSION", selftest.VERSION + 1)]
    for i, change in enumerate(changes):
        change()
        r = decide()
        assert len(runs) == i + 2 and not r.from_cache, i
        files.add(r.cache_file)
    assert len(files) == len(changes) + 1
    monkeypatch.undo()  # back to the first key (and the fixture's settings below): its file answers
    monkeypatch.setenv("XDG_CACHE_HOME", str(gate))
    monkeypatch.delenv(cuda_gate.ENV, raising=False)
    monkeypatch.setattr(cuda_gate, "GATED_DEVICE_TYPES", ("cpu", "cuda"))
    monkeypatch.setattr(cuda_gate, "_device_identity", lambda d: ("GPU A", "9.0", "550.54"))
    monkeypatch.setattr(cuda_gate, "_run_selftest", lambda d: pytest.fail("the cached result was not used"))
    assert decide().from_cache


@pytest.mark.parametrize("content", ["{not json", "[]", '{"format": 1}', "", "\x00\xff",
                                     "other key", "non-bool passed", "an op missing"])
def test_a_corrupt_cache_file_is_ignored_and_rewritten(gate, runs, content):
    key = cuda_gate.cache_key("cpu")
    path = cuda_gate.cache_path(key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    good = {"format": cuda_gate.CACHE_FORMAT, "key": key,
            "ops": {op: {"passed": True, "detail": "passed"} for op in cuda_gate.GATED_OPS}}
    if content == "other key":
        content = json.dumps(dict(good, key=dict(key, driver="another")))
    elif content == "non-bool passed":
        content = json.dumps(dict(good, ops=dict(good["ops"], mixed_sum={"passed": "yes", "detail": "x"})))
    elif content == "an op missing":
        content = json.dumps(dict(good, ops={"mixed_sum": {"passed": True, "detail": "passed"}}))
    with open(path, "w", errors="surrogateescape") as f:
        f.write(content)
    r = cuda_gate.check("cpu")
    assert runs == ["cpu"] and not r.from_cache and r.kernels == ALL
    data = json.load(open(path))
    assert data["key"] == key and data["format"] == cuda_gate.CACHE_FORMAT
    assert all(data["ops"][op]["passed"] is True for op in cuda_gate.GATED_OPS)


def test_a_cached_failure_is_used_and_warned_about(gate, spies, monkeypatch):
    key = cuda_gate.cache_key("cpu")
    path = cuda_gate.cache_path(key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ops_ = {op: {"passed": op != "latency_reg", "detail": "passed" if op != "latency_reg" else "3 of 9 cases failed"}
            for op in cuda_gate.GATED_OPS}
    json.dump({"format": cuda_gate.CACHE_FORMAT, "key": key, "ops": ops_}, open(path, "w"))
    monkeypatch.setattr(cuda_gate, "_run_selftest", lambda d: pytest.fail("the cache was not used"))
    with pytest.warns(cuda_gate.CudaKernelWarning, match="latency_reg: 3 of 9 cases failed"):
        latency_reg(torch.rand(5, 3), torch.rand(5, 3), torch.rand(3), [0, 1, -1])
    assert spies["latency_reg"] == 1 and cuda_gate.check("cpu").from_cache


@pytest.mark.parametrize("mode", ["1", "0"])
def test_the_environment_overrides_the_gate(gate, spies, monkeypatch, mode):
    monkeypatch.setenv(cuda_gate.ENV, mode)
    monkeypatch.setenv(selftest.BREAK_ENV, "mixed_sum")
    monkeypatch.setattr(cuda_gate, "_run_selftest", lambda d: pytest.fail("no selftest under an override"))
    outs, w = mixed_sum_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dartscc_fast.mixed_sum(outs, w)
    r = cuda_gate.check("cpu")
    assert r.mode == mode and r.kernels == (ALL if mode == "1" else frozenset())
    assert spies["mixed_sum"] == (0 if mode == "1" else 1)


def test_a_bad_environment_value_is_an_error_naming_it(gate, monkeypatch):
    monkeypatch.setenv(cuda_gate.ENV, "yes")
    with pytest.raises(ValueError, match="DARTSCC_CUDA_KERNELS must be 0, 1 or auto, got 'yes'"):
        dartscc_fast.mixed_sum(*mixed_sum_inputs())
    monkeypatch.setenv(cuda_gate.ENV, "AUTO")
    assert cuda_gate.kernels_mode() == "auto"


def test_the_selftest_runs_in_a_child_process_that_may_crash(gate, monkeypatch):
    """A kernel that takes its process down: the caller lives on, the op (and those after it) go to the torch path."""
    monkeypatch.setattr(cuda_gate, "SUBPROCESS", True)
    monkeypatch.setenv(selftest.BREAK_ENV, "hard_mixed_sum:crash")
    with pytest.warns(cuda_gate.CudaKernelWarning, match="hard_mixed_sum"):
        r = cuda_gate.check("cpu")
    assert r.kernels == {"mixed_sum", "gumbel_softmax"}
    assert "died in this op" in r.failed["hard_mixed_sum"]
    assert "died in hard_mixed_sum" in r.failed["mixed_op_free"] and "not run" in r.failed["latency_reg"]
    assert json.load(open(r.cache_file))["ops"]["hard_mixed_sum"]["passed"] is False


def test_a_timed_out_selftest_is_not_cached(gate, monkeypatch):
    monkeypatch.setattr(cuda_gate, "SUBPROCESS", True)
    monkeypatch.setattr(cuda_gate, "SELFTEST_TIMEOUT_S", 0.01)
    with pytest.warns(cuda_gate.CudaKernelWarning, match="took over"):
        r = cuda_gate.check("cpu")
    assert r.kernels == frozenset() and not os.path.exists(r.cache_file)


@pytest.mark.skipif(_extension.BUILD_INFO["cuda"] is not None, reason="this build has CUDA kernels")
def test_a_build_without_cuda_kernels_sends_cuda_tensors_to_the_torch_path(gate):
    with pytest.warns(cuda_gate.CudaKernelWarning, match="no CUDA kernels.*FORCE_CUDA=1"):
        r = cuda_gate.check("cuda:0")
    assert r.kernels == frozenset() and set(r.failed) == ALL and r.key is None


@pytest.mark.parametrize("broken", [False, True])
def test_under_torch_compile_the_gate_decides_while_tracing(gate, spies, monkeypatch, broken):
    if broken:
        monkeypatch.setenv(selftest.BREAK_ENV, "gumbel_softmax")
    logits = torch.randn(14, 8, dtype=torch.float64, requires_grad=True)
    torch._dynamo.reset()
    f = torch.compile(lambda a: ops.gumbel_softmax(a, 0.5, True, seed=3) * 2, fullgraph=True, backend="aot_eager")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cuda_gate.CudaKernelWarning)
        y = f(logits)
    assert "cpu" in cuda_gate._DECISIONS and spies["gumbel_softmax"] == int(broken)  # traced once, into the graph
    l64 = logits.detach().requires_grad_()
    y64 = 2 * reference.gumbel_softmax(l64, 0.5, True, 3)
    torch.testing.assert_close(y, y64)
    torch.testing.assert_close(torch.autograd.grad(y.sum(), logits), torch.autograd.grad(y64.sum(), l64))
    torch._dynamo.reset()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_first_use_runs_the_selftest_in_a_child_and_uses_the_kernels(gate, monkeypatch, spies):
    monkeypatch.setattr(cuda_gate, "SUBPROCESS", True)
    monkeypatch.setattr(cuda_gate, "GATED_DEVICE_TYPES", ("cuda",))
    outs = [torch.randn(4, 8, 6, 6, device="cuda") for _ in range(3)]
    y = dartscc_fast.mixed_sum(outs, torch.ones(3, device="cuda"))
    r = cuda_gate.check("cuda")
    assert r.kernels == ALL, r.failed
    assert spies["mixed_sum"] == 0 and os.path.exists(r.cache_file)
    assert r.key["device_name"] == torch.cuda.get_device_name() and r.key["driver"] != "unknown"
    torch.testing.assert_close(y, sum(outs))
