"""Streaming pre-labelling of whole videos: the one function every adapter calls.

``prelabel(model, video)`` yields one :class:`FrameResult` per frame (or per ``stride``-th
frame) in order. Frames are decoded and scaled on a background thread while the model runs
on the previous clip; the fuser sees clips of ``clip_len`` frames (the authors' T = 5) and
SAM2's memory carries across clips through a :class:`~auralsam2_core.model.TrackState` that
keeps only what memory attention can still read. Memory use therefore does not grow with the
video's length: audio is decoded alongside and only the log-mel frames still needed are kept.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from .audio_track import AudioStream
from .media import MediaError, MediaInfo, iter_frames, probe
from .model import AuralSAM2, PointPrompt, upsample_logits

log = logging.getLogger("auralsam2")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PrelabelOptions:
    clip_len: int = 5  # frames per fuser clip (the authors' T)
    stride: int = 1  # pre-label every stride-th frame
    no_audio: Literal["error", "silent"] = "error"  # "silent": every frame is "not sounding"
    prefetch_clips: int = 2  # decoded clips waiting for the model (bounds memory)
    start_frame: int = 0  # first frame to label (0-based); SAM2's memory starts there
    stop_frame: int | None = None  # label frames before this one (None: to the end)
    # Which audio track to hear: its index among the file's audio tracks (0-based, file
    # order). None: the track marked default, else the first (media.audio_stream).
    audio_track: int | None = None

    def __post_init__(self) -> None:
        if self.start_frame < 0 or (self.stop_frame is not None
                                    and self.stop_frame <= self.start_frame):
            raise ValueError(f"need 0 <= start_frame < stop_frame, got {self.start_frame}, "
                             f"{self.stop_frame}")
        if self.clip_len < 1:
            raise ValueError(f"clip_len must be >= 1, got {self.clip_len}")
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.no_audio not in ("error", "silent"):
            raise ValueError(f"no_audio must be 'error' or 'silent', got {self.no_audio!r}")
        if self.audio_track is not None and (isinstance(self.audio_track, bool) or not
                                             isinstance(self.audio_track, int)
                                             or self.audio_track < 0):
            raise ValueError(f"audio_track must be an integer >= 0 (or None for the default "
                             f"track), got {self.audio_track!r}")


@dataclass
class FrameResult:
    """One frame's pre-label. ``mask`` is at the video's display resolution."""

    index: int  # 0-based frame index in presentation order
    time: float  # seconds from the first frame's timestamp
    mask: np.ndarray  # (H, W) bool
    sounding_prob: float  # sigmoid of SAM2's object score: is the sounding object visible
    predicted_iou: float  # SAM2's IoU estimate of the chosen mask
    mask_score: float  # mean probability inside the mask (0 for an empty mask)
    review_priority: float  # 0..1, higher = look at this frame first (see review_priority)


class NoAudioError(MediaError):
    """The video has no audio track and ``no_audio="error"``."""


def review_priority(sounding_prob: float, predicted_iou: float, stability: float) -> float:
    """How much a frame needs a human: the largest of the sounding decision's uncertainty
    (1 at p = 0.5), the predicted mask error (1 - IoU, when sounding) and the instability
    w.r.t. the previous frame (1 - IoU of the two masks, when either is sounding)."""
    uncertainty = 1.0 - abs(2.0 * sounding_prob - 1.0)
    quality = (1.0 - predicted_iou) if sounding_prob >= 0.5 else 0.0
    return float(max(uncertainty, quality, 1.0 - stability))


def _mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


class _Producer(threading.Thread):
    """Decodes frames into normalised clips on a background thread (bounded queue)."""

    _END = object()

    def __init__(self, path, size: int, opts: PrelabelOptions, fps_hint: float) -> None:
        super().__init__(daemon=True)
        self.path, self.size, self.opts, self.fps_hint = path, size, opts, fps_hint
        self.q: queue.Queue = queue.Queue(maxsize=opts.prefetch_clips)
        self.stop = threading.Event()
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
        self.mean, self.std = mean, std

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _emit(self, batch) -> bool:
        rgb = torch.from_numpy(np.stack([f.rgb for f in batch])).permute(0, 3, 1, 2).float()
        clip = ((rgb - self.mean) / self.std).contiguous()
        return self._put(([f.index for f in batch], [f.time for f in batch], clip))

    def run(self) -> None:
        try:
            batch = []
            for frame in iter_frames(self.path, size=self.size, stride=self.opts.stride,
                                     fps_hint=self.fps_hint, start=self.opts.start_frame,
                                     stop=self.opts.stop_frame):
                batch.append(frame)
                if len(batch) == self.opts.clip_len:
                    if not self._emit(batch):
                        return
                    batch = []
            if batch:
                self._emit(batch)
            self._put(self._END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer thread
            self._put(e)

    def clips(self) -> Iterator[tuple[list[int], list[float], torch.Tensor]]:
        self.start()
        try:
            while True:
                item = self.q.get()
                if item is self._END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.stop.set()


def prelabel(model: AuralSAM2, video: str | os.PathLike, options: PrelabelOptions | None = None,
             *, info: MediaInfo | None = None,
             on_progress: Callable[[int], None] | None = None,
             prompts: Mapping[int, PointPrompt] | None = None) -> Iterator[FrameResult]:
    """Pre-label one video; yields :class:`FrameResult` in frame order.

    Raises :class:`MediaError` for unusable files and :class:`NoAudioError` for a video
    without audio unless ``options.no_audio == "silent"``. ``on_progress(n)`` is called with
    the number of frames finished so far. ``prompts`` maps a frame index to an annotator's
    clicks or box (:class:`PointPrompt` in the video's display pixels); those frames
    are labelled with the prompt plus the audio and become SAM2 conditioning frames.
    """
    opts = options or PrelabelOptions()
    info = probe_for(video, opts, info)
    for i in prompts or {}:
        if i < opts.start_frame or (opts.stop_frame is not None and i >= opts.stop_frame) \
                or (i - opts.start_frame) % opts.stride:
            raise ValueError(f"a prompt on frame {i} is not among the frames being labelled "
                             f"(start {opts.start_frame}, stop {opts.stop_frame}, "
                             f"stride {opts.stride})")
    prompts = {i: _to_model_pixels(p, info, model.image_size)
               for i, p in (prompts or {}).items()}
    if not info.has_audio and opts.no_audio == "error":
        raise NoAudioError(f"{video} has no audio track; AuralSAM2 segments what makes the "
                           "sound, so there is nothing to hear. Use no_audio='silent' "
                           "(--no-audio silent) to mark every frame as not sounding.")
    if not info.has_audio:
        yield from _silent(video, info, opts, on_progress)
        return
    if info.audio_tracks > 1:
        log.warning("auralsam2: %s has %d audio tracks; using track %d%s; choose one with "
                    "--audio-track N (0-based)", video, info.audio_tracks, info.audio_track,
                    "" if opts.audio_track is not None else ", the default one")
    track = AudioStream.from_file(video, info.audio_track)
    state = model.new_state(num_frames=info.num_frames)
    clips = _Producer(video, model.image_size, opts, info.fps).clips()
    try:
        yield from _label_clips(model, clips, track, state, (info.height, info.width),
                                on_progress, prompts)
    finally:
        clips.close()  # stops the decoding thread even if the caller gives up early


def probe_for(video: str | os.PathLike, opts: PrelabelOptions,
              info: MediaInfo | None = None) -> MediaInfo:
    """``info`` when it describes the audio track ``opts`` asks for, else a fresh probe."""
    if info is None or (opts.audio_track is not None and info.audio_track != opts.audio_track):
        return probe(video, audio_track=opts.audio_track)
    return info


def _to_model_pixels(p: PointPrompt, info: MediaInfo, size: int) -> PointPrompt:
    if not info.width or not info.height:
        raise MediaError("cannot place a prompt: the video reports no frame size")
    for x, y in p.coords:
        if not (0 <= x <= info.width and 0 <= y <= info.height):
            raise ValueError(f"prompt point ({x}, {y}) is outside the "
                             f"{info.width}x{info.height} frame")
    sx, sy = size / info.width, size / info.height
    return PointPrompt(tuple((x * sx, y * sy) for x, y in p.coords), p.labels)


def _label_clips(model, clips, track, state, shape, on_progress, prompts
                 ) -> Iterator[FrameResult]:
    done = 0
    prev: torch.Tensor | None = None
    for indices, times, clip in clips:
        points = {j: prompts[i] for j, i in enumerate(indices) if i in prompts}
        with torch.inference_mode():
            out = model.forward_clip(clip.to(model.device), track.examples_at(times).to(
                model.device), state, points=points)
        probs = out.object_score_logits.sigmoid().flatten().tolist()
        ious = out.ious.gather(1, out.chosen[:, None]).flatten().tolist()
        for j, (index, time) in enumerate(zip(indices, times, strict=True)):
            low = out.mask_logits[j:j + 1]
            low_mask = low[0, 0] > 0
            inside = torch.sigmoid(low[0, 0])[low_mask]
            stability = _mask_iou(low_mask, prev) if prev is not None else 1.0
            prev = low_mask
            mask = (upsample_logits(low, shape)[0, 0] > 0).cpu().numpy()
            yield FrameResult(
                index=index, time=time, mask=mask, sounding_prob=probs[j],
                predicted_iou=ious[j],
                mask_score=float(inside.mean()) if inside.numel() else 0.0,
                review_priority=review_priority(probs[j], ious[j], stability))
            done += 1
            if on_progress:
                on_progress(done)


def _silent(video, info: MediaInfo, opts: PrelabelOptions, on_progress) -> Iterator[FrameResult]:
    empty = np.zeros((info.height, info.width), bool)
    for n, frame in enumerate(iter_frames(video, size=16, stride=opts.stride,
                                          fps_hint=info.fps, start=opts.start_frame,
                                          stop=opts.stop_frame), start=1):
        yield FrameResult(frame.index, frame.time, empty, 0.0, 0.0, 0.0, 0.0)
        if on_progress:
            on_progress(n)
