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
from auralsam2_core.inference.engine import PrelabelOptions, prelabel
from auralsam2_core.inference.instances import DEFAULT_MIN_AREA, InstanceTracker

from . import convert, labels
from .spec import ModelSpec, resolve_model


class AuralSAM2VideoModel(fom.Model, fom.SamplesMixin):
    """``AuralSAM2VideoModel()`` runs the bundled model; pass ``spec=ModelSpec(...)`` for
    released weights, or ``model=`` an already built ``AuralSAM2``. ``instances=True``: one
    detection per connected part of at least ``min_instance_area`` of the frame, its ``index``
    stable across frames (:mod:`auralsam2_core.inference.instances`)."""

    def __init__(self, model=None, *, spec: ModelSpec | None = None, device: str = "auto",
                 stride: int = 1, clip_len: int = 5, no_audio: str = "error",
                 audio_track: int | None = None, instances: bool = False,
                 min_instance_area: float = DEFAULT_MIN_AREA) -> None:
        fom.SamplesMixin.__init__(self)
        if instances and not 0 <= min_instance_area < 1:
            raise ValueError(f"min_instance_area is a fraction of the frame in [0, 1), got "
                             f"{min_instance_area}")
        self.model = model if model is not None else resolve_model(spec, device)
        self.instance_min_area = min_instance_area if instances else None
        self.options = PrelabelOptions(clip_len=clip_len, stride=stride, no_audio=no_audio,
                                       audio_track=audio_track)
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
        for r in results:
            n = convert.frame_number(r.index)
            if last is not None and n > last:
                results.close()
                break
            if support and n < support[0]:
                continue
            parts = None if tracker is None else tracker.update(r.mask)
            out[n] = labels.detections(convert.frame_dict(r, parts))
        return out
