"""The FiftyOne App served for a dataset and opened in headless Chromium (Debian's
``chromium`` driven by playwright; never ``playwright install``). Nothing here is a test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
from pathlib import Path

from helpers import fiftyone_env

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def artifacts_dir() -> Path:
    out = Path(os.environ.get("AURALSAM2_TEST_ARTIFACTS",
                              fiftyone_env.ROOT / "out" / "test-artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def launch(fo, dataset) -> tuple[str, object]:
    """Serve ``dataset`` in the App on a free local port: (its URL, the session)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    session = fo.launch_app(dataset, remote=True, port=port, address="127.0.0.1", auto=False)
    return f"http://127.0.0.1:{port}/datasets/{dataset.name}", session


@contextlib.contextmanager
def page(width: int = 1400, height: int = 900):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def open_grid(pg, url: str) -> None:
    """Load the App (retrying while its server starts) and wait for the grid's first tile."""
    from playwright.sync_api import Error

    deadline = time.monotonic() + 90
    while True:
        try:
            pg.goto(url, timeout=30_000)
            break
        except Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    with contextlib.suppress(Error):  # "Explore Enterprise" covers the grid
        pg.get_by_text("Dismiss").click(timeout=15_000)
    try:
        pg.locator("canvas[canvas-loaded=true]").first.wait_for(timeout=60_000)
    except Error:
        pg.screenshot(path=artifacts_dir() / "fiftyone_grid_not_loaded.png")
        raise


def open_modal(pg, index: int = 0, tries: int = 4) -> None:
    """Open the grid's ``index``-th sample in the modal, once the App has loaded the plugins'
    operators (the modal lays out its panel tabs from them); a click the busy grid missed is
    repeated."""
    from playwright.sync_api import Error

    pg.wait_for_function(
        "() => !!localStorage.getItem('fo-sample-modal-plugins') || "
        "performance.getEntriesByType('resource').some(e => e.name.includes('/operators'))",
        timeout=60_000)
    for attempt in range(tries):
        pg.wait_for_timeout(1500)
        pg.locator("canvas[canvas-loaded=true]").nth(index).click()
        try:
            pg.locator("#modal [data-cy=modal-looker-container]").wait_for(timeout=20_000)
            break
        except Error:
            if attempt == tries - 1:
                pg.screenshot(path=artifacts_dir() / "fiftyone_modal_not_opened.png")
                raise
    pg.wait_for_timeout(1500)
