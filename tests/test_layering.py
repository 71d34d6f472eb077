"""The layering rules of docs/architecture.md, checked on the import statements of the source
(every import, also those inside functions, followed through seaflow's own modules)."""

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


def test_the_check_sees_imports():
    """The rules above are not vacuous: known imports are found, also inside functions."""
    assert "seaflow.schedules" in reachable("seaflow.samplers.langevin")
    assert "lightning" in reachable("seaflow.methods.base")
    assert "seaflow.methods.base" in reachable("seaflow.cli")
    assert "seaflow.calibrate" in imports("seaflow.cli")  # imported inside main()
    assert "seaflow.calibrate.run" in reachable("seaflow.cli")
