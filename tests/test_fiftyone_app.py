"""The FiftyOne App in headless Chromium: what a reviewer sees of the plugin.

Debian's ``chromium`` driven by ``playwright`` (never ``playwright install``). Screenshots are
kept in ``$AURALSAM2_TEST_ARTIFACTS`` (default ``out/test-artifacts/``; the list is in
plugins/fiftyone/README.md); each test takes its screenshots before it asserts, so a run
against older code leaves "before" pictures. Skipped when FiftyOne, playwright or
``/usr/bin/chromium`` is missing (``scripts/setup.d/20-fiftyone.sh`` installs all three).

The dataset: three short generated clips; the first is pre-labelled with the bundled demo
model (sounding on frames 1-7 of 10), the second is not, the third has no metadata (its
length is unknown to the form).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from helpers import fiftyone_env

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
from scipy import ndimage  # noqa: E402

from auralsam2_core.training.synthetic import make_clip, write_clip  # noqa: E402

from helpers import fiftyone_browser as fb  # noqa: E402
from helpers.instances_media import write_two_sounding_shapes  # noqa: E402

PLUGIN = "@auralsam2/auralsam2"
PRELABEL = f"{PLUGIN}/prelabel_sounding_objects"
OURS = ["prelabel_sounding_objects", "review_sounding_objects", "evaluate_sounding_objects"]
PARAMS = {"device": "cpu"}  # the bundled demo model
FPS, SECONDS = 5.0, 2.0  # 10 frames per clip
DASH = "\u2013"


@dataclass
class App:
    url: str
    dataset: object
    session: object
    labelled: object  # the pre-labelled sample


@pytest.fixture(scope="module")
def artifacts() -> Path:
    return fb.artifacts_dir()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """Three videos served by the App, the first pre-labelled (see the module docstring)."""
    plugins = fiftyone_env.plugins_dir(tmp_path_factory.mktemp("fo_app_plugins"))
    old_dir, old_env = fo.config.plugins_dir, os.environ.get("FIFTYONE_PLUGINS_DIR")
    fo.config.plugins_dir = os.environ["FIFTYONE_PLUGINS_DIR"] = str(plugins)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    media = tmp_path_factory.mktemp("fo_app_media")
    paths = [write_clip(make_clip(seed, size=(96, 128), fps=FPS, seconds=SECONDS),
                        media / f"{name}.mp4")
             for seed, name in ((21, "sounding"), (22, "second"), (23, "nometa"))]
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=str(p)) for p in paths])
    ds.compute_metadata()
    nometa = ds.skip(2).first()
    nometa.metadata = None  # e.g. added without compute_metadata(): length unknown
    nometa.save()
    first = ds.first()
    execute_operator(PRELABEL, dataset=ds, view=ds.select(first.id),
                     params={**PARAMS, "view_target": "CURRENT_VIEW"})
    first.reload()
    url, session = fb.launch(fo, ds)
    yield App(url, ds, session, first)
    torch.set_num_threads(threads)
    fo.config.plugins_dir = old_dir
    if old_env is None:
        os.environ.pop("FIFTYONE_PLUGINS_DIR", None)
    else:
        os.environ["FIFTYONE_PLUGINS_DIR"] = old_env
    ds.delete()


def _close_modal(page) -> None:
    if page.locator("#modal canvas").count():
        page.mouse.click(5, 5)  # the backdrop
        page.locator("#modal canvas").first.wait_for(state="detached", timeout=15_000)


def _open_modal(page, index: int = 0) -> None:
    """Open the grid's ``index``-th video (the App's session remembers an open modal)."""
    _close_modal(page)
    fb.open_modal(page, index)


def _browser_names(page) -> list[str]:
    """Operator names in the operator browser, in the order shown."""
    return page.evaluate("""() => Array.from(document.querySelectorAll(
        '[data-cy=operators-browser] .MuiDialogContent-root *'))
        .filter(e => e.children.length === 0 && !e.classList.contains('material-icons')
                && /^[a-z0-9_]+$/.test(e.textContent))
        .map(e => e.textContent)""")


def _timeline_display(page) -> str:
    """The modal timeline's position readout: "0:00.60 / 0:02.00" or "#3 / #10"."""
    m = re.search(r"(\d+:\d\d\.\d\d|#\d+) / (\d+:\d\d\.\d\d|#\d+)",
                  page.locator("#modal").inner_text())
    assert m, "no timeline readout in the modal"
    return m.group(0)


def _plot(page) -> dict:
    return page.evaluate("""() => { const g = document.querySelector('#modal .js-plotly-plot');
        return g ? {data: g.data.map(t => ({name: t.name, x: t.x, y: t.y})),
                    shapes: (g.layout.shapes || []).map(s => [s.x0, s.x1])} : null }""")


def _text(page, selector: str = "body") -> str:
    return page.locator(selector).inner_text().replace("`", "")


# ------------------------------------------------------------------------------ tests


def test_app_lists_operators_and_draws_masks(app, artifacts):
    ds = app.dataset
    assert app.labelled.frames[1]["auralsam2"].detections  # frame 1 (the thumbnail) has a mask
    with fb.page() as page:
        fb.open_grid(page, app.url)
        canvas = page.locator("canvas[canvas-loaded=true]").first
        page.wait_for_timeout(1500)
        page.screenshot(path=artifacts / "fiftyone_app_grid.png")
        with_masks = canvas.screenshot(path=artifacts / "fiftyone_app_thumbnail.png")
        page.locator('[data-cy="checkbox-frames.auralsam2"]').click()
        page.wait_for_timeout(1500)
        without = canvas.screenshot(path=artifacts / "fiftyone_app_thumbnail_off.png")
        page.locator('[data-cy="checkbox-frames.auralsam2"]').click()  # back on
        page.keyboard.press("`")  # the operator browser
        page.keyboard.type("AuralSAM2")
        page.get_by_text("AuralSAM2: pre-label sounding objects").wait_for(timeout=30_000)
        page.screenshot(path=artifacts / "fiftyone_app_operators.png")
        for label in ("AuralSAM2: pre-label sounding objects",
                      "AuralSAM2: review sounding objects, least confident first",
                      "AuralSAM2: evaluate sounding objects (AVSBench J and F)"):
            assert page.get_by_text(label).count() == 1, label
    a = np.asarray(Image.open(io.BytesIO(with_masks)).convert("RGB"), np.int16)
    b = np.asarray(Image.open(io.BytesIO(without)).convert("RGB"), np.int16)
    assert a.shape == b.shape
    changed = (np.abs(a - b).max(axis=-1) > 30).mean()
    assert changed > 0.01, f"the masks change only {changed:.2%} of the thumbnail"
    assert len(ds) == 3


def test_operator_browser_lists_auralsam2_together_and_first_for_sound(app, artifacts):
    """Issue #17.7: the browser orders by the first character of each operator's description
    (or label), so all three start with "AuralSAM2"; "sound" lists them, pre-label first."""
    with fb.page() as page:
        fb.open_grid(page, app.url)
        page.keyboard.press("`")
        page.locator("[data-cy=operators-browser]").wait_for(timeout=30_000)
        page.wait_for_function("() => document.querySelector('[data-cy=operators-browser]')"
                               ".innerText.includes('review_sounding_objects')",
                               timeout=30_000)
        page.wait_for_timeout(800)  # the dialog fades in
        page.screenshot(path=artifacts / "fiftyone_operator_browser_all.png")
        everything = _browser_names(page)
        page.keyboard.type("sound")
        page.wait_for_timeout(1000)
        page.screenshot(path=artifacts / "fiftyone_operator_browser_sound.png")
        for_sound = _browser_names(page)
        page.keyboard.press("Enter")  # runs the first (highlighted) choice
        page.get_by_text("AuralSAM2 pre-label").wait_for(timeout=30_000)
    at = [everything.index(name) for name in OURS]
    assert at == list(range(at[0], at[0] + 3)), f"not together: {everything}"
    assert at[0] < 10, f"pre-label is number {at[0] + 1} of {len(everything)}"
    assert for_sound[:3] == OURS, for_sound


def test_prelabel_form_says_what_will_happen(app, artifacts):
    """Issue #17.8: the form counts the videos, those already done (skipped) and says whether
    Execute runs it now or the App schedules it (here: no orchestrator, so "Schedule" is not
    available and a long run still runs at once)."""
    def open_form(page):
        page.keyboard.press("`")
        page.locator("[data-cy=operators-browser-search]").wait_for(timeout=30_000)
        page.keyboard.type("pre-label sounding")
        page.get_by_text("AuralSAM2: pre-label sounding objects").click()
        page.get_by_text("AuralSAM2 pre-label").wait_for(timeout=30_000)
        page.wait_for_timeout(2500)

    with fb.page() as page:
        fb.open_grid(page, app.url)
        _close_modal(page)
        open_form(page)
        page.screenshot(path=artifacts / "fiftyone_prelabel_form.png")
        first = _text(page)
        page.get_by_text("Overwrite", exact=True).click()
        page.get_by_text("3 to pre-label").wait_for(timeout=30_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=artifacts / "fiftyone_prelabel_form_overwrite.png")
        overwrite = _text(page)
        page.get_by_text("Cancel", exact=True).click()
        app.session.view = app.dataset.select(app.labelled.id)  # a reviewer's filtered view
        try:
            page.wait_for_timeout(3000)
            open_form(page)
            page.screenshot(path=artifacts / "fiftyone_prelabel_form_all_done.png")
            all_done = _text(page)
            button = page.get_by_role("button", name="Execute").count()
        finally:
            app.session.view = None
    assert ("3 videos in the dataset: 1 already pre-labelled in auralsam2 (skipped), 2 to "
            "pre-label (about 10 frames + 1 video of unknown length)") in first
    assert ("Runs at once when you press Execute, in the App's server, which stops immediate "
            f"runs after {fo.config.operator_timeout} s") in first
    assert "Schedule: not available" in first
    assert "Long runs are scheduled as delegated operations" not in first
    assert "3 videos in the dataset: 3 to pre-label (about 20 frames + 1 video" in overwrite
    assert ("The video in the current view already has results in auralsam2: Execute would "
            "skip it") in all_done
    assert "Runs at once" not in all_done and button == 1


def test_sound_panel_plays_the_sample_audio(app, artifacts):
    """Issue #17.5: the modal's "AuralSAM2: sound" panel plays the sample's own media with
    sound (not muted, volume control), draws the sounding probability on the App's time axis
    with the heard frame marked, follows the player, and moves the player on a plot click."""
    sample = app.labelled
    probs = {n: f["auralsam2"].sounding_prob for n, f in sample.frames.items()
             if f["auralsam2"] is not None}
    (interval,) = sample.auralsam2_intervals.detections
    with fb.page() as page:
        fb.open_grid(page, app.url)
        _open_modal(page, 0)
        page.screenshot(path=artifacts / "fiftyone_sound_modal.png")
        try:
            page.locator("[data-cy=panel-tab-sounding_objects_sound]").wait_for(
                timeout=30_000)
            page.locator("#modal button[title='Split horizontally']").first.click()
            audio = page.locator("#modal audio")
            audio.wait_for(timeout=30_000)
            page.wait_for_function("() => document.querySelector('#modal audio').readyState "
                                   ">= 1", timeout=30_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=artifacts / "fiftyone_sound_panel.png")
            props = audio.evaluate("e => ({src: e.src, muted: e.muted, controls: e.controls,"
                                   " volume: e.volume, duration: e.duration})")
            served = page.request.get(props["src"]).body()
            plot = _plot(page)
            box = audio.bounding_box()
            page.mouse.click(box["x"] + 25, box["y"] + box["height"] / 2)  # its play button
            page.wait_for_function("() => document.querySelector('#modal audio').currentTime"
                                   " > 0.9", timeout=30_000)
            page.wait_for_function("() => document.querySelector('#modal .js-plotly-plot')"
                                   ".data[2].x[0] >= 0.6", timeout=30_000)
            playing = audio.evaluate("e => ({t: e.currentTime, paused: e.paused})")
            heard = _plot(page)["data"][2]
            heard_text = _text(page, "#modal")
            page.screenshot(path=artifacts / "fiftyone_sound_panel_playing.png")
            page.wait_for_function("() => document.querySelector('#modal audio').ended",
                                   timeout=30_000)
            area = page.locator("#modal .js-plotly-plot .nsewdrag").first.bounding_box()
            page.mouse.click(area["x"] + area["width"] * 1.45 / SECONDS,
                             area["y"] + area["height"] / 2)  # near 1.4 s
            page.wait_for_function("() => document.querySelector('#modal audio').src"
                                   ".includes('#t=')", timeout=30_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=artifacts / "fiftyone_sound_panel_seek.png")
            seek = audio.evaluate("e => ({src: e.src, t: e.currentTime})")
            seek_plot = _plot(page)["data"][2]
            seek_text = _text(page, "#modal")
            page.locator("#modal [data-cy=modal-looker-container]").hover()
            page.keyboard.press("ArrowRight")  # the next video: not pre-labelled
            page.get_by_text("This video has no auralsam2 pre-labels").wait_for(
                timeout=30_000)
            next_audio = page.locator("#modal audio").count()
        finally:
            _close_modal(page)
    query = urllib.parse.parse_qs(urllib.parse.urlparse(props["src"]).query)
    assert query == {"filepath": [sample.filepath]}  # the sample's own media file
    assert served == Path(sample.filepath).read_bytes()
    assert props["muted"] is False and props["controls"] is True and props["volume"] == 1
    assert props["duration"] == pytest.approx(SECONDS, abs=0.1)
    prob, _, marker = plot["data"]
    assert prob["x"] == pytest.approx([(n - 1) / FPS for n in sorted(probs)])
    assert prob["y"] == pytest.approx([probs[n] for n in sorted(probs)], abs=1e-6)
    assert marker["x"] == [0, 0] and marker["name"] == "hearing #0 (0:00.00)"
    a, b = interval.support
    assert plot["shapes"] == [pytest.approx([(a - 1) / FPS, b / FPS])]
    assert not playing["paused"]
    k = round(heard["x"][0] * FPS)  # the marker sits on the start of the heard frame
    assert 3 <= k <= int(playing["t"] * FPS) and heard["x"][0] == pytest.approx(k / FPS)
    assert f"#{k} (0:0{k // 5}.{k % 5 * 20:02d})" in heard["name"]
    assert seek["src"].endswith("#t=1.400") and seek["t"] == pytest.approx(1.4, abs=0.05)
    assert seek_plot["x"] == pytest.approx([1.4, 1.4])
    assert "Hearing frame #7 (0:01.40)" in seek_text and "Hearing frame" in heard_text
    assert next_audio == 0  # the panel follows the modal to the next video


def test_interval_labels_read_like_the_app_timeline(app, artifacts):
    """Issue #17.6: an interval's frame_range / time_range are what the modal's timeline
    shows: the App draws the interval from its first frame through its last (#6 here), not
    at the next one (#7), whose start time is where time_range ends."""
    sample = app.labelled
    (interval,) = sample.auralsam2_intervals.detections
    a, b = interval.support  # FiftyOne's 1-based frames: the App draws from these
    with fb.page() as page:
        fb.open_grid(page, app.url)
        _open_modal(page, 0)
        try:
            canvas = page.locator("#modal [data-cy=modal-looker-container] canvas").first
            toggle = page.locator("#modal [data-cy=checkbox-auralsam2_intervals]")
            shown = {"time@1": _timeline_display(page)}
            page.get_by_text(shown["time@1"]).click()  # the readout switches to frames
            page.wait_for_timeout(500)
            shown["frame@1"] = _timeline_display(page)
            drawn = {}
            for n in range(2, b + 2):
                page.keyboard.press(".")
                page.wait_for_timeout(600)
                shown[f"frame@{n}"] = _timeline_display(page)
                if n in (b, b + 1):
                    with_iv = canvas.screenshot(
                        path=artifacts / f"fiftyone_interval_frame{n}.png")
                    toggle.click()
                    page.wait_for_timeout(800)
                    without = canvas.screenshot()
                    toggle.click()
                    page.wait_for_timeout(800)
                    drawn[n] = _changed(with_iv, without)
            page.get_by_text(shown[f"frame@{b + 1}"]).click()  # back to times
            page.wait_for_timeout(500)
            shown[f"time@{b + 1}"] = _timeline_display(page)
            page.locator("#modal [data-cy=sidebar-field-arrow-enabled-auralsam2_intervals]"
                         ).click()
            page.wait_for_timeout(2000)
            page.screenshot(path=artifacts / "fiftyone_interval_sidebar.png")
            sidebar = page.locator("#modal [data-cy=sidebar]").inner_text()
        finally:
            _close_modal(page)
    assert (a, b) == (1, 7)
    assert drawn[b] > 0.002 and drawn[b + 1] < 0.0005, drawn  # drawn through frame b only

    def readout(key):
        return shown[key].split(" / ")[0]

    app_frames = f"{readout('frame@1')}{DASH}{readout(f'frame@{b}')}"
    app_times = f"{readout('time@1')}{DASH}{readout(f'time@{b + 1}')}"
    assert (app_frames, app_times) == ("#0\u2013#6", "0:00.00\u20130:01.40")
    assert interval["frame_range"] == app_frames and interval["time_range"] == app_times
    assert f"frame_range\n{app_frames}" in sidebar and f"time_range\n{app_times}" in sidebar


def _changed(png_a: bytes, png_b: bytes) -> float:
    a = np.asarray(Image.open(io.BytesIO(png_a)).convert("RGB"), np.int16)
    b = np.asarray(Image.open(io.BytesIO(png_b)).convert("RGB"), np.int16)
    return float((np.abs(a - b).max(axis=-1) > 30).mean())



# ------------------------------------------------------------------------------ instances


@pytest.fixture(scope="module")
def two_shapes(app, tmp_path_factory):
    """A dataset of its own (the App above serves it too): the clip where a disc and a
    triangle sound together, pre-labelled twice by the operator, Instances off into ``whole``
    and on into ``inst``."""
    path, clip = write_two_sounding_shapes(tmp_path_factory.mktemp("fo_app_two") / "two.mp4")
    ds = fo.Dataset()
    ds.add_sample(fo.Sample(filepath=str(path)))
    ds.compute_metadata()
    for field, extra in (("whole", {}), ("inst", {"instances": True})):
        result = execute_operator(PRELABEL, dataset=ds,
                                  params={**PARAMS, "label_field": field, **extra})
        assert result.error is None, result.error
    yield ds, clip
    ds.delete()


def _video_area(png: bytes, video_hw: tuple[int, int]) -> tuple[np.ndarray, float]:
    """The part of a modal canvas screenshot the video fills (the App fits it in the canvas,
    centred) and its scale (screen pixels per video pixel)."""
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.int16)
    h, w = video_hw
    scale = min(a.shape[1] / w, a.shape[0] / h)
    x0, y0 = round((a.shape[1] - w * scale) / 2), round((a.shape[0] - h * scale) / 2)
    return a[y0:y0 + round(h * scale), x0:x0 + round(w * scale)], scale


def _overlays(drawn: bytes, bare: bytes, video_hw: tuple[int, int]) -> list[tuple]:
    """The separate things the labels draw over the video (connected regions of pixels they
    change, each at least 0.2 % of the video's area), as ``(x, y, w, h)`` boxes in video
    pixels. (With no frame labels on, the App's canvas is 5 px shorter: the test's window is
    tall enough for the video's width to set its scale, so only its offset moves.)"""
    (a, scale), (b, scale_b) = _video_area(drawn, video_hw), _video_area(bare, video_hw)
    assert a.shape == b.shape and scale == scale_b, (a.shape, b.shape)
    changed = np.abs(a - b).max(axis=-1) > 30
    labels, _ = ndimage.label(changed, structure=np.ones((3, 3), bool))
    out = []
    for k, (ys, xs) in enumerate(ndimage.find_objects(labels), 1):
        if (labels[ys, xs] == k).sum() >= 0.002 * changed.size:
            out.append((xs.start / scale, ys.start / scale, (xs.stop - xs.start) / scale,
                        (ys.stop - ys.start) / scale))
    return out


def _coverage(box, mask: np.ndarray) -> float:
    """Share of ``mask``'s pixels inside the video-pixel box ``(x, y, w, h)``."""
    x, y, w, h = box
    x0, y0 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
    x1, y1 = int(np.ceil(x + w)), int(np.ceil(y + h))
    return float(mask[y0:y1, x0:x1].sum() / max(mask.sum(), 1))


def test_two_sounding_shapes_show_as_two_detections(app, two_shapes, artifacts):
    """Instances (issue #17.9) in the modal: on the first frame the *inst* field draws two
    boxes, one on each shape, the sidebar counts two detections per frame, and the tooltip
    over each shape shows its own detection (its own ``index``); the field pre-labelled with
    Instances off draws one box over both shapes (the "before" picture)."""
    ds, clip = two_shapes
    sample = ds.first()
    h, w = clip.frames.shape[1:3]
    url = f"{app.url.rsplit('/', 1)[0]}/{urllib.parse.quote(ds.name)}"
    with fb.page(height=1000) as page:
        fb.open_grid(page, url)
        _open_modal(page, 0)
        try:
            canvas = page.locator("#modal [data-cy=modal-looker-container] canvas").first
            sidebar = {f: _text(page, f'#modal [data-cy="sidebar-field-container-frames.{f}"]')
                       for f in ("whole", "inst")}
            bb = canvas.bounding_box()
            scale = min(bb["width"] / w, bb["height"] / h)

            def at(x, y):  # video pixels -> page position
                return (bb["x"] + (bb["width"] - w * scale) / 2 + x * scale,
                        bb["y"] + (bb["height"] - h * scale) / 2 + y * scale)

            def toggle(*fields):
                for f in fields:
                    page.locator(f'#modal [data-cy="checkbox-{f}"]').click()
                page.mouse.move(*at(w - 3, h - 3))  # away from both shapes
                page.wait_for_timeout(1000)

            toggle("frames.whole")
            inst = canvas.screenshot(path=artifacts / "fiftyone_instances_on.png")
            tips = []
            for x, y in clip.centres[:, 0]:
                page.mouse.move(*at(x, y))
                tip = page.locator("[data-cy=sample-canvas-tooltip-unlocked]")
                tip.wait_for(timeout=15_000)
                tips.append(tip.inner_text())
            toggle("frames.inst")
            bare = canvas.screenshot()
            toggle("frames.whole")
            whole = canvas.screenshot(path=artifacts / "fiftyone_instances_off.png")
        finally:
            _close_modal(page)
    first = sample.frames[1]
    shapes = [clip.object_masks[k, 0] for k in range(2)]
    # the sidebar counts the video's detections: two a frame with instances, one without
    counts = {f: sum(len(fr[f].detections) for _, fr in sample.frames.items())
              for f in ("whole", "inst")}
    assert len(first["inst"].detections) == 2 and len(first["whole"].detections) == 1
    assert counts["inst"] >= 2 * counts["whole"] - 1, counts
    for f in ("whole", "inst"):
        assert re.search(rf"frames\.{f}\s+{counts[f]}\b", sidebar[f]), sidebar[f]
    # off: one box drawn over both shapes
    [drawn_whole] = _overlays(whole, bare, (h, w))
    assert all(_coverage(drawn_whole, m) >= 0.6 for m in shapes), drawn_whole
    # on: two boxes, each over one shape only, and much smaller than the one above
    drawn = _overlays(inst, bare, (h, w))
    assert len(drawn) == 2, drawn
    owners = set()
    for box in drawn:
        cover = [_coverage(box, m) for m in shapes]
        mine = int(np.argmax(cover))
        assert cover[mine] >= 0.6 and cover[1 - mine] <= 0.1, (box, cover)
        assert box[2] * box[3] < 0.5 * drawn_whole[2] * drawn_whole[3]
        owners.add(mine)
    assert owners == {0, 1}
    # hovering each shape shows its own detection of the inst field (its own index)
    def index_under(x, y):
        for d in first["inst"].detections:
            bx, by, bw, bh = d.bounding_box
            if bx * w <= x <= (bx + bw) * w and by * h <= y <= (by + bh) * h:
                return d.index
        return None

    want = [index_under(x, y) for x, y in clip.centres[:, 0]]
    assert None not in want and want[0] != want[1], want
    for tip, index in zip(tips, want, strict=True):
        assert tip.startswith("frames.inst"), tip
        assert re.search(rf"\n{index}\nindex\n", tip), tip
