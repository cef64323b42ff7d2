"""The "AuralSAM2: sound" panel of the sample modal: hear the video, see what was heard.

The App's modal plays videos muted, with no volume control. This panel (modal only; split it
beside the video with the modal's "Split horizontally" button) shows

- an audio player (``<audio controls>``, not muted, with its volume control) on the sample's
  own media file, served by the App's ``/media`` route;
- the sounding probability of every pre-labelled frame on the App's time axis (seconds from
  0, as the modal's timeline shows them; with classes, one line per class), the sounding
  intervals shaded, and a marker at the
  frame being heard, which follows the player while it plays or seeks; a click on the plot
  moves the player to that time;
- the sounding intervals in the App's terms (``0:00.00–0:01.40``, frames ``#0–#6``).

What cannot be synced (FiftyOne 1.22): the Explore modal's video runs on a playback transport
that Python panels can neither observe nor drive. ``FrameLoaderView``, ``TimelineView`` and the
``set_frame_number`` / ``set_playhead_state`` operators address the App's older timeline,
which that video only writes to; initialising that timeline from a panel (``TimelineView``)
makes its keyboard handler take over the modal's space / ``,`` / ``.`` keys. So the player does
not start or move the video: the two share the same time axis instead, and the marker shows
the frame being heard, in the App's ``#k (m:ss.cc)`` terms.
"""

from __future__ import annotations

import urllib.parse

import fiftyone.operators as foo
import fiftyone.operators.types as types
from fiftyone.core.clips import ClipsView

from . import convert, timeline
from .fields import is_owned

PANEL_NAME = "sounding_objects_sound"
PLOT = "plot"
#: One line colour per class (the plot's traces: the probability, one per class with classes,
#: the threshold, then the marker of the frame being heard, always the last trace).
CLASS_COLOURS = ("#3f9ae8", "#e8543f", "#2ca25f", "#9467bd", "#8c564b", "#e377c2",
                 "#7f7f7f", "#bcbd22")
PROGRESS_MS = 250  # how often the player reports its position while playing


def media_url(filepath: str) -> str:
    """The URL under which the App serves ``filepath`` (remote URLs are used as they are)."""
    if filepath.startswith(("http://", "https://")):
        return filepath
    return "/media?filepath=" + urllib.parse.quote(filepath, safe="")


def owned_frame_fields(dataset) -> list[str]:
    """The frame fields holding AuralSAM2 pre-labels (created by the plugin)."""
    if dataset is None or dataset.media_type != "video":
        return []
    schema = dataset.get_frame_field_schema() or {}
    return sorted(name for name in schema
                  if is_owned(dataset.get_field(f"frames.{name}"))
                  and dataset.get_field(f"{name}_summary") is not None)


def sound_track(view, sample_id: str, label_field: str) -> dict | None:
    """What the panel shows for one sample of ``view`` (a clip shows its source video):
    ``filepath``, ``fps``, ``frames`` (``[(frame_number, sounding_prob)]`` of the
    pre-labelled frames), ``classes`` (with classes: ``{class: [(frame_number, prob)]}``, in
    the classes' order; else empty), ``intervals`` (supports), ``interval_labels`` and
    ``num_frames``; None when the sample is not in ``view``."""
    if isinstance(view, ClipsView):
        ids = view.select(sample_id).values("sample_id")
        if not ids:
            return None
        sample_id = str(ids[0])
    dataset = view._root_dataset
    sel = dataset.select(sample_id)
    if not len(sel):
        return None
    (path, meta_fps, meta_frames, numbers, probs, names, class_probs, supports, labels,
     fps) = (v[0] for v in sel.values([
        "filepath", "metadata.frame_rate", "metadata.total_frame_count", "frames.frame_number",
        f"frames.{label_field}.sounding_prob", f"frames.{label_field}.classes",
        f"frames.{label_field}.class_probs", f"{label_field}_intervals.detections.support",
        f"{label_field}_intervals.detections.label", f"{label_field}_summary.fps"]))
    frames = [(int(n), float(p)) for n, p in zip(numbers, probs, strict=True) if p is not None]
    per_frame = [{"frame_number": int(n), "classes": c, "class_probs": p}
                 for n, c, p in zip(numbers, names or [], class_probs or [], strict=False)
                 if c]
    order = dict.fromkeys(name for f in per_frame for name in f["classes"])
    classes = {name: [(f["frame_number"], float(f["sounding_prob"]))
                      for f in convert.class_frames(per_frame, name)] for name in order}
    return {"filepath": path, "fps": float(fps or meta_fps or 0.0) or None,
            "num_frames": int(meta_frames or (frames[-1][0] if frames else 0)),
            "frames": frames, "classes": classes,
            "intervals": [list(s) for s in supports or []],
            "interval_labels": list(labels or [None] * len(supports or []))}


def frame_at(seconds: float, fps: float, num_frames: int) -> int:
    """The FiftyOne frame number (1-based) shown at ``seconds`` on the App's timeline."""
    return min(max(int(seconds * fps + 1e-6) + 1, 1), max(int(num_frames), 1))


def marker(frame_number: int, fps: float) -> dict:
    """The marker trace: a vertical line at the start of the frame being heard."""
    t = timeline.frame_start(frame_number, fps)
    return {"type": "scatter", "mode": "lines", "x": [t, t], "y": [0, 1],
            "name": f"hearing {timeline.frame_label(frame_number, fps)}",
            "line": {"color": "#ff6d04", "width": 3}, "hoverinfo": "name"}


def plot_traces(track: dict) -> list[dict]:
    """Probability over time (one line per class with classes), the 0.5 threshold, and the
    marker at the first frame (the last trace)."""
    fps = track["fps"]
    end = track["num_frames"] / fps
    lines = track.get("classes") or {"sounding probability": track["frames"]}
    named = bool(track.get("classes"))
    return [
        *({"type": "scatter", "mode": "lines+markers", "name": name,
           "x": [timeline.frame_start(n, fps) for n, _ in frames],
           "y": [p for _, p in frames],
           "text": [f"{timeline.frame_label(n, fps)} {name + ' ' if named else ''}p={p:.2f}"
                    for n, p in frames],
           "hoverinfo": "text",
           "line": {"color": CLASS_COLOURS[k % len(CLASS_COLOURS)], "shape": "hv"}}
          for k, (name, frames) in enumerate(lines.items())),
        {"type": "scatter", "mode": "lines", "name": "threshold", "x": [0, end],
         "y": [0.5, 0.5], "line": {"color": "#888888", "dash": "dot", "width": 1},
         "hoverinfo": "skip"},
        marker(1, fps),
    ]


def plot_layout(track: dict) -> dict:
    """Shaded sounding intervals on the App's time axis (seconds from 0)."""
    fps = track["fps"]
    shapes = [{"type": "rect", "xref": "x", "yref": "paper", "x0": (a - 1) / fps,
               "x1": b / fps, "y0": 0, "y1": 1, "fillcolor": "#ff6d04", "opacity": 0.15,
               "line": {"width": 0}, "layer": "below"} for a, b in track["intervals"]]
    return {"shapes": shapes, "showlegend": bool(track.get("classes")), "height": 220,
            "hovermode": "x", "legend": {"orientation": "h", "y": 1.12},
            "margin": {"t": 8, "l": 40, "b": 36, "r": 8},
            "xaxis": {"title": {"text": "time (as the App's timeline)"}, "ticksuffix": "s",
                      "range": [0, track["num_frames"] / fps]},
            "yaxis": {"title": {"text": "sounding probability"}, "range": [0, 1.02]}}


def interval_lines(track: dict) -> list[str]:
    fps = track["fps"]
    lines = []
    labels = track.get("interval_labels") or [None] * len(track["intervals"])
    for support, label in zip(track["intervals"], labels, strict=True):
        terms = timeline.interval_terms(support, fps)
        who = f"**{label}** " if label and track.get("classes") else ""
        lines.append(f"- {who}sounding **{terms['time_range']}** (frames "
                     f"{terms['frame_range']})")
    return lines or ["- no sounding interval"]


class SoundingObjectsSound(foo.Panel):
    @property
    def config(self):
        return foo.PanelConfig(
            name=PANEL_NAME,
            label="AuralSAM2: sound",
            surfaces="modal",
            icon="graphic_eq",
            help_markdown="Plays the video's audio and draws the AuralSAM2 sounding "
                          "probability over time, the frame being heard marked. Put it "
                          "beside the video with *Split horizontally*.",
        )

    # ------------------------------------------------------------------ events

    def on_load(self, ctx):
        self._load(ctx)

    def on_change_current_sample(self, ctx):
        self._load(ctx)

    def on_change_label_field(self, ctx):
        self._load(ctx)

    def on_audio_progress(self, ctx):
        self._hear(ctx, _event_param(ctx, "playedSeconds"))

    def on_audio_seek(self, ctx):
        self._hear(ctx, _event_param(ctx, "seconds"))

    def on_plot_click(self, ctx):
        """Move the player to the clicked time (the URL's media fragment, ``#t=``)."""
        x = _event_param(ctx, "x")
        if x is None or not ctx.panel.state.fps:
            return
        seconds = max(float(x), 0.0)
        ctx.panel.state.url = f"{ctx.panel.state.media}#t={seconds:.3f}"
        self._hear(ctx, seconds)

    # ------------------------------------------------------------------ helpers

    def _hear(self, ctx, seconds) -> None:
        state = ctx.panel.state
        if seconds is None or not state.fps:
            return
        n = frame_at(float(seconds), state.fps, state.num_frames)
        if n != state.hearing:
            state.hearing = n
            state.hearing_label = timeline.frame_label(n, state.fps)
            ctx.panel.set_data(f"{PLOT}[{state.marker_trace}]", marker(n, state.fps))

    def _load(self, ctx):
        state = ctx.panel.state
        fields = owned_frame_fields(ctx.dataset)
        lf = state.label_field if state.label_field in fields else (fields or [None])[0]
        track = None
        if ctx.current_sample and lf:
            track = sound_track(ctx.view, ctx.current_sample, lf)
        state.set({"label_field": lf, "fields": fields, "has_track": False, "message": None})
        if track is None or not track["frames"]:
            return
        if not track["fps"]:
            state.message = "the video has no frame rate"
            return
        url = media_url(track["filepath"])
        state.set({"has_track": True, "fps": track["fps"], "num_frames": track["num_frames"],
                   "media": url, "url": url, "video": track["filepath"].rsplit("/", 1)[-1],
                   "hearing": 1, "hearing_label": timeline.frame_label(1, track["fps"]),
                   "intervals_md": "\n".join(interval_lines(track)),
                   "layout": plot_layout(track)})
        traces = plot_traces(track)
        state.marker_trace = len(traces) - 1
        ctx.panel.set_data(PLOT, traces)

    def render(self, ctx):
        panel = types.Object()
        state = ctx.panel.state
        fields = state.fields or []
        if not ctx.current_sample:
            panel.md("Open a video in the modal to hear it here.", name="hint")
        elif not fields:
            panel.md("No AuralSAM2 pre-labels in this dataset yet: run **AuralSAM2: "
                     "pre-label sounding objects** first.", name="hint")
        if len(fields) > 1:
            panel.enum("label_field", fields, default=state.label_field,
                       label="Pre-label field", view=types.DropdownView(),
                       on_change=self.on_change_label_field)
        if state.has_track:
            panel.md(f"**{state.video}**: press play to hear it. Hearing frame "
                     f"**{state.hearing_label}** (the modal's timeline shows the same "
                     "times; click the plot to listen from there).", name="title")
            panel.media_player(
                "audio", state.url, controls=True, muted=False, volume=1.0,
                width="100%", height="54px", progressInterval=PROGRESS_MS,
                config={"file": {"forceAudio": True}},
                on_seek=self.on_audio_seek, on_progress=self.on_audio_progress)
            panel.plot(PLOT, layout=state.layout, height=240, width="100%",
                       config={"displayModeBar": False, "responsive": True},
                       on_click=self.on_plot_click)
            panel.md(f"Sounding intervals (`{state.label_field}_intervals`):\n\n"
                     f"{state.intervals_md}", name="intervals")
        elif ctx.current_sample and fields:
            panel.md(f"This video has no `{state.label_field}` pre-labels"
                     f"{': ' + state.message if state.message else ''}.", name="hint")
        return types.Property(panel)


def _event_param(ctx, key):
    """A player or plot event's value (panel events put them in ``params``)."""
    if key in ctx.params:
        return ctx.params[key]
    return (ctx.params.get("event_args") or {}).get(key)
