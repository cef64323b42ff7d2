"""Streaming pre-labelling of whole videos: the one function every adapter calls.

``prelabel(model, video)`` yields one :class:`FrameResult` per frame (or per ``stride``-th
frame) in order. Frames are decoded and scaled on a background thread while the model runs
on the previous clip; the fuser sees clips of ``clip_len`` frames (the authors' T = 5) and
SAM2's memory carries across clips through a :class:`~auralsam2_core.modeling.model.TrackState` that
keeps only what memory attention can still read. Memory use therefore does not grow with the
video's length: audio is decoded alongside and only the log-mel frames still needed are kept.

With a Ref-AVS model, ``options.queries`` names the objects to segment ("the dog", "the man
playing the guitar"): one track per query, each with its own SAM2 memory. The image encoder
runs once per clip for all queries; only the fuser and SAM2's tracking repeat per query. As
published, clips are T = 10 frames and the first clip's conditioning frame is its middle one
(:meth:`~auralsam2_core.modeling.model.AuralSAM2.forward_features`); later clips continue the
memory.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from auralsam2_core.inference.feature_cache import FeatureCache, video_key
from auralsam2_core.media.audio_track import AudioStream
from auralsam2_core.media.video import MediaError, MediaInfo, iter_frames, probe
from auralsam2_core.modeling.model import AuralSAM2, PointPrompt, upsample_logits

log = logging.getLogger("auralsam2")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


#: Queries (objects named) per run: each adds a fuser pass and a SAM2 track on every clip.
MAX_QUERIES = 16
#: Characters per query; the text encoder reads 25 tokens anyway (checked against the model).
MAX_QUERY_CHARS = 200
AVS_CLIP_LEN = 5  # the authors' T for the AVS model
REFAVS_CLIP_LEN = 10  # and for Ref-AVS (REF_AVS_SPEC.md section 3)


def check_queries(queries) -> tuple[str, ...]:
    """``queries`` as a tuple of stripped strings, or ValueError naming the bad one: a list of
    1..MAX_QUERIES distinct, non-empty strings of at most MAX_QUERY_CHARS characters."""
    if queries is None:
        return ()
    if isinstance(queries, str) or not isinstance(queries, list | tuple):
        raise ValueError(f"queries must be a list of strings, got {type(queries).__name__}")
    if len(queries) > MAX_QUERIES:
        raise ValueError(f"at most {MAX_QUERIES} queries per run, got {len(queries)}")
    out: list[str] = []
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise ValueError(f"query {i} must be a string, got {type(q).__name__}")
        text = " ".join(q.split())  # one space between words; no tabs or newlines
        if not text:
            raise ValueError(f"query {i} is empty")
        if len(text) > MAX_QUERY_CHARS:
            raise ValueError(f"query {i} is {len(text)} characters long; at most "
                             f"{MAX_QUERY_CHARS} (name the object in a few words)")
        if text in out:
            raise ValueError(f"query {i} ({text!r}) is given twice")
        out.append(text)
    return tuple(out)



def class_queries(classes) -> dict[str, str]:
    """A project's classes as the engine's queries: ``{query: class name}``, in order.
    ``classes`` holds class names, or ``(name, hint)`` pairs where a hint (e.g. a label
    attribute "the man playing the guitar") is the expression the model reads for that class;
    without one, the name is read. Results objects carry the query; adapters label them with
    the class. ValueError for what :func:`check_queries` refuses (two classes reading the same
    text included) or a class without a name."""
    pairs = []
    for i, c in enumerate(classes):
        name, hint = (c, None) if isinstance(c, str) else tuple(c)
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"class {i} has no name")
        pairs.append((name, hint if isinstance(hint, str) and hint.strip() else name))
    queries = check_queries([q for _, q in pairs])
    return dict(zip(queries, (n for n, _ in pairs), strict=True))

@dataclass(frozen=True)
class PrelabelOptions:
    # Frames per fuser clip (the authors' T); None: 5, or 10 with queries (Ref-AVS).
    clip_len: int | None = None
    stride: int = 1  # pre-label every stride-th frame
    no_audio: Literal["error", "silent"] = "error"  # "silent": every frame is "not sounding"
    prefetch_clips: int = 2  # decoded clips waiting for the model (bounds memory)
    start_frame: int = 0  # first frame to label (0-based); SAM2's memory starts there
    stop_frame: int | None = None  # label frames before this one (None: to the end)
    # Which audio track to hear: its index among the file's audio tracks (0-based, file
    # order). None: the track marked default, else the first (media.audio_stream).
    audio_track: int | None = None
    # Ref-AVS: the objects to segment, one track each (needs a Ref-AVS model). Empty: the AVS
    # model's one "sounding object" track.
    queries: tuple[str, ...] = field(default=())
    # The fuser's clips are those of a run over the whole video from this frame (None: from
    # start_frame to stop_frame). A refinement from frame f of a video pre-labelled from 0 sets
    # 0, so that each frame gets the audio and visual prompts the first pass gave it (frames
    # of a clip before start_frame are read by the fuser but not labelled) and a FeatureCache
    # can serve them. stop_frame then only ends the labelling.
    clip_origin: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "queries", check_queries(self.queries))
        if self.clip_len is None:
            object.__setattr__(self, "clip_len",
                               REFAVS_CLIP_LEN if self.queries else AVS_CLIP_LEN)
        if self.start_frame < 0 or (self.stop_frame is not None
                                    and self.stop_frame <= self.start_frame):
            raise ValueError(f"need 0 <= start_frame < stop_frame, got {self.start_frame}, "
                             f"{self.stop_frame}")
        if self.clip_origin is not None and not (0 <= self.clip_origin <= self.start_frame
                                                 and (self.start_frame - self.clip_origin)
                                                 % self.stride == 0):
            raise ValueError(f"clip_origin must be a labelled frame's stride step at or before "
                             f"start_frame ({self.start_frame}), got {self.clip_origin}")
        if isinstance(self.clip_len, bool) or not isinstance(self.clip_len, int) \
                or self.clip_len < 1:
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
    query: str | None = None  # Ref-AVS: the query this track follows (None: AVS, "sounding")


class NoAudioError(MediaError):
    """The video has no audio track and ``no_audio="error"``."""


def review_priority(sounding_prob: float, predicted_iou: float, stability: float) -> float:
    """How much a frame needs a human: the largest of the sounding decision's uncertainty
    (1 at p = 0.5), the predicted mask error (1 - IoU, when sounding) and the instability
    w.r.t. the previous frame (1 - IoU of the two masks, when either is sounding)."""
    uncertainty = 1.0 - abs(2.0 * sounding_prob - 1.0)
    quality = (1.0 - predicted_iou) if sounding_prob >= 0.5 else 0.0
    return float(max(uncertainty, quality, 1.0 - stability))


def clip_pixels(frames) -> torch.Tensor:
    """Decoded frames -> ``(T, 3, S, S)`` uint8 RGB: what travels to the model's device (a
    quarter of float32's bytes), to be normalised there (:func:`normalise_pixels`)."""
    return torch.from_numpy(np.stack([f.rgb for f in frames])).permute(0, 3, 1, 2).contiguous()


def normalise_pixels(x: torch.Tensor) -> torch.Tensor:
    """RGB in 0-255 ``(T, 3, S, S)`` -> float32 ImageNet-normalised, on ``x``'s device. One
    subtraction and one division, each correctly rounded: the same values on every device."""
    mean = (torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255).to(x.device)
    std = (torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255).to(x.device)
    return ((x.float() - mean) / std).contiguous()


class _Producer(threading.Thread):
    """Decodes frames into uint8 clips (:func:`clip_pixels`) on a background thread (bounded
    queue); the consumer normalises them on the model's device."""

    _END = object()

    def __init__(self, path, size: int, opts: PrelabelOptions, fps_hint: float,
                 start: int | None = None, stop: int | None = None) -> None:
        super().__init__(daemon=True)
        self.path, self.size, self.opts, self.fps_hint = path, size, opts, fps_hint
        self.start_frame = opts.start_frame if start is None else start
        self.stop_frame = opts.stop_frame if start is None else stop
        self.q: queue.Queue = queue.Queue(maxsize=opts.prefetch_clips)
        self.stop = threading.Event()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _emit(self, batch) -> bool:
        return self._put(([f.index for f in batch], [f.time for f in batch],
                          clip_pixels(batch)))

    def run(self) -> None:
        try:
            batch = []
            for frame in iter_frames(self.path, size=self.size, stride=self.opts.stride,
                                     fps_hint=self.fps_hint, start=self.start_frame,
                                     stop=self.stop_frame):
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
             prompts: Mapping[int, PointPrompt] | None = None,
             cache: FeatureCache | None = None) -> Iterator[FrameResult]:
    """Pre-label one video; yields :class:`FrameResult` in frame order.

    Raises :class:`MediaError` for unusable files and :class:`NoAudioError` for a video
    without audio unless ``options.no_audio == "silent"``. ``on_progress(n)`` is called with
    the number of frames finished so far. ``prompts`` maps a frame index to an annotator's
    clicks or box (:class:`PointPrompt` in the video's display pixels); those frames
    are labelled with the prompt plus the audio and become SAM2 conditioning frames.

    With ``options.queries`` (a Ref-AVS model), each frame yields one result per query, in
    the queries' order, with ``query`` set. ValueError for queries the model cannot take
    (an AVS model, or a query longer than its text encoder reads), for a Ref-AVS model
    without queries, and for prompts with several queries (a click names one object; with one
    query, it refines that query's track).

    ``cache``: keep each clip's image features and fuser prompts (per query) there, and take
    them from there when a clip is already in it (same results, see :mod:`.feature_cache`).
    """
    opts = options or PrelabelOptions()
    check_model_options(model, opts, prompts)
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
    @functools.cache
    def texts() -> list:  # only when a clip is computed: a click from the cache needs none
        with torch.inference_mode():  # as forward_clip(text=q) encodes it
            return [model.encode_text(q) for q in opts.queries] or [None]

    clips = _clip_features(model, video, info, opts, track, cache, texts)
    try:
        yield from _label_clips(model, clips, info, on_progress, prompts, opts)
    finally:
        clips.close()


def check_model_options(model: AuralSAM2, opts: PrelabelOptions,
                        prompts: Mapping | None = None) -> None:
    """ValueError when ``opts`` (queries) and ``prompts`` do not fit ``model``'s variant."""
    if opts.queries and model.variant != "refavs":
        raise ValueError("queries need a Ref-AVS model (variant 'refavs'); this model is "
                         "the AVS one, which segments whatever sounds: drop the queries, or "
                         "load a Ref-AVS model")
    if not opts.queries and model.variant == "refavs":
        raise ValueError("the Ref-AVS model segments the objects you name: give at least "
                         "one query (e.g. --query \"the dog\")")
    if len(opts.queries) > 1 and prompts:
        raise ValueError("prompts (clicks, boxes) need a single query: a prompt marks one "
                         "object, and each query is its own track")
    if opts.queries and model.text_encoder is not None:
        reads = model.text_encoder.max_length
        for i, q in enumerate(opts.queries):
            n = len(model.text_encoder.tokenizer(q)["input_ids"])
            if n > reads:
                raise ValueError(f"query {i} ({q[:40]!r}) is {n} tokens long; the text "
                                 f"encoder reads {reads} (with its 2 markers): shorten it")


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


def _clip_features(model, video, info: MediaInfo, opts: PrelabelOptions, track,
                   cache: FeatureCache | None, texts: Callable[[], list]
                   ) -> Iterator[tuple[list[int], list[float], list]]:
    """(indices, times, one :class:`ClipFeatures` per query) of the fuser's clips covering the
    frames to label (``texts()``: the queries' encoded expressions, ``[None]`` for the AVS
    model), from ``cache`` where it has every query's (no decoding), else decoded and
    computed (the image encoder once for all queries) and stored. With
    ``opts.clip_origin`` the clips are those of the whole video from there."""
    queries = opts.queries or (None,)
    step = opts.stride * opts.clip_len
    if opts.clip_origin is None:
        first, stop = opts.start_frame, opts.stop_frame
    else:
        first = opts.clip_origin + (opts.start_frame - opts.clip_origin) // step * step
        stop = None if opts.stop_frame is None else \
            first + -(-(opts.stop_frame - first) // step) * step  # to its clip's end
    vkey = video_key(video, info.audio_track) if cache is not None else None

    def cached(g: int) -> list | None:
        hits = []
        for q in queries if cache is not None else ():
            hit = cache.get(model, (vkey, opts.clip_len, opts.stride, g, q))
            if hit is None:
                return None
            hits.append(hit)
        return hits or None

    def whole(indices: list[int]) -> bool:
        # The clip a run over the whole video has there: full, or cut by the video's end.
        return len(indices) == opts.clip_len or stop is None or indices[-1] + opts.stride < stop

    g = first
    while stop is None or g < stop:
        hits = cached(g)
        if hits is None:
            break
        yield list(hits[0].indices), list(hits[0].times), [h.features for h in hits]
        if len(hits[0].indices) < opts.clip_len:  # the video's last clip
            return
        g += step
    if stop is not None and g >= stop:
        return
    clips = _Producer(video, model.image_size, opts, info.fps, start=g, stop=stop).clips()
    try:
        for indices, times, clip in clips:
            hits = cached(indices[0])
            if hits is not None and all(list(h.indices) == indices for h in hits):
                yield indices, times, [h.features for h in hits]
                continue
            with torch.inference_mode():
                enc = model.encode_images(normalise_pixels(clip.to(model.device)))
                log_mel = track.examples_at(times).to(model.device)
                features = model.query_features(enc, log_mel, texts())
            if cache is not None and whole(indices):
                for q, f in zip(queries, features, strict=True):
                    cache.put(model, (vkey, opts.clip_len, opts.stride, indices[0], q),
                              indices, times, f)
            yield indices, times, features
    finally:
        clips.close()  # stops the decoding thread even if the caller gives up early


def _label_clips(model, clips, info: MediaInfo, on_progress, prompts, opts: PrelabelOptions
                 ) -> Iterator[FrameResult]:
    """SAM2's tracking of the frames from ``opts.start_frame`` to ``opts.stop_frame`` over
    the clips' features (frames of a clip outside that range are not tracked), per query with
    its own SAM2 memory; per frame, one result per query in the queries' order. ``prompts``
    (model pixels, by frame; one query at most) join that query's text and audio prompts."""
    queries = opts.queries or (None,)
    states = [model.new_state(info.num_frames) for _ in queries]
    prev: list[torch.Tensor | None] = [None] * len(queries)
    shape = (info.height, info.width)
    done = 0
    stop = opts.stop_frame
    for indices, times, features in clips:
        a = sum(1 for i in indices if i < opts.start_frame)
        b = sum(1 for i in indices if stop is None or i < stop)
        if a >= b:
            continue
        if (a, b) != (0, len(indices)):
            features = [f.frames(a, b) for f in features]
            indices, times = indices[a:b], times[a:b]
        points = {j: prompts[i] for j, i in enumerate(indices) if i in prompts}
        # No frame to label follows: its memory would never be read (a one-frame click).
        last = stop is not None and indices[-1] + opts.stride >= stop
        with torch.inference_mode():
            outs = [model.track_features(f, st, points, last=last) for f, st in
                    zip(features, states, strict=True)]
            per_query = []
            for k, out in enumerate(outs):
                results, prev[k] = _clip_results(out, indices, times, shape, prev[k],
                                                 queries[k])
                per_query.append(results)
        for frame_results in zip(*per_query, strict=True):
            yield from frame_results
            done += 1
            if on_progress:
                on_progress(done)


def _clip_results(out, indices: list[int], times: list[float], shape, prev: torch.Tensor | None,
                  query: str | None) -> tuple[list[FrameResult], torch.Tensor]:
    """A clip's output as :class:`FrameResult` per frame (and its last low-res mask, the next
    clip's ``prev`` for the stability term). Two device-to-host copies per clip, the numbers
    and the masks (on a GPU each copy waits for the GPU; per frame they were five)."""
    low = out.mask_logits[:, 0]  # (T, s, s) logits of the chosen masks
    on = low > 0
    before = torch.cat([on[:1] if prev is None else prev[None], on[:-1]])
    union = (on | before).sum((1, 2))
    numbers = torch.stack([
        out.object_score_logits.sigmoid().flatten().double(),  # sounding probability
        out.ious.gather(1, out.chosen[:, None]).flatten().double(),  # predicted IoU
        torch.where(on, torch.sigmoid(low), 0).sum((1, 2), dtype=torch.float64),
        on.sum((1, 2)).double(),  # mask area (low-res pixels)
        (on & before).sum((1, 2)).double(), union.double()]).T.tolist()
    # One frame at a time: a 4K clip's logits at full size would take T x 33 MB at once.
    masks = torch.stack([upsample_logits(low[j, None, None], shape)[0, 0] > 0
                         for j in range(low.shape[0])]).cpu().numpy()
    results = []
    for j, (p, iou, inside, area, inter, uni) in enumerate(numbers):
        stability = 1.0 if (j == 0 and prev is None) or uni == 0 else inter / uni
        results.append(FrameResult(
            index=indices[j], time=times[j], mask=masks[j], sounding_prob=p, predicted_iou=iou,
            mask_score=inside / area if area else 0.0,
            review_priority=review_priority(p, iou, stability), query=query))
    return results, on[-1]


def _silent(video, info: MediaInfo, opts: PrelabelOptions, on_progress) -> Iterator[FrameResult]:
    empty = np.zeros((info.height, info.width), bool)
    for n, frame in enumerate(iter_frames(video, size=16, stride=opts.stride,
                                          fps_hint=info.fps, start=opts.start_frame,
                                          stop=opts.stop_frame), start=1):
        for query in opts.queries or (None,):
            yield FrameResult(frame.index, frame.time, empty, 0.0, 0.0, 0.0, 0.0, query)
        if on_progress:
            on_progress(n)
