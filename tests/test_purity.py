"""The pure modules import no I/O library, directly or through another relay module.

Read from source with `ast` (no import needed, so a guarded or lazy import is still seen),
following every relay.* module a pure module imports, and the packages Python runs on the
way (`relay/__init__.py`, `relay/sources/__init__.py`).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IO_LIBRARIES = frozenset({"starlette", "redis", "httpx", "uvicorn", "tenacity", "fakeredis", "websockets",
                          "slack_sdk", "aiohttp"})
NAMED_PURE = ["relay.errors", "relay.routing", "relay.messages", "relay.policy", "relay.settings",
              "relay.sources.generic", "relay.status_frames", "relay.status_session", "relay.approval_exchange", "relay.context", "relay.answers",
              "relay.door_rules", "relay.door_config", "relay.template", "relay.sources.linear", "relay.sources.gitlab",
              "relay.sources.discord", "relay.sources.mapped", "relay.sources.signatures"]


def module_file(root: Path, name: str) -> Path | None:
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def is_package(root: Path, name: str) -> bool:
    path = module_file(root, name)
    return path is not None and path.name == "__init__.py"


def imported_names(root: Path, name: str) -> set[str]:
    """Every absolute module name one module's source imports (any depth in the file)."""
    path = module_file(root, name)
    assert path is not None, f"no source for {name}"
    package = name if is_package(root, name) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base_parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            # `from relay import queue` imports the module relay.queue.
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__"):
                found.add(node.args[0].value)
    return found


def external_imports(root: Path, start: str) -> dict[str, list[str]]:
    """Top-level packages outside relay that importing `start` reaches → the chain that reaches it."""
    chains: dict[str, list[str]] = {}
    seen: set[str] = set()
    todo: list[tuple[str, list[str]]] = [(start, [start])]
    while todo:
        name, chain = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        todo.extend((".".join(parts[:i]), chain) for i in range(1, len(parts)))
        for imported in imported_names(root, name):
            top = imported.split(".")[0]
            if top != "relay":
                chains.setdefault(top, chain + [imported])
            elif module_file(root, imported) is not None:
                todo.append((imported, chain + [imported]))
    return chains


def pure_modules(root: Path) -> list[str]:
    sources = sorted(f"relay.sources.{p.stem}" for p in (root / "relay" / "sources").glob("*.py")
                     if p.stem != "__init__")
    return sorted({*NAMED_PURE, "relay.sources", *sources})


# --- the real package -------------------------------------------------------------------


def test_every_named_pure_module_exists() -> None:
    for name in NAMED_PURE:
        assert module_file(ROOT, name) is not None, name


def test_generic_source_is_among_the_discovered_sources() -> None:
    assert "relay.sources.generic" in pure_modules(ROOT)


@pytest.mark.parametrize("module", pure_modules(ROOT))
def test_pure_module_imports_no_io_library(module: str) -> None:
    reached = external_imports(ROOT, module)
    offending = {top: " → ".join(chain) for top, chain in reached.items() if top in IO_LIBRARIES}
    assert not offending, f"{module} reaches I/O libraries: {offending}"


def test_pure_modules_import_no_io_library_at_runtime() -> None:
    # Belt and braces for what source reading cannot see (e.g. an import built from a variable).
    program = textwrap.dedent(f"""
        import importlib, sys
        before = set(sys.modules)
        for name in {pure_modules(ROOT)!r}:
            importlib.import_module(name)
        loaded = {{m.split(".")[0] for m in set(sys.modules) - before}}
        print(" ".join(sorted(loaded & set({sorted(IO_LIBRARIES)!r}))))
    """)
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_the_checker_sees_the_io_of_impure_relay_modules() -> None:
    # If these stopped being found, the checks above would pass vacuously.
    assert "redis" in external_imports(ROOT, "relay.queue")
    assert "starlette" in external_imports(ROOT, "relay.web")
    assert "aiohttp" in external_imports(ROOT, "relay.letta")
    assert "slack_sdk" in external_imports(ROOT, "relay.socket_mode")


# --- the checker itself, on a package written for the test ------------------------------


def write_package(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root


@pytest.mark.parametrize(("pure_source", "library"), [
    ("import httpx\n", "httpx"),
    ("import redis.asyncio as aioredis\n", "redis"),
    ("from starlette.responses import Response\n", "starlette"),
    ("def later():\n    import tenacity\n", "tenacity"),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import uvicorn\n", "uvicorn"),
    ("import importlib\nfake = importlib.import_module('fakeredis')\n", "fakeredis"),
    ("from relay.impure import thing\n", "httpx"),
    ("from relay import impure\n", "httpx"),
    ("import relay.impure\n", "httpx"),
    ("from . import impure\n", "httpx"),
    ("from .impure import thing\n", "httpx"),
    ("from relay.sub.deeper import x\n", "redis"),
    ("from relay.sub import deeper\n", "redis"),
    ("from relay.clean import y\n", "httpx"),
])
def test_checker_finds_direct_and_transitive_io_imports(tmp_path: Path, pure_source: str,
                                                        library: str) -> None:
    root = write_package(tmp_path, {
        "relay/__init__.py": "",
        "relay/pure.py": pure_source,
        "relay/impure.py": "import httpx\nthing = 1\n",
        "relay/clean.py": "from relay.impure import thing\ny = thing\n",
        "relay/sub/__init__.py": "",
        "relay/sub/deeper.py": "from redis import Redis\nx = 1\n",
    })
    assert library in external_imports(root, "relay.pure")


def test_checker_finds_io_imported_by_a_parent_package(tmp_path: Path) -> None:
    root = write_package(tmp_path, {
        "relay/__init__.py": "import starlette\n",
        "relay/sources/__init__.py": "",
        "relay/sources/pure.py": "import json\n",
    })
    assert "starlette" in external_imports(root, "relay.sources.pure")


def test_checker_passes_a_module_with_only_stdlib_and_pure_relay_imports(tmp_path: Path) -> None:
    root = write_package(tmp_path, {
        "relay/__init__.py": "",
        "relay/a.py": "import json\nfrom relay.b import x\nfrom . import b\n",
        "relay/b.py": "import hashlib\nfrom relay.a import json\nx = 1\n",  # a cycle
    })
    assert set(external_imports(root, "relay.a")) == {"json", "hashlib"}
