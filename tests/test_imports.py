"""Imports inside ``seal`` go one way: no module imports, directly or through others, a module
that imports it back.

The graph is read from the source with :mod:`ast` (nothing is imported): an edge ``a -> b`` for
every ``import seal.b`` / ``from seal.b import x`` in ``a`` (``seal.b.x`` when ``x`` is a
submodule), plus ``a -> p`` for each package ``p`` above ``b`` (importing ``seal.bench.config``
runs ``seal/bench/__init__.py`` first). Module-level imports (class bodies included) run at
import time and must form no cycle at all. Function-local imports run later, so a cycle through
one does not break importing, but it still means two layers know each other; they are counted.

Run as a script (``python tests/test_imports.py``) to print the graph's cycles and the
function-local imports.

Before the one-way renovation (issue 11): one module-level cycle (``seal.config`` imported
``seal.bench.config`` at its bottom, which imported ``seal.config``; ``seal.bench`` imported
``seal.config``), one ten-module cycle through function-local imports (``seal.models`` ->
``seal.microworld.pretrain`` -> ``seal.inner_loop`` -> ``seal.config`` -> ... ), and 30
function-local import statements of seal modules. After: no cycle, 11 statements: the CLI's
commands importing what they run (fast ``--help`` and errors) and ``seal.scoring`` importing
``seal.judge`` (the judge's HTTP client) only when ``qa.grader`` is ``judge``. After the tasks
refactor (issue 21, from 20 statements): 15, and the generic modules import no task
(:func:`test_generic_modules_import_no_task`).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SEAL = Path(__file__).resolve().parent.parent / "seal"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    local: bool  # inside a function body (runs when the function is called)


def module_name(path: Path, root: Path = SEAL) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def seal_modules(root: Path = SEAL) -> dict[str, Path]:
    """Module name -> file, for every module of the package at ``root``."""
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """(node, local) for every import statement; imports under ``if TYPE_CHECKING:`` never run."""

    def walk(node: ast.AST, local: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, local
            elif isinstance(child, ast.If) and _is_type_checking(child):
                yield from walk(ast.Module(body=child.orelse, type_ignores=[]), local)
            else:
                inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                yield from walk(child, inner)

    yield from walk(tree, False)


def _with_packages(name: str, modules: dict[str, Path]) -> list[str]:
    """``name`` and every package above it that is a seal module (what importing ``name`` runs)."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in modules]


def import_edges(modules: dict[str, Path] | None = None) -> list[Edge]:
    modules = modules if modules is not None else seal_modules()
    edges = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node, local in _imports(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for target in targets:
                if target != "seal" and not target.startswith("seal."):
                    continue
                for hit in _with_packages(target, modules):
                    if hit != name and not name.startswith(hit + "."):
                        edges.append(Edge(name, hit, node.lineno, local))
    return edges


def cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def local_imports(edges: list[Edge]) -> list[Edge]:
    """Function-local imports of seal modules (one per imported module and statement)."""
    return sorted({e for e in edges if e.local and e.target != "seal"}, key=lambda e: (e.source, e.line, e.target))


def test_module_level_imports_have_no_cycle():
    edges = [e for e in import_edges() if not e.local]
    assert cycles(edges) == [], "module-level import cycle(s); move the shared code one layer down"


def test_configuration_is_the_bottom_layer():
    """Recipe sections import no other seal module but each other (and prompt-name checks, and
    seal.errors, the leaf that defines SealError)."""
    allowed = {"seal.sections", "seal.config", "seal.prompts", "seal.bench", "seal.bench.config", "seal.microworld",
               "seal.microworld.config", "seal.microworld.world", "seal.microworld.corpus", "seal.seeding", "seal.arc",
               "seal.arc.config", "seal.errors", "seal.tasks", "seal.tasks.sections", "seal.tasks.documents_config"}
    for e in import_edges():
        if e.source in ("seal.sections", "seal.config", "seal.bench.config", "seal.microworld.config", "seal.arc.config", "seal.tasks.sections", "seal.tasks.documents_config"):
            assert e.target in allowed, f"{e.source}:{e.line} imports {e.target} (above the configuration)"
    sections = {e.target for e in import_edges() if e.source == "seal.sections"}
    assert sections <= {"seal.errors"}, f"seal.sections must import no seal module but seal.errors, imports {sections}"
    errors = {e.target for e in import_edges() if e.source == "seal.errors"}
    assert errors == set(), f"seal.errors must import no seal module, imports {errors}"


#: Modules that run any task and so must know none (issue 21): they reach a task through
#: ``seal.tasks.registry.make_task`` (and the recipe's task sections, ``seal.tasks.sections``).
GENERIC = ("seal.stages", "seal.scoring", "seal.grpo", "seal.evaluate", "seal.bench", "seal.diagnostics", "seal.config",
           "seal.graders", "seal.train", "seal.prepare", "seal.hparams", "seal.restem", "seal.inner_loop", "seal.self_edits")


def is_task_module(name: str) -> bool:
    """A domain's own module: ``seal.arc*``, ``seal.microworld*`` or a task of ``seal.tasks``
    (its interface, registry and recipe sections are not tasks)."""
    if name in ("seal.tasks", "seal.tasks.base", "seal.tasks.registry", "seal.tasks.sections"):
        return False
    return name.split(".")[:2] in (["seal", "arc"], ["seal", "microworld"], ["seal", "tasks"])


def test_generic_modules_import_no_task():
    """The generic core (stages, scoring, GRPO, evaluate, bench, diagnostics, config, graders,
    train, prepare, hparams, ...) imports no task module, at module level or in a function:
    a task plugs in through the registry alone."""
    generic = [e for e in import_edges() if e.source == "seal.bench" or e.source.startswith(GENERIC)]
    bad = [f"{e.source}:{e.line} imports {e.target}" for e in generic if is_task_module(e.target)]
    assert not bad, "generic modules importing a task: " + "; ".join(bad)
    assert {e.target for e in generic if e.target.startswith("seal.tasks.")} <= {"seal.tasks.registry", "seal.tasks.sections"}


def test_all_imports_have_no_cycle():
    """Function-local imports included: none closes a cycle either, so no function-local
    import is left only to dodge one."""
    found = cycles(import_edges())
    assert not found, f"cycles through function-local imports: {found}"


def test_the_command_line_and_recipes_load_without_torch():
    """``seal --help``, a recipe's validation and its errors need neither torch nor transformers."""
    code = "import sys, seal.cli, seal.config; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=SEAL.parent, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_graph_reader_sees_cycles(tmp_path):
    """A self-check on a made-up package: a module-level cycle and a local one are both found."""
    pkg = tmp_path / "seal"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from seal.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from seal.sub import c\n")
    (pkg / "sub" / "__init__.py").write_text("from . import c\n")
    (pkg / "sub" / "c.py").write_text("import seal.a\n")
    edges = import_edges(seal_modules(pkg))
    assert cycles([e for e in edges if not e.local]) == []
    assert cycles(edges) == [["seal.a", "seal.b", "seal.sub", "seal.sub.c"]]
    assert [(e.source, e.target) for e in local_imports(edges)] == [("seal.b", "seal.sub"), ("seal.b", "seal.sub.c")]


if __name__ == "__main__":
    all_edges = import_edges()
    print("module-level cycles:", cycles([e for e in all_edges if not e.local]))
    print("cycles with function-local imports:", cycles(all_edges))
    local = local_imports(all_edges)
    statements = {(e.source, e.line) for e in local}
    print(f"function-local imports of seal modules: {len(statements)} statements")
    for e in local:
        print(f"  {e.source}:{e.line} -> {e.target}")
