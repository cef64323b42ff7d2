"""What a project's labelling config asks for: which control tags the backend can fill.

The backend fills, when present, a ``VideoRectangle`` (the sounding object's box track), a
``TimelineLabels`` (when it sounds) on a ``Video``, and a ``BrushLabels`` on an ``Image``
(keyframe masks). Task-data keys come from the object tags' ``value``: its first ``$key``
(Label Studio fills in every ``$key`` of a value, e.g. ``$video#t=$time``).
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

_DATA_KEY = re.compile(r"\$(\w+)")


def _data_key(value: str) -> str | None:
    m = _DATA_KEY.match(value)
    return m.group(1) if m else None


class LabelConfigError(ValueError):
    """The labelling config has nothing this backend can predict."""


@dataclass(frozen=True)
class Control:
    tag: str  # "videorectangle", "timelinelabels", "brushlabels"
    name: str  # from_name
    to_name: str  # the object tag's name
    data_key: str  # task.data key of the object tag's media
    labels: tuple[str, ...]

    def label(self, wanted: str | None) -> str | None:
        if wanted is not None:
            if self.labels and wanted not in self.labels:
                raise LabelConfigError(f"label {wanted!r} is not one of {self.name}'s labels "
                                       f"{list(self.labels)}")
            return wanted
        return self.labels[0] if self.labels else None


LS_DEFAULT_FRAMERATE = 24.0  # the <Video> tag's default


@dataclass(frozen=True)
class ProjectConfig:
    video_box: Control | None
    timeline: Control | None
    brush: Control | None
    framerate: float = LS_DEFAULT_FRAMERATE  # Label Studio numbers video frames with this
    audio_key: str = "video"  # task.data key of the sound (keyframe tasks: their video)

    @property
    def video_key(self) -> str | None:
        c = self.video_box or self.timeline
        return c.data_key if c else None


def parse(label_config: str) -> ProjectConfig:
    if not isinstance(label_config, str):
        raise LabelConfigError("the labelling config must be XML text, got "
                               f"{type(label_config).__name__}")
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError as e:
        raise LabelConfigError(f"the labelling config is not valid XML: {e}") from None
    objects = {}
    framerate, audio_key = LS_DEFAULT_FRAMERATE, "video"
    for el in root.iter():
        name, value = el.get("name"), el.get("value", "")
        tag = el.tag.lower()
        key = _data_key(value)
        if tag in ("video", "image") and name and key:
            objects[name] = (tag, key)
        if tag == "video":
            raw = el.get("framerate") or el.get("frameRate")
            try:
                framerate = float(raw) if raw else framerate
            except ValueError:
                framerate = math.nan
            if not (math.isfinite(framerate) and framerate > 0):
                raise LabelConfigError(f"<Video framerate={raw!r}> is not a positive number")
        if tag == "audio" and key:
            audio_key = key
    box_labels: dict[str, tuple[str, ...]] = {}  # a <Labels toName=video> names the boxes
    for el in root.iter():
        if el.tag.lower() == "labels" and el.get("toName"):
            box_labels.setdefault(el.get("toName"), tuple(
                lab.get("value") for lab in el.iter()
                if lab.tag.lower() == "label" and lab.get("value")))
    found: dict[str, Control] = {}
    for el in root.iter():
        tag = el.tag.lower()
        if tag not in ("videorectangle", "timelinelabels", "brushlabels") or tag in found:
            continue
        to_name = el.get("toName", "")
        obj = objects.get(to_name)
        want = "image" if tag == "brushlabels" else "video"
        if obj is None or obj[0] != want:
            continue
        labels = tuple(lab.get("value") for lab in el.iter()
                       if lab.tag.lower() == "label" and lab.get("value"))
        if tag == "videorectangle":
            labels = box_labels.get(to_name, ())
        found[tag] = Control(tag, el.get("name", tag), to_name, obj[1], labels)
    cfg = ProjectConfig(found.get("videorectangle"), found.get("timelinelabels"),
                        found.get("brushlabels"), framerate, audio_key)
    if not (cfg.video_box or cfg.timeline or cfg.brush):
        raise LabelConfigError(
            "the labelling config has no VideoRectangle or TimelineLabels on a <Video>, nor "
            "BrushLabels on an <Image>: nothing for AuralSAM2 to predict (see the templates in "
            "plugins/label_studio/templates/)")
    return cfg
