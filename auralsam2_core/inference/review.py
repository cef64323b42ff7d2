"""Things a reviewer looks at: PNG masks, a tinted overlay video with the original sound, and
a sounding timeline plot. All are rendered from a results document, after the run."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from auralsam2_core.atomic import atomic_path
from auralsam2_core.inference.results import objects
from auralsam2_core.inference.rle import decode
from auralsam2_core.media.video import iter_frames, video_stream

TINT = np.array([255, 40, 40], np.float32)  # red: the one object of AVS results
#: One tint per Ref-AVS query, in the queries' order (cycled beyond six).
TINTS = [TINT, *(np.array(c, np.float32) for c in
                 ((40, 120, 255), (40, 200, 60), (255, 200, 0), (200, 60, 255), (0, 220, 220)))]
ALPHA = 0.45


def write_png_masks(doc: dict, out_dir: str | os.PathLike) -> Path:
    """One 0/255 PNG per pre-labelled frame: ``<out_dir>/<frame index, 6 digits>.png``; with
    several objects (Ref-AVS queries), one folder per object: ``<out_dir>/<k>/`` (k: the
    query's position; its text is in ``<out_dir>/<k>/query.txt``)."""
    out = Path(out_dir)
    objs = objects(doc)
    for k, obj in enumerate(objs):
        folder = out / str(k) if len(objs) > 1 else out
        folder.mkdir(parents=True, exist_ok=True)
        if len(objs) > 1:
            (folder / "query.txt").write_text(obj["label"] + "\n", encoding="utf-8")
        for f in obj["frames"]:
            Image.fromarray(decode(f["mask"]).astype(np.uint8) * 255).save(
                folder / f"{f['index']:06d}.png")
    return out


def _even(n: int) -> int:
    return max(2, n - n % 2)


def write_overlay(video: str | os.PathLike, doc: dict, out_path: str | os.PathLike, *,
                  max_side: int = 1280) -> Path:
    """H.264 review video: masks tinted red, the sounding probability as a bar at the top,
    and the source's audio track (the one the results heard) copied in unchanged (no
    re-encoding). Frames keep their own timestamps (VFR stays in sync) and time 0 is the
    video's start, as in the results."""
    tinted = [({f["index"]: f for f in obj["frames"]}, TINTS[k % len(TINTS)])
              for k, obj in enumerate(objects(doc))]
    width, height = doc["video"]["width"], doc["video"]["height"]
    scale = min(1.0, max_side / max(width, height))
    w, h = _even(round(width * scale)), _even(round(height * scale))
    fps = doc["video"]["fps"] or 25.0
    out_path = Path(out_path)
    with (atomic_path(out_path, keep_suffix=True) as tmp,  # PyAV picks MP4 by the suffix
          av.open(str(video)) as src, av.open(str(tmp), "w") as dst):
        vs = dst.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"crf": "23", "preset": "veryfast"}
        vs.time_base = Fraction(1, 90000)
        audio = doc["video"].get("audio")  # the track the results were made from
        tracks = list(src.streams.audio)
        track = audio.get("track", 0) if audio else 0  # unrecorded: the first (older files)
        audio_in = tracks[track] if track < len(tracks) else None
        audio_out = dst.add_stream_from_template(audio_in) if audio_in is not None else None
        last_pts = -1
        for frame in iter_frames(video, fps_hint=fps):
            img = np.asarray(Image.fromarray(frame.rgb).resize((w, h), Image.BILINEAR),
                             np.float32)
            bar_h = max(2, h // 60)
            for k, (masks, tint) in enumerate(tinted):  # one bar per object, stacked
                rec = masks.get(frame.index)
                if rec is not None:
                    m = np.asarray(Image.fromarray(decode(rec["mask"])).resize((w, h)), bool)
                    img[m] = img[m] * (1 - ALPHA) + tint * ALPHA
                    bar = int(round(rec["sounding_prob"] * w))
                    img[k * bar_h:(k + 1) * bar_h, :bar] = tint
            vf = av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")
            vf.pts = last_pts = max(round(frame.time * 90000), last_pts + 1)
            vf.time_base = vs.time_base
            for packet in vs.encode(vf):
                dst.mux(packet)
        for packet in vs.encode():
            dst.mux(packet)
        if audio_out is not None:
            v = video_stream(src)
            start = v.start_time * v.time_base if v.start_time is not None else 0
            shift = round(start / audio_in.time_base)  # video start, in audio ticks
            for packet in src.demux(audio_in):
                if packet.dts is None or packet.pts is None or packet.pts < shift:
                    continue  # flush packets, and sound from before the first frame
                packet.pts, packet.dts = packet.pts - shift, packet.dts - shift
                packet.stream = audio_out
                dst.mux(packet)
    return out_path


def write_timeline(doc: dict, out_path: str | os.PathLike) -> Path:
    """PNG plot of the sounding probability over time with the detected intervals shaded
    (one line per object)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objs = objects(doc)
    fig, ax = plt.subplots(figsize=(10, 2.6), dpi=100)
    times: list[float] = []
    for k, obj in enumerate(objs):
        colour = TINTS[k % len(TINTS)] / 255
        times = [f["time"] for f in obj["frames"]] or times
        for iv in obj["intervals"]:
            ax.axvspan(iv["start_time"], iv["end_time"], color=colour, alpha=0.18, lw=0)
        ax.plot([f["time"] for f in obj["frames"]], [f["sounding_prob"] for f in obj["frames"]],
                color=colour, lw=1.2, label=obj["label"])
    if len(objs) > 1:
        ax.legend(fontsize=7, loc="upper right")
    rule = doc.get("hysteresis", {})
    for y in (rule.get("enter"), rule.get("exit")):
        if y is not None:
            ax.axhline(y, color="grey", lw=0.6, ls="--")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(0, max(times[-1] if times else 0, doc["video"].get("duration") or 0) or 1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("p(sounding)")
    n = sum(len(o["intervals"]) for o in objs)
    ax.set_title(f"{doc['video']['name']}: {n} sounding interval(s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return Path(out_path)
