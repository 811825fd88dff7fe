"""The layers hold: no face imports another, nothing below the faces imports one, the SDK
stands alone, and every module has one job (about 500 lines at most, migrations aside).

Read from the source (every import, also those inside functions), so a shortcut taken in a
hurry fails here, not in a review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "opendance"
#: The API faces: each is one module or package under opendance/faces.
FACES = ("seedance", "openai", "ark")
#: What sits above the faces and may import them.
ABOVE_FACES = ("opendance.app", "opendance.cli")
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _face_of(name: str) -> str | None:
    for face in FACES:
        prefix = f"opendance.faces.{face}"
        if name == prefix or name.startswith(prefix + "."):
            return face
    return None


MODULES = {_module_name(path): path for path in _modules()}


def test_the_tree_is_read() -> None:
    assert "opendance.faces.seedance.routes" in MODULES
    assert "opendance.faces.openai.routes" in MODULES
    assert "opendance.tasks.service" in MODULES


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_face_imports_another(module: str) -> None:
    own = _face_of(module)
    if own is None:
        return
    others = {name for name in _imports(MODULES[module]) if _face_of(name) not in (None, own)}
    assert not others, f"{module} (the {own} face) imports another face: {sorted(others)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_nothing_below_the_faces_imports_one(module: str) -> None:
    if module.startswith("opendance.faces") or module.startswith(ABOVE_FACES):
        return
    faces = {name for name in _imports(MODULES[module]) if name.startswith("opendance.faces")}
    assert not faces, f"{module} is below the faces but imports {sorted(faces)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_shared_face_modules_import_no_face(module: str) -> None:
    if not module.startswith("opendance.faces") or _face_of(module) is not None:
        return
    faces = {name for name in _imports(MODULES[module]) if _face_of(name) is not None}
    assert not faces, f"{module} is shared by the faces but imports {sorted(faces)}"


@pytest.mark.parametrize(
    "module", sorted(name for name in MODULES if name.startswith("opendance.client"))
)
def test_the_sdk_imports_nothing_of_the_server(module: str) -> None:
    server = {
        name
        for name in _imports(MODULES[module])
        if name.startswith("opendance.") and not name.startswith("opendance.client")
    }
    assert not server, f"{module} (the SDK) imports server code: {sorted(server)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_hold_one_job(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it along its seams"
