"""The client's commands end to end, through `python -m server.cli` (the `darkroom`
command) and `python -m darkroom_client.cli` (`darkroom-client`), against a real server."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from client_fixtures import SMALL, LiveServer, darkroom, live_server
from darkroom_client import Client


@pytest.fixture(scope="module")
def database_url(module_engine: str | None) -> str | None:
    """Every test here runs on SQLite, then on PostgreSQL (tests/pgtest.py)."""
    return module_engine


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, database_url: str | None
) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("client-cli")
    yield from live_server(root, models_dir, {"alice": (), "bob": ()})




def test_generate_writes_images_and_sidecars(server: LiveServer, tmp_path: Path) -> None:
    result = darkroom(
        server, "generate", "a red fox", "--n", "2", "--seed", "5", "--steps", "10",
        "--cfg", "6", "--size", "256x256", "--sampler", "euler", "--lora", "Tiny Ink:0.5",
        "--lora", "2:0.25", "--format", "png", "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    images = sorted(tmp_path.glob("*.png"))
    assert [p.name.rsplit("-", 1)[1] for p in images] == ["5.png", "6.png"]
    assert "rendering" in result.stderr and "download" in result.stderr  # the progress bar
    sidecar = json.loads(images[1].with_suffix(".json").read_text())
    reproduce = sidecar["reproduce"]
    assert reproduce["settings"] == {
        "seed": 6, "steps": 10, "cfg_scale": 6.0, "sampler": "euler", "width": 256,
        "height": 256,
    }  # fmt: skip
    assert reproduce["loras"] == [{"id": 1, "weight": 0.5}, {"id": 2, "weight": 0.25}]
    assert reproduce["options"] == {"format": "png", "num_images": 1}
    # The sidecar's request renders the same pixels again.
    with Client(server.url, server.tokens["alice"]) as client:
        again = client.generate(request=reproduce)
        assert again.images[0].bytes() == images[1].read_bytes()


def test_errors_are_one_line_and_exit_non_zero(server: LiveServer, tmp_path: Path) -> None:
    result = darkroom(server, "generate", "a fox", "--steps", "5", "--out", str(tmp_path))
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("darkroom: VALIDATION_ERROR: Invalid request: settings.steps")
    )
    result = darkroom(server, "generate", "a fox", "--lora", "nope:1", "--out", str(tmp_path))
    assert result.returncode == 1 and "darkroom: VALIDATION_ERROR: no LoRA named 'nope'" in (
        result.stderr
    )
    result = darkroom(server, "generate", "a fox", "--token", "wrong", "--out", str(tmp_path))
    assert result.returncode == 1 and "darkroom: UNAUTHORIZED: " in result.stderr


def manifest(path: Path) -> list[dict]:
    records = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):  # a line torn by the kill
            records.append(json.loads(line))
    return records


JOBS = 8  # good lines of the batch the test kills halfway


def test_batch_resumes_after_kill_doing_only_what_is_missing(
    server: LiveServer, tmp_path: Path
) -> None:
    lines = []
    for seed in range(JOBS):
        if seed % 2:
            lines.append({"prompt": f"a fox {seed}", "seed": seed, "steps": 20, "size": 256})
        else:
            lines.append({"prompt": f"a fox {seed}", "settings": {**SMALL, "steps": 20,
                          "seed": seed}, "options": {"format": "webp"}})  # fmt: skip
    texts = [json.dumps(line) for line in lines]
    texts.insert(3, "{not json")  # line 4
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(texts) + "\n")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "server.cli", "batch", str(jobs), "--out", str(out)]
    first = subprocess.Popen(command, env=server.env("bob"), stderr=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (out / "manifest.jsonl").exists():
            done = [r for r in manifest(out / "manifest.jsonl") if r["status"] == "completed"]
            if len(done) >= 3:
                break
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    before = manifest(out / "manifest.jsonl")
    completed_first = {r["line"]: r["request_id"] for r in before if r["status"] == "completed"}
    assert 3 <= len(completed_first) < JOBS, "the first run must be stopped halfway"

    second = subprocess.run(command, env=server.env("bob"), capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert second.returncode == 1  # line 4 is bad
    assert "darkroom: line 4: VALIDATION_ERROR: not JSON" in second.stderr
    after = manifest(out / "manifest.jsonl")
    new_records = after[len(before) :]
    # Nothing completed before was done again.
    assert not {r["line"] for r in new_records} & set(completed_first)
    latest = {r["line"]: r for r in after}
    assert latest[4]["status"] == "failed" and latest[4]["error"]["code"] == "VALIDATION_ERROR"
    good = [n for n in range(1, JOBS + 2) if n != 4]
    assert all(latest[n]["status"] == "completed" for n in good), latest
    for n in good:
        (name,) = latest[n]["files"]
        assert (out / name).exists() and (out / name).with_suffix(".json").exists()
    # Every line but the bad one rendered exactly once it counted: the server saw no more
    # generations from bob than lines, plus at most those cut off mid-render by the kill.
    with Client(server.url, server.tokens["bob"]) as client:
        history = client.history(per_page=100)
    completed_on_server = [g for g in history["items"] if g.status == "completed"]
    assert len(completed_on_server) <= JOBS + 5
    assert {latest[n]["request_id"] for n in good} <= {g.request_id for g in history["items"]}


def test_grid_contact_sheets(server: LiveServer, tmp_path: Path) -> None:
    result = darkroom(
        server, "grid", "a lighthouse", "--size", "256", "--seed", "9", "--format", "png",
        "--x", "steps=10,12", "--y", "cfg=3,7,11", "--z", "sampler=euler,ddim",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    layout = json.loads((tmp_path / "grid.json").read_text())
    assert [sheet["file"] for sheet in layout["sheets"]] == [
        "grid-sampler-euler.png",
        "grid-sampler-ddim.png",
    ]
    for sheet in layout["sheets"]:
        image = Image.open(tmp_path / sheet["file"]).convert("RGB")
        left, top = sheet["left"], sheet["top"]
        assert left > 0 and top > 0
        assert image.size == (left + 2 * 256, top + 3 * 256)
        # Labels were drawn: dark pixels above each column and left of each row.
        for x in range(2):
            strip = image.crop((left + x * 256, 0, left + (x + 1) * 256, top))
            assert strip.convert("L").getextrema()[0] < 128
        for y in range(3):
            strip = image.crop((0, top + y * 256, left, top + (y + 1) * 256))
            assert strip.convert("L").getextrema()[0] < 128
        # Each cell is its single image, and all share the seed.
        for y, row in enumerate(sheet["cells"]):
            for x, name in enumerate(row):
                assert name.endswith("-9.png")
                cell = image.crop((left + x * 256, top + y * 256, left + (x + 1) * 256,
                                   top + (y + 1) * 256))  # fmt: skip
                single = Image.open(tmp_path / name).convert("RGB")
                assert cell.tobytes() == single.tobytes()
    assert len(list(tmp_path.glob("*-9.png"))) == 12


def test_grid_axes_can_be_seed_a_lora_weight_or_the_model(
    server: LiveServer, tmp_path: Path
) -> None:
    result = darkroom(
        server, "grid", "a lighthouse", "--size", "256", "--steps", "10",
        "--x", "seed=1,2", "--y", "lora:Tiny Ink=0,1", "--z", "model=tiny-sdxl",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    sidecars = [json.loads(p.read_text()) for p in tmp_path.glob("*-*.json")]
    assert sorted(s["seed"] for s in sidecars) == [1, 1, 2, 2]
    assert sorted(s["request"]["loras"][0]["weight"] for s in sidecars) == [0, 0, 1, 1]
    assert {s["request"]["settings"]["model"] for s in sidecars} == {"tiny-sdxl"}


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_reproduce_renders_identical_pixels(server: LiveServer, tmp_path: Path, fmt: str) -> None:
    # A JPEG's quality is read from its quantization tables; a WebP's cannot be, so it is
    # rendered at the default (95) unless --quality says otherwise.
    quality = {"jpeg": 80, "webp": None}.get(fmt)
    with Client(server.url, server.tokens["alice"]) as client:
        generation = client.generate(
            "a castle", **SMALL, seed=21, format=fmt, quality=quality,
            negative_prompt="fog, rain", sampler="DPM++ 2M Karras",
        )  # fmt: skip
        (path,) = generation.save(tmp_path)
    module = "darkroom_client.cli" if fmt == "webp" else "server.cli"
    result = darkroom(server, "reproduce", str(path), module=module)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "identical" in result.stdout


def test_reproduce_applies_the_loras_an_image_names(server: LiveServer, tmp_path: Path) -> None:
    with Client(server.url, server.tokens["alice"]) as client:
        generation = client.generate(
            "a castle", **SMALL, seed=23, format="png", loras=[(1, 0.5)]
        )
        (path,) = generation.save(tmp_path)
    with Image.open(path) as image:
        assert "<lora:tiny-lora-0:0.5>" in image.info["parameters"]
    result = darkroom(server, "reproduce", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "identical" in result.stdout


def test_reproduce_reports_how_far_a_tampered_image_is(server: LiveServer, tmp_path: Path) -> None:
    with Client(server.url, server.tokens["alice"]) as client:
        (path,) = client.generate("a castle", **SMALL, seed=22, format="png").save(tmp_path)
    original = Image.open(path)
    parameters = original.info["parameters"]
    tampered = original.convert("RGB")
    tampered.putpixel((10, 10), (255, 0, 255))
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    tampered.save(buffer, "PNG", pnginfo=info)
    path.write_bytes(buffer.getvalue())
    result = darkroom(server, "reproduce", str(path))
    assert result.returncode == 1
    assert "different: max abs diff" in result.stdout and "PSNR" in result.stdout
    diff = int(result.stdout.split("max abs diff ")[1].split(",")[0])
    assert darkroom(server, "reproduce", str(path), "--tolerance", str(diff - 1)).returncode == 1
    accepted = darkroom(server, "reproduce", str(path), "--tolerance", str(diff))
    assert accepted.returncode == 0 and f"within tolerance: max abs diff {diff}" in accepted.stdout


def test_reproduce_an_image_rendered_in_a_batch_is_bit_exact(
    server: LiveServer, tmp_path: Path
) -> None:
    """A seed's pixels do not depend on the other images of its render (the server here is
    on the CPU): the second of two images reproduces, alone, pixel for pixel."""
    with Client(server.url, server.tokens["alice"]) as client:
        generation = client.generate("a castle", **SMALL, seed=40, num_images=2, format="png")
        paths = generation.save(tmp_path)
    result = darkroom(server, "reproduce", str(paths[1]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "identical" in result.stdout


def test_reproduce_reads_automatic1111_infotext(server: LiveServer, tmp_path: Path) -> None:
    """An AUTOMATIC1111-style JPEG (EXIF UserComment, Schedule type, a <lora:> tag): its
    parameters are understood, rendered, and compared (different pixels: exit 1)."""
    from PIL import ExifTags

    text = (
        "a castle, <lora:Tiny Ink:0.7>\nNegative prompt: fog\nSteps: 10, Sampler: DPM++ 2M, "
        "Schedule type: Karras, CFG scale: 7, Seed: 3, Size: 256x256, Model hash: 31e35c80fc, "
        "Model: tiny, Version: v1.10.1"
    )
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = b"UNICODE\0" + text.encode(
        "utf-16-be"
    )
    path = tmp_path / "a1111.jpg"
    Image.new("RGB", (256, 256), "gray").save(path, "JPEG", quality=80, exif=exif)
    result = darkroom(server, "reproduce", str(path), "--out", str(tmp_path / "again"))
    assert result.returncode == 1, result.stderr
    assert "different: max abs diff" in result.stdout
    (again,) = (tmp_path / "again").glob("*.jpg")
    request_id = again.name.rsplit("-", 1)[0]
    with Client(server.url, server.tokens["alice"]) as client:
        item = client.history(per_page=1)["items"][0]
    assert item.request_id == request_id
    assert item.raw["prompt"] == "a castle" and item.raw["loras"][0]["weight"] == 0.7
    assert item.raw["settings"]["sampler"] == "dpmpp_2m_karras"
    assert item.raw["options"]["quality"] == 80


@pytest.mark.parametrize(
    ("extra", "says"),
    [("Denoising strength: 0.5, Mask blur: 4", "--init-image FILE, --mask FILE"),
     ("Denoising strength: 0.5", "needs its init image (--init-image FILE)")],
)  # fmt: skip
def test_reproduce_explains_an_image_to_image(
    server: LiveServer, tmp_path: Path, extra: str, says: str
) -> None:
    from PIL.PngImagePlugin import PngInfo

    text = f"a castle\nSteps: 10, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 256x256, {extra}"
    info = PngInfo()
    info.add_text("parameters", text)
    path = tmp_path / "edited.png"
    Image.new("RGB", (256, 256), "gray").save(path, "PNG", pnginfo=info)
    result = darkroom(server, "reproduce", str(path))
    assert result.returncode != 0
    assert says in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_batch_help_documents_the_line_format_with_examples_that_work(
    server: LiveServer,
) -> None:
    from darkroom_client.batch import batch_body
    from darkroom_client.bodies import SETTING_KWARGS
    from darkroom_client.commands import LoraNames

    result = darkroom(server, "batch", "--help")
    assert result.returncode == 0
    assert all(key in result.stdout for key in SETTING_KWARGS)  # every flat key is named
    examples = [line.strip() for line in result.stdout.splitlines() if line.startswith("  {")]
    assert len(examples) == 3
    with Client(server.url, server.tokens["alice"]) as client:
        bodies = [batch_body(json.loads(line), LoraNames(client)) for line in examples]
    assert bodies[0]["settings"] == {"width": 512, "height": 512, "steps": 20, "seed": 5}
    assert bodies[0]["options"] == {"num_images": 2}
    assert bodies[1]["loras"] == [{"id": 1, "weight": 0.6}, {"id": 2, "weight": 0.3}]
    assert bodies[2]["loras"] == [{"id": 1, "weight": 0.8}]
