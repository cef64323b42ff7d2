"""The assembled AuralSAM2: a frozen SAM2 (from the ``sam2`` package) plus the AuralFuser.

``AuralSAM2.forward_clip`` runs one clip of ``T`` frames the way the authors' inference does:
image encoder on all frames, the fuser on the raw FPN maps (before ``conv_s0/conv_s1``), then
SAM2's own tracking step per frame with the clip's prompts injected into the mask decoder.
Frame 0 of a video is the conditioning frame; a :class:`TrackState` carries SAM2's memory
from one clip to the next, so a long video is processed clip by clip in bounded memory.

The Ref-AVS variant (``fuser.variant == "refavs"``) also takes a referring expression: its
RoBERTa hidden states (``text=``, or a string encoded by the model's :class:`TextEncoder`).
As published, the conditioning frame of a fresh clip is then the middle one, ``int(T/2)``,
processed first, then frames ``0, 1, …`` in order. :meth:`AuralSAM2.forward_features` takes
precomputed image features, so one image-encoder pass serves several expressions
(:meth:`AuralSAM2.forward_queries`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from sam2.modeling.sam2_base import SAM2Base
from torch import nn

from auralsam2_core.modeling.fuser import AuralFuser
from auralsam2_core.modeling.prompting import FramePrompts, install_prompted_transformer
from auralsam2_core.modeling.text_encoder import Expressions, TextEncoder

MaskChoice = Literal["first", "iou_select", "iou_occ_select"]
MASK_CHOICES: tuple[str, ...] = ("first", "iou_select", "iou_occ_select")
NO_OBJECT_LOGIT = -1024.0  # SAM2's fill value for masks of frames without the object

# Only these entries of a frame's output are read again by SAM2's memory attention.
_MEMORY_KEYS = ("maskmem_features", "maskmem_pos_enc", "obj_ptr", "object_score_logits")


@dataclass
class ClipOutput:
    """Per-frame outputs of one clip (``T`` frames; ``M = 3`` multimask candidates).

    Mask logits are at SAM2's low resolution (image_size / 4); see :func:`upsample_logits`.
    """

    multimask_logits: torch.Tensor  # (T, M, s, s) after SAM2's no-object masking
    raw_multimask_logits: torch.Tensor  # (T, M, s, s) straight from the decoder (for losses)
    ious: torch.Tensor  # (T, M) predicted IoU per candidate
    object_score_logits: torch.Tensor  # (T, 1) "is the object there" (sounding) logit
    mask_logits: torch.Tensor  # (T, 1, s, s) the chosen candidate per ``mask_choice``
    chosen: torch.Tensor  # (T,) index of the chosen candidate
    projections: list | None = None  # fuser projections for the contrastive loss (training)


@dataclass
class ClipFeatures:
    """What one clip gives SAM2's tracking before any click: the image encoder's tracking
    features and the fuser's prompts (:meth:`AuralSAM2.clip_features`), for B clips of T
    frames. The fuser mixes a clip's frames, so these belong to the clip as a whole."""

    feats: list[torch.Tensor]  # per FPN level, (h*w, B*T, C) after conv_s0 / conv_s1
    pos: torch.Tensor  # (h*w, B*T, C) position encoding of the coarsest level
    sizes: list[tuple[int, int]]  # (h, w) per level
    visual: list[torch.Tensor]  # the fuser's [a, b, c], (B, T, h*w, C)
    audio: list[torch.Tensor]  # the fuser's [d1, d2, d3], (B, M, C)

    def frames(self, start: int, stop: int) -> ClipFeatures:
        """Frames ``start:stop`` of a single (B = 1) clip, as views (SAM2 then tracks them as a
        clip of their own: frame ``start`` opens a fresh state). The tracking reads audio row
        ``t`` for frame ``t``: rows ``start:stop`` are kept (Ref-AVS: its text rows, which the
        tracking never reads, are dropped)."""
        if self.visual[0].shape[0] != 1 or self.audio[0].shape[1] < self.visual[0].shape[1]:
            raise ValueError("only one clip with an audio row per frame can be cut")
        return ClipFeatures([x[:, start:stop] for x in self.feats], self.pos[:, start:stop],
                            self.sizes, [v[:, start:stop] for v in self.visual],
                            [d[:, start:stop] for d in self.audio])

    def tensors(self) -> list[torch.Tensor]:
        return [*self.feats, self.pos, *self.visual, *self.audio]


#: Points (clicks and box corners) one prompt may hold. SAM2 embeds every point as a token of
#: its mask decoder, so memory grows with the count; annotators give a handful.
MAX_PROMPT_POINTS = 64
PROMPT_LABELS = (0, 1, 2, 3)


def _finite_number(v) -> bool:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int beyond float's range
        return False


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


@dataclass(frozen=True)
class PointPrompt:
    """An annotator's prompt on one frame, in model-input pixels (``0..image_size``).

    ``labels`` follow SAM2: 1 positive click, 0 negative click, 2 / 3 a box's top-left /
    bottom-right corner (see :meth:`box`). Every entry point (the service, Label Studio's
    refinement, the engine) builds one of these, so the checks below bound them all.
    """

    coords: tuple[tuple[float, float], ...]  # (x, y) pairs
    labels: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.coords or len(self.coords) != len(self.labels):
            raise ValueError("a point prompt needs one label per (x, y) point, at least one")
        if len(self.coords) > MAX_PROMPT_POINTS:
            raise ValueError(f"a prompt may hold at most {MAX_PROMPT_POINTS} points, got "
                             f"{len(self.coords)}")
        for i, c in enumerate(self.coords):
            if not isinstance(c, tuple | list) or len(c) != 2 \
                    or not all(_finite_number(v) for v in c):
                raise ValueError(f"coords[{i}] must be an (x, y) pair of finite numbers, got "
                                 f"{_short(c)}")
        for i, lab in enumerate(self.labels):
            if isinstance(lab, bool) or not isinstance(lab, int) or lab not in PROMPT_LABELS:
                raise ValueError(f"labels[{i}] must be the integer 0, 1, 2 or 3 (negative "
                                 f"click, positive click, box corners), got {_short(lab)}")
        if self.labels.count(2) != self.labels.count(3) or self.labels.count(2) > 1:
            raise ValueError("box corners (labels 2 and 3) come as one pair, got "
                             f"{list(self.labels)}")

    @classmethod
    def box(cls, x0: float, y0: float, x1: float, y1: float) -> PointPrompt:
        return cls(((min(x0, x1), min(y0, y1)), (max(x0, x1), max(y0, y1))), (2, 3))

    def as_dict(self) -> dict:
        """JSON form (service requests and job files)."""
        return {"coords": [list(c) for c in self.coords], "labels": list(self.labels)}

    @classmethod
    def from_dict(cls, d: dict) -> PointPrompt:
        """The JSON form back, checked strictly: ValueError naming the bad entry (no
        rounding: a label 1.9 or a coordinate "3" is an error, not a 1 or a 3.0)."""
        if not isinstance(d, dict) or set(d) != {"coords", "labels"}:
            raise ValueError('a prompt must be {"coords": [[x, y], ...], "labels": [...]}')
        coords, labels = d["coords"], d["labels"]
        if not isinstance(coords, list) or not isinstance(labels, list):
            raise ValueError("coords and labels must be lists")
        if len(coords) > MAX_PROMPT_POINTS:  # before building anything from them
            raise ValueError(f"a prompt may hold at most {MAX_PROMPT_POINTS} points, got "
                             f"{len(coords)}")
        for i, c in enumerate(coords):
            if not isinstance(c, list) or len(c) != 2:
                raise ValueError(f"coords[{i}] must be an [x, y] pair, got {_short(c)}")
        return cls(tuple((float(x) if _finite_number(x) else x,
                          float(y) if _finite_number(y) else y) for x, y in coords),
                   tuple(labels))

    def as_inputs(self, device: torch.device) -> dict:
        """SAM2's ``point_inputs``: coords (1, N, 2) float, labels (1, N) int."""
        return {"point_coords": torch.tensor([self.coords], dtype=torch.float32, device=device),
                "point_labels": torch.tensor([self.labels], dtype=torch.int32, device=device)}


@dataclass
class TrackState:
    """SAM2 memory across clips of one video (``output_dict`` in SAM2's own format).

    Only what memory attention reads is kept, and only for the frames it can still use, so
    the state does not grow with the video's length.
    """

    output_dict: dict = field(
        default_factory=lambda: {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}})
    next_frame: int = 0
    num_frames: int = 1 << 30  # video length if known; SAM2 uses it only as an upper bound
    ended: bool = False  # its last frame's memory was not encoded: it cannot be continued

    def store(self, frame_idx: int, out: dict, is_cond: bool, keep: int) -> None:
        slim = {k: out[k] for k in _MEMORY_KEYS if k in out}
        bucket = "cond_frame_outputs" if is_cond else "non_cond_frame_outputs"
        self.output_dict[bucket][frame_idx] = slim
        stale = [t for t in self.output_dict["non_cond_frame_outputs"] if t < frame_idx - keep]
        for t in stale:
            del self.output_dict["non_cond_frame_outputs"][t]


def choose_masks(multimask_logits: torch.Tensor, ious: torch.Tensor,
                 object_score_logits: torch.Tensor, mode: MaskChoice
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' mask choices: ``first`` candidate, ``iou_select`` (highest predicted IoU),
    ``iou_occ_select`` (as iou_select, but empty where the object-score logit is < 0)."""
    if mode not in MASK_CHOICES:
        raise ValueError(f"mask_choice must be one of {MASK_CHOICES}, got {mode!r}")
    if mode == "first":
        idx = torch.zeros(ious.shape[0], dtype=torch.long, device=ious.device)
    else:
        idx = ious.argmax(dim=-1)
    chosen = multimask_logits[torch.arange(idx.shape[0], device=idx.device), idx].unsqueeze(1)
    if mode == "iou_occ_select":
        absent = (object_score_logits < 0).view(-1, 1, 1, 1)
        chosen = torch.where(absent, torch.full_like(chosen, NO_OBJECT_LOGIT), chosen)
    return chosen, idx


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Low-resolution mask logits -> logits at ``size`` (bilinear, as SAM2 does)."""
    return nn.functional.interpolate(logits.float(), size=size, mode="bilinear",
                                     align_corners=False)


@contextlib.contextmanager
def _capture_outputs(module: nn.Module) -> Iterator[list]:
    captured: list = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        yield captured
    finally:
        handle.remove()


class AuralSAM2(nn.Module):
    """SAM2 + AuralFuser (+ a frozen text encoder for Ref-AVS). SAM2 stays frozen and in eval
    mode; only the fuser trains."""

    def __init__(self, sam2: SAM2Base, fuser: AuralFuser, mask_choice: MaskChoice = "iou_select",
                 text_encoder: TextEncoder | None = None) -> None:
        super().__init__()
        if text_encoder is not None and fuser.variant != "refavs":
            raise ValueError("a text encoder goes with the Ref-AVS fuser (variant='refavs')")
        if mask_choice not in MASK_CHOICES:
            raise ValueError(f"mask_choice must be one of {MASK_CHOICES}, got {mask_choice!r}")
        if sam2.hidden_dim != fuser.dim or sam2.num_feature_levels != 3:
            raise ValueError(f"AuralSAM2 needs a SAM2 with {fuser.dim}-d features (the fuser's "
                             f"width) and 3 FPN levels (got {sam2.hidden_dim}-d, "
                             f"{sam2.num_feature_levels} levels)")
        self.sam2 = sam2
        self.fuser = fuser
        self.text_encoder = text_encoder
        self.mask_choice = mask_choice
        self.meta: dict = {}  # provenance (config, checkpoints), filled by build_auralsam2
        self._transformer = install_prompted_transformer(sam2.sam_mask_decoder)
        # As published: always 3 candidate masks, and the memory encoder sees the binarised
        # prediction at eval (the authors' build sets this flag and marks masks "from points").
        sam2.multimask_output_in_sam = True
        sam2.multimask_output_for_tracking = True
        sam2.multimask_min_pt_num = 0
        sam2.binarize_mask_from_pts_for_mem_enc = True
        self.freeze_sam2()

    @property
    def image_size(self) -> int:
        return self.sam2.image_size

    @property
    def variant(self) -> str:
        """``"avs"`` or ``"refavs"`` (the fuser's variant)."""
        return self.fuser.variant

    @property
    def device(self) -> torch.device:
        return next(self.fuser.parameters()).device

    def freeze_sam2(self) -> None:
        self.sam2.eval()
        self.sam2.requires_grad_(False)

    def train(self, mode: bool = True) -> AuralSAM2:
        super().train(mode)
        self.sam2.eval()  # SAM2 is frozen: never in training mode
        return self

    def new_state(self, num_frames: int | None = None) -> TrackState:
        state = TrackState()
        if num_frames is not None:
            state.num_frames = num_frames
        return state

    def _memory_horizon(self) -> int:
        return max(self.sam2.num_maskmem * self.sam2.memory_temporal_stride_for_eval,
                   self.sam2.max_obj_ptrs_in_encoder) + 1

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def encode_images(self, frames: torch.Tensor) -> dict:
        """SAM2's image encoder; ``backbone_fpn`` are the raw maps (no conv_s0/conv_s1). The
        result is not modified later, so it can be reused for several expressions."""
        self._check_frames(frames)
        with self._autocast():
            return self.sam2.image_encoder(frames)

    def encode_text(self, expressions: Expressions) -> torch.Tensor:
        """Ref-AVS: RoBERTa hidden states ``(K, 25, 768)`` of K expressions (``(1, 25, 768)`` for
        one string), as the fuser's ``text`` takes them one at a time."""
        if self.text_encoder is None:
            raise ValueError("this model has no text encoder: build it with variant='refavs' "
                             "(and a text encoder), or pass RoBERTa hidden states as text")
        with self._autocast():
            return self.text_encoder(expressions)

    def _check_frames(self, frames: torch.Tensor) -> None:
        if frames.dim() != 4 or frames.shape[1] != 3 or frames.shape[-1] != self.image_size \
                or frames.shape[-2] != self.image_size:
            raise ValueError(f"frames must be (T, 3, {self.image_size}, {self.image_size}), "
                             f"got {tuple(frames.shape)}")

    def forward_clip(self, frames: torch.Tensor, log_mel: torch.Tensor,
                     state: TrackState | None = None, *, projections: bool | None = None,
                     points: dict[int, PointPrompt] | None = None,
                     text: torch.Tensor | str | None = None) -> ClipOutput:
        """Segment the sounding (Ref-AVS: the referred) object in one clip.

        ``frames``: ``(T, 3, S, S)`` normalised with ImageNet mean/std at ``S = image_size``;
        ``log_mel``: ``(T, 2, 96, 64)``, one stereo example per frame. ``state`` continues a
        video (created fresh when None: the clip then starts the video and holds its
        conditioning frame). ``points`` (clip-local frame -> :class:`PointPrompt`) adds an
        annotator's clicks or box to the audio prompts; such a frame becomes a conditioning
        frame, as in SAM2. ``text`` (Ref-AVS only): the expression's hidden states
        ``(1, 25, 768)`` (:meth:`encode_text`) or the expression itself.
        """
        return self.forward_features(self.encode_images(frames), log_mel, state,
                                     projections=projections, points=points, text=text)

    def forward_features(self, enc: dict, log_mel: torch.Tensor,
                         state: TrackState | None = None, *, projections: bool | None = None,
                         points: dict[int, PointPrompt] | None = None,
                         text: torch.Tensor | str | None = None) -> ClipOutput:
        """:meth:`forward_clip` from image features already computed by :meth:`encode_images`
        (the fuser and SAM2's tracking only). ``enc`` is left as it is."""
        t_len = enc["backbone_fpn"][0].shape[0]
        text = self._checked_text(t_len, log_mel, text)
        state = self._clip_state(t_len) if state is None else state
        features, proj = self.clip_features(enc, log_mel, text, projections=projections)
        out = self.track_features(features, state, points)
        out.projections = proj
        return out

    def clip_features(self, enc: dict, log_mel: torch.Tensor, text: torch.Tensor | None = None,
                      *, projections: bool | None = None) -> tuple[ClipFeatures, list | None]:
        """The prompt-free part of :meth:`forward_features`: the fuser's prompts and SAM2's
        tracking features of one clip (and the fuser's projections, see the fuser). An
        annotator's click changes nothing here, so a refinement can reuse them
        (:class:`~auralsam2_core.inference.feature_cache.FeatureCache`). Inputs as checked there."""
        (features, proj), = self._clip_features(enc, log_mel, [text], projections)
        return features, proj

    def query_features(self, enc: dict, log_mel: torch.Tensor,
                       texts: Sequence[torch.Tensor | None]) -> list[ClipFeatures]:
        """:meth:`clip_features` of one clip for several expressions (Ref-AVS queries;
        ``[None]`` for the AVS model): the audio embedding and SAM2's tracking inputs do not
        depend on the text, so they are computed once. Same results as one call per text."""
        return [features for features, _ in self._clip_features(enc, log_mel, texts, False)]

    def _clip_features(self, enc: dict, log_mel: torch.Tensor, texts: Sequence,
                       projections: bool | None) -> list[tuple[ClipFeatures, list | None]]:
        out = []
        with self._autocast():
            audio_embedding = self.fuser.embed_audio(log_mel)
            feats, pos, sizes = self.tracking_features(enc)
            for text in texts:
                visual, audio, proj = self.fuser(enc["backbone_fpn"], log_mel, text,
                                                 projections=projections,
                                                 audio_embedding=audio_embedding)
                out.append((ClipFeatures(feats, pos[-1], sizes, [v[None] for v in visual],
                                         [d[None] for d in audio]), proj))
        return out

    def track_features(self, features: ClipFeatures, state: TrackState,
                       points: dict[int, PointPrompt] | None = None, *,
                       last: bool = False) -> ClipOutput:
        """SAM2's tracking of the clip ``features`` describe, continuing ``state``: the rest of
        :meth:`forward_features` (``points`` as there). ``last``: no frame follows this clip,
        so the memory of its final frame, which nothing would read, is not encoded (the same
        outputs; ``state`` ends). A one-frame refinement is then a quarter cheaper."""
        with self._autocast():
            (multi, raw, ious, obj), = self._track(features, state, points or {}, last)
        chosen_logits, chosen = choose_masks(multi, ious, obj, self.mask_choice)
        return ClipOutput(multi, raw, ious.float(), obj.float(), chosen_logits, chosen)

    def forward_queries(self, frames: torch.Tensor, log_mel: torch.Tensor,
                        texts: Sequence[torch.Tensor | str],
                        states: Sequence[TrackState] | None = None) -> list[ClipOutput]:
        """Ref-AVS: one clip, K expressions. The image encoder, the audio encoder and SAM2's
        tracking inputs run once (:meth:`query_features`); the fuser and the tracking run per
        expression, each with its own SAM2 memory (``states[k]``, fresh when None). Same
        results as K :meth:`forward_clip` calls."""
        if states is not None and len(states) != len(texts):
            raise ValueError(f"{len(texts)} expressions but {len(states)} track states")
        t_len = frames.shape[0]
        texts = [self._checked_text(t_len, log_mel, t) for t in texts]
        features = self.query_features(self.encode_images(frames), log_mel, texts)
        return [self.track_features(f, self._clip_state(t_len) if states is None
                                    else states[k]) for k, f in enumerate(features)]

    def _checked_text(self, t_len: int, log_mel: torch.Tensor,
                      text: torch.Tensor | str | None) -> torch.Tensor | None:
        """``text`` as hidden states (a string is encoded), after checking it and ``log_mel``
        against the variant: Ref-AVS needs an expression, AVS none and one example a frame."""
        if self.variant == "refavs":
            if text is None:
                raise ValueError("the Ref-AVS model needs a referring expression (text=)")
            if log_mel.shape[0] == 0:
                raise ValueError("need at least one log-mel example")
            return self.encode_text(text) if isinstance(text, str) else text
        if text is not None:
            raise ValueError("text is only for the Ref-AVS model (variant='refavs')")
        if log_mel.shape[0] != t_len:
            raise ValueError(f"need one log-mel example per frame: {t_len} frames, "
                             f"{log_mel.shape[0]} examples")
        return None

    def _clip_state(self, t_len: int) -> TrackState:
        """A fresh state for a clip that starts a video. Ref-AVS as published: one clip is one
        video (SAM2's num_frames = T)."""
        return self.new_state(t_len if self.variant == "refavs" else None)

    def _frame_order(self, t_len: int, state: TrackState) -> tuple[list[int], int | None]:
        """Processing order of a clip's frames and its conditioning frame (None when the clip
        continues a video). AVS: frame 0, then in order. Ref-AVS (authors' code): the middle
        frame ``int(T/2)`` first, then ``0, 1, …`` skipping it, at training and evaluation."""
        if state.next_frame or state.output_dict["cond_frame_outputs"]:
            return list(range(t_len)), None
        cond = t_len // 2 if self.variant == "refavs" else 0
        return [cond, *(t for t in range(t_len) if t != cond)], cond

    def tracking_features(self, enc: dict) -> tuple[list, list, list]:
        """SAM2's per-frame tracking inputs (features, position encodings, sizes, each
        ``(h*w, frames, C)``) from the image encoder's output (its raw maps get SAM2's
        ``conv_s0/conv_s1`` here, after the fuser has read them)."""
        decoder = self.sam2.sam_mask_decoder
        fpn = list(enc["backbone_fpn"])
        fpn[0], fpn[1] = decoder.conv_s0(fpn[0]), decoder.conv_s1(fpn[1])
        _, feats, pos, sizes = self.sam2._prepare_backbone_features(
            {"backbone_fpn": fpn, "vision_pos_enc": enc["vision_pos_enc"]})
        return feats, pos, sizes

    def track_step(self, frame_idx: int, is_cond: bool, feats: list, pos: list, sizes: list,
                   prompts: FramePrompts, state: TrackState,
                   clicks: dict | None = None, remember: bool = True
                   ) -> tuple[torch.Tensor, ...]:
        """One frame of SAM2's tracking with AuralSAM2's prompts, for B videos at once (the
        columns of ``feats``/``pos``; ``state`` holds their memory, batched the same way).

        The only place that calls SAM2's private tracking functions (a ``sam2`` upgrade
        touches this method). Returns ``(multimask_logits, raw_multimask_logits, ious,
        object_score_logits)``, ``(B, M, s, s)``, ``(B, M, s, s)``, ``(B, M)``, ``(B, 1)``.
        ``remember=False``: the frame's memory is neither encoded nor stored and ``state`` ends
        (for a video's last frame; the outputs do not depend on it).
        """
        sam2 = self.sam2
        decoder = sam2.sam_mask_decoder
        with self._transformer.prompts(prompts), _capture_outputs(decoder) as captured:
            out, sam_out, _, _ = sam2._track_step(
                frame_idx, is_cond, feats, pos, sizes, clicks, None, state.output_dict,
                state.num_frames, False, None)
        multi, _, ious, _, high_res, obj_ptr, obj_logits = sam_out
        if not remember:
            state.ended = True
            return multi, captured[-1][0].float(), ious, obj_logits
        out["obj_ptr"] = obj_ptr
        out["object_score_logits"] = obj_logits
        # Quirk: the authors pass a non-None "point input" here so that the memory encoder
        # gets the binarised mask even though no points were given.
        sam2._encode_memory_in_output(feats, sizes, True, True, high_res, obj_logits, out)
        state.store(frame_idx, out, is_cond, keep=self._memory_horizon())
        return multi, captured[-1][0].float(), ious, obj_logits

    def track_clips(self, enc: dict, visual: Sequence[torch.Tensor],
                    audio: Sequence[torch.Tensor], state: TrackState,
                    points: dict[int, PointPrompt] | None = None
                    ) -> list[tuple[torch.Tensor, ...]]:
        """SAM2's tracking of B clips of T frames, batched over the clips (each its own video;
        ``state`` holds all B memories). ``enc``: image-encoder output of the B*T frames, clip
        after clip; ``visual``: the fuser's ``[a, b, c]`` stacked per clip, ``(B, T, h*w, C)``;
        ``audio``: ``[d1, d2, d3]``, ``(B, M, C)``. ``points`` (B = 1 only): clip-local frame
        -> clicks. Returns per clip ``(multimask_logits, raw_multimask_logits, ious,
        object_score_logits)`` with T rows each, in frame order."""
        feats, pos, sizes = self.tracking_features(enc)
        return self._track(ClipFeatures(feats, pos[-1], sizes, list(visual), list(audio)),
                           state, points or {})

    def _track(self, features: ClipFeatures, state: TrackState,
               points: dict[int, PointPrompt], last: bool = False
               ) -> list[tuple[torch.Tensor, ...]]:
        if state.ended:
            raise ValueError("this track state ended with its video's last frame "
                             "(track_features(last=True)): start a new one")
        feats, sizes, visual, audio = (features.feats, features.sizes, features.visual,
                                       features.audio)
        b, t_len = visual[0].shape[:2]
        if points and b != 1:
            raise ValueError("point prompts are for one clip at a time")
        # SAM2's tracking reads the position encoding of the coarsest level only
        # (``_track_step`` passes ``current_vision_pos_embeds[-1:]`` on): the others are None.
        no_pos = [None] * (len(feats) - 1)
        order, cond = self._frame_order(t_len, state)
        start = state.next_frame
        steps: dict[int, tuple[torch.Tensor, ...]] = {}
        for t in order:
            clicks = points[t].as_inputs(self.device) if t in points else None
            is_cond = t == cond or clicks is not None
            cols = torch.arange(b, device=feats[0].device) * t_len + t
            # Lists reversed as in the authors' model: [c, b, a] and [d3, d2, d1]; frame t takes
            # row t (Ref-AVS: rows 0..T-1 of the M audio + text rows).
            prompts = FramePrompts([v[:, t] for v in reversed(visual)],
                                   [d[:, t, None, :] for d in reversed(audio)],
                                   keep_sparse=clicks is not None)
            multi, raw, ious, obj = self.track_step(
                start + t, is_cond, [x[:, cols] for x in feats], [*no_pos, features.pos[:, cols]],
                sizes, prompts, state, clicks, remember=not (last and t == order[-1]))
            if multi.shape[1] == 1:  # a box or several clicks: SAM2 predicts a single mask
                multi, raw, ious = (x.expand(-1, 3, *x.shape[2:]) for x in (multi, raw, ious))
            steps[t] = (multi, raw, ious, obj)
        state.next_frame = start + t_len
        return [tuple(torch.stack([steps[t][k][i] for t in range(t_len)]) for k in range(4))
                for i in range(b)]
