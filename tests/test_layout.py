"""The layout, read from the source: no import cycles, a core that imports no framework, adapters that import the
core and never another framework's adapter, and ``import lrkit`` that loads numpy only.

Every ``import`` statement counts, also those inside functions (a lazy import is still a dependency)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import lrkit

SRC = Path(lrkit.__file__).parent
FRAMEWORKS = {"torch", "lightning", "pytorch_lightning", "transformers", "accelerate", "keras", "tensorflow", "jax",
              "optax", "flax", "matplotlib", "optuna"}
CORE = ("lrkit.errors", "lrkit._files", "lrkit.curve", "lrkit.schedules", "lrkit.finder", "lrkit.doctor")
# the framework each adapter module serves
ADAPTER_FRAMEWORK = {"torch": "torch", "torch_scheduler": "torch", "torch_monitor": "torch", "distributed": "torch",
                     "lightning": "lightning", "lightning_monitor": "lightning", "transformers": "transformers",
                     "transformers_monitor": "transformers", "keras": "keras", "keras_schedule": "keras",
                     "keras_monitor": "keras", "jax": "jax", "jax_monitor": "jax", "optax_schedule": "jax"}
# Lightning and transformers train torch models, and Keras may run on torch: their adapters build on the torch layer
# (its stepper, snapshot, update ratio and scheduler). Nothing else crosses between frameworks.
BUILDS_ON = {"lightning": {"torch"}, "transformers": {"torch"}, "keras": {"torch"}, "torch": set(), "jax": set()}
LIBRARIES = {"jax": {"optax"}, "transformers": {"accelerate"}}  # parts of the framework's own stack


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    """Every lrkit module -> the absolute names it imports (``from a.b import c`` gives a.b and a.b.c)."""
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
        graph[name] = found
    return graph


GRAPH = _imports()


def _lrkit_deps(name: str) -> set[str]:
    """The lrkit modules ``name`` imports (names that are attributes, not modules, are dropped)."""
    return {d for d in GRAPH[name] if d in GRAPH and d != name}


def _part(name: str) -> str:
    """The unit cycles are judged between: a subpackage (lrkit.finder, lrkit.schedules, lrkit.doctor, lrkit.search,
    lrkit.cli) or
    a module (lrkit.plot, lrkit.integrations.torch, ...)."""
    parts = name.split(".")
    if len(parts) > 2 and parts[1] in ("finder", "schedules", "doctor", "search", "cli"):
        return ".".join(parts[:2])
    return name


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(edges):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_the_graph_is_read_from_every_module():
    assert {"lrkit.finder._engine", "lrkit.schedules._base", "lrkit.integrations.torch", "lrkit.plot"} <= set(GRAPH)
    assert "lrkit.finder._rules" in _lrkit_deps("lrkit.finder._engine")
    assert "torch" in GRAPH["lrkit.integrations.torch"]  # third-party names are kept too


def test_no_import_cycle_between_the_parts():
    edges: dict[str, set[str]] = {}
    for name in GRAPH:
        if name == "lrkit":  # the public face imports the parts; no part imports it back (checked below)
            continue
        edges.setdefault(_part(name), set()).update(_part(d) for d in _lrkit_deps(name) if _part(d) != _part(name))
    assert _cycle(edges) is None, _cycle(edges)
    importers_of_root = [n for n in GRAPH if "lrkit" in GRAPH[n] and n not in ("lrkit", "lrkit.cli")]
    assert importers_of_root == [], importers_of_root


def test_no_cycle_among_the_imports_that_run_at_import_time():
    edges: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        top = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:  # module level only
            nodes = [node] + (node.body if isinstance(node, ast.Try) else [])
            for n in nodes:
                if isinstance(n, ast.ImportFrom) and not n.level:
                    top.update({n.module, *(f"{n.module}.{a.name}" for a in n.names)})
                elif isinstance(n, ast.Import):
                    top.update(a.name for a in n.names)
        # a package's submodules are loaded before it by their own imports, not a cycle through the package
        edges[name] = {d for d in top if d in GRAPH and d != name and not name.startswith(d + ".")}
        assert package
    assert _cycle(edges) is None, _cycle(edges)


def test_the_core_imports_no_framework_no_adapter_and_no_plotting():
    for name, deps in GRAPH.items():
        if not name.startswith(CORE):
            continue
        bad = {d for d in deps if d.split(".")[0] in FRAMEWORKS}
        bad |= {d for d in deps if d.startswith(("lrkit.integrations", "lrkit.cli", "lrkit.search"))}
        bad |= {d for d in deps if d.split(".")[0] == "lrkit" and d.split(".")[1:2] in (["torch"], ["keras"], ["jax"],
                                                                                        ["lightning"], ["transformers"])}
        # a core object's .plot() may reach up to the view lazily; plot.py imports none of them back
        bad -= {"lrkit.plot", *(d for d in deps if d.startswith("lrkit.plot."))}
        assert not bad, (name, sorted(bad))
    assert not {d for d in _lrkit_deps("lrkit.plot")} - {"lrkit._files", "lrkit.schedules._base", "lrkit.curve"}


def test_adapters_import_the_core_and_never_another_framework():
    for short, framework in ADAPTER_FRAMEWORK.items():
        name = f"lrkit.integrations.{short}"
        assert name in GRAPH, name
        for dep in _lrkit_deps(name):
            if dep.startswith("lrkit.integrations."):
                other = ADAPTER_FRAMEWORK[dep.rsplit(".", 1)[1]]
                assert other == framework or other in BUILDS_ON[framework], (name, dep)
            else:
                assert dep.startswith(CORE) or dep in ("lrkit._util",), (name, dep)
        foreign = {d.split(".")[0] for d in GRAPH[name]} & FRAMEWORKS
        allowed = {framework, *BUILDS_ON[framework], *LIBRARIES.get(framework, ())}
        assert foreign <= allowed, (name, foreign - allowed)
    assert set(ADAPTER_FRAMEWORK) == {_module_name(p).rsplit(".", 1)[1] for p in (SRC / "integrations").glob("*.py")
                                      if p.name != "__init__.py"}


def test_each_framework_module_offers_the_same_five_things():
    for facade, stepper in (("torch", "TorchStepper"), ("lightning", "LightningStepper"),
                            ("transformers", "TransformersStepper"), ("keras", "KerasStepper"), ("jax", "JaxStepper")):
        source = (SRC / f"{facade}.py").read_text(encoding="utf-8")
        tree = ast.parse(source)
        exported = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                        and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets))
        assert {stepper, "find_lr", "LRFinder", "scheduler", "LrMonitor"} <= set(exported), facade


def test_importing_lrkit_and_its_core_loads_no_framework():
    code = ("import sys, lrkit, lrkit.finder, lrkit.schedules, lrkit.doctor, lrkit.plot, lrkit.cli; "
            f"bad = sorted(set({sorted(FRAMEWORKS)!r}) & {{m.split('.')[0] for m in sys.modules}}); "
            "print(bad); sys.exit(bool(bad))")
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
