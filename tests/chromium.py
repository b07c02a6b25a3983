"""A pytest plugin (tests/conftest.py loads it): the console's browser tests drive
Debian's `chromium` through the `playwright` package (`executable_path`: its own browser
download cannot work offline). Without chromium they are skipped, with one line in the
summary saying how to run them."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, sync_playwright

CHROMIUM = os.environ.get("DARKROOM_CHROMIUM") or shutil.which("chromium")
HOW = "install Debian's chromium (apt-get install chromium) or set DARKROOM_CHROMIUM"
skipped: list[str] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if CHROMIUM or os.environ.get("DARKROOM_TEST_CHROMIUM"):  # CI: fail, not skip
        return
    for item in items:
        if "tests/console/" in item.nodeid and "browser" in item.fixturenames:
            item.add_marker(pytest.mark.skip(reason=f"no chromium: {HOW}"))
            skipped.append(item.nodeid)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if skipped:
        terminalreporter.write_line(
            f"console: {len(skipped)} browser test(s) skipped: no chromium; to run them, {HOW}"
        )


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        launched.close()
