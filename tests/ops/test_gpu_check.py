"""bench/gpu_check.sh on a machine without a GPU: its syntax, the environment check, the build command up to the
point where it needs nvcc and a GPU, and its Python half (bench/gpu_check.py) on the CPU."""
import os
import re
import subprocess
import sys

import pytest
import torch

import dartscc_fast

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "bench", "gpu_check.sh")
HELPER = os.path.join(REPO, "bench", "gpu_check.py")
no_cuda_torch = pytest.mark.skipif(torch.version.cuda is not None, reason="checks what a CPU-only torch reports")


def fake_nvidia_smi(tmp_path, caps="9.0\n9.0\n"):
    """An nvidia-smi that answers like one with two H200s."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\ncase \"$*\" in\n  *compute_cap*) printf '%s' '" + caps + "' ;;\n"
                   "  *) echo 'NVIDIA H200, 580.159.03, 143771 MiB' ;;\nesac\n")
    smi.chmod(0o755)
    return str(bin_dir)


def run_script(*args, env=None, tmp_path=None):
    e = dict(os.environ, PYTHON=sys.executable)
    e.pop("TORCH_CUDA_ARCH_LIST", None)
    e.update(env or {})
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, env=e, cwd=tmp_path or REPO,
                          timeout=120)


def plan_lines(out):
    return dict(re.findall(r"^\d+\. ([a-z_ ]+?) \(at most \d+ s\): (.*)$", out, re.M))


def test_bash_syntax():
    r = subprocess.run(["bash", "-n", SCRIPT], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@no_cuda_torch
def test_dry_run_reports_what_is_missing_and_the_commands(tmp_path):
    path = fake_nvidia_smi(tmp_path)
    r = run_script("--dry-run", env={"PATH": path + os.pathsep + os.environ["PATH"]})
    assert r.returncode == 3, r.stdout + r.stderr
    assert f"MISSING: a CUDA build of torch: {torch.__version__} has no CUDA" in r.stderr
    assert "architecture" not in r.stderr.split("MISSING", 1)[1]  # found by nvidia-smi
    assert "nvidia-smi: NVIDIA H200, 580.159.03" in r.stderr
    steps = plan_lines(r.stdout)
    assert list(steps) == ["build", "extension", "cuda tests", "selftest cuda", "selftest cuda torch path", "gate",
                           "mixed_sum bandwidth", "search step"]
    jobs = len(os.sched_getaffinity(0))
    build = steps["build"]
    assert f"FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST='9.0' MAX_JOBS={jobs}" in build  # one arch, once for two GPUs
    assert build.endswith(f"{sys.executable} setup.py build_ext --inplace")
    assert "-k cuda" in steps["cuda tests"] and "DARTSCC_CUDA_KERNELS=1" in steps["cuda tests"]
    assert "selftest --device cuda" in steps["selftest cuda"]
    assert steps["search step"].startswith("DARTSCC_CUDA_KERNELS=1 ")  # the kernels, whatever the gate would say
    assert not (tmp_path / "gpu_check.txt").exists()


@no_cuda_torch
def test_arch_list_set_by_the_user_wins_and_no_arch_is_missing(tmp_path):
    r = run_script("--dry-run", env={"TORCH_CUDA_ARCH_LIST": "8.0;9.0"})
    assert "TORCH_CUDA_ARCH_LIST='8.0;9.0'" in plan_lines(r.stdout)["build"]
    r = run_script("--dry-run", env={"PATH": "/usr/bin:/bin"})  # no nvidia-smi, and torch sees no GPU
    assert "MISSING: the GPU's architecture" in r.stderr


@no_cuda_torch
def test_the_build_command_stops_where_it_needs_cuda(tmp_path):
    """The dry run's build command, run here: setup.py refuses at once (FORCE_CUDA=1 on a CPU-only torch) and
    builds nothing."""
    r = run_script("--dry-run", env={"PATH": fake_nvidia_smi(tmp_path) + os.pathsep + os.environ["PATH"]})
    lib = dartscc_fast._extension._C.__file__
    before = os.stat(lib).st_mtime_ns
    b = subprocess.run(["bash", "-c", plan_lines(r.stdout)["build"]], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert b.returncode != 0
    assert f"FORCE_CUDA=1 but this torch ({torch.__version__}) was built without CUDA" in b.stderr + b.stdout
    assert os.stat(lib).st_mtime_ns == before


@no_cuda_torch
def test_a_run_without_a_gpu_writes_why_and_exits_3(tmp_path):
    results = tmp_path / "out" / "results.txt"
    r = run_script(str(results))
    assert r.returncode == 3
    text = results.read_text()
    assert text.startswith("# dartscc_fast gpu_check") and "MISSING: a CUDA build of torch" in text
    assert text.rstrip().endswith("RESULT: not run (environment)")
    r = run_script(env={"OUT": str(tmp_path)})
    assert r.returncode == 3 and (tmp_path / "gpu_check.txt").exists()


@no_cuda_torch
def test_a_run_that_looks_like_a_gpu_machine_builds_until_cuda_is_needed(tmp_path):
    """A python that reports a CUDA torch and an H200, and an nvcc of its CUDA: the checks pass, the real build
    command runs and stops at FORCE_CUDA=1 on this CPU-only torch, the steps after it are skipped, and the results
    file says so."""
    shim = tmp_path / "python"
    shim.write_text(f"""#!/bin/sh
if [ "$2" = probe ]; then
  printf 'python=%s\\npython_version=3.12.3\\ntorch=2.11.0+cu130\\ntorch_cuda=13.0\\ncuda_available=1\\n' "$0"
  printf 'gpus=1\\ndevice=NVIDIA H200\\narch=9.0\\ntorch_cuda_home=\\n'
  exit 0
fi
exec {sys.executable} "$@"
""")
    nvcc = tmp_path / "cuda" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 13.0, V13.0.48'\n")
    for f in (shim, nvcc):
        f.chmod(0o755)
    lib = dartscc_fast._extension._C.__file__
    before = os.stat(lib).st_mtime_ns
    results = tmp_path / "results.txt"
    r = run_script(str(results), env={"PYTHON": str(shim), "CUDA_HOME": str(tmp_path / "cuda"),
                                      "PATH": "/usr/bin:/bin"})
    text = results.read_text()
    assert r.returncode == 1, r.stderr + text
    assert "MISSING" not in text and "build arch: 9.0 (from torch.cuda.get_device_capability)" in text
    assert f"FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST='9.0' MAX_JOBS={len(os.sched_getaffinity(0))}" in text
    assert f"FORCE_CUDA=1 but this torch ({torch.__version__}) was built without CUDA" in text
    summary = text.split("== summary", 1)[1]
    assert re.search(r"^build\s+FAIL \(rc 1\)", summary, re.M)
    assert re.search(r"^search step\s+skipped .*\(no CUDA build\)", summary, re.M)
    assert summary.rstrip().endswith("RESULT: FAILED") and os.stat(lib).st_mtime_ns == before


def test_bad_arguments():
    assert run_script("--fast").returncode == 2
    assert run_script("a.txt", "b.txt").returncode == 2
    r = run_script("--help")
    assert r.returncode == 0 and "--dry-run" in r.stdout


def helper(*args):
    return subprocess.run([sys.executable, HELPER, *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_probe_prints_what_the_script_reads():
    r = helper("probe")
    assert r.returncode == 0, r.stderr
    values = dict(line.split("=", 1) for line in r.stdout.splitlines())
    assert values["torch"] == torch.__version__ and values["torch_cuda"] == (torch.version.cuda or "")
    assert values["cuda_available"] == str(int(torch.cuda.is_available()))


def test_gate_and_bandwidth_on_cpu():
    r = helper("gate", "--device", "cpu")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "gate: pass" in r.stdout and "mixed_sum ran its kernel" in r.stdout and "from cache: True" in r.stdout
    r = helper("bandwidth", "--device", "cpu", "--quick")
    assert r.returncode in (0, 1), r.stdout + r.stderr
    assert re.search(r"^copy: .* GB/s", r.stdout, re.M) and "mixed_sum backward" in r.stdout
    assert "mixed_sum goal (>= 75 % of copy" in r.stdout


@pytest.mark.slow
def test_search_step_on_cpu():
    r = helper("search", "--device", "cpu", "--quick")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("): pass") == 8 and "search: pass" in r.stdout
    assert "soft on cpu" in r.stdout and "eager-soft" in r.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_helper_refuses_cuda_without_a_gpu():
    r = helper("bandwidth")
    assert r.returncode == 2 and "sees no CUDA device" in r.stderr
