"""The package's layering: the oracle imports nothing it checks, module imports form no cycle, functions import
no package module, and ``import dartscc_fast`` leaves the pruning variant unloaded."""
import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "dartscc_fast"

# Function-local imports of package modules that stay, each with why: (file, function, module it imports).
ALLOWED_LOCAL_IMPORTS = {
    # `import dartscc_fast` leaves the pruning experiment unloaded; its names load on first use
    ("__init__.py", "__getattr__", "dartscc_fast.prune"),
    # the gate (below ops) runs the selftest (above ops) on first use: a module-level import would be a cycle
    ("ops/cuda_gate.py", "_selftest", "dartscc_fast.ops.selftest"),
    # simulate_table moved up to measure (it builds a table); still importable from roofline
    ("latency/roofline.py", "__getattr__", "dartscc_fast.latency.measure"),
}

# Production modules that use the oracle itself: as the torch path of the ops the CPU kernels alone cover
# (relu_dw_pw_conv, batch_norm_train, node_sum) and of a CUDA kernel that failed its selftest (cuda_gate), as the
# baseline network of SearchSpace.supernet(fast=False) (space), and to check the kernels against (selftest).
ORACLE_USERS = {"dartscc_fast.ops.relu_dw_pw_conv", "dartscc_fast.ops.batch_norm_train", "dartscc_fast.ops.node_sum",
                "dartscc_fast.ops.cuda_gate", "dartscc_fast.space", "dartscc_fast.ops.selftest"}


def _modules() -> Dict[str, Optional[Path]]:
    """Every module of the package by dotted name: its source, or None for a compiled extension."""
    mods: Dict[str, Optional[Path]] = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    for p in PKG.glob("*.so"):
        mods["dartscc_fast." + p.name.split(".")[0]] = None
    return mods


MODULES = _modules()


def _resolve(name: str) -> str:
    """The package module an import of ``name`` loads (a name inside a module: that module)."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _targets(node, module: str) -> Iterator[str]:
    """The package modules an import statement in ``module`` names."""
    if isinstance(node, ast.Import):
        yield from (_resolve(a.name) for a in node.names if a.name.split(".")[0] == "dartscc_fast")
        return
    base = node.module or ""
    if node.level:  # relative: from the importing module's package
        package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
    if base.split(".")[0] != "dartscc_fast":
        return
    for a in node.names:
        yield _resolve(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)


def _is_type_checking(node) -> bool:
    t = node.test
    return isinstance(node, ast.If) and (getattr(t, "id", None) == "TYPE_CHECKING" or getattr(t, "attr", None)
                                         == "TYPE_CHECKING")


def _module_level_imports(body) -> Iterator[ast.stmt]:
    """Imports that run when the module loads: not in functions, nor under ``if TYPE_CHECKING``."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node):
            yield from _module_level_imports(node.orelse)
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.ClassDef, ast.For, ast.While)):
            for field in ("body", "orelse", "finalbody"):
                yield from _module_level_imports(getattr(node, field, []))
            for handler in getattr(node, "handlers", []):
                yield from _module_level_imports(handler.body)


def _function_imports(tree) -> Iterator[Tuple[str, ast.stmt]]:
    """(function name, import) of every import statement inside a function body."""
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    yield fn.name, node


def _tree(module: str) -> ast.Module:
    return ast.parse(MODULES[module].read_text(), str(MODULES[module]))


def import_graph() -> Dict[str, Set[str]]:
    """Each module's package imports at module level (a package's ``__init__`` loading first is not counted)."""
    return {m: ({t for node in _module_level_imports(_tree(m).body) for t in _targets(node, m)} - {m}
                if p is not None else set()) for m, p in MODULES.items()}


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle of the graph as a path (first node repeated at the end), or None."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(m: str) -> Optional[List[str]]:
        state[m] = 1
        path.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state:
                found = visit(t)
                if found:
                    return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def _run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)


# ---------------------------------------------------------------------------------------------- the oracle
def test_the_oracle_imports_no_module_of_the_package():
    tree = _tree("dartscc_fast.reference")
    imported = [t for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for t in _targets(node, "dartscc_fast.reference")]
    assert imported == []


def test_the_oracle_loads_and_runs_without_the_package():
    # loaded from its file alone: an import of any other package module would bring `dartscc_fast` in
    code = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("dartscc_fast.reference", {str(PKG / "reference.py")!r})
reference = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = reference
spec.loader.exec_module(reference)
import torch
net = reference.Network(4, 10, 3, primitives=reference.DARTS_PRIMITIVES, in_channels=1)
k, E = len(reference.DARTS_PRIMITIVES), net.num_edges
y = net(torch.randn(2, 1, 8, 8), torch.rand(E, k), torch.rand(E, k))
assert y.shape == (2, 10), y.shape
print(sorted(m for m in sys.modules if m.split(".")[0] == "dartscc_fast"))
"""
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[0] == "['dartscc_fast.reference']"


def test_production_uses_the_oracle_only_where_allowed():
    users = {m for m, p in MODULES.items() if p is not None and m != "dartscc_fast.reference"
             and any(t == "dartscc_fast.reference" for node in ast.walk(_tree(m))
                     if isinstance(node, (ast.Import, ast.ImportFrom)) for t in _targets(node, m))}
    assert users <= ORACLE_USERS, f"new production users of dartscc_fast.reference: {sorted(users - ORACLE_USERS)}"
    assert not any(m.startswith("dartscc_fast.nn") or m in ("dartscc_fast.nn.mixed_op", "dartscc_fast.nn.primitives")
                   for m in users)


def test_fast_and_reference_supernets_share_keys_and_only_the_reference_is_pure_pytorch():
    import dartscc_fast
    from dartscc_fast import nn as fast_nn
    from dartscc_fast.space import get_space
    space = get_space("fmnist-paper", C=4)
    ref, fast = space.supernet(fast=False), space.supernet(fast=True)
    assert list(ref.state_dict()) == list(fast.state_dict())
    fast.load_state_dict(ref.state_dict())
    ref_modules = {type(m).__module__ for m in ref.modules()}
    assert all(m.startswith("torch.") or m == "dartscc_fast.reference" for m in ref_modules), ref_modules
    assert "dartscc_fast.reference" not in {type(m).__module__ for m in fast.modules()}
    assert isinstance(fast, fast_nn.Network) and all(isinstance(m, dartscc_fast.MixedOp) for c in fast.cells
                                                     for m in c._ops)


# ---------------------------------------------------------------------------------------------- imports
def test_module_level_imports_form_no_cycle():
    graph = import_graph()
    assert graph["dartscc_fast.nn.mixed_op"] >= {"dartscc_fast.ops", "dartscc_fast.nn.supernet"}  # the walk sees them
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_function_imports_a_package_module():
    found = set()
    for m, p in MODULES.items():
        if p is None:
            continue
        for fn, node in _function_imports(_tree(m)):
            for t in _targets(node, m):
                found.add((p.relative_to(PKG).as_posix(), fn, t, node.lineno))
    unexpected = sorted(f"{path}:{line} in {fn}(): {t}" for path, fn, t, line in found
                        if (path, fn, t) not in ALLOWED_LOCAL_IMPORTS)
    assert not unexpected, "import these at module level (or explain them in ALLOWED_LOCAL_IMPORTS):\n" + \
        "\n".join(unexpected)


def test_import_dartscc_fast_leaves_prune_unloaded():
    r = _run("import sys, dartscc_fast\n"
             "print(sorted(m for m in sys.modules if m.startswith('dartscc_fast.prune')))\n"
             "print(dartscc_fast.run_prune.__module__, dartscc_fast.prune.find_edges is dartscc_fast.find_edges)\n"
             "from dartscc_fast import PrunableNet, theorem1_lambda\n"
             "print('theorem1_lambda' in dir(dartscc_fast))\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == ["[]", "dartscc_fast.prune.experiment True", "True"]


def test_unknown_package_attributes_still_raise():
    import dartscc_fast
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        dartscc_fast.not_a_name  # noqa: B018


def test_simulate_table_is_still_importable_from_roofline():
    from dartscc_fast.latency import measure, roofline, simulate_table
    assert roofline.simulate_table is measure.simulate_table is simulate_table
    with pytest.raises(AttributeError):
        roofline.not_a_name  # noqa: B018


# ------------------------------------------------------------------------------------------- size
#: The longest a function of the package may be, in lines (docstring included): a newcomer reads one whole.
MAX_FUNCTION_LINES = 60


def test_no_function_of_the_package_is_longer_than_the_limit():
    long = []
    for module, path in MODULES.items():
        if path is None:
            continue
        for node in ast.walk(_tree(module)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over the limit: " + "; ".join(long)


def test_the_pruning_variant_and_the_cli_sit_above_the_method():
    """No module of the method (ops, nn, search, latency, evaluation, data) imports the command line."""
    graph = import_graph()
    bad = sorted(m for m, deps in graph.items() if not m.startswith("dartscc_fast.cli")
                 and any(d.startswith("dartscc_fast.cli") for d in deps))
    assert not bad, f"modules below the command line that import it: {bad}"
