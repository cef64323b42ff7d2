"""What an annotator sees of the pre-labels in Label Studio 1.23.2's own editor (issue #17).

A real Label Studio (the session's server, see tests/helpers/label_studio_server.py) holds
projects made from the shipped templates; the backend pre-labels generated clips with the
bundled demo model through ``auralsam2 labelstudio prelabel``'s code, and headless Chromium
(Debian's ``chromium`` via playwright, never ``playwright install``) opens the tasks in a 1400 x 900
window. Assertions are on the page: the editor's own state (``window.Htx``, the store Label
Studio's frontend draws from: the box it shows on a frame, the ranges, the scores), the video
element's time, and the positions of what is drawn. Screenshots go to
``$AURALSAM2_TEST_ARTIFACTS/label_studio/`` (default ``out/test-artifacts/label_studio/``; the
list is in README's Label Studio section), taken before the assertions so a run against older
code leaves the "before" pictures.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import label_studio_server as lss
from helpers.instances_media import write_two_sounding_shapes

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not lss.available(), reason="needs .venv-labelstudio and ffmpeg"),
              pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium")]

from auralsam2_core.inference import rle  # noqa: E402
from auralsam2_core.inference.instances import DEFAULT_MIN_AREA, connected_parts  # noqa: E402
from auralsam2_core.inference.results import track as sounding_track  # noqa: E402
from auralsam2_core.model_spec import ModelSpec, load_model  # noqa: E402
from auralsam2_core.training.synthetic import make_clip, write_clip  # noqa: E402
from auralsam2_plugins.label_studio import predictions as P  # noqa: E402
from auralsam2_plugins.label_studio.backend import Backend  # noqa: E402
from auralsam2_plugins.label_studio.config import LabelStudioBackendSettings  # noqa: E402
from auralsam2_plugins.label_studio.prelabel import prelabel_project  # noqa: E402

VIDEO_CONFIG, KEYFRAME_CONFIG = lss.VIDEO_CONFIG, lss.KEYFRAME_CONFIG  # the templates
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT = {"width": 1400, "height": 900}
FILE_FPS = 5.0  # the clips' rate; the template says 25


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ls(tmp_path_factory):
    return lss.shared_server(tmp_path_factory.getbasetemp() / "label-studio")


@pytest.fixture(scope="module")
def artifacts() -> Path:
    out = Path(os.environ.get("AURALSAM2_TEST_ARTIFACTS", lss.ROOT / "out" / "test-artifacts"))
    out = out / "label_studio"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def backend(ls, tmp_path_factory):
    model = load_model(ModelSpec())
    work = tmp_path_factory.mktemp("ls-ui-work")
    return Backend(LabelStudioBackendSettings(url=ls.url, api_key=lss.TOKEN, work_dir=work),
                   ModelSpec(), model=model)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("ls-ui-media")
    # One object sounds throughout and moves: a 5 fps clip in a 25 fps project.
    moving = make_clip(5, size=(192, 256), fps=FILE_FPS, seconds=2.0, num_objects=2,
                       schedule="one")
    # Two sounding stretches: three timeline rows (the box track and two ranges).
    mixed = make_clip(3, size=(192, 256), fps=FILE_FPS, seconds=4.0, num_objects=2,
                      schedule="mixed")
    return {"moving": moving, "moving_path": write_clip(moving, d / "moving.mp4"),
            "mixed": mixed, "mixed_path": write_clip(mixed, d / "mixed.mp4"), "dir": d}


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield b
        finally:
            b.close()


@contextlib.contextmanager
def editor(browser, ls, project: int, task: int):
    """A logged-in page with ``task`` open in the labelling editor, its prediction loaded."""
    page = browser.new_page(viewport=VIEWPORT)
    try:
        lss.open_task_in_editor(page, ls.url, project, task)
        page.wait_for_function("() => { const m = document.querySelector('video, audio');"
                               " const v = Htx.annotationStore.selected.names.get('video');"
                               " return m && m.readyState >= 2 && (!v || v.length > 1) }",
                               timeout=60_000)
        page.wait_for_timeout(1500)  # layout settles (panels, waveform)
        yield page
    finally:
        page.close()


def prelabelled(ls, backend, title: str, config: str, path: Path) -> tuple[int, int, dict]:
    p = ls.create_project(title, config)
    [tid] = ls.upload(p["id"], path)
    report = prelabel_project(backend, p["id"], progress=False)
    assert report["created"] == 1, report
    [pred] = ls.predictions(tid)
    return p["id"], tid, pred


def engine_doc(backend, task_id: int) -> dict:
    """The engine's results the backend cached for the task (what the prediction came from)."""
    [path] = backend._results_dir().glob(f"task-{task_id}-*.json")
    return backend.cached(path.stem)


def seek(page, frame: int) -> dict:
    """Go to Label Studio frame ``frame`` the way its frame controls do, and read back what is
    on screen: the frame number, the video's time, and the box the editor draws there."""
    page.evaluate("f => Htx.annotationStore.selected.names.get('video').setFrame(f)", frame)
    page.wait_for_function("f => { const v = document.querySelector('video');"
                           " return Htx.annotationStore.selected.names.get('video').frame === f &&"
                           " !v.seeking && v.readyState >= 2 }", arg=frame, timeout=30_000)
    return page.evaluate("""f => {
        const v = document.querySelector('video');
        const r = Htx.annotationStore.selected.regions.find(r => r.type === 'videorectangleregion');
        const s = r.getShape(f);
        return {frame: Htx.annotationStore.selected.names.get('video').frame, time: v.currentTime,
                visible: r.isInLifespan(f) && !!s, box: s && [s.x, s.y, s.width, s.height]};
    }""", frame)


def file_frame_at(doc: dict, time: float) -> int:
    """The file frame a browser shows at ``time``: the last one starting at or before it."""
    times = [f["time"] for f in sounding_track(doc)["frames"]]
    return max(0, int(np.searchsorted(times, time + 1e-6, side="right")) - 1)


# --------------------------------------------------------------------------- 1. frame rate


def test_box_sits_on_the_sounding_shape_at_every_label_studio_frame(ls, backend, media,
                                                                   browser, artifacts,
                                                                   caplog):
    """A 5 fps video in the 25 fps template: on each of Label Studio's 50 frames the box is
    the one of the file frame on screen (it used to slide between keyframes and vanish after
    frame 46), the range reaches the last frame, and the mismatch is said."""
    caplog.set_level(logging.WARNING, logger="auralsam2.labelstudio")
    pid, tid, pred = prelabelled(ls, backend, "frame rate 25 vs 5", VIDEO_CONFIG,
                                 media["moving_path"])
    doc = engine_doc(backend, tid)
    clip = media["moving"]
    h, w = clip.frames.shape[1:3]
    with editor(browser, ls, pid, tid) as page:
        length = page.evaluate("() => Htx.annotationStore.selected.names.get('video').length")
        seen = {}
        for f in range(1, length + 1):
            seen[f] = seek(page, f)
            if f in (44, 47, 50):
                page.screenshot(path=artifacts / f"video_framerate_frame{f}.png")
        ranges = page.evaluate("""() => Htx.annotationStore.selected.regions
            .filter(r => r.type === 'timelineregion').map(r => r.ranges)""")
        page.locator(".lsf-tree-node-content-wrapper").first.click()  # the box track
        note = page.locator(".lsf-detailed-region__meta-text").first
        with contextlib.suppress(playwright.Error):  # asserted below, after the boxes
            note.wait_for(timeout=15_000)
        page.screenshot(path=artifacts / "video_framerate_warning.png")
        shown_note = note.inner_text() if note.count() else ""
    assert length == 50  # Label Studio numbers 2 s at 25 fps
    for f, s in seen.items():
        k = file_frame_at(doc, s["time"])
        frame = sounding_track(doc)["frames"][k]
        want = P.mask_box(rle.decode(frame["mask"]))
        assert s["visible"], f"no box on Label Studio frame {f} (file frame {k})"
        assert max(abs(a - b) for a, b in zip(s["box"], want, strict=True)) <= \
            backend.settings.keyframe_tolerance + 1e-3, (f, k, s["box"], want)
        # ...and that box holds the shape that sounds there (the ground truth).
        x0, y0 = int(s["box"][0] * w / 100), int(s["box"][1] * h / 100)
        x1 = int(np.ceil((s["box"][0] + s["box"][2]) * w / 100))
        y1 = int(np.ceil((s["box"][1] + s["box"][3]) * h / 100))
        gt = clip.sounding_mask[k]
        assert gt[y0:y1, x0:x1].sum() >= 0.6 * gt.sum(), (f, k)
    assert ranges == [[{"start": 1, "end": 50}]]
    # The mismatch is said in the log and in the region's details (its meta text), where
    # annotators look.
    assert "Frame rate mismatch" in caplog.text and 'framerate="5"' in caplog.text
    assert "Frame rate mismatch" in shown_note and 'framerate="5"' in shown_note
    assert pred["result"][0]["meta"]["text"][0].startswith("Frame rate mismatch")


def test_same_rate_needs_no_warning(backend, media, caplog):
    doc = {"video": {"fps": 25.0, "name": "a.mp4"}}
    assert P.framerate_warning(doc["video"], 25.0) is None
    assert "5 fps" in P.framerate_warning({"fps": 5.0}, 25.0)


# --------------------------------------------------------------------------- 2. scores


def test_scores_are_the_models_confidence(ls, backend, media, browser, artifacts):
    """The prediction score (shown as a percentage on the prediction's tab) and each region's
    score (shown in the region list) are the model's confidence from its own outputs; the
    review priority is its own number in the regions' details."""
    pid, tid, pred = prelabelled(ls, backend, "scores", VIDEO_CONFIG, media["mixed_path"])
    doc = engine_doc(backend, tid)
    frames = sounding_track(doc)["frames"]
    conf = np.mean([f["sounding_prob"] * f["predicted_iou"] if f["sounding_prob"] >= 0.5
                    else 1 - f["sounding_prob"] for f in frames])
    assert pred["score"] == pytest.approx(conf, abs=1e-4)
    track, *ranges = pred["result"]
    boxed = [f for f in frames if f["sounding_prob"] >= 0.5 and rle.decode(f["mask"]).any()
             and any(iv["start_frame"] <= f["index"] <= iv["end_frame"]
                     for iv in sounding_track(doc)["intervals"])]
    assert track["score"] == pytest.approx(
        np.mean([f["sounding_prob"] * f["predicted_iou"] for f in boxed]), abs=1e-4)
    for r, iv in zip(ranges, sounding_track(doc)["intervals"], strict=True):
        part = frames[iv["start_frame"]:iv["end_frame"] + 1]
        assert r["score"] == pytest.approx(
            np.mean([f["sounding_prob"] * f["predicted_iou"] for f in part]), abs=1e-4)
        assert r["score"] < 0.999  # ranges showed 1.00 whatever the masks were
        rp = np.mean([f["review_priority"] for f in part])
        assert f"review priority {rp:.2f}" in r["meta"]["text"][0]
    with editor(browser, ls, pid, tid) as page:
        page.screenshot(path=artifacts / "video_scores.png")
        text = page.locator("body").inner_text()
        shown = page.evaluate("() => Htx.annotationStore.selected.regions.map(r => r.score)")
    assert f"{100 * pred['score']:.2f}%" in text  # the prediction's tab
    assert shown == [r["score"] for r in pred["result"]]
    for r in pred["result"]:
        assert f"{r['score']:.2f}" in text  # the region list


def test_confident_prediction_outscores_a_meaningless_one():
    """Per-frame model outputs as stored in the results. A confident, right-looking track of
    a moving object (its mask changes from frame to frame, so its review priority is high)
    against an unsure one on a static blob: the old score (1 − mean review priority, driven
    by mask change) ranked the unsure one first; the confidence does not."""
    def frame(i, p, iou, rp):
        return {"index": i, "time": i / 5, "sounding_prob": p, "predicted_iou": iou,
                "mask_score": 0.9, "review_priority": rp}

    confident = {"frames": [frame(i, 0.99, 0.92, 0.7) for i in range(10)]}
    meaningless = {"frames": [frame(i, 0.62, 0.35, 0.65) for i in range(10)]}
    assert P.prediction_score(confident) > 0.85 > 0.3 > P.prediction_score(meaningless)
    assert P.review_priority(confident["frames"]) > P.review_priority(meaningless["frames"])
    # A task the model calls silent throughout is a confident "nothing sounds".
    silent = {"frames": [frame(i, 0.02, 0.8, 0.04) for i in range(10)]}
    assert P.prediction_score(silent) == pytest.approx(0.98)


# --------------------------------------------------------------------------- 3. buttons


VISIBLE_JS = """e => { const r = e.getBoundingClientRect();
    if (!r.height) return false;
    for (let a = e.parentElement; a; a = a.parentElement) {  // not clipped by a scroller
        const s = getComputedStyle(a);
        if (/(hidden|auto|scroll|clip)/.test(s.overflowX + s.overflowY)) {
            const q = a.getBoundingClientRect();
            if (r.top < q.top - 1 || r.bottom > q.bottom + 1) return false; } }
    return r.top >= 0 && r.bottom <= innerHeight }"""


def _fully_visible(page, selector: str) -> list[bool]:
    """For each element matching ``selector``: is all of its height in view (inside the
    window and every scrolling box around it)?"""
    return page.eval_on_selector_all(selector, f"es => es.map({VISIBLE_JS})")


def _label_buttons(page) -> list[dict]:
    return page.evaluate("""() => Array.from(document.querySelectorAll('.lsf-label'))
        .map(e => ({text: e.innerText.replace(/\\s+/g, ' ').trim(),
                    colour: getComputedStyle(e).getPropertyValue('--color') ||
                            getComputedStyle(e).borderLeftColor}))""")


def test_label_buttons_read_clearly(ls, backend, media, browser, artifacts):
    pid, tid, _ = prelabelled(ls, backend, "buttons", VIDEO_CONFIG, media["moving_path"])
    with editor(browser, ls, pid, tid) as page:
        page.screenshot(path=artifacts / "video_label_buttons.png")
        buttons = _label_buttons(page)
        rows = page.locator("body").inner_text()
    texts = [b["text"] for b in buttons]
    assert not any("blank" in t.lower() for t in texts), texts
    assert len(texts) == 2 and len(set(texts)) == 2, texts
    assert any("box" in t for t in texts) and any("time" in t for t in texts), texts
    assert len({b["colour"] for b in buttons}) == 2, buttons  # not two identical buttons
    assert "Sounding object (box)" in rows and "Sound on (time range)" in rows


# --------------------------------------------------------------------------- 4. layout


def test_timeline_rows_fit_a_900px_window(ls, backend, media, browser, artifacts):
    pid, tid, pred = prelabelled(ls, backend, "layout", VIDEO_CONFIG, media["mixed_path"])
    assert len(pred["result"]) == 3  # the box track and two ranges: three timeline rows
    with editor(browser, ls, pid, tid) as page:
        page.screenshot(path=artifacts / "video_layout_900px.png")
        rows = _fully_visible(page, ".lsf-keypoints")  # one timeline row per region
        names = page.eval_on_selector_all(".lsf-keypoints__name", "es => es.map(e => e.innerText)")
        labels = _fully_visible(page, ".lsf-label")
        video = _fully_visible(page, "video + canvas, [class*=video] canvas")
    assert len(rows) == 3 and all(rows), rows
    assert sorted(names) == ["Sound on (time range)"] * 2 + ["Sounding object (box)"], names
    assert labels and all(labels) and video and any(video)


def test_keyframe_task_shows_sound_and_image_without_scrolling(ls, backend, media, browser,
                                                               artifacts):
    """Keyframe tasks: the player sits above the image, both in view, and the keyframe's
    time is written above the player (Label Studio 1.23's Audio has no start-time option:
    its player starts at 0 s whatever the link's #t= says)."""
    video = media["mixed_path"]
    k = 12
    pid, tid = ls.keyframe_task("keyframe layout", video, k, media["dir"] / "keyframe.png",
                                (512, 384), time=k / FILE_FPS)
    report = prelabel_project(backend, pid, progress=False)
    assert report["created"] == 1, report
    with editor(browser, ls, pid, tid) as page:
        page.screenshot(path=artifacts / "keyframe_layout_900px.png")
        wave = page.locator("[class*=waveform] canvas, [class*=audio] canvas").first
        image = page.locator(".lsf-main-content img").first
        seen = [page.evaluate(f"s => ({VISIBLE_JS})(document.querySelector(s))", s)
                for s in ("[class*=waveform] canvas, [class*=audio] canvas",
                          ".lsf-main-content img")]
        wave_box, image_box = wave.bounding_box(), image.bounding_box()
        text = page.locator("body").inner_text()
    assert seen == [True, True], seen  # no scrolling to reach the player or the image
    assert wave_box["y"] + wave_box["height"] <= image_box["y"] + 1  # player above image
    assert f"this keyframe is at {k / FILE_FPS:g} s (frame {k + 1})" in text


# --------------------------------------------------------------------------- 5. instances



# --------------------------------------------------------------------------- 5. instances


DRAWN_JS = """() => {
    // Each box region and the rectangle Konva draws for it on the current frame: its shape in
    // the editor's store (percent of the frame) and the drawn rectangle in video pixels (the
    // region layer's coordinates, where the video is videoDimensions x ratio, times zoom).
    const v = Htx.annotationStore.selected.names.get('video'), c = v.ref.current;
    const scale = c.videoDimensions.ratio * c.zoom;
    const rects = Konva.stages.flatMap(s => s.find('Rect')).filter(r => r.isVisible());
    return Htx.annotationStore.selected.regions
        .filter(r => r.type === 'videorectangleregion').map(r => {
            const s = r.isInLifespan(v.frame) && r.getShape(v.frame);
            const drawn = rects.filter(k => k.id().split('#')[0] === r.id.split('#')[0])
                .map(k => k.getClientRect({skipStroke: true, relativeTo: k.getLayer()}));
            return {id: r.id, shape: s ? [s.x, s.y, s.width, s.height] : null,
                    drawn: drawn.map(d => [d.x / scale, d.y / scale,
                                           d.width / scale, d.height / scale])};
        });
}"""


def drawn_boxes(page, frame: int) -> tuple[float, list[dict]]:
    """Go to ``frame``: the video's time there and each box region as drawn (``DRAWN_JS``)."""
    time = seek(page, frame)["time"]
    page.wait_for_timeout(300)  # Konva redraws after the frame change
    return time, page.evaluate(DRAWN_JS)


def coverage(box_px, mask: np.ndarray) -> float:
    """Share of ``mask``'s pixels inside the pixel box ``(x, y, w, h)``."""
    x, y, w, h = box_px
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    x1, y1 = int(np.ceil(x + w)), int(np.ceil(y + h))
    return float(mask[max(y0, 0):y1, max(x0, 0):x1].sum() / max(mask.sum(), 1))


def box_list(page) -> list[str]:
    """The region list's box entries (the outliner on the right)."""
    return [t for t in page.eval_on_selector_all(".lsf-tree-node-content-wrapper",
                                                 "es => es.map(e => e.innerText)")
            if "Sounding object (box)" in t]


def test_two_sounding_shapes_get_one_box_each(ls, backend, media, browser, artifacts,
                                              tmp_path):
    """Instances (issue #17.9), in the editor: two shapes sound at once. With
    ``AURALSAM2_INSTANCES`` on, the region list holds two box tracks and, on every checked
    frame, each drawn box sits on its own shape (the same shape throughout); off, one box
    spans both (the "before" picture)."""
    path, clip = write_two_sounding_shapes(media["dir"] / "two shapes.mp4")
    h, w = clip.frames.shape[1:3]
    on = Backend(LabelStudioBackendSettings(url=ls.url, api_key=lss.TOKEN, work_dir=tmp_path / "on",
                                            instance_min_area=DEFAULT_MIN_AREA), ModelSpec(),
                 model=backend.model)
    assert LabelStudioBackendSettings.from_env({"AURALSAM2_INSTANCES": "1"}).instance_min_area == \
        DEFAULT_MIN_AREA  # what the test's settings stand for
    checked = range(1, 40, 5)  # Label Studio frames (25 fps) showing file frames 0, 1, ... 7
    seen = {}
    for name, b in (("off", backend), ("on", on)):
        pid, tid, _ = prelabelled(ls, b, f"two sounding shapes, instances {name}",
                                  VIDEO_CONFIG, path)
        with editor(browser, ls, pid, tid) as page:
            boxes = {f: drawn_boxes(page, f) for f in checked}
            drawn_boxes(page, 11)
            page.screenshot(path=artifacts / f"video_two_shapes_instances_{name}.png")
            seen[name] = {"boxes": boxes, "list": box_list(page), "doc": engine_doc(b, tid)}
    doc = seen["on"]["doc"]
    owners: dict[str, set[int]] = {}
    for f in checked:
        time, regions = seen["on"]["boxes"][f]
        k = file_frame_at(doc, time)
        assert k == (f - 1) // 5
        mask = rle.decode(sounding_track(doc)["frames"][k]["mask"])
        parts = len(connected_parts(mask))
        shapes = [clip.object_masks[s, k] & clip.sounding[s, k, None, None]
                  for s in range(2)]
        # off: one box, drawn over both shapes
        [whole] = seen["off"]["boxes"][f][1]
        [drawn] = whole["drawn"]
        assert all(coverage(drawn, m) >= 0.6 for m in shapes), (f, drawn)
        # on: as many boxes drawn as the frame's mask has parts (a box is hidden, not
        # interpolated, where its shape is not found), each on one shape only
        shown = [r for r in regions if r["drawn"]]
        assert len(regions) == 2 and len(shown) == parts, (f, parts, regions)
        for r in shown:
            [drawn] = r["drawn"]
            # the drawn rectangle is the region's shape there (percent -> pixels)
            sx, sy, sw, sh = r["shape"]
            assert drawn == pytest.approx([sx * w / 100, sy * h / 100, sw * w / 100,
                                           sh * h / 100], abs=1.0), (f, r)
            cover = [coverage(drawn, m) for m in shapes]
            mine = int(np.argmax(cover))
            assert cover[mine] >= 0.6 and cover[1 - mine] <= 0.1, (f, cover)
            assert drawn[2] * drawn[3] < 0.5 * whole["drawn"][0][2] * whole["drawn"][0][3]
            owners.setdefault(r["id"], set()).add(mine)
    both = sum(all(r["drawn"] for r in seen["on"]["boxes"][f][1]) for f in checked)
    assert both >= 6, both  # both shapes found on (nearly) every frame
    assert len(owners) == 2 and all(len(o) == 1 for o in owners.values()), owners
    assert set().union(*owners.values()) == {0, 1}  # the two boxes on the two shapes
    assert len(seen["on"]["list"]) == 2 and len(seen["off"]["list"]) == 1, seen
