"""The layering rules of docs/architecture.md, checked on the import statements of the source
(every import, also those inside functions, followed through seaflow's own modules): every
module has a layer, imports point down or stay in the layer, the import graph has no circle,
nothing below the commands imports the CLI or the Python API, and the specific rules below."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent / "seaflow"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in ROOT.rglob("*.py")}


def imports(module: str) -> set[str]:
    """Every module ``module`` imports directly: seaflow modules by full name, others by top-level name."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:  # ``from seaflow import rng`` imports the module seaflow.rng
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return {name if name in MODULES else name.split(".")[0] if not name.startswith("seaflow.") else name for name in found}


def reachable(start: str) -> set[str]:
    """Modules imported by ``start`` and, through seaflow's own modules, everything they import."""
    seen, todo = set(), [start]
    while todo:
        for name in imports(todo.pop()):
            if name not in seen:
                seen.add(name)
                if name in MODULES:
                    todo.append(name)
    return seen


def package(prefix: str) -> list[str]:
    return sorted(name for name in MODULES if name == prefix or name.startswith(prefix + "."))


def offending(module: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(name for name in reachable(module) if any(name == f or name.startswith(f + ".") for f in forbidden))


@pytest.mark.parametrize("module", package("seaflow.samplers"))
def test_samplers_know_no_models_relaxations_or_lightning(module):
    bad = offending(module, ("seaflow.models", "seaflow.relaxations", "seaflow.energies", "seaflow.layout",
                             "seaflow.methods", "transformers", "lightning"))
    assert not bad, f"{module} imports {bad}"


@pytest.mark.parametrize("module", package("seaflow.energies") + package("seaflow.relaxations"))
def test_energies_and_relaxations_import_no_lightning(module):
    bad = offending(module, ("lightning", "seaflow.methods", "seaflow.cli"))
    assert not bad, f"{module} imports {bad}"


@pytest.mark.parametrize("module", ["seaflow.refine", "seaflow.chains"])
def test_the_loops_import_no_cli_and_no_lightning(module):
    bad = offending(module, ("seaflow.cli", "lightning", "seaflow.methods", "seaflow.writer", "seaflow.data"))
    assert not bad, f"{module} imports {bad}"


# docs/architecture.md's layers, top first: a module imports modules of its own layer and below
LAYERS = {
    "commands": ("seaflow", "seaflow.cli", "seaflow.api", "seaflow.arguments", "seaflow.report", "seaflow.calibrate",
                 "seaflow.reward_head", "seaflow.components", "seaflow.testing", "seaflow.tune"),
    "Lightning": ("seaflow.methods", "seaflow.data", "seaflow.writer", "seaflow.metrics", "seaflow.console", "seaflow.resume"),
    "loops": ("seaflow.refine", "seaflow.chains"),
    "language": ("seaflow.energies", "seaflow.relaxations", "seaflow.layout", "seaflow.models", "seaflow.encoding",
                 "seaflow.generation", "seaflow.cost", "seaflow.logit_bias", "seaflow.judges", "seaflow.refusal",
                 "seaflow.prompt_sets", "seaflow.word_draws", "seaflow.files", "seaflow.faults"),
    "numbers": ("seaflow.samplers", "seaflow.schedules", "seaflow.rng", "seaflow.progress", "seaflow.tempered",
                "seaflow.checks"),
}


def layer(module: str) -> int:
    """The layer of ``module``, 0 at the top; the package ``seaflow`` itself is a command (``import seaflow``)."""
    for depth, prefixes in enumerate(LAYERS.values()):
        if any(module == p or (p != "seaflow" and module.startswith(p + ".")) for p in prefixes):
            return depth
    raise AssertionError(f"{module} has no layer: add it to LAYERS here and to docs/architecture.md's table")


def own_imports(module: str) -> set[str]:
    return {name for name in imports(module) if name in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    up = sorted(name for name in own_imports(module) if layer(name) < layer(module))
    assert not up, f"{module} ({list(LAYERS)[layer(module)]}) imports {up} from a layer above"


def circles() -> list[list[str]]:
    """The import graph's strongly connected components of more than one module (Tarjan)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in own_imports(node):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(MODULES):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_circle():
    assert not circles(), f"import circles: {circles()}"


@pytest.mark.parametrize("module", sorted(set(MODULES) - {"seaflow", "seaflow.cli", "seaflow.api"}))
def test_nothing_imports_the_cli_or_the_api(module):
    """The CLI and the Python API sit on top: only the package (``seaflow.load``) and each other reach them."""
    bad = offending(module, ("seaflow.cli", "seaflow.api"))
    assert not bad, f"{module} imports {bad}"


@pytest.mark.parametrize("module", package("seaflow.testing"))
def test_the_contract_kits_import_no_cli(module):
    """A user's sampler test imports the kit, not seaflow's LightningCLI (the listing it checks is seaflow.components)."""
    bad = offending(module, ("seaflow.cli", "seaflow.api"))
    assert not bad, f"{module} imports {bad}"


def test_the_check_sees_imports():
    """The rules above are not vacuous: known imports are found, also inside functions."""
    assert "seaflow.schedules" in reachable("seaflow.samplers.langevin")
    assert "lightning" in reachable("seaflow.methods.base")
    assert "seaflow.methods.base" in reachable("seaflow.cli")
    assert "seaflow.calibrate" in imports("seaflow.cli")  # imported inside main()
    assert "seaflow.calibrate.run" in reachable("seaflow.cli")
    assert "seaflow.cli" in reachable("seaflow.api")  # imported inside build()
    assert circles.__doc__ and layer("seaflow.methods.sea") < layer("seaflow.refine") < layer("seaflow.layout")
