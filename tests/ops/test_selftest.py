"""dartscc-fast selftest: every compiled op against the float64 reference, and a wrong kernel makes it fail."""
import json

import pytest
import torch

import dartscc_fast
from dartscc_fast import cli, ops
from dartscc_fast.ops import cuda_gate, selftest


@pytest.fixture(autouse=True)
def _no_break(monkeypatch):
    monkeypatch.delenv(selftest.BREAK_ENV, raising=False)


def test_quick_selftest_passes_on_cpu_and_covers_the_grid():
    result = dartscc_fast.ops.selftest("cpu", quick=True, verbose=False)
    assert result.passed, result.table()
    assert list(result.ops) == list(selftest.OPS) and result.failed == []
    for op, report in result.ops.items():
        assert report.passed is True and len(report.cases) >= 4, op
    descs = " | ".join(c.desc for c in result.ops["mixed_sum"].cases)
    for part in ("float32", "float64", "float16", "bfloat16", "edge", "sample", "channels_last", "offset", "strided",
                 "k1", "k16"):
        assert part in descs, part
    free = " | ".join(c.desc for c in result.ops["mixed_op_free"].cases)
    for part in ("s1", "s2", "channels_last", "eval", "bfloat16"):
        assert part in free, part
    assert result.seconds < 30


def test_full_selftest_passes_on_cpu():
    result = selftest.run("cpu", verbose=False)
    assert result.passed, "\n".join(result.ops[op].detail for op in result.failed)
    quick = sum(len(r.cases) for r in selftest.run("cpu", quick=True, ops=["node_sum"], verbose=False).ops.values())
    assert sum(len(r.cases) for r in result.ops.values()) > 8 * quick


def test_torch_path_matches_the_reference_on_cpu():
    """What the CUDA gate falls back to (cuda_gate.TORCH_PATHS), checked like the kernels."""
    result = selftest.run("cpu", impl="torch", verbose=False)
    assert result.passed, "\n".join(result.ops[op].detail for op in result.failed)
    assert [op for op, r in result.ops.items() if r.passed] == list(cuda_gate.GATED_OPS)
    assert all(result.ops[op].skipped for op in cuda_gate.CPU_ONLY_OPS)


@pytest.mark.parametrize("op", selftest.OPS)
def test_a_wrong_forward_fails_its_op(monkeypatch, op):
    monkeypatch.setenv(selftest.BREAK_ENV, op)
    result = selftest.run("cpu", quick=True, ops=[op, "node_sum" if op != "node_sum" else "mixed_sum"],
                          verbose=False)
    assert not result.passed and result.failed == [op]
    report = result.ops[op]
    assert all(not c.passed and c.ratio > 1 for c in report.cases if c.fwd_err or c.ratio)
    assert "cases failed" in report.detail and "FAIL" in report.table()


def test_a_wrong_backward_fails_in_the_backward_column(monkeypatch):
    monkeypatch.setenv(selftest.BREAK_ENV, "mixed_sum:backward")
    report = selftest.run("cpu", quick=True, ops=["mixed_sum"], verbose=False).ops["mixed_sum"]
    assert report.passed is False
    for c in report.cases:
        assert c.bwd_err > 0.1 and c.bwd_err > 10 * c.fwd_err and not c.passed


def test_a_raising_kernel_fails_its_cases_and_the_rest_still_run(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(ops, "mixed_sum", boom)
    result = selftest.run("cpu", quick=True, ops=["mixed_sum", "node_sum"], verbose=False)
    assert result.failed == ["mixed_sum"] and result.ops["node_sum"].passed
    assert all("illegal memory access" in c.error for c in result.ops["mixed_sum"].cases)


def test_a_wrong_dtype_fails(monkeypatch):
    real = ops.node_sum
    monkeypatch.setattr(ops, "node_sum", lambda xs: real(xs).double())
    report = selftest.run("cpu", quick=True, ops=["node_sum"], verbose=False).ops["node_sum"]
    assert report.passed is False
    assert any("output is torch.float64" in (c.error or "") for c in report.cases)


def test_command_line_prints_tables_and_exits_non_zero_on_failure(monkeypatch, capsys, tmp_path):
    assert cli.main(["selftest", "--quick", "--op", "node_sum", "--op", "latency_reg"]) == 0
    out = capsys.readouterr().out
    assert "node_sum: 4 cases, pass" in out and "latency_reg:" in out and "err/tol" in out
    assert "mixed_sum:" not in out and "all passed" in out
    monkeypatch.setenv(selftest.BREAK_ENV, "latency_reg")
    path = tmp_path / "r.json"
    assert cli.main(["selftest", "--quick", "--op", "latency_reg", "--json", str(path)]) == 1
    out = capsys.readouterr().out
    assert "latency_reg" in out and "FAIL" in out and "FAILED: latency_reg" in out
    data = json.loads(path.read_text())
    assert data["passed"] is False and data["running"] is None and data["ops"]["latency_reg"]["passed"] is False


def test_selftest_is_a_callable_module():
    import dartscc_fast.ops.selftest as module
    assert module is selftest and callable(dartscc_fast.ops.selftest) and hasattr(dartscc_fast.ops.selftest, "run")
    assert dartscc_fast.ops.selftest(ops=["node_sum"], quick=True, verbose=False).passed


def test_bad_arguments(monkeypatch):
    with pytest.raises(ValueError, match="cpu or cuda"):
        selftest.run("meta", verbose=False)
    with pytest.raises(ValueError, match="unknown ops"):
        selftest.run("cpu", ops=["conv"], verbose=False)
    with pytest.raises(ValueError, match="impl"):
        selftest.run("cpu", impl="cudnn", verbose=False)
    monkeypatch.setenv(selftest.BREAK_ENV, "mixed_sum:sideways")
    with pytest.raises(ValueError, match=selftest.BREAK_ENV):
        selftest.run("cpu", quick=True, ops=["mixed_sum"], verbose=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_an_error_naming_the_device(capsys):
    with pytest.raises(ValueError, match="sees no CUDA device"):
        selftest.run("cuda", quick=True, verbose=False)
    assert cli.main(["selftest", "--device", "cuda"]) == 2
    assert "sees no CUDA device" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_selftest_on_cuda_passes():
    result = selftest.run("cuda", quick=True, verbose=False)
    assert result.passed, "\n".join(result.ops[op].detail for op in result.failed)
    assert all(result.ops[op].skipped for op in cuda_gate.CPU_ONLY_OPS)
