"""The Renderer protocol (pipelines/spec.py) is the whole of what the server uses of a
renderer: every member the server touches is declared there, the server never probes for
one, and every renderer (SDXLRenderer, ProcessRenderer, the tests' fakes) has them all,
with the protocol's parameters."""

from __future__ import annotations

import ast
import inspect
from functools import partial
from pathlib import Path

import pytest

from conftest import Preloaded
from fakes import Fake, Solid
from pipelines.sdxl import SDXLRenderer
from pipelines.spec import Renderer
from server.jobs.render_process import ProcessRenderer

ROOT = Path(__file__).resolve().parents[1]


def declared() -> set[str]:
    members = set(Renderer.__annotations__)
    for klass in Renderer.__mro__:
        if klass.__module__ == Renderer.__module__:
            members |= {name for name in vars(klass) if not name.startswith("_")}
    return members


def renderer_expression(node: ast.expr) -> bool:
    """`renderer`, `self.renderer`, `worker.renderer`, `one.renderer` ...: a Renderer."""
    if isinstance(node, ast.Name):
        return node.id == "renderer"
    return isinstance(node, ast.Attribute) and node.attr == "renderer"


def server_uses() -> tuple[set[str], list[str]]:
    """The members the server reads off a renderer, and every getattr/hasattr on one."""
    used: set[str] = set()
    probes: list[str] = []
    for path in sorted((ROOT / "server").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and renderer_expression(node.value):
                used.add(node.attr)
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr")
                and node.args
                and renderer_expression(node.args[0])
            ):
                probes.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return used, probes


def test_the_server_uses_only_declared_members_and_never_probes() -> None:
    used, probes = server_uses()
    assert probes == [], "declare the member in pipelines.spec.Renderer and call it"
    assert used, "the scan found no renderer use at all"
    assert used <= declared(), sorted(used - declared())


@pytest.fixture(scope="module")
def renderers(tiny_renderer: Preloaded, models_dir: Path) -> list[object]:
    sdxl = SDXLRenderer("tiny", models_dir)  # not loaded: its members exist regardless
    process = ProcessRenderer(partial(SDXLRenderer, "tiny", models_dir), "tiny")
    return [sdxl, process, Solid(), Fake(Solid()), tiny_renderer]


def test_every_renderer_has_every_member_with_the_protocol_s_parameters(
    renderers: list[object],
) -> None:
    for renderer in renderers:
        name = type(renderer).__name__
        for member in sorted(declared()):
            assert hasattr(renderer, member), f"{name} lacks {member}"
            wanted = getattr(Renderer, member, None)
            if inspect.isfunction(wanted):
                have = inspect.signature(getattr(renderer, member)).parameters
                want = list(inspect.signature(wanted).parameters)[1:]  # less self
                # The protocol's parameters first; any more of its own are optional.
                assert list(have)[: len(want)] == want, f"{name}.{member}{tuple(have)}"
                extra = list(have.values())[len(want) :]
                assert all(p.default is not p.empty for p in extra), f"{name}.{member}"
