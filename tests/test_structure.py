"""The shape of the code base: one `clipmc` namespace, imports that point one way, one contract module.

These tests read the source (AST) or run a fresh interpreter outside the repository, so they prove
what an installed user sees, not what the test runner's sys.path happens to allow.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clipmc.contract import (
    IMAGE_SUFFIXES,
    MAX_TOP_K,
    MODALITY_ALIASES,
    MODALITY_NAMES,
    ModalityError,
    atomic_write,
    file_sha256,
    parse_modality,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "model": "clipmc.model",
    "export": "clipmc.export",
    "gallery": "clipmc.gallery",
    "service": "clipmc.service",
}
#: package -> the packages it may import (DESIGN.md section 1: service -> export + gallery + model; export -> model).
ALLOWED = {
    "clipmc.model": set(),
    "clipmc.gallery": set(),
    "clipmc.export": {"clipmc.model"},
    "clipmc.service": {"clipmc.model", "clipmc.export", "clipmc.gallery"},
}
#: Top-level modules every package may import: they import none of the four packages at module level.
SHARED_TOP = {"clipmc", "clipmc.contract", "clipmc.cli"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    package = PACKAGES.get(rel.parts[0], rel.parts[0])
    parts = [package, *rel.parts[1:]]
    parts[-1] = parts[-1][:-3]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every absolute module name this file imports, at any depth (function-level imports count too)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            # `from . import x` / `from pkg import submodule`: the names may be modules
            found.update(f"{module}.{a.name}" for a in node.names)
    return found


def _source_files() -> list[Path]:
    return [p for folder in [*PACKAGES, "clipmc"] for p in sorted((ROOT / folder).rglob("*.py"))]


def _package_of(module: str) -> str | None:
    for pkg in ALLOWED:
        if module == pkg or module.startswith(pkg + "."):
            return pkg
    return None


def test_imports_point_one_way() -> None:
    """gallery and model import none of the other three; export imports model only; service any."""
    wrong = []
    for path in _source_files():
        own = _package_of(_module_name(path))
        if own is None:
            continue
        for module in _imports(path):
            other = _package_of(module)
            if other and other != own and other not in ALLOWED[own]:
                wrong.append(f"{path.relative_to(ROOT)} imports {module}")
            if module.split(".")[0] in PACKAGES:  # a bare top-level `model` / `service` import
                wrong.append(f"{path.relative_to(ROOT)} imports top-level {module}")
    assert not wrong, "\n".join(wrong)


def test_shared_top_level_modules_import_no_package_at_module_level() -> None:
    """clipmc/__init__.py, contract.py and cli.py are imported by every package, so they must not import
    one back at module level (clipmc.cli finds the subcommands by name at run time)."""
    for name in ("__init__.py", "contract.py", "cli.py"):
        tree = ast.parse((ROOT / "clipmc" / name).read_text())
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module:
                assert _package_of(node.module) is None, f"clipmc/{name} imports {node.module}"
            if isinstance(node, ast.Import):
                assert all(_package_of(a.name) is None for a in node.names), f"clipmc/{name}"


def test_export_has_no_import_cycle_and_torch_free_runtimes() -> None:
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "export").glob("*.py")):
        name = _module_name(path)
        graph[name] = {m for m in _imports(path) if m.startswith("clipmc.export.") and m != name}
    graph = {k: {m for m in v if m in graph} for k, v in graph.items()}

    def visit(node: str, stack: list[str]) -> None:
        assert node not in stack, "cycle in export/: " + " -> ".join([*stack, node])
        for nxt in graph[node]:
            visit(nxt, [*stack, node])

    for node in graph:
        if not node.endswith(".export"):  # the package's __init__ re-exports; it is nobody's dependency
            visit(node, [])
    importers_of_every_runtime = [
        n for n, deps in graph.items() if {f"clipmc.export.runtime_{r}" for r in ("torch", "ort", "trt")} <= deps
    ]
    assert importers_of_every_runtime == ["clipmc.export.factory"]

    def reaches(node: str, seen: set[str]) -> set[str]:
        for nxt in graph[node] - seen:
            seen.add(nxt)
            reaches(nxt, seen)
        return seen

    for runtime in ("clipmc.export.runtime_ort", "clipmc.export.runtime_trt"):
        closure = {runtime, *reaches(runtime, set())}
        torch_users = [
            m
            for m in closure
            if "torch" in {i.split(".")[0] for i in _imports(ROOT / "export" / f"{m.rsplit('.')[-1]}.py")}
        ]
        assert not torch_users, f"{runtime} reaches torch through {torch_users}"


def test_installed_namespace_adds_no_top_level_model_or_gallery(tmp_path: Path) -> None:
    """From a folder holding its own `gallery/` and `model.py`, the installed clipmc still imports, and
    a bare `import model` gets the user's module, never ours."""
    (tmp_path / "gallery").mkdir()
    (tmp_path / "model.py").write_text("WHOSE = 'user'\n")
    probe = (
        "import clipmc.model, clipmc.export, clipmc.gallery, clipmc.service, clipmc.service.app\n"
        "import clipmc, model\n"
        "assert model.WHOSE == 'user', model.__file__\n"
        "assert callable(clipmc.create_app) and callable(clipmc.open_gallery)\n"
        "import importlib.util as u\n"
        "print(u.find_spec('service'), u.find_spec('export'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None None"
    bare = subprocess.run(
        [sys.executable, "-c", "import model"], cwd=tmp_path / "gallery", env=env, capture_output=True, text=True
    )
    assert bare.returncode != 0 and "No module named 'model'" in bare.stderr


def test_pyproject_installs_every_package() -> None:
    """A sub-package missing from pyproject's explicit list installs nowhere (editable installs hide it)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        from pip._vendor import tomli as tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"clipmc"}
    for folder, name in PACKAGES.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join([name, *rel]))
    assert listed == found


# -- the contract module ---------------------------------------------------------------------------
def test_contract_imports_nothing_heavy() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, clipmc.contract; print(sorted({'numpy','torch','fastapi','faiss'} & set(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("spelling", sorted(MODALITY_ALIASES))
def test_every_package_accepts_the_same_modality_spellings(spelling: str) -> None:
    from clipmc.export.base import Embedder
    from clipmc.gallery.items import parse_modality as gallery_modality
    from clipmc.service.schemas import QueryParams

    code = MODALITY_ALIASES[spelling]
    for text in (spelling, spelling.upper(), f" {spelling} "):
        assert parse_modality(text) == code
        assert gallery_modality(text) == code
        assert Embedder.prepare_modality(text, 2).tolist() == [code, code]
        assert QueryParams(modality=text).modality == MODALITY_NAMES[code]


@pytest.mark.parametrize("bad", ["daylight", "", 2, -1, 0.0, True, None, np.bool_(True)])
def test_bad_modality_is_refused_everywhere(bad) -> None:
    from clipmc.gallery.errors import GalleryError
    from clipmc.gallery.items import parse_modality as gallery_modality

    with pytest.raises(ModalityError, match="accepted"):
        parse_modality(bad)
    with pytest.raises(GalleryError):
        gallery_modality(bad)


def test_numpy_integers_are_modalities() -> None:
    assert parse_modality(np.int64(1)) == 1 and parse_modality(np.uint8(0)) == 0


def test_contract_constants() -> None:
    assert MAX_TOP_K == 1000
    assert all(s.startswith(".") and s == s.lower() for s in IMAGE_SUFFIXES)
    assert MODALITY_NAMES == {0: "visible", 1: "infrared"}


def test_atomic_write_replaces_whole_and_cleans_up_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.bin"
    atomic_write(target, b"old")
    assert target.read_bytes() == b"old" and oct(target.stat().st_mode & 0o777) == "0o644"
    atomic_write(target, "new text")
    assert target.read_text() == "new text"

    def broken(path: Path) -> None:
        path.write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "new text"  # the old file is untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]  # no temporary file left behind
    atomic_write(target, lambda p: p.write_bytes(b"by name"))
    assert target.read_bytes() == b"by name"
    assert len(file_sha256(target)) == 64
