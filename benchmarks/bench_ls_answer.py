"""What a Label Studio refinement click costs outside the model, on a long video (issue #16, P4).

A click's answer is the whole video's track again: the backend reads the first pass's results,
puts the re-propagated frames in (``with_frames_replaced``) and makes the ``VideoRectangle``
keyframes and timeline ranges of every frame (``predictions.video_results``). On a long video
that, not the model, is what the annotator waits for. One run: a synthetic results document of
``--minutes`` of video (a sounding object that drifts and jitters, so keyframes are frequent, with
silent stretches), its first answer (every mask seen for the first time), then a click that
re-propagates ``--refine-frames`` frames, best of ``--repeats``. Prints:

- ``click_answer_over_first_answer``: a click's answer / the first answer (the boxes of the
  frames a click did not change are remembered);
- figures: both per 1000 frames of video, in milliseconds, and the frames.

The engine's side of a click is ``bench_refine.py``.

    .venv/bin/python benchmarks/bench_ls_answer.py --minutes 10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_output_args, apply_quick, finish  # noqa: E402

from auralsam2_core.inference.engine import FrameResult  # noqa: E402
from auralsam2_core.inference.results import (  # noqa: E402
    FORMAT,
    FORMAT_VERSION,
    Hysteresis,
    frame_record,
    make_object,
    read_results,
    with_frames_replaced,
)
from auralsam2_plugins.label_studio import predictions as P  # noqa: E402
from auralsam2_plugins.label_studio.labelconfig import parse  # noqa: E402

TEMPLATE = Path(__file__).resolve().parents[1] / "plugins/label_studio/templates/video_sounding.xml"


def frames(n: int, size: tuple[int, int], fps: float, seed: int, first: int = 0) -> list[dict]:
    """``n`` frame records: an ellipse on a random walk, silent for ~10 % of the stretches."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    cx, cy = w / 2, h / 2
    out = []
    for i in range(first, first + n):
        cx = float(np.clip(cx + rng.normal(0, 2), w * 0.2, w * 0.8))
        cy = float(np.clip(cy + rng.normal(0, 1), h * 0.2, h * 0.8))
        sounding = (i // 90) % 10 != 9
        mask = ((xx - cx) / (w * 0.1)) ** 2 + ((yy - cy) / (h * 0.15)) ** 2 < 1
        out.append(frame_record(FrameResult(i, i / fps, mask & sounding,
                                            0.9 if sounding else 0.1, 0.8, 0.7, 0.2)))
    return out


def document(records: list[dict], size: tuple[int, int], fps: float) -> dict:
    h, w = size
    n = records[-1]["index"] + 1
    obj = make_object(None, records, fps, Hysteresis())
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "status": "complete",
            "model": {"queries": []},
            "video": {"name": "synthetic.mp4", "width": w, "height": h, "fps": fps,
                      "num_frames": n, "duration": n / fps},
            "objects": [obj], "summary": {"frames": n, "objects": 1},
            "hysteresis": dataclasses.asdict(Hysteresis())}


def answer(doc: dict, cfg) -> tuple[list[dict], float]:
    return (P.video_results(doc, cfg.video_box, cfg.timeline, framerate=cfg.framerate,
                            label=None), P.prediction_score(doc, 0.5))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="video length")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--refine-frames", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    add_output_args(p)
    args = apply_quick(p, {"minutes": 0.2, "width": 160, "height": 90, "repeats": 1})
    size, cfg = (args.height, args.width), parse(TEMPLATE.read_text())
    n = int(args.minutes * 60 * args.fps)
    t0 = time.perf_counter()
    doc = document(frames(n, size, args.fps, seed=0), size, args.fps)
    path = Path(tempfile.mkdtemp(prefix="auralsam2-ls-answer-")) / "results.json"
    path.write_text(json.dumps(doc))
    print(f"{n} frames of {args.width}x{args.height} ({args.minutes:g} min at {args.fps:g} fps), "
          f"results {path.stat().st_size / 2**20:.1f} MB, made in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)

    P._BOXES.clear()  # every mask seen for the first time
    t0 = time.perf_counter()
    first, _ = answer(read_results(path), cfg)
    t_first = time.perf_counter() - t0
    # A click a third of the way in re-propagates refine_frames frames (other masks).
    start = n // 3
    part = document(frames(min(args.refine_frames, n - start), size, args.fps, seed=1,
                           first=start), size, args.fps)
    t_click = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        clicked, _ = answer(with_frames_replaced(read_results(path), part), cfg)
        t_click = min(t_click, time.perf_counter() - t0)
    if clicked == first:
        sys.exit("the click's answer did not change: the bench measures nothing")
    keyframes = sum(len(r["value"]["sequence"]) for r in first if r["type"] == "videorectangle")
    print(f"first answer: {keyframes} box keyframes; a click re-propagating "
          f"{args.refine_frames} frames, best of {args.repeats}", flush=True)
    per_k = 1000 / n * 1e3
    finish(args, {"click_answer_over_first_answer": t_click / t_first},
           figures={"first_answer_ms_per_1000_frames": t_first * per_k,
                    "click_answer_ms_per_1000_frames": t_click * per_k, "frames": n,
                    "box_keyframes": keyframes})


if __name__ == "__main__":
    main()
