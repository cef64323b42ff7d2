#!/usr/bin/env python3
"""Cost of K Ref-AVS queries against one, through the engine (``prelabel`` with
``PrelabelOptions(queries=...)``), measured in one run.

The engine runs SAM2's image encoder once per clip for all queries; only the fuser and SAM2's
tracking repeat per query. Goal (issue #14): K queries cost at most
``encoder + K x (fuser + tracking)``, where the encoder time is measured (forward hooks) in the
one-query run and ``fuser + tracking`` is the rest of that run. Ratios printed last:

* ``k_vs_bound``: time of K queries / (encoder + K x rest of one query); <= 1 meets the goal;
* ``k_vs_one``: time of K queries / time of one (the cost of the extra queries);
* ``k_vs_separate_runs``: time of K queries / K separate one-query runs;
* ``extra_query_vs_one``: the added time per extra query / the time of one query;
* ``encoder_calls_k_vs_one``: image-encoder calls with K queries / with one (1: shared).

Random weights (timings only) and the demo's word-level text encoder.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_output_args, apply_quick, finish, make_video  # noqa: E402

from auralsam2_core.inference.engine import PrelabelOptions, prelabel  # noqa: E402
from auralsam2_core.modeling.build import build_auralsam2  # noqa: E402
from auralsam2_core.modeling.text_encoder import tiny_word_text_encoder  # noqa: E402

WORDS = ["the red disc", "a blue square", "the green triangle", "the sounding object",
         "a yellow circle", "the white shape", "one black square", "the purple disc"]


class EncoderClock:
    """Time and calls of SAM2's image encoder (forward pre/post hooks)."""

    def __init__(self, model) -> None:
        self.seconds, self.calls, self._t0 = 0.0, 0, 0.0
        enc = model.sam2.image_encoder
        self._handles = [enc.register_forward_pre_hook(self._start),
                         enc.register_forward_hook(self._stop)]

    def _start(self, *_):
        self._t0 = time.perf_counter()

    def _stop(self, *_):
        self.seconds += time.perf_counter() - self._t0
        self.calls += 1

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def timed_run(model, video, opts, repeats: int) -> tuple[float, float, int]:
    """Best wall time of ``repeats`` runs, with that run's encoder time and calls."""
    best = None
    for _ in range(repeats):
        clock = EncoderClock(model)
        t0 = time.perf_counter()
        try:
            n = sum(1 for _ in prelabel(model, video, opts))
        finally:
            clock.close()
        wall = time.perf_counter() - t0
        assert n > 0
        if best is None or wall < best[0]:
            best = (wall, clock.seconds, clock.calls)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="sam2.1_hiera_t")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--fps", type=int, default=10)
    p.add_argument("--queries", type=int, default=4, help="K")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--fuser-config", help="JSON fuser config (default: the authors')")
    add_output_args(p)
    args = apply_quick(p, {"size": 64, "seconds": 1.0, "repeats": 1,
                           "fuser_config": '{"f_depths": [1, 1, 1]}'})
    if not 2 <= args.queries <= len(WORDS):
        p.error(f"--queries must be 2..{len(WORDS)}")
    torch.manual_seed(0)
    model = build_auralsam2(args.config, image_size=args.size, device="cpu",
                            fuser_config=json.loads(args.fuser_config) if args.fuser_config
                            else None, variant="refavs", text_encoder=tiny_word_text_encoder())
    video = make_video(Path(tempfile.gettempdir()) / "auralsam2-bench" /
                       f"clip_{args.seconds:g}s_{args.fps}fps.mp4", args.seconds, args.fps)
    one = PrelabelOptions(queries=WORDS[:1])
    many = PrelabelOptions(queries=WORDS[:args.queries])
    list(prelabel(model, video, one))  # warm-up
    t1, enc1, calls1 = timed_run(model, video, one, args.repeats)
    tk, enck, callsk = timed_run(model, video, many, args.repeats)
    k = args.queries
    rest1 = t1 - enc1  # fuser + tracking (+ decoding, text) of one query
    bound = enc1 + k * rest1
    print(f"config={args.config} size={args.size} seconds={args.seconds} fps={args.fps} "
          f"K={k}: one query {t1:.3f} s (encoder {enc1:.3f} s, {calls1} calls), "
          f"{k} queries {tk:.3f} s (encoder {enck:.3f} s, {callsk} calls), "
          f"bound {bound:.3f} s")
    ratios = {"k_vs_bound": tk / bound, "k_vs_one": tk / t1,
              "k_vs_separate_runs": tk / (k * t1),
              "extra_query_vs_one": (tk - t1) / (k - 1) / t1,
              "encoder_calls_k_vs_one": callsk / calls1}
    notes = {"k_vs_bound": f"goal <= 1: K = {k} queries vs encoder + K x (fuser + tracking)",
             "k_vs_one": f"{k} queries vs one", "k_vs_separate_runs": f"vs {k} separate runs",
             "extra_query_vs_one": "each extra query, as a share of one query's run",
             "encoder_calls_k_vs_one": "1: one image-encoder pass per clip for all queries"}
    finish(args, ratios, notes, figures={"encoder_share_one_query": enc1 / t1},
           seconds={"one": t1, "k": tk, "encoder_one": enc1, "encoder_k": enck})


if __name__ == "__main__":
    main()
