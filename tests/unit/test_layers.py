"""The arrows between chatd's layers point one way (docs/architecture.md):

    bindings -> session / protocol (dispatch) -> domain -> domain.interfaces
    storage, broker -> domain.interfaces and domain.models only
    web (the HTTP API) -> domain, like any client

Only the composition root (chatd.service) and the twistd glue see
everything.  This test reads the imports of every module, so a shortcut
across the layers fails here instead of in a review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "chatd"

# Modules any layer may use: value types, errors, clocks, configuration.
SHARED = (
    "chatd.errors",
    "chatd.clock",
    "chatd.config",
    "chatd.auth",
    "chatd.metrics",
    "chatd.addresses",
    "chatd.attribution",
)
DOMAIN_CONTRACT = ("chatd.domain.interfaces", "chatd.domain.models")

# layer -> chatd modules it may import (prefixes), besides itself and SHARED.
ALLOWED: dict[str, tuple[str, ...]] = {
    "chatd.domain": (),
    "chatd.storage": DOMAIN_CONTRACT,
    "chatd.broker": DOMAIN_CONTRACT + ("chatd.broker",),
    "chatd.protocol": ("chatd.domain", "chatd.protocol"),
    "chatd.session": ("chatd.domain", "chatd.protocol"),
    "chatd.bindings": DOMAIN_CONTRACT + ("chatd.session", "chatd.protocol.envelope"),
    "chatd.web": ("chatd.domain", "chatd.web", "chatd.tls"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _chatd_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("chatd"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("chatd"))
    return found


def _layer(module: str) -> str | None:
    for layer in ALLOWED:
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


MODULES = sorted(
    (name, path) for path in PACKAGE.rglob("*.py") if _layer(name := _module_name(path)) is not None
)


def _allowed(layer: str, imported: str) -> bool:
    if imported == "chatd":  # the package itself: __version__
        return True
    prefixes = (layer, *SHARED, *ALLOWED[layer])
    return any(imported == p or imported.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_imports_point_down_the_layers(module: str, path: Path) -> None:
    layer = _layer(module)
    assert layer is not None
    wrong = sorted(i for i in _chatd_imports(path) if not _allowed(layer, i))
    assert not wrong, f"{module} ({layer}) must not import {wrong}"


def test_every_layer_has_modules() -> None:
    """Guards the test itself: a renamed package would make it vacuous."""
    layers = {_layer(m) for m, _ in MODULES}
    assert layers == set(ALLOWED)
