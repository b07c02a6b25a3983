"""The console in a real headless Chromium against a real Darkroom process in token mode:
an administrator (root) and a user (ada), as a person would use it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from processes import ServerProcess, add_user

XSS = "<img src=x onerror=alert(1)> a red fox"
# Set to a folder (e.g. docs/console) to keep the screenshots the tests take.
SHOTS = os.environ.get("DARKROOM_CONSOLE_SHOTS")
SIZES = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path
) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("console")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("DARKROOM_DATABASE_URL", raising=False)
        patch.setenv("DARKROOM_PREVIEW_EVERY", "1")
        tokens = {"root": add_user(data, "root", "--admin"), "ada": add_user(data, "ada")}
        with ServerProcess(data, models_dir, data / "server.log") as process:
            process.tokens = tokens  # type: ignore[attr-defined]
            yield process


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=SIZES["desktop"])
    opened = context.new_page()
    dialogs: list[str] = []
    opened.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
    opened.dialogs = dialogs  # type: ignore[attr-defined]
    yield opened
    context.close()


def tokens(server: ServerProcess) -> dict[str, str]:
    return server.tokens  # type: ignore[attr-defined]


def sign_in(page: Page, server: ServerProcess, who: str) -> None:
    page.goto(f"{server.base}/ui/generate")
    expect(page).to_have_url(f"{server.base}/ui/signin")
    page.get_by_label("Token").fill(tokens(server)[who])
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{server.base}/ui/generate")
    expect(page.locator("#who")).to_have_text(who)


def small(page: Page, steps: int = 12, size: int = 256) -> None:
    page.get_by_label("Width").fill(str(size))
    page.get_by_label("Height").fill(str(size))
    page.get_by_label("Steps").fill(str(steps))


def api_submit(server: ServerProcess, who: str, prompt: str) -> str:
    body = {"prompt": prompt, "settings": {"width": 256, "height": 256, "steps": 10}}
    headers = {"Authorization": f"Bearer {tokens(server)[who]}"}
    response = httpx.post(f"{server.base}/image/generate", json=body, headers=headers)
    assert response.status_code == 202, response.text
    request_id = response.json()["request_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = httpx.get(f"{server.base}/generations/{request_id}/status", headers=headers)
        if status.json()["status"] in ("completed", "failed"):
            return request_id
        time.sleep(0.2)
    raise AssertionError("the generation did not end")


def shoot(page: Page, name: str) -> None:
    if not SHOTS:
        return
    for size, viewport in SIZES.items():
        page.set_viewport_size(viewport)
        page.screenshot(path=str(Path(SHOTS) / f"{name}-{size}.png"), full_page=True)
    page.set_viewport_size(SIZES["desktop"])


def test_generate_with_a_lora_shows_progress_then_the_image(
    page: Page, server: ServerProcess
) -> None:
    sign_in(page, server, "ada")
    page.get_by_label("Prompt", exact=True).fill(XSS)
    small(page, steps=20)
    page.get_by_label("Tiny Ink", exact=True).check()
    page.get_by_role("button", name="Generate").click()
    bar = page.get_by_role("progressbar")
    seen: set[int] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and page.locator("#results img").count() == 0:
        value = bar.get_attribute("aria-valuenow")
        if value is not None:
            seen.add(int(value))
        page.wait_for_timeout(30)
    image = page.locator("#results img")
    expect(image).to_have_attribute("alt", XSS)
    assert any(0 < value < 100 for value in seen), seen  # it moved while rendering
    expect(bar).to_have_attribute("aria-valuenow", "100")
    expect(page.locator("#results figcaption")).to_contain_text("Seed ")
    # The prompt is text everywhere: no script ran.
    assert page.dialogs == []  # type: ignore[attr-defined]
    shoot(page, "generate")
    request_id = page.locator("#results a").get_attribute("href").rsplit("/", 1)[-1]
    item = httpx.get(
        f"{server.base}/generations/{request_id}",
        headers={"Authorization": f"Bearer {tokens(server)['ada']}"},
    ).json()
    assert item["loras"] and item["loras"][0]["weight"] == 1
    assert item["prompt"] == XSS


def test_cancel_a_slow_render(page: Page, server: ServerProcess) -> None:
    sign_in(page, server, "ada")
    page.get_by_label("Prompt", exact=True).fill("a very slow fox")
    small(page, steps=150, size=512)
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#state")).to_contain_text("Rendering", timeout=60_000)
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#state")).to_have_text("Cancelled", timeout=30_000)
    expect(page.locator("#results img")).to_have_count(0)


def test_gallery_filters_use_settings_and_delete(page: Page, server: ServerProcess) -> None:
    keep = api_submit(server, "ada", "a lighthouse at dusk")
    gone = api_submit(server, "ada", "a harbour crane")
    sign_in(page, server, "ada")
    page.goto(f"{server.base}/ui/gallery")
    expect(page.locator("#grid li").first).to_be_visible()
    page.get_by_label("Search prompts").fill("harbour")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#grid li")).to_have_count(1)
    expect(page.locator("#grid img")).to_have_attribute("alt", "a harbour crane")
    shoot(page, "gallery")
    page.locator("#grid a").first.click()
    expect(page).to_have_url(f"{server.base}/ui/image/{gone}")
    expect(page.locator("#infotext")).to_contain_text("a harbour crane\nSteps: 10")
    shoot(page, "image")
    page.get_by_role("button", name="Use settings").click()
    expect(page).to_have_url(f"{server.base}/ui/generate")
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("a harbour crane")
    expect(page.get_by_label("Steps")).to_have_value("10")
    page.goto(f"{server.base}/ui/image/{gone}")
    page.get_by_role("button", name="Delete").click()
    expect(page).to_have_url(f"{server.base}/ui/gallery")
    headers = {"Authorization": f"Bearer {tokens(server)['ada']}"}
    assert httpx.get(f"{server.base}/generations/{gone}", headers=headers).status_code == 404
    assert httpx.get(f"{server.base}/generations/{keep}", headers=headers).status_code == 200
    # Select two to compare them side by side.
    api_submit(server, "ada", "a second lighthouse")
    page.goto(f"{server.base}/ui/gallery")
    boxes = page.get_by_label("Compare")
    boxes.nth(0).check()
    boxes.nth(1).check()
    page.get_by_role("button", name="Compare").click()
    expect(page.get_by_role("region", name="Comparison").locator("img")).to_have_count(2)


def test_admin_adds_a_user_and_credits_whose_token_sees_only_their_own(
    page: Page, server: ServerProcess
) -> None:
    api_submit(server, "root", "the administrator's own picture")
    sign_in(page, server, "root")
    page.get_by_role("link", name="Operator").click()
    expect(page.get_by_role("heading", name="Users")).to_be_visible()
    page.get_by_label("Name", exact=True).fill("cyd")
    page.get_by_label("Credits (empty: unlimited)").fill("5")
    page.get_by_role("button", name="Add user").click()
    shown = page.locator("#new-token")
    expect(shown).to_contain_text("Token for cyd (shown once): drk_")
    token = shown.inner_text().rsplit(" ", 1)[-1]
    page.get_by_label("Credits to add for cyd").fill("10")
    page.get_by_role("button", name="Add credits for cyd").click()
    expect(page.locator("#users tbody tr", has_text="cyd")).to_contain_text("15")
    shoot(page, "operator")
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{server.base}/ui/signin")
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#who")).to_have_text("cyd")
    expect(page.get_by_role("link", name="Operator")).to_be_hidden()
    page.goto(f"{server.base}/ui/gallery")
    expect(page.locator("#count")).to_have_text("0 generation(s), page 1 of 1")


def test_a_user_sees_no_operator_page_and_its_api_is_forbidden(
    page: Page, server: ServerProcess
) -> None:
    sign_in(page, server, "ada")
    expect(page.get_by_role("link", name="Operator")).to_be_hidden()
    page.goto(f"{server.base}/ui/operator")
    expect(page.get_by_role("alert")).to_have_text("Only administrators can see this page.")
    headers = {"Authorization": f"Bearer {tokens(server)['ada']}"}
    for path in ("/admin/users", "/admin/queue", "/admin/activity"):
        response = httpx.get(f"{server.base}{path}", headers=headers)
        assert response.status_code == 403 and response.json()["error"]["code"] == "FORBIDDEN"


def test_pages_are_served_with_a_strict_policy(server: ServerProcess) -> None:
    for path in ("/ui/generate", "/ui/static/js/api.js", "/ui/signin"):
        response = httpx.get(f"{server.base}{path}")
        assert response.status_code == 200
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert response.headers["x-content-type-options"] == "nosniff"
    page = httpx.get(f"{server.base}/ui/generate").text
    assert "<script>" not in page and "http://" not in page and "https://" not in page


def test_edit_with_a_painted_mask_keeps_the_rest_of_the_image(
    page: Page, server: ServerProcess, tmp_path: Path
) -> None:
    import base64
    import io

    from PIL import Image

    source = Image.linear_gradient("L").resize((256, 256)).convert("RGB")
    path = tmp_path / "photo.png"
    source.save(path)
    sign_in(page, server, "ada")
    page.goto(f"{server.base}/ui/edit")
    page.get_by_label("Image", exact=True).set_input_files(str(path))
    canvas = page.locator("#mask")
    expect(canvas).to_have_attribute("width", "256")
    box = canvas.bounding_box()
    assert box is not None
    # Paint a stroke across the left quarter of the image.
    page.mouse.move(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.8, steps=8)
    page.mouse.up()
    page.get_by_label("Prompt", exact=True).fill("a red fox")
    page.get_by_label("Steps").fill("10")
    page.get_by_role("button", name="Generate").click()
    result = page.locator("#results img")
    expect(result).to_have_count(1, timeout=120_000)
    shoot(page, "edit")
    data = result.get_attribute("src").partition(",")[2]
    edited = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
    right = (128, 0, 256, 256)
    assert edited.crop(right).tobytes() == source.crop(right).tobytes()
    assert edited.crop((0, 50, 64, 200)).tobytes() != source.crop((0, 50, 64, 200)).tobytes()
    history = httpx.get(
        f"{server.base}/generations/history",
        headers={"Authorization": f"Bearer {tokens(server)['ada']}"},
    ).json()
    assert history["items"][0]["prompt"] == "a red fox"
    # Its page shows the input image and the mask it was made from.
    page.goto(f"{server.base}/ui/image/{history['items'][0]['request_id']}")
    expect(page.get_by_role("img", name="Input image")).to_be_visible()
    expect(page.get_by_role("img", name="Mask")).to_be_visible()
