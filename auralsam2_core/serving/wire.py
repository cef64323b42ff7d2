"""The options wire format of a pre-labelling job: the ``options`` object the shared service's
``POST /v1/jobs`` takes (and its job files keep), and the one strict check of it. The service's
client (:mod:`auralsam2_core.serving.engines`) and the service
(:mod:`auralsam2_service.job_service`) both import it from here.

Fields (all optional): ``clip_len``, ``stride``, ``no_audio``, ``start_frame``, ``stop_frame``,
``audio_track``, ``queries``, ``clip_origin`` (a refinement's clip alignment, see
:class:`~auralsam2_core.inference.engine.PrelabelOptions`; sent only when set, so requests without
it are those of older clients) and ``prompts`` (``{"<frame>": {"coords", "labels"}}``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict

from auralsam2_core.inference.engine import PrelabelOptions, check_queries
from auralsam2_core.modeling.model import PointPrompt

OPTION_KEYS = ("clip_len", "stride", "no_audio", "start_frame", "stop_frame", "audio_track",
               "queries")
#: Optional keys, on the wire (and in job files) only when set: older clients never send them.
OPTIONAL_KEYS = ("clip_origin",)
MAX_CLIP_LEN = 64  # frames the fuser sees at once: memory grows with it (the authors' T = 5)
#: Prompted frames per job: each becomes a SAM2 conditioning frame, kept for the whole video.
MAX_PROMPTED_FRAMES = 64
_FRAME_KEY = re.compile(r"0|[1-9][0-9]{0,11}")  # a decimal frame index, as JSON object keys


class OptionsError(ValueError):
    """Job options the wire format does not allow; ``field`` names the bad one."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _show(value) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= 40 else text[:37] + "..."


def _count(raw: Mapping, key: str, default: int | None, minimum: int) -> int | None:
    value = raw.get(key, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise OptionsError(f"options.{key}", f"must be an integer >= {minimum}, got "
                                             f"{_show(value)}")
    return value


def options_from_wire(raw, *, num_frames: int | None = None,
                      frame_size: tuple[int, int] | None = None
                      ) -> tuple[PrelabelOptions, dict[int, PointPrompt]]:
    """(engine options, prompts by frame) from a job's ``options`` object, checked strictly
    (:class:`OptionsError` naming the field): integers are integers (not 1.5, not true),
    ranges hold, prompts are bounded, and once the video is known (``num_frames``, display
    ``frame_size`` = (width, height)) every frame index and point lies inside it. The one
    check behind the service, its client and every job file read back."""
    if not isinstance(raw, Mapping):
        raise OptionsError("options", "must be an object")
    unknown = set(raw) - set(OPTION_KEYS) - set(OPTIONAL_KEYS) - {"prompts"}
    if unknown:
        raise OptionsError(f"options.{sorted(map(str, unknown))[0]}",
                           f"unknown option; known: {[*OPTION_KEYS, *OPTIONAL_KEYS, 'prompts']}")
    queries = raw.get("queries", [])
    if not isinstance(queries, list):
        raise OptionsError("options.queries", f"must be a list of strings, got "
                                              f"{_show(queries)}")
    try:
        queries = check_queries(queries)
    except ValueError as e:
        raise OptionsError("options.queries", str(e)) from None
    clip_len = _count(raw, "clip_len", PrelabelOptions(queries=queries).clip_len, 1)
    if clip_len > MAX_CLIP_LEN:
        raise OptionsError("options.clip_len", f"must be at most {MAX_CLIP_LEN}, got {clip_len}")
    stride = _count(raw, "stride", PrelabelOptions.stride, 1)
    start = _count(raw, "start_frame", 0, 0)
    stop = _count(raw, "stop_frame", None, start + 1)
    no_audio = raw.get("no_audio", PrelabelOptions.no_audio)
    if no_audio not in ("error", "silent") or not isinstance(no_audio, str):
        raise OptionsError("options.no_audio", f'must be "error" or "silent", got '
                                               f"{_show(no_audio)}")
    audio_track = _count(raw, "audio_track", None, 0)
    clip_origin = _count(raw, "clip_origin", None, 0)
    if clip_origin is not None and (clip_origin > start or (start - clip_origin) % stride):
        raise OptionsError("options.clip_origin", f"must be start_frame ({start}) or a stride "
                                                  f"({stride}) step before it, got {clip_origin}")
    if num_frames:
        if start >= num_frames:
            raise OptionsError("options.start_frame", f"{start} is past the end of the video "
                                                      f"({num_frames} frames)")
        if stop is not None and stop > num_frames:
            raise OptionsError("options.stop_frame", f"{stop} is past the end of the video "
                                                     f"({num_frames} frames)")
    prompts = _prompts_from_wire(raw.get("prompts"), start, stop, stride, num_frames,
                                 frame_size)
    if prompts and len(queries) > 1:
        raise OptionsError("options.prompts", "prompts need a single query (a prompt marks "
                                              "one object; each query is a track)")
    opts = PrelabelOptions(clip_len=clip_len, stride=stride, no_audio=no_audio,
                           start_frame=start, stop_frame=stop, audio_track=audio_track,
                           queries=queries, clip_origin=clip_origin)
    return opts, prompts


def _prompts_from_wire(raw, start: int, stop: int | None, stride: int,
                       num_frames: int | None, frame_size: tuple[int, int] | None
                       ) -> dict[int, PointPrompt]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise OptionsError("options.prompts", 'must be an object {"<frame>": {"coords": '
                                              '[[x, y], ...], "labels": [...]}}')
    if len(raw) > MAX_PROMPTED_FRAMES:
        raise OptionsError("options.prompts", f"at most {MAX_PROMPTED_FRAMES} prompted "
                                              f"frames per job, got {len(raw)}")
    prompts = {}
    for key, value in raw.items():
        field = f"options.prompts.{str(key)[:20]}"
        if not isinstance(key, str) or not _FRAME_KEY.fullmatch(key):
            raise OptionsError(field, "prompt keys are frame indices (0-based decimals)")
        frame = int(key)
        ends = [n for n in (stop, num_frames) if n]
        if frame < start or (ends and frame >= min(ends)) or (frame - start) % stride:
            raise OptionsError(field, f"frame {frame} is not among the frames being labelled "
                                      f"(start_frame {start}, stop_frame {stop}, stride "
                                      f"{stride}" + (f", {num_frames} frames" if num_frames
                                                     else "") + ")")
        try:
            prompt = PointPrompt.from_dict(value)
        except ValueError as e:
            raise OptionsError(field, str(e)) from None
        if frame_size is not None:
            w, h = frame_size
            outside = next(((x, y) for x, y in prompt.coords
                            if not (0 <= x <= w and 0 <= y <= h)), None)
            if outside is not None:
                raise OptionsError(field, f"point {outside} is outside the {w}x{h} frame")
        prompts[frame] = prompt
    return prompts


def options_to_wire(options: PrelabelOptions | None = None,
                    prompts: Mapping[int, PointPrompt] | None = None) -> dict:
    """The ``options`` object of a job request, checked as the service will check it."""
    opts = options or PrelabelOptions()
    wire = {**options_record(opts),
            "prompts": {str(k): p.as_dict() for k, p in (prompts or {}).items()}}
    options_from_wire(wire)
    return wire


def options_record(opts: PrelabelOptions) -> dict:
    """The wire fields of ``opts`` (no prompts): every key of :data:`OPTION_KEYS`, and the
    :data:`OPTIONAL_KEYS` that are set."""
    return {**{k: list(v) if k == "queries" else v for k, v in asdict(opts).items()
               if k in OPTION_KEYS},
            **{k: getattr(opts, k) for k in OPTIONAL_KEYS if getattr(opts, k) is not None}}
