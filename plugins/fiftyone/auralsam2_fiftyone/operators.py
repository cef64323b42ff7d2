"""The plugin's operators: thin wrappers that read inputs, call the modules and report."""

from __future__ import annotations

import time

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types
from auralsam2_core.remote import remote_from_env

from .evaluate import evaluate_collection
from .fields import conflicts, is_owned, prelabel_targets
from .prelabel import PrelabelSettings, prelabel_collection
from .review import clips_by_priority, frames_by_priority, videos_by_priority
from .spec import BUNDLED, ModelSpec, resolve_model

#: Above this many frames (known from metadata, or 300 per video without metadata) the App
#: offers delegated execution first.
LONG_RUN_FRAMES = 300
SAM2_CONFIGS = ["sam2_hiera_l", "sam2_hiera_b+", "sam2_hiera_s", "sam2_hiera_t",
                "sam2.1_hiera_l", "sam2.1_hiera_b+", "sam2.1_hiera_s", "sam2.1_hiera_t"]


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


def estimated_frames(view) -> int:
    counts = view.values("metadata.total_frame_count")
    return sum(c if c else LONG_RUN_FRAMES for c in counts)


class PrelabelSoundingObjects(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="prelabel_sounding_objects",
            label="AuralSAM2: pre-label sounding objects",
            description="Masks of the objects that make the sound, on every frame, from the "
                        "video and its audio",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=True,
            icon="graphic_eq",
        )

    def resolve_execution_options(self, ctx):
        from fiftyone.operators.executor import ExecutionOptions

        try:
            long_run = estimated_frames(ctx.target_view()) > LONG_RUN_FRAMES
        except Exception:  # noqa: BLE001 - no dataset yet (App start-up): assume long
            long_run = True
        return ExecutionOptions(allow_immediate_execution=True, allow_delegated_execution=True,
                                default_choice_to_delegated=long_run)

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view_target(ctx, action_description="Pre-label")
        inputs.str("label_field", default="auralsam2", label="Label field",
                   description="frames.<field> gets the masks; <field>_intervals and "
                               "<field>_summary the sounding intervals and run summary")
        inputs.enum("model", [BUNDLED, "checkpoints"], default=BUNDLED, label="Model",
                    view=_choices([(BUNDLED, "Bundled demo model"),
                                   ("checkpoints", "Released weights (paths)")]))
        if ctx.params.get("model") == "checkpoints":
            inputs.enum("sam2_config", SAM2_CONFIGS, default="sam2_hiera_l",
                        label="SAM2 config", view=types.Dropdown())
            inputs.str("sam2_checkpoint", label="SAM2 checkpoint",
                       description="path (or weight registry name) of Meta's SAM2 .pt")
            inputs.str("fuser_checkpoint", label="AuralSAM2 fuser checkpoint",
                       description="path (or weight registry name) of the fuser .pth")
        inputs.enum("device", ["auto", "cpu", "cuda"], default="auto", label="Device",
                    view=_choices([("auto", "auto"), ("cpu", "CPU"), ("cuda", "CUDA GPU")]))
        inputs.int("stride", default=1, min=1, label="Stride",
                   description="pre-label every n-th frame")
        inputs.enum("no_audio", ["error", "silent"], default="error",
                    label="Videos without audio",
                    view=_choices([("error", "report as failed"),
                                   ("silent", "label every frame as not sounding")]))
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
        inputs.view("delegation", types.Notice(
            label="Long runs are scheduled as delegated operations",
            description="they run when a worker is started: `fiftyone delegated launch`"))
        return types.Property(inputs, view=types.View(label="AuralSAM2 pre-label"))

    def execute(self, ctx):
        params = ctx.params
        settings = PrelabelSettings(
            label_field=params.get("label_field") or "auralsam2",
            stride=int(params.get("stride") or 1),
            no_audio=params.get("no_audio") or "error",
            overwrite=bool(params.get("overwrite", False)))
        spec = ModelSpec.from_params(params)
        # With AURALSAM2_SERVER_URL set, the shared service runs its model; none loads here.
        model = remote_from_env() or resolve_model(spec, params.get("device") or "auto")
        last = [0.0]

        def progress(fraction, label):
            now = time.monotonic()
            if ctx.delegated and (now - last[0] >= 1.0 or fraction >= 1.0):
                last[0] = now
                ctx.set_progress(progress=fraction, label=label)

        outcomes = prelabel_collection(ctx.target_view(), model, settings,
                                       model_description=spec.describe(), on_progress=progress)
        ctx.ops.reload_dataset()
        counts = {s: sum(o.status == s for o in outcomes)
                  for s in ("complete", "partial", "skipped", "failed")}
        return {**counts, "label_field": settings.label_field,
                "failures": [{"filepath": o.filepath, "error": o.error}
                             for o in outcomes if o.status == "failed"]}

    def resolve_output(self, ctx):
        outputs = types.Object()
        for key in ("complete", "partial", "skipped", "failed"):
            outputs.int(key, label=f"videos {key}")
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
        inputs.bool("overwrite", default=False, label="Overwrite")
        return types.Property(inputs, view=types.View(label="AuralSAM2 evaluation"))

    def execute(self, ctx):
        p = ctx.params
        pred = p.get("pred_field") or "auralsam2"
        report = evaluate_collection(ctx.target_view(), pred, p["gt_field"],
                                     eval_key=p.get("eval_key") or f"{pred}_avs",
                                     overwrite=bool(p.get("overwrite", False)))
        ctx.ops.reload_dataset()
        return {"J": report["J"], "F": report["F"], "J&F": report["J&F"],
                "num_videos": report["num_videos"], "num_frames": report["num_frames"],
                "eval_key": report["eval_key"], "skipped": len(report["skipped"])}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.float("J", label="J (mIoU, mean over videos)")
        outputs.float("F", label="F-score (beta^2 = 0.3, mean over videos)")
        outputs.float("J&F", label="J&F")
        outputs.int("num_videos", label="videos scored")
        outputs.int("skipped", label="videos skipped (no ground truth or no prediction)")
        outputs.str("eval_key", label="per-video results in")
        return types.Property(outputs, view=types.View(label="AVSBench J and F"))


class ReviewSoundingObjects(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="review_sounding_objects",
            label="AuralSAM2: review least confident first",
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
        return {"view_name": name if p.get("save_view", True) else None, "count": len(view),
                "top_frames": [{"video": t["filepath"].rsplit("/", 1)[-1],
                                "frame_number": t["frame_number"],
                                "review_priority": t["review_priority"]} for t in top]}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("view_name", label="saved view")
        outputs.int("count", label="videos / clips in the view")
        outputs.list("top_frames", types.Object(), label="least confident frames")
        return types.Property(outputs, view=types.View(label="AuralSAM2 review"))
