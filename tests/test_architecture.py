"""The walls of ARCHITECTURE.md, checked from the code itself.

- Every stage's ``deps`` in ``dvc.yaml`` cover every project module it imports (the import graph
  is read from the source, function-level imports included), so an edit can never leave a stale
  output behind.
- ``pipelines/`` never imports ``tasks/``, ``flows/`` or Prefect; ``tasks/`` never imports
  ``flows/``.
- The code defaults of every params section equal ``params.yaml``'s values.
- Size budgets: no function over 60 code lines, no module over 500 lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.params_sections import params_sections

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipelines", "tasks", "flows")


# --------------------------------------------------------------------------- the import graph


def module_file(name: str) -> Path | None:
    """``pipelines.x.y`` -> its source file (module or package ``__init__``), None if not ours."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


@cache
def imported_names(path: Path) -> frozenset[str]:
    """Every module name an ``import`` statement of ``path`` names, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    )
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # submodules
        elif isinstance(node, ast.Call) and _is_import_module(node):
            names.update(_dynamic_targets(node.args[0]))
    return frozenset(names)


def _is_import_module(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name == "import_module" and bool(node.args)


def _dynamic_targets(arg: ast.expr) -> set[str]:
    """``import_module("a.b")`` -> ``a.b``; ``import_module(f"a.b.{x}")`` -> every module of a.b."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return {arg.value}
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        package = str(arg.values[0].value).rstrip(".")
        folder = ROOT.joinpath(*package.split("."))
        return {f"{package}.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__"}
    raise AssertionError(f"import_module({ast.unparse(arg)}): the import graph cannot follow it")


def project_imports(path: Path) -> set[Path]:
    """The project modules ``path`` imports directly, with the packages on their way."""
    found: set[Path] = set()
    for name in imported_names(path):
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            target = module_file(".".join(parts[:i]))
            if target is not None:
                found.add(target)
    found.discard(path)
    return found


def closure(start: Path) -> set[Path]:
    """Every project module ``start`` imports, directly or not (``start`` included)."""
    seen, todo = {start}, [start]
    while todo:
        for dep in project_imports(todo.pop()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def stage_entry(cmd: str) -> Path:
    """The module file a ``python -m pipelines.<stage>`` command runs."""
    module = cmd.split("-m", 1)[1].split()[0]
    target = module_file(module)
    assert target is not None, f"{cmd}: not a project module"
    main = target.parent / "__main__.py" if target.name == "__init__.py" else None
    return main if main is not None and main.is_file() else target


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(dvc_stages()))
def test_stage_deps_cover_every_module_it_imports(stage: str) -> None:
    spec = dvc_stages()[stage]
    deps = [ROOT / d for d in spec.get("deps", []) if not str(d).startswith("${")]
    for dep in deps:
        assert dep.exists(), f"dvc.yaml: stage {stage} depends on {dep.relative_to(ROOT)}, gone"
    entry = stage_entry(spec["cmd"])
    package_inits = {entry.parent / "__init__.py"} if entry.name == "__main__.py" else set()
    uncovered = sorted(
        str(module.relative_to(ROOT))
        for module in closure(entry) | package_inits
        if not any(module == d or d in module.parents for d in deps)
    )
    assert not uncovered, f"dvc.yaml: stage {stage} imports {uncovered} but does not depend on it"


@pytest.mark.parametrize("stage", sorted(dvc_stages()))
def test_stage_deps_list_no_module_it_does_not_import(stage: str) -> None:
    """A code dep the stage never imports would rerun it for nothing."""
    spec = dvc_stages()[stage]
    entry = stage_entry(spec["cmd"])
    used = closure(entry) | (
        {entry.parent / "__init__.py"} if entry.name == "__main__.py" else set()
    )
    code = [ROOT / d for d in spec.get("deps", []) if str(d).startswith(PACKAGES)]
    unused = sorted(
        str(dep.relative_to(ROOT))
        for dep in code
        if not any(module == dep or dep in module.parents for module in used)
    )
    assert not unused, f"dvc.yaml: stage {stage} depends on {unused} but never imports it"


def test_the_dvc_deps_list_no_module_twice() -> None:
    for stage, spec in dvc_stages().items():
        deps = [d for d in spec.get("deps", []) if not str(d).startswith("${")]
        covered = [d for d in deps if any(Path(d).is_relative_to(o) and d != o for o in deps)]
        assert not covered, f"dvc.yaml: stage {stage} lists {covered} inside a listed folder"


# --------------------------------------------------------------------------- the walls


def sources(package: str) -> Iterator[Path]:
    yield from sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("pipelines", ("tasks", "flows", "prefect")), ("tasks", ("flows",))],
)
def test_import_walls(package: str, forbidden: tuple[str, ...]) -> None:
    breaches = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sources(package)
        for name in sorted(imported_names(path))
        if name.split(".")[0] in forbidden
    ]
    assert not breaches, breaches


# --------------------------------------------------------------------------- the defaults


def test_every_params_section_has_a_schema() -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(params) == {name for name, _ in params_sections()}


#: params whose code default is deliberately not params.yaml's value, with the reason
DEFAULT_EXCEPTIONS: dict[str, str] = {
    "ingest.inputs": "the data to read has no code default (the demo's params name its dataset)",
    "ingest.salt": "the code defaults to the secret salt; the demo's params use the public one",
}


def test_code_defaults_equal_params_yaml() -> None:
    """A value written in params.yaml and as a code default must be the same value."""
    from pipelines.config import parse_section

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    differ = []
    for name, cls in params_sections():
        section = params.get(name) or {}
        configured = parse_section(cls, name, params).model_dump(mode="json")
        required = {
            info.alias or key: section[info.alias or key]
            for key, info in cls.model_fields.items()
            if info.is_required() or f"{name}.{info.alias or key}" in DEFAULT_EXCEPTIONS
            if (info.alias or key) in section
        }
        defaults = cls.model_validate(required).model_dump(mode="json")
        for key, info in cls.model_fields.items():
            shown = info.alias or key
            if f"{name}.{shown}" in DEFAULT_EXCEPTIONS or info.is_required():
                continue
            if configured[key] != defaults[key]:
                differ.append(
                    f"{name}.{shown}: params.yaml {configured[key]!r}, code {defaults[key]!r}"
                )
    assert not differ, "\n".join(differ)


# --------------------------------------------------------------------------- size budgets

MAX_FUNCTION_LINES = 60  # code lines, the docstring not counted
MAX_MODULE_LINES = 500


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    if docstring and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def test_functions_and_modules_stay_short() -> None:
    """A function reads at a glance (60 code lines), a module in a sitting (500 lines)."""
    long_functions, long_modules = [], []
    for package in PACKAGES:
        for path in sources(package):
            text = path.read_text(encoding="utf-8")
            if len(text.splitlines()) > MAX_MODULE_LINES:
                long_modules.append(str(path.relative_to(ROOT)))
            for node in ast.walk(ast.parse(text)):
                is_function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                if is_function and _code_lines(node) > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"
