"""Frame numbers and times as the FiftyOne App's video timeline shows them.

FiftyOne stores frame numbers 1-based (``sample.frames[1]``, ``TemporalDetection.support``),
while the App's modal timeline (1.22) counts frames from ``#0`` and shows times as
``m:ss.cc`` from 0: FiftyOne frame ``n`` is ``#(n - 1)`` at ``(n - 1) / fps`` seconds. The
data stays 1-based (the App draws labels from it); everything the plugin *writes for a
person to read* uses these helpers so that it agrees with what the App shows.

The time format mirrors the App's own (``formatTime`` in its timeline bundle: whole
centiseconds, truncated); an interval runs from the start of its first frame to the end of its
last one, ``[(first - 1) / fps, last / fps)``, as the App's annotation timeline converts
supports. FiftyOne-independent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

DASH = "\u2013"  # en dash, as in "0:00.00–0:01.40"


def app_frame(frame_number: int) -> str:
    """``#k``, the App's timeline label of FiftyOne frame ``frame_number`` (1-based)."""
    return f"#{int(frame_number) - 1}"


def frame_start(frame_number: int, fps: float) -> float:
    """Seconds at which FiftyOne frame ``frame_number`` starts on the App's timeline."""
    return (int(frame_number) - 1) / fps


def app_time(seconds: float) -> str:
    """``m:ss.cc``, the App's timeline format (centiseconds truncated, never negative)."""
    cs = math.floor(max(float(seconds), 0.0) * 100 + 1e-6)  # 1e-6: 0.29 * 100 = 28.999...
    return f"{cs // 6000}:{cs % 6000 // 100:02d}.{cs % 100:02d}"


def frame_label(frame_number: int, fps: float | None) -> str:
    """``#k (m:ss.cc)``, or just ``#k`` without a frame rate."""
    if not fps:
        return app_frame(frame_number)
    return f"{app_frame(frame_number)} ({app_time(frame_start(frame_number, fps))})"


def interval_terms(support: Sequence[int], fps: float | None) -> dict:
    """Human-readable ``frame_range`` (``#a–#b``, both shown frames) and ``time_range``
    (``m:ss.cc–m:ss.cc``, start of the first frame to the end of the last; None without a
    frame rate) of a 1-based inclusive ``support``."""
    first, last = int(support[0]), int(support[1])
    out = {"frame_range": f"{app_frame(first)}{DASH}{app_frame(last)}", "time_range": None}
    if fps:
        out["time_range"] = f"{app_time(frame_start(first, fps))}{DASH}{app_time(last / fps)}"
    return out
