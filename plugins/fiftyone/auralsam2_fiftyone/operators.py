"""The plugin's operators: thin wrappers that read inputs, call the modules and report.

Labels and descriptions all start with "AuralSAM2": the App's operator browser orders its list
by the first character of each operator's description (or label, without one), keeping the
registration order among equals, and matches a query against label, URI and description. So
the three stay together, after FiftyOne's own "A..." operators, and "sound" lists only them,
pre-label first.
"""

from __future__ import annotations

import os
import time

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types
from auralsam2_core.inference.instances import DEFAULT_MIN_AREA
from auralsam2_core.model_spec import DEFAULT_SAM2_CONFIG
from auralsam2_core.modeling.build import SAM2_CONFIGS
from auralsam2_core.serving.engines import engine_from_env

from .classes import label_fields, run_classes
from .evaluate import evaluate_collection
from .fields import conflicts, is_owned, prelabel_targets
from .prelabel import PrelabelSettings, RunPlan, plan_run, prelabel_collection
from .review import clips_by_priority, frames_by_priority, videos_by_priority
from .spec import (
    BUNDLED,
    check_available,
    describe,
    resolve_model,
    spec_from_params,
    variant_from_params,
)
from .timeline import frame_label

#: Above this many frames to pre-label (known from metadata; a video without a frame count
#: counts as this many) the App offers delegated execution first.
LONG_RUN_FRAMES = 300
#: The shared service's address and token: the secrets fiftyone.yml declares, read from
#: FiftyOne's secrets (Enterprise) or else the environment.
SERVICE_SECRETS = ("AURALSAM2_SERVER_URL", "AURALSAM2_SERVER_TOKEN",
                   "AURALSAM2_SERVER_TOKEN_FILE")


def _service_env(ctx) -> dict[str, str]:
    """The environment with the plugin's secrets from FiftyOne's store laid over it."""
    env = dict(os.environ)
    for key in SERVICE_SECRETS:
        value = ctx.secret(key)
        if value:
            env[key] = value
    return env


def _choices(values: list[tuple[str, str]], **kwargs) -> types.RadioGroup:
    group = types.RadioGroup(**kwargs)
    for value, label in values:
        group.add_choice(value, label=label)
    return group


def _frame_fields(dataset, *doc_types) -> list[str]:
    if dataset is None or dataset.media_type != "video":
        return []
    schema = dataset.get_frame_field_schema(embedded_doc_type=list(doc_types)) or {}
    return sorted(schema)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _settings(params: dict, dataset=None) -> PrelabelSettings:
    """The run's settings; with ``variant`` ``refavs`` (or classes given), the classes
    (:func:`~auralsam2_fiftyone.classes.run_classes`: given, a label field's, or the dataset's
    ``default_classes``)."""
    refer = variant_from_params(params) == "refavs"
    return PrelabelSettings(label_field=params.get("label_field") or "auralsam2",
                            stride=max(int(params.get("stride") or 1), 1),
                            no_audio=params.get("no_audio") or "error",
                            audio_track=_audio_track(params.get("audio_track")),
                            overwrite=bool(params.get("overwrite", False)),
                            instance_min_area=None if refer else _instance_min_area(params),
                            classes=tuple(run_classes(dataset, params)) if refer else ())


def _instance_min_area(params: dict) -> float | None:
    """The form's Instances option: None when off, else the minimum area (a fraction of the
    frame, as in ``AURALSAM2_MIN_INSTANCE_AREA``)."""
    if not params.get("instances"):
        return None
    raw = params.get("min_instance_area")
    if raw in (None, ""):
        return DEFAULT_MIN_AREA
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 <= raw < 1:
        raise ValueError(f"minimum instance area must be a fraction of the frame in [0, 1) "
                         f"(got {raw!r})")
    return float(raw)


def _audio_track(value) -> int | None:
    if value in (None, ""):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 \
            or value != int(value):
        raise ValueError(f"audio track must be an index 0, 1, ... (got {value!r})")
    return int(value)


def is_long(plan: RunPlan) -> bool:
    """Long enough to offer delegated execution first."""
    return plan.frames + plan.unknown * LONG_RUN_FRAMES > LONG_RUN_FRAMES


def app_can_schedule() -> bool:
    """Whether the App offers "Schedule": FiftyOne 1.22 does so with legacy orchestrators
    allowed (``FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true``; ``fiftyone delegated launch`` then
    runs the queue) or for registered orchestrators, which only FiftyOne Enterprise lists
    (``fiftyone/operators/server.py`` never fills ``available_orchestrators``); otherwise it
    shows "Schedule: NOT AVAILABLE" and Execute runs everything at once."""
    return bool(fo.config.allow_legacy_orchestrators)


def _where(ctx) -> str:
    target = ctx.params.get("view_target") or ctx.request_params.get("view_target")
    if target == "SELECTED_SAMPLES":
        return "selected"
    if target in ("DATASET", "DATASET_VIEW") or (target is None and not ctx.has_custom_view):
        return "in the dataset"
    return "in the current view"


def what_happens(ctx, plan: RunPlan, lf: str) -> list[tuple[str, types.View]]:
    """The form's account of the run: how many videos, how many done, now or scheduled."""
    where = _where(ctx)
    if plan.videos == 0:
        return [("summary", types.Warning(label=f"No video {where}: nothing to pre-label"))]
    if plan.to_run == 0:
        every = ("The video {w} already has results in `{lf}`: Execute would skip it"
                 if plan.videos == 1 else
                 "All {n} videos {w} already have results in `{lf}`: Execute would skip "
                 "every one")
        return [("summary", types.Warning(
            label=every.format(n=plan.videos, w=where, lf=lf),
            description="Tick Overwrite to pre-label again, or choose another label "
                        "field."))]
    frames = f"about {plan.frames} frames" + (
        f" + {_plural(plan.unknown, 'video')} of unknown length" if plan.unknown else "")
    done = (f"{plan.finished} already pre-labelled in `{lf}` (skipped), "
            if plan.finished else "")
    out = [("summary", types.Notice(label=f"{_plural(plan.videos, 'video')} {where}: {done}"
                                          f"{plan.to_run} to pre-label ({frames})"))]
    long_run = is_long(plan)
    if ctx.requesting_delegated_execution or (long_run and app_can_schedule()):
        out.append(("mode", types.Notice(
            label="Scheduled as a delegated run" + (
                "" if ctx.requesting_delegated_execution
                else " (Schedule is the default for this size)"),
            description="It waits for a worker: run `fiftyone delegated launch`, and follow "
                        "it in the App's Runs page.")))
    elif long_run:
        out.append(("mode", types.Warning(
            label="Runs at once when you press Execute, in the App's server, which stops "
                  f"immediate runs after {fo.config.operator_timeout} s",
            description="This App cannot schedule it (Schedule: not available). For a "
                        "background run, start the App with "
                        "`FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true` and a worker with "
                        "`fiftyone delegated launch`, or run it from Python (see the guide).")))
    else:
        out.append(("mode", types.Notice(
            label="Runs at once when you press Execute",
            description=f"{frames}: short enough for an immediate run")))
    return out


def _has_classes(dataset, pred_field: str) -> bool:
    """Whether ``pred_field`` was pre-labelled with classes (its run summary lists them)."""
    if dataset is None or dataset.get_field(f"{pred_field}_summary") is None:
        return False
    return any(dataset.values(f"{pred_field}_summary.classes"))


class PrelabelSoundingObjects(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="prelabel_sounding_objects",
            label="AuralSAM2: pre-label sounding objects",
            description="AuralSAM2: masks of the objects that make the sound, on every "
                        "frame, from the video and its audio",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=True,
            resolve_execution_options_on_change=True,
            icon="graphic_eq",
        )

    def _plan(self, ctx) -> RunPlan:
        return plan_run(ctx.target_view(), _settings(ctx.params, ctx.dataset))

    def resolve_execution_options(self, ctx):
        from fiftyone.operators.executor import ExecutionOptions

        try:
            long_run = is_long(self._plan(ctx))
        except Exception:  # noqa: BLE001 - no dataset yet (App start-up), bad field: assume long
            long_run = True
        return ExecutionOptions(allow_immediate_execution=True, allow_delegated_execution=True,
                                default_choice_to_delegated=long_run)

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view_target(ctx, action_description="Pre-label")
        inputs.str("label_field", default="auralsam2", label="Label field",
                   description="frames.<field> gets the masks; <field>_intervals and "
                               "<field>_summary the sounding intervals and run summary")
        inputs.enum("variant", ["avs", "refavs"], default="avs", label="Labels",
                    view=_choices([("avs", "Whatever sounds: one label, sounding (AVS model)"),
                                   ("refavs", "The dataset's classes: one label per class "
                                              "(Ref-AVS model)")]))
        refer = ctx.params.get("variant") == "refavs"
        if refer:
            self._class_inputs(ctx, inputs)
        inputs.enum("model", [BUNDLED, "checkpoints"], default=BUNDLED, label="Model",
                    view=_choices([(BUNDLED, "Bundled demo model" + (
                                       " (Ref-AVS)" if refer else "")),
                                   ("checkpoints", "Released weights (paths)")]))
        if ctx.params.get("model") == "checkpoints":
            inputs.enum("sam2_config", list(SAM2_CONFIGS), default=DEFAULT_SAM2_CONFIG,
                        label="SAM2 config", view=types.Dropdown())
            inputs.str("sam2_checkpoint", label="SAM2 checkpoint",
                       description="path (or weight registry name) of Meta's SAM2 .pt")
            inputs.str("fuser_checkpoint", label="AuralSAM2 fuser checkpoint",
                       description="path (or weight registry name) of the fuser .pth" + (
                           " (a Ref-AVS one, e.g. auralsam2_refavs_best)" if refer else ""))
            if refer:
                inputs.str("text_encoder", default="distilroberta-base", label="Text encoder",
                           description="registry name or folder of the Ref-AVS text encoder")
        elif refer:
            try:
                check_available(spec_from_params(ctx.params))
            except FileNotFoundError as e:
                inputs.view("model_missing", types.Warning(label=str(e)))
        inputs.enum("device", ["auto", "cpu", "cuda"], default="auto", label="Device",
                    view=_choices([("auto", "auto"), ("cpu", "CPU"), ("cuda", "CUDA GPU")]))
        inputs.int("stride", default=1, min=1, label="Stride",
                   description="pre-label every n-th frame")
        inputs.enum("no_audio", ["error", "silent"], default="error",
                    label="Videos without audio",
                    view=_choices([("error", "report as failed"),
                                   ("silent", "label every frame as not sounding")]))
        inputs.int("audio_track", label="Audio track", min=0,
                   description="which audio track to hear (0 = the first); empty: the track "
                               "marked default, else the first")
        if not refer:
            inputs.bool("instances", default=False, label="Instances",
                        description="one detection per separate sounding object (connected "
                                    "part of the mask), each its own track across frames; "
                                    "off: one detection per frame covering everything that "
                                    "sounds")
        if ctx.params.get("instances") and not refer:
            inputs.float("min_instance_area", default=DEFAULT_MIN_AREA, min=0, max=1,
                         label="Minimum instance area",
                         description="fraction of the frame (0.002 = 0.2 %) a part must cover; "
                                     "smaller parts are dropped")
        inputs.bool("overwrite", default=False, label="Overwrite",
                    description="re-run finished videos and write into existing fields that "
                                "AuralSAM2 did not create")
        lf = ctx.params.get("label_field") or "auralsam2"
        if ctx.dataset is not None and not ctx.params.get("overwrite"):
            taken = conflicts(ctx.dataset, prelabel_targets(lf)) if "." not in lf else []
            if taken:
                inputs.view("conflict", types.Warning(
                    label=f"{', '.join(taken)} exist and were not created by AuralSAM2",
                    description="choose another label field, or tick Overwrite"))
        if ctx.dataset is not None:
            try:
                plan = self._plan(ctx)
            except ValueError as e:  # not videos, invalid label field
                inputs.view("summary", types.Error(label=str(e)))
            else:
                for name, view in what_happens(ctx, plan, lf):
                    inputs.view(name, view)
                if refer:
                    names = _settings(ctx.params, ctx.dataset).class_names or []
                    inputs.view("classes_note", types.Notice(
                        label=f"Labels: {', '.join(names)}",
                        description="each class is its own track; its detections and "
                                    "intervals carry its name"))
        return types.Property(inputs, view=types.View(label="AuralSAM2 pre-label"))

    @staticmethod
    def _class_inputs(ctx, inputs) -> None:
        """The classes of a Ref-AVS run: a label field to take them from (optional), and a
        list that, when filled, replaces them. (The list has no default: the App keeps a
        value once set, so a default from one field would outlive choosing another; the
        notice below the form names the classes the run will use.)"""
        fields_ = label_fields(ctx.dataset)
        if fields_:
            inputs.enum("classes_field", fields_, label="Classes from label field",
                        description="use this field's classes (dataset.classes, else the "
                                    "labels it holds); empty: the dataset's default_classes",
                        view=types.Dropdown())
        inputs.list("classes", types.String(), label="Classes (optional)",
                    description="your own list instead: one label per class; the Ref-AVS "
                                "model reads each name as its expression (e.g. 'the dog', "
                                "'the man playing the guitar')")

    def execute(self, ctx):
        params = ctx.params
        settings = _settings(params, ctx.dataset)
        spec = spec_from_params(params)
        service = _service_env(ctx)
        if not service.get("AURALSAM2_SERVER_URL"):
            check_available(spec)
        # With AURALSAM2_SERVER_URL set, the shared service runs its model; none loads here.
        model = engine_from_env(lambda: resolve_model(spec, params.get("device") or "auto"),
                                service)
        last = [0.0]

        def progress(fraction, label):
            now = time.monotonic()
            if ctx.delegated and (now - last[0] >= 1.0 or fraction >= 1.0):
                last[0] = now
                ctx.set_progress(progress=fraction, label=label)

        outcomes = prelabel_collection(ctx.target_view(), model, settings,
                                       model_description=describe(spec), on_progress=progress)
        ctx.ops.reload_dataset()
        counts = {s: sum(o.status == s for o in outcomes)
                  for s in ("complete", "partial", "skipped", "failed")}
        return {**counts, "label_field": settings.label_field,
                "classes": list(settings.class_names or []),
                "failures": [{"filepath": o.filepath, "error": o.error}
                             for o in outcomes if o.status == "failed"]}

    def resolve_output(self, ctx):
        outputs = types.Object()
        for key in ("complete", "partial", "skipped", "failed"):
            outputs.int(key, label=f"videos {key}")
        outputs.list("classes", types.String(), label="classes pre-labelled")
        table = types.TableView()
        table.add_column("filepath", label="video")
        table.add_column("error", label="error")
        outputs.list("failures", types.Object(), label="Failures", view=table)
        return types.Property(outputs, view=types.View(label="AuralSAM2 pre-label"))


class EvaluateSoundingObjects(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="evaluate_sounding_objects",
            label="AuralSAM2: evaluate sounding objects (AVSBench J and F)",
            description="AuralSAM2: AVSBench J and F of sounding-object masks against "
                        "ground truth",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            icon="rule",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view_target(ctx, action_description="Evaluate")
        preds = _frame_fields(ctx.dataset, fo.Detections, fo.Segmentation, fo.Heatmap)
        gts = _frame_fields(ctx.dataset, fo.Segmentation, fo.Detections)
        inputs.enum("pred_field", preds, default="auralsam2" if "auralsam2" in preds else None,
                    required=True, label="Predictions (frame field)", view=types.Dropdown())
        inputs.enum("gt_field", gts, required=True, label="Ground truth (frame field)",
                    view=types.Dropdown())
        pred = ctx.params.get("pred_field") or "auralsam2"
        inputs.str("eval_key", default=f"{pred}_avs", label="Evaluation key",
                   description="per-video J and F are stored in this sample field")
        inputs.bool("per_class", default=_has_classes(ctx.dataset, pred), label="Per class",
                    description="score each class the predictions hold on its own (against "
                                "ground truth of the same label); J and F are then the "
                                "means over the classes")
        inputs.bool("overwrite", default=False, label="Overwrite")
        return types.Property(inputs, view=types.View(label="AuralSAM2 evaluation"))

    def execute(self, ctx):
        p = ctx.params
        pred = p.get("pred_field") or "auralsam2"
        per_class = p.get("per_class")
        if per_class is None:
            per_class = _has_classes(ctx.dataset, pred)
        report = evaluate_collection(ctx.target_view(), pred, p["gt_field"],
                                     eval_key=p.get("eval_key") or f"{pred}_avs",
                                     overwrite=bool(p.get("overwrite", False)),
                                     classes=p.get("classes") or bool(per_class))
        ctx.ops.reload_dataset()
        return {"J": report["J"], "F": report["F"], "J&F": report["J&F"],
                "num_videos": report["num_videos"], "num_frames": report["num_frames"],
                "eval_key": report["eval_key"], "skipped": len(report["skipped"]),
                "per_class": report.get("per_class", [])}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.float("J", label="J (mIoU, mean over videos)")
        outputs.float("F", label="F-score (beta^2 = 0.3, mean over videos)")
        outputs.float("J&F", label="J&F")
        outputs.int("num_videos", label="videos scored")
        outputs.int("skipped", label="videos skipped (no ground truth or no prediction)")
        outputs.str("eval_key", label="per-video results in")
        table = types.TableView()
        for key in ("class", "J", "F", "J&F"):
            table.add_column(key, label=key)
        outputs.list("per_class", types.Object(), label="Per class", view=table)
        return types.Property(outputs, view=types.View(label="AVSBench J and F"))


class ReviewSoundingObjects(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="review_sounding_objects",
            label="AuralSAM2: review sounding objects, least confident first",
            description="AuralSAM2: a view of the pre-labelled videos or uncertain clips, "
                        "least confident first",
            dynamic=True,
            icon="low_priority",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        owned = [f for f in _frame_fields(ctx.dataset, fo.Detections)
                 if is_owned(ctx.dataset.get_field(f"frames.{f}"))]
        inputs.enum("label_field", owned or ["auralsam2"], default=(owned or ["auralsam2"])[0],
                    required=True, label="Pre-label field", view=types.Dropdown())
        inputs.enum("level", ["videos", "clips"], default="videos", label="Order",
                    view=_choices([("videos", "videos by their least confident frame"),
                                   ("clips", "uncertain stretches of frames")]))
        if ctx.params.get("level") == "clips":
            inputs.float("threshold", default=0.5, min=0.0, max=1.0,
                         label="Review priority threshold")
        inputs.bool("save_view", default=True, label="Save as a view")
        return types.Property(inputs, view=types.View(label="AuralSAM2 review"))

    def execute(self, ctx):
        p = ctx.params
        lf = p.get("label_field") or "auralsam2"
        level = p.get("level") or "videos"
        if level == "clips":
            view = clips_by_priority(ctx.dataset, lf, float(p.get("threshold", 0.5)))
        else:
            view = videos_by_priority(ctx.dataset, lf)
        name = f"{lf}-review-{level}"
        if p.get("save_view", True):
            ctx.dataset.save_view(name, view, description="AuralSAM2: least confident first",
                                  overwrite=True)
        if not ctx.delegated:
            ctx.ops.set_view(view=view)
        top = frames_by_priority(ctx.dataset, lf, limit=20)
        fps = dict(zip(*ctx.dataset.select([t["sample_id"] for t in top]).values(
            ["id", f"{lf}_summary.fps"]), strict=True)) if top else {}
        return {"view_name": name if p.get("save_view", True) else None, "count": len(view),
                "top_frames": [{"video": t["filepath"].rsplit("/", 1)[-1],
                                "frame": frame_label(t["frame_number"], fps.get(t["sample_id"])),
                                "review_priority": t["review_priority"]} for t in top]}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("view_name", label="saved view")
        outputs.int("count", label="videos / clips in the view")
        outputs.list("top_frames", types.Object(), label="least confident frames",
                     description="frames as the App's timeline shows them: #0 (0:00.00) is "
                                 "the first")
        return types.Property(outputs, view=types.View(label="AuralSAM2 review"))
