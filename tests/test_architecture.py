"""The house rules of ARCHITECTURE.md, checked on the source (AST) and on real imports."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("spaces", "evaluators", "search", "storage")

# package -> the project packages and third-party modules it must never import (anywhere in it)
FORBIDDEN: dict[str, set[str]] = {
    "spaces": {"evaluators", "search", "storage", "optuna", "ray", "sqlalchemy", "pandas"},
    "evaluators": {"search", "storage", "optuna", "ray", "sqlalchemy"},
    "storage": {"evaluators", "search", "torch", "torchvision", "torch_pruning", "optuna.samplers", "ray"},
    "search": set(),
}

# the layers inside spaces/, lowest first: a module imports (at run time) only from layers below its own
# (a sub-package's modules are named "package._module"; every __init__ may import its own package)
SPACES_LAYERS = [
    {"_vocab", "_errors", "_lazy", "runtime._interrupt", "runtime._timing", "_registry"},
    {"graph.__init__", "policy.__init__", "cost.__init__", "runtime.__init__", "runtime._base"},
    {"graph._attention", "runtime._ort", "runtime._eager", "runtime._registry"},
    {"cost._cost", "graph._tp_compat", "_quant", "factorization._base", "decoder._layout"},
    {"factorization.__init__", "factorization._registry", "dimensions._base"},
    {"dimensions.__init__", "dimensions._registry"},
    {"_plan", "dimensions._roles"},
    {"policy._budget", "_lowrank"},
    {"decoder._choice"},
    {"decoder._footprint"},
    {"decoder._plans"},
    {"decoder._speed"},
    {"decoder.__init__"},
    {"graph._trace"},
    {"cost._costmodel", "policy._importance", "cost._latency"},
    {"graph._surgery", "policy._sensitivity"},
    {"graph._verify", "policy._policy", "policy._allocate"},
    {"dimensions._prune", "dimensions._rank", "dimensions._bits"},  # and every other dimensions._<key>: see below
    {"factorization._versatile_conv"},
    {"factorization._svd", "factorization._tucker2", "factorization._tt", "factorization._versatile"},
    {"factorization._whitened"},  # a method built on another sits above it
    {"_space"},
    {"_support"},
    {"__init__"},
]
SPACES_SUBPACKAGES = ("dimensions", "factorization", "graph", "policy", "cost", "runtime", "decoder")

# where a plan dimension or a factorization method may be named in code (its own modules, and the registries)
DIMENSION_MODULES = ("spaces/dimensions/", "spaces/factorization/")
DIMENSION_NAMES = {
    "prune",
    "rank",
    "method",
    "bits",
    "act_bits",
    "svd",
    "whitened",
    "tucker2",
    "tt",
    "versatile",
    "versatile_ch",
}


def _sources() -> list[Path]:
    out = []
    for pkg in (*PACKAGES, "tests", "bench", "scripts", "examples"):
        out += sorted((ROOT / pkg).rglob("*.py"))
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, *, runtime_only: bool) -> list[tuple[int, str]]:
    """(line, module) for every import in ``path``; relative imports resolved; optionally skip TYPE_CHECKING."""
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and _is_type_checking(node):
                skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = path.parent.relative_to(ROOT).parts
                base = ".".join(parent[: len(parent) - node.level + 1] + ((base,) if base else ()))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names] + [(node.lineno, base)]
    return out


def _matches(module: str, rule: str) -> bool:
    return module == rule or module.startswith(rule + ".")


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_downward(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in _imports(path, runtime_only=False):
            if any(_matches(module, rule) for rule in FORBIDDEN[package]):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def _spaces_module(path: Path) -> str:
    rel = path.relative_to(ROOT / "spaces")
    return rel.stem if len(rel.parts) == 1 else f"{rel.parts[0]}.{rel.stem}"


def _imported_spaces_module(module: str, layer_of: dict[str, int]) -> str | None:
    """The SPACES_LAYERS name of an imported ``spaces.x[.y]`` (None: not a module of spaces)."""
    parts = module.split(".")
    if parts[0] != "spaces" or len(parts) < 2:
        return None
    if parts[1] in SPACES_SUBPACKAGES:
        sub = f"{parts[1]}.{parts[2]}" if len(parts) > 2 else ""
        return sub if sub in layer_of else f"{parts[1]}.__init__"
    return parts[1] if parts[1] in layer_of else None


def _layers() -> dict[str, int]:
    """Each spaces module's layer; a dimension's or a factorization method's module (one module plus one
    registration) joins its peers'."""
    layer_of = {name: i for i, names in enumerate(SPACES_LAYERS) for name in names}
    for path in sorted((ROOT / "spaces" / "dimensions").glob("_*.py")):
        layer_of.setdefault(_spaces_module(path), layer_of["dimensions._prune"])
    for path in sorted((ROOT / "spaces" / "factorization").glob("_*.py")):  # a method: one module, one registration
        layer_of.setdefault(_spaces_module(path), layer_of["factorization._svd"])
    return layer_of


def test_spaces_modules_import_only_lower_layers() -> None:
    layer_of = _layers()
    files = sorted((ROOT / "spaces").rglob("*.py"))
    assert {_spaces_module(p) for p in files} == set(layer_of), "a new spaces module needs its place in SPACES_LAYERS"
    bad = []
    for path in files:
        me = _spaces_module(path)
        package = me.rpartition(".")[0]
        for line, module in _imports(path, runtime_only=True):
            other = _imported_spaces_module(module, layer_of)
            if other is None or (me.endswith("__init__") and (not package or other.startswith(package + "."))):
                continue
            if layer_of[other] >= layer_of[me]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module} (same or higher layer)")
    assert not bad, "\n".join(bad)


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _dimension_dispatch(path: Path) -> list[str]:
    """``kind == "rank"``, ``method == "svd"``, ``"prune:..."`` keys: a dimension or method named outside its module."""
    tree = ast.parse(path.read_text(), str(path))
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            named = [c.value for c in (node.left, *node.comparators) if isinstance(c, ast.Constant)]
            found += [f"{node.lineno}: compares with {v!r}" for v in named if v in DIMENSION_NAMES]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if any(node.value.startswith(f"{k}:") for k in DIMENSION_NAMES):
                found.append(f"{node.lineno}: builds the key {node.value!r}")
    return found


def test_no_dimension_or_method_is_dispatched_on_outside_its_module() -> None:
    """Plan dimensions and factorization methods are iterated through their registries, never switched on."""
    bad = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            if not rel.startswith(DIMENSION_MODULES):
                bad += [f"{rel}:{what}" for what in _dimension_dispatch(path)]
    assert not bad, "\n".join(bad)


class _PrivateUse(ast.NodeVisitor):
    """``x._name`` where ``x`` names a space (``space``, ``self.space``, ``big``...), and ``spaces._module``."""

    def __init__(self, space_names: set[str]) -> None:
        self.space_names = space_names
        self.found: list[tuple[int, str]] = []

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if name in self.space_names:
                self.found.append((node.lineno, f"{name}.{node.attr}"))
        self.generic_visit(node)


def _space_variables(tree: ast.AST) -> set[str]:
    """Names bound to ``ModelSpace(...)`` / ``ModelSpace`` annotations, plus the conventional ``space``."""
    names = {"space", "_space"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            if getattr(func, "id", getattr(func, "attr", "")) == "ModelSpace":
                for t in node.targets:
                    names.add(t.attr if isinstance(t, ast.Attribute) else getattr(t, "id", ""))
        elif isinstance(node, (ast.arg, ast.AnnAssign)):
            ann = node.annotation
            if ann is not None and "ModelSpace" in ast.unparse(ann):
                target = node.arg if isinstance(node, ast.arg) else ast.unparse(node.target).split(".")[-1]
                names.add(target)
    return names - {""}


def test_no_private_spaces_names_outside_spaces() -> None:
    """Other packages, the benchmarks and the other tests use only the public interface of ``spaces``."""
    bad = []
    for path in _sources():
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "spaces" or rel.parts[:2] == ("tests", "spaces") or rel == Path(__file__).relative_to(ROOT):
            continue
        tree = ast.parse(path.read_text(), str(path))
        for line, module in _imports(path, runtime_only=False):
            parts = module.split(".")
            if parts[0] == "spaces" and any(p.startswith("_") for p in parts[1:]):
                bad.append(f"{rel}:{line} imports {module}")
        visitor = _PrivateUse(_space_variables(tree))
        visitor.visit(tree)
        bad += [f"{rel}:{line} uses {what}" for line, what in visitor.found]
    assert not bad, "\n".join(bad)


FUNCTION_LINES = 60  # a function that does one thing fits on a screen
# the conventional names every package or extension point may repeat (Optuna's samplers/_base.py, storages/_base.py)
SHARED_NAMES = {"__init__.py", "__main__.py", "_base.py", "_registry.py"}


def _package_files() -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]


def test_functions_fit_on_a_screen() -> None:
    long = []
    for path in _package_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "\n".join(long)


def test_module_names_do_not_collide() -> None:
    """A module's name says what it holds, once: ``_errors.py`` or ``_report.py`` twice would not."""
    where: dict[str, list[str]] = {}
    for path in _package_files():
        if path.name not in SHARED_NAMES:
            where.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    assert not {name: paths for name, paths in where.items() if len(paths) > 1}


def _late_imports(body: list[ast.stmt]) -> list[ast.stmt]:
    """Imports in ``body`` after other code (a docstring and ``if TYPE_CHECKING`` blocks do not count as code)."""
    late, code_seen = [], False
    for node in body:
        is_import = isinstance(node, ast.Import | ast.ImportFrom)
        if is_import and code_seen:
            late.append(node)
        docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        type_checking = isinstance(node, ast.If) and _is_type_checking(node)
        code_seen = code_seen or not (is_import or docstring or type_checking)
    return late


def test_no_import_after_code() -> None:
    """Imports come first, in a module and in a function (a heavy one imported inside the function that needs it)."""
    late = []
    for path in _package_files():
        tree = ast.parse(path.read_text(), str(path))
        bodies = [tree.body] + [n.body for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        late += [
            f"{path.relative_to(ROOT)}:{n.lineno} {ast.unparse(n)}" for body in bodies for n in _late_imports(body)
        ]
    assert not late, "\n".join(late)


def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize(
    "statement",
    [
        "import storage",
        "import spaces; from spaces import Plan, Budget, Cost, PruneTuneError, Status, Objective, first_line",
        "from spaces import Plan; Plan.from_json(Plan({'a': 0.5}, rank={'c': 2}, method={'c': 'tt'}).to_json())",
        "import search",
        "import sys; sys.argv = ['prunetune', '--help']\nfrom search.cli import main\n"
        "try: main()\nexcept SystemExit: pass",
    ],
)
def test_light_imports_do_not_load_torch(statement: str) -> None:
    proc = _python(f"{statement}\nimport sys; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_help_answers_within_a_second() -> None:
    cli = Path(sys.executable).with_name("prunetune")
    cmd = [str(cli)] if cli.exists() else [sys.executable, "-m", "search.cli"]
    best = float("inf")
    for _ in range(3):  # best of three: a cold disk cache is not the CLI's fault
        t0 = time.perf_counter()
        proc = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT)
        best = min(best, time.perf_counter() - t0)
        assert proc.returncode == 0 and "prunetune" in proc.stdout
    assert best < 1.0, f"prunetune --help took {best:.2f} s"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports at run time (module level or in a function; not TYPE_CHECKING).

    ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``; a submodule's
    implicit import of its parent packages is not an edge (Python runs a package's ``__init__`` first).
    """
    modules = {_module_name(p): p for p in _package_files()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for _, imported in _imports(path, runtime_only=True):
            target = imported if imported in modules else imported.rpartition(".")[0]
            if target in modules and target != name and not name.startswith(target + "."):
                edges.add(target)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_runtime_import_circles() -> None:
    """No two modules of the four packages import each other at run time, directly or round a loop."""
    graph = _import_graph()
    assert "search.preparation._prepare" in graph and graph["search.cli"] == {"search.cli._main"}
    assert not _cycles(graph), _cycles(graph)


def test_the_circle_finder_finds_circles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
