"""The FiftyOne App in headless Chromium: it lists the plugin's operators and draws the masks.

Debian's ``chromium`` driven by ``playwright`` (never ``playwright install``). Screenshots are
kept in ``$AURALSAM2_TEST_ARTIFACTS`` (default ``out/test-artifacts/``). Skipped when
FiftyOne, playwright or ``/usr/bin/chromium`` is missing (``scripts/setup.d/20-fiftyone.sh``
installs all three).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest

try:  # tests/ as a package or as a rootdir-inserted folder
    from . import fiftyone_env
except ImportError:
    import fiftyone_env

fiftyone_env.prepare()
fo = pytest.importorskip(
    "fiftyone", reason="fiftyone is not installed (bash scripts/setup.d/20-fiftyone.sh)")
playwright = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (scripts/setup.d/20-fiftyone.sh)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium")]

import torch  # noqa: E402
from fiftyone.operators import execute_operator  # noqa: E402
from PIL import Image  # noqa: E402

from auralsam2_core.synthetic import make_clip, write_clip  # noqa: E402

PARAMS = {"model": "checkpoints", "sam2_config": "sam2_hiera_t", "image_size": 64,
          "fuser_config": {"f_depths": [1, 1, 1]}, "allow_random_weights": True,
          "device": "cpu"}
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def artifacts() -> Path:
    out = Path(os.environ.get("AURALSAM2_TEST_ARTIFACTS",
                              fiftyone_env.ROOT / "out" / "test-artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """A pre-labelled one-video dataset served by the App; yields (url, dataset)."""
    plugins = fiftyone_env.plugins_dir(tmp_path_factory.mktemp("fo_app_plugins"))
    old_dir, old_env = fo.config.plugins_dir, os.environ.get("FIFTYONE_PLUGINS_DIR")
    fo.config.plugins_dir = os.environ["FIFTYONE_PLUGINS_DIR"] = str(plugins)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    video = write_clip(make_clip(21, size=(96, 128), fps=5.0, seconds=1.0),
                       tmp_path_factory.mktemp("fo_app_media") / "app.mp4")
    ds = fo.Dataset()
    ds.add_sample(fo.Sample(filepath=str(video)))
    ds.compute_metadata()
    execute_operator("@auralsam2/auralsam2/prelabel_sounding_objects", dataset=ds,
                     params=PARAMS)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fo.launch_app(ds, remote=True, port=port, address="127.0.0.1", auto=False)
    yield f"http://127.0.0.1:{port}/datasets/{ds.name}", ds
    torch.set_num_threads(threads)
    fo.config.plugins_dir = old_dir
    if old_env is None:
        os.environ.pop("FIFTYONE_PLUGINS_DIR", None)
    else:
        os.environ["FIFTYONE_PLUGINS_DIR"] = old_env
    ds.delete()


def _open(page, url: str) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            page.goto(url, timeout=30_000)
            break
        except playwright.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    with contextlib.suppress(playwright.Error):  # "Explore Enterprise" covers the grid
        page.get_by_text("Dismiss").click(timeout=15_000)


def test_app_lists_operators_and_draws_masks(app, artifacts):
    url, ds = app
    assert ds.first().frames[1]["auralsam2"].detections  # frame 1 (the thumbnail) has a mask
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        try:
            _open(page, url)
            canvas = page.locator("canvas[canvas-loaded=true]").first
            canvas.wait_for(timeout=60_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=artifacts / "fiftyone_app_grid.png")
            with_masks = canvas.screenshot(path=artifacts / "fiftyone_app_thumbnail.png")
            page.locator('[data-cy="checkbox-frames.auralsam2"]').click()
            page.wait_for_timeout(1500)
            without = canvas.screenshot(path=artifacts / "fiftyone_app_thumbnail_off.png")
            page.keyboard.press("`")  # the operator browser
            page.keyboard.type("AuralSAM2")
            page.get_by_text("AuralSAM2: pre-label sounding objects").wait_for(timeout=30_000)
            page.screenshot(path=artifacts / "fiftyone_app_operators.png")
            for label in ("AuralSAM2: pre-label sounding objects",
                          "AuralSAM2: review least confident first",
                          "AuralSAM2: evaluate sounding objects (AVSBench J and F)"):
                assert page.get_by_text(label).count() == 1, label
        finally:
            browser.close()
    a = np.asarray(Image.open(io.BytesIO(with_masks)).convert("RGB"), np.int16)
    b = np.asarray(Image.open(io.BytesIO(without)).convert("RGB"), np.int16)
    assert a.shape == b.shape
    changed = (np.abs(a - b).max(axis=-1) > 30).mean()
    assert changed > 0.01, f"the masks change only {changed:.2%} of the thumbnail"
