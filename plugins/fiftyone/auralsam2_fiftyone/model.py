"""A FiftyOne model for ``dataset.apply_model(...)`` on video datasets.

FiftyOne hands video models a frame reader, which has no audio; this model reads the video
*and its audio* from ``sample.filepath`` itself (hence ``SamplesMixin``) and returns
``{frame_number: fo.Detections}``, which ``apply_model`` stores in ``frames.<label_field>``.
Clips are labelled on their support. Sounding intervals and the summary are written by the
operator / :func:`~auralsam2_fiftyone.prelabel.prelabel_collection`, not by ``apply_model``.
"""

from __future__ import annotations

import fiftyone as fo
import fiftyone.core.models as fom
from auralsam2_core.inference.engine import (
    PrelabelOptions,
    check_model_options,
    class_queries,
    prelabel,
)
from auralsam2_core.inference.instances import DEFAULT_MIN_AREA, InstanceTracker

from . import convert, labels
from .spec import ModelSpec, check_available, resolve_model


class AuralSAM2VideoModel(fom.Model, fom.SamplesMixin):
    """``AuralSAM2VideoModel()`` runs the bundled model; pass ``spec=ModelSpec(...)`` for
    released weights, or ``model=`` an already built ``AuralSAM2``. ``instances=True``: one
    detection per connected part of at least ``min_instance_area`` of the frame, its ``index``
    stable across frames (:mod:`auralsam2_core.inference.instances`).

    ``classes`` (names, or ``(name, hint)`` pairs): pre-label these classes with the Ref-AVS
    model, one detection per class and frame labelled with the class (without ``spec`` or
    ``model``: the bundled Ref-AVS demo model; a ``spec`` must be ``variant="refavs"``)."""

    def __init__(self, model=None, *, spec: ModelSpec | None = None, device: str = "auto",
                 stride: int = 1, clip_len: int | None = None, no_audio: str = "error",
                 audio_track: int | None = None, instances: bool = False,
                 min_instance_area: float = DEFAULT_MIN_AREA, classes=None) -> None:
        fom.SamplesMixin.__init__(self)
        if instances and not 0 <= min_instance_area < 1:
            raise ValueError(f"min_instance_area is a fraction of the frame in [0, 1), got "
                             f"{min_instance_area}")
        if classes and instances:
            raise ValueError("instances and classes cannot be combined yet: with classes, "
                             "each class is one detection per frame")
        self.classes = class_queries(classes) if classes else {}  # {query: class}
        if model is None:
            if self.classes and spec is None:
                spec = ModelSpec(variant="refavs")
            if self.classes and spec.variant != "refavs":
                raise ValueError("classes need a Ref-AVS model: ModelSpec(..., "
                                 "variant='refavs') (or no spec: the bundled Ref-AVS demo "
                                 "model)")
            if spec is not None:
                check_available(spec)
        self.model = model if model is not None else resolve_model(spec, device)
        self.instance_min_area = min_instance_area if instances else None
        self.options = PrelabelOptions(clip_len=clip_len, stride=stride, no_audio=no_audio,
                                       audio_track=audio_track, queries=tuple(self.classes))
        check_model_options(self.model, self.options)
        self._preprocess = False

    @property
    def media_type(self) -> str:
        return "video"

    @property
    def ragged_batches(self) -> bool:
        return False

    @property
    def transforms(self):
        return None

    @property
    def preprocess(self) -> bool:
        return self._preprocess

    @preprocess.setter
    def preprocess(self, value) -> None:
        self._preprocess = value

    def predict(self, arg, sample=None) -> dict[int, fo.Detections]:
        path = sample.filepath if sample is not None else arg.inpath
        support = getattr(sample, "support", None) if sample is not None else None
        last = support[1] if support else None
        out: dict[int, fo.Detections] = {}
        results = prelabel(self.model, path, self.options)
        tracker = None if self.instance_min_area is None else \
            InstanceTracker(min_area=self.instance_min_area)
        for frame in convert.by_frame(results, len(self.classes)):
            n = convert.frame_number(frame[0].index)
            if last is not None and n > last:
                results.close()
                break
            if support and n < support[0]:
                continue
            if self.classes:
                doc = convert.class_frame_dict(frame, self.classes)
            else:
                parts = None if tracker is None else tracker.update(frame[0].mask)
                doc = convert.frame_dict(frame[0], parts)
            out[n] = labels.detections(doc)
        return out
