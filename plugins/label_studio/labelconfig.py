"""What a project's labelling config asks for: which control tags the backend can fill.

The backend fills, when present, a ``VideoRectangle`` (the sounding object's box track), a
``TimelineLabels`` (when it sounds) on a ``Video``, and a ``BrushLabels`` on an ``Image``
(keyframe masks). Task-data keys come from the object tags' ``value``: its first ``$key``
(Label Studio fills in every ``$key`` of a value, e.g. ``$video#t=$time``).

With a Ref-AVS model the labels of those controls are the project's classes
(:meth:`ProjectConfig.classes`): each becomes a query, the label's ``hint`` attribute
(``<Label value="Guitarist" hint="the man playing the guitar"/>``) the text the model reads
for it when given, else the label itself.
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
    hints: tuple[str | None, ...] = ()  # each label's ``hint`` attribute (Ref-AVS queries)

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

    def classes(self, keyframe: bool = False) -> list[tuple[str, str | None]]:
        """The project's classes for Ref-AVS: ``(label, hint)`` of the video controls' labels
        (box labels first, then timeline labels not among them), or of the ``BrushLabels`` for
        keyframe tasks. LabelConfigError when there are none, or when one label is given two
        different hints."""
        controls = [self.brush] if keyframe else [self.video_box, self.timeline]
        out: dict[str, str | None] = {}
        for c in controls:
            if c is None:
                continue
            for lab, hint in zip(c.labels, c.hints or (None,) * len(c.labels), strict=True):
                if lab in out and hint and out[lab] and hint != out[lab]:
                    raise LabelConfigError(
                        f"label {lab!r} has two different hints ({out[lab]!r} and {hint!r}); "
                        "give it one, the text the Ref-AVS model reads for it")
                out[lab] = out.get(lab) or hint
        if not out:
            where = "<BrushLabels>" if keyframe else "<Labels> (for the VideoRectangle) or " \
                "<TimelineLabels>"
            raise LabelConfigError(
                f"the Ref-AVS model labels the project's classes, but its {where} has no "
                "<Label value=...>: add one per class (see plugins/label_studio/templates/"
                "video_classes.xml)")
        return list(out.items())


def _labels(control: ET.Element) -> tuple[tuple[str, ...], tuple[str | None, ...]]:
    """A control's ``<Label>`` values and their ``hint`` attributes (None where absent)."""
    labels = [lab for lab in control.iter() if lab.tag.lower() == "label" and lab.get("value")]
    return (tuple(lab.get("value") for lab in labels),
            tuple((lab.get("hint") or "").strip() or None for lab in labels))


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
    box_labels: dict[str, tuple] = {}  # a <Labels toName=video> names the boxes
    for el in root.iter():
        if el.tag.lower() == "labels" and el.get("toName"):
            box_labels.setdefault(el.get("toName"), _labels(el))
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
        labels, hints = box_labels.get(to_name, ((), ())) if tag == "videorectangle" \
            else _labels(el)
        found[tag] = Control(tag, el.get("name", tag), to_name, obj[1], labels, hints)
    cfg = ProjectConfig(found.get("videorectangle"), found.get("timelinelabels"),
                        found.get("brushlabels"), framerate, audio_key)
    if not (cfg.video_box or cfg.timeline or cfg.brush):
        raise LabelConfigError(
            "the labelling config has no VideoRectangle or TimelineLabels on a <Video>, nor "
            "BrushLabels on an <Image>: nothing for AuralSAM2 to predict (see the templates in "
            "plugins/label_studio/templates/)")
    return cfg
