"""Cross-request batching: queued jobs of one shape render together, each image as alone."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import AppFactory, Preloaded, bearer, generate, pixels, render, wait_done
from fakes import Hangs, Solid
from server.cli import main


def add_user(capsys: pytest.CaptureFixture[str], data_dir: Path, name: str) -> dict:
    assert main(["users", "add", name, "--data-dir", str(data_dir)]) == 0
    return bearer(capsys.readouterr().out.strip().splitlines()[-1])


def test_waiting_jobs_of_one_shape_render_as_one_batch_with_their_own_images(
    make_client: AppFactory, tiny_renderer: Preloaded, tmp_path: Path
) -> None:
    gate = Hangs(tiny_renderer)
    client = make_client(renderer=gate, max_batch=4)
    generate(client, "the gate")
    assert gate.started.wait(10)
    queued = [
        generate(client, "a fox", settings={"seed": 3}),
        generate(client, "a lighthouse", settings={"seed": 9, "negative_prompt": "blur"}),
        generate(client, "two owls", options={"num_images": 2}),
    ]
    gate.release.set()
    batched = [wait_done(client, body["request_id"]) for body in queued]
    assert gate.batches[1] == ["a fox", "a lighthouse", "two owls"]
    got = [[pixels(client, body, i) for i in range(len(body["images"]))] for body in batched]
    client.close()

    alone = make_client(data_dir=tmp_path / "alone")
    for images, (prompt, parts) in zip(
        got,
        [
            ("a fox", {"settings": {"seed": 3}}),
            ("a lighthouse", {"settings": {"seed": 9, "negative_prompt": "blur"}}),
            ("two owls", {"options": {"num_images": 2}}),
        ],
        strict=True,
    ):
        reference = render(alone, prompt, **parts)
        assert images == [pixels(alone, reference, i) for i in range(len(images))], prompt


def test_batches_never_change_the_order_jobs_start_in(
    make_client: AppFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gate = Hangs(Solid())
    client = make_client(renderer=gate, max_batch=4, max_active_per_user=10)
    users = {name: add_user(capsys, tmp_path / "data", name) for name in ("ann", "ben", "cat")}
    generate(client, "gate", headers=users["ann"])
    assert gate.started.wait(10)
    big = {"settings": {"width": 512, "height": 512}}
    generate(client, "ann 1", headers=users["ann"])
    generate(client, "ann 2", headers=users["ann"])
    generate(client, "ben 1", headers=users["ben"], **big)
    last = generate(client, "cat 1", headers=users["cat"])
    gate.release.set()
    wait_done(client, last["request_id"], headers=users["cat"])
    # ann was served last (the gate), so the round goes ben 1, cat 1, ann 1, ann 2: ben's
    # bigger job runs alone, then the three adjacent same-shape jobs run together.
    assert gate.batches[1:] == [["ben 1"], ["cat 1", "ann 1", "ann 2"]]


def test_the_batch_size_defaults_to_the_devices(make_client: AppFactory) -> None:
    """DARKROOM_MAX_BATCH unset (0): the renderer's plan says (4 on CUDA, 1 on the CPU)."""
    gate = Hangs(Solid())
    gate.plan = SimpleNamespace(max_batch=2)  # as pipelines.tuning.DevicePlan would
    client = make_client(renderer=gate)
    generate(client, "gate")
    assert gate.started.wait(10)
    queued = [generate(client, f"job {i}") for i in range(3)]
    gate.release.set()
    for body in queued:
        wait_done(client, body["request_id"])
    assert gate.batches[1:] == [["job 0", "job 1"], ["job 2"]]
