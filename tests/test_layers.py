"""The package's layering, checked on the import statements of every module (parsed, nothing imported).

Layers, bottom up: ``dhkd_kernels`` (ops and kernels) -> ``dhkd`` (model, training, evaluation, runtime,
commands) -> ``benchmarks/`` (scripts). docs/architecture.md describes the arrows these tests enforce.
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dhkd", "dhkd_kernels")
# Deployment commands: what runs on an inspection PC must not pull in the trainer or the benchmark.
PRODUCTION_COMMANDS = ("dhkd.commands.predict", "dhkd.commands.evaluate", "dhkd.commands.export")
NOT_IN_PRODUCTION = ("dhkd.benchmark", "dhkd.train")
# Training never reaches the evaluation package: the optional test-split evaluation is a step its caller hands in.
APART = (("dhkd.train", "dhkd.eval"),)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@lru_cache(maxsize=None)
def modules() -> dict[str, Path]:
    """Every module of the two packages by dotted name."""
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def resolve(name: str) -> str:
    """The longest prefix of ``name`` that is a module of the packages (``name`` itself if none is)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules():
            return candidate
    return name


def raw_imports(path: Path, module: str) -> set[str]:
    """Dotted names ``path`` imports anywhere in its body (function-level imports included); ``from pkg
    import name`` gives ``pkg.name``."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
    return found


def imports_of(path: Path, module: str) -> set[str]:
    """The modules ``path`` imports, each name resolved to the module of the packages it falls in."""
    return {resolve(name) for name in raw_imports(path, module)}


@lru_cache(maxsize=None)
def graph() -> dict[str, frozenset[str]]:
    """Import arrows between the packages' own modules."""
    return {m: frozenset(i for i in imports_of(p, m) if i in modules()) for m, p in modules().items()}


def reachable(start: str) -> dict[str, str]:
    """Every module ``start`` imports, directly or not, mapped to the module that imports it (for messages)."""
    seen, todo = {start: ""}, [start]
    while todo:
        m = todo.pop()
        for dep in graph().get(m, ()):
            if dep not in seen:
                seen[dep] = m
                todo.append(dep)
    return seen


def chain(seen: dict[str, str], end: str) -> str:
    path = [end]
    while seen[path[-1]]:
        path.append(seen[path[-1]])
    return " -> ".join(reversed(path))


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_import_parser_sees_the_packages():
    assert "dhkd_kernels.registry" in modules() and "dhkd.models.dhkd" in modules()
    assert "dhkd_kernels.registry" in graph()["dhkd_kernels"]
    assert any(in_package(dep, "dhkd_kernels") for dep in graph()["dhkd.models.ss2d"])


def test_kernels_never_import_the_application():
    bad = sorted(f"{m} imports {dep}" for m, deps in graph().items() if in_package(m, "dhkd_kernels")
                 for dep in imports_of(modules()[m], m) if in_package(dep, "dhkd") or in_package(dep, "benchmarks"))
    assert bad == []


@pytest.mark.parametrize("command", PRODUCTION_COMMANDS)
def test_production_commands_do_not_import_training_or_benchmarks(command):
    seen = reachable(command)
    bad = sorted(chain(seen, m) for m in seen if any(in_package(m, p) for p in NOT_IN_PRODUCTION))
    assert bad == []


@pytest.mark.parametrize("package,forbidden", APART)
def test_package_does_not_reach_the_forbidden_one(package, forbidden):
    bad = []
    for m in sorted(graph()):
        if in_package(m, package):
            seen = reachable(m)
            bad += [chain(seen, dep) for dep in seen if in_package(dep, forbidden)]
    assert sorted(set(bad)) == []


COMPILED = ("dhkd_kernels._cpu", "dhkd_kernels._cuda")


def private_kernel_module(name: str) -> bool:
    """Whether the imported ``name`` is (or lies in) a private module of dhkd_kernels: ``dhkd_kernels._ext``,
    the compiled ``_cpu``/``_cuda``, anything below a ``_``-named package."""
    module = name if any(in_package(name, c) for c in COMPILED) else resolve(name)
    return in_package(module, "dhkd_kernels") and any(part.startswith("_") and part != "__init__"
                                                      for part in module.split(".")[1:])


def test_only_the_kernel_package_imports_its_private_modules():
    """dhkd, the benchmarks and the tests use the public surface (dhkd_kernels, dhkd_kernels.registry, the op
    packages); the kernel package's own unit tests (tests/kernels/) may test its private helpers."""
    files = [p for d in ("dhkd", "benchmarks", "tests") for p in sorted((ROOT / d).rglob("*.py"))
             if not p.is_relative_to(ROOT / "tests" / "kernels")]
    bad = sorted(f"{p.relative_to(ROOT)} imports {dep}" for p in files
                 for dep in raw_imports(p, module_name(p)) if private_kernel_module(dep))
    assert bad == []
