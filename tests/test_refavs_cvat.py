"""Ref-AVS classes in the CVAT function (#15), against the CVAT emulator at its strictest (every
test ends by opening every job and exporting every task, as CVAT would).

With ``AURALSAM2_VARIANT=refavs`` the task-level paths pre-label the task's own mask labels,
each read by its name or by its ``query`` attribute, and upload each object on its label;
Automatic annotation answers the classes function.yaml's spec declares, which CVAT maps onto
the task's labels by name or in its label-mapping dialog (emulated with CVAT's own checks).
Masks are compared with the core engine's output for the same queries. The model is the tiny
random Ref-AVS model (``tiny_refavs_model``), handed to the real ``init_context`` in place of
loading one; the last test uses the bundled Ref-AVS demo model when it is installed.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("cvat_sdk")
nuclio_sdk = pytest.importorskip("nuclio_sdk")
yaml = pytest.importorskip("yaml")

from cvat_sdk.masks import decode_mask  # noqa: E402
from nuclio_sdk.test import Platform  # noqa: E402

from auralsam2_core import model_spec  # noqa: E402
from auralsam2_core.inference.engine import MAX_QUERIES, PrelabelOptions, prelabel  # noqa: E402
from auralsam2_core.modeling.build import build_auralsam2, refer_model_dir  # noqa: E402
from auralsam2_core.modeling.text_encoder import tiny_random_text_encoder  # noqa: E402
from auralsam2_core.training.synthetic import make_clip, write_clip  # noqa: E402
from auralsam2_plugins.cvat import classes as cls  # noqa: E402
from auralsam2_plugins.cvat import main  # noqa: E402
from auralsam2_plugins.cvat.config import CvatFunctionSettings  # noqa: E402
from auralsam2_plugins.cvat.masks import from_detector_mask  # noqa: E402

from helpers import cvat_emulator as ce  # noqa: E402
from helpers.cvat_function_env import FUNCTION, ROOT, SPEC, call, function_env  # noqa: E402

pytestmark = pytest.mark.usefixtures("cvat_function_threads_joined")
SCORES = [{"id": 0, "name": "confidence", "mutable": True, "input_type": "number",
           "values": ["0", "100", "1"], "default_value": "0"}]


def label(id_, name, type_="mask", query=None, scores=False):
    attrs = [{**a, "id": id_ + 1 + i} for i, a in enumerate(SCORES)] if scores else []
    if query is not None:
        attrs.append({"id": id_ + 5, "name": "query", "mutable": False, "input_type": "text",
                      "values": [query], "default_value": query})
    return {"id": id_, "name": name, "type": type_, "attributes": attrs}


GUITAR = "the red guitar"  # the tiny text encoder reads characters: 23 at most


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("refavs_cvat")
    return write_clip(make_clip(3, size=(48, 64), fps=5, seconds=2.0, colours="named"),
                      d / "two.mp4")


@pytest.fixture(scope="module")
def refavs_model():
    """``tiny_refavs_model``'s recipe (tests/conftest.py) seeded 3: conftest's seed 0 gives
    empty masks on these clips, which would make every mask comparison vacuous."""
    torch.manual_seed(3)
    model = build_auralsam2("sam2_hiera_t", image_size=64, fuser_config={"f_depths": [1, 1, 1]},
                            device="cpu", variant="refavs",
                            text_encoder=tiny_random_text_encoder(seed=0))
    g = torch.Generator().manual_seed(1)  # as conftest's _open_fusion: the residuals on
    for fm in model.fuser.fusion_modules:
        for bn in (fm.W_z[1], fm.W_z2[1]):
            bn.weight.data = torch.rand(bn.weight.shape, generator=g) + 0.5
    return model


@pytest.fixture(scope="module")
def engine(refavs_model, clip):
    """The engine's own results for some queries: {query: {frame: FrameResult}}."""
    cache = {}

    def get(*queries):
        if queries not in cache:
            out = {q: {} for q in queries}
            for r in prelabel(refavs_model, clip, PrelabelOptions(queries=queries)):
                out[r.query][r.index] = r
            cache[queries] = out
        return cache[queries]
    return get


@pytest.fixture
def refavs_env(monkeypatch, tmp_path, emu, refavs_model):
    """The function's environment with AURALSAM2_VARIANT=refavs; its init_context gets the
    tiny Ref-AVS model instead of loading the configured one."""
    def load(spec):
        assert spec.variant == "refavs"  # the one setting that switches the function
        return refavs_model
    monkeypatch.setattr(main, "load_model", load)
    return function_env(monkeypatch, emu.url, tmp_path / "cache", AURALSAM2_VARIANT="refavs",
                        AURALSAM2_DEVICE="cpu")


def invoker():
    """The function as the nuclio dashboard invokes it for CVAT: one nuclio platform (one
    function process, init_context on the first call)."""
    platform = Platform()
    return lambda payload, headers: call(platform, payload, headers)


def want_mask(r, threshold):
    return r.mask if r.sounding_prob >= threshold and r.mask.any() else None


def saved_by_label(task, job=None):
    """{label id: {frame: mask}} of the automatic mask shapes CVAT holds (in one job)."""
    out: dict[int, dict[int, np.ndarray]] = {}
    for s in (job.shapes if job else task.shapes):
        if s["source"] == "auto" and s["type"] == "mask":
            frames = out.setdefault(s["label_id"], {})
            assert s["frame"] not in frames, f"two masks: label {s['label_id']}, {s['frame']}"
            frames[s["frame"]] = decode_mask(s["points"], image_width=task.width,
                                             image_height=task.height)
    return out


def check_saved(task, by_label: dict[int, dict], threshold: float, job=None):
    """Exactly the engine's masks of each query, on its label (in one job: its frames)."""
    got = saved_by_label(task, job)
    if job is not None:
        frames = set(task.job_frames(job))
        by_label = {lid: {f: r for f, r in refs.items() if f in frames}
                    for lid, refs in by_label.items()}
    want = {lid: {f: m for f, r in refs.items() if (m := want_mask(r, threshold)) is not None}
            for lid, refs in by_label.items()}
    assert set(got) == {lid for lid, w in want.items() if w}
    for lid, frames in want.items():
        assert set(got.get(lid, {})) == set(frames), f"label {lid}"
        for f, m in frames.items():
            assert np.array_equal(got[lid][f], m), f"label {lid} frame {f}"
    return got


# ----------------------------------------------------------------------------- the spec


def test_function_spec_declares_the_sound_source_classes():
    """Both function.yaml files declare 'sounding' (the AVS model's) and the same 16 classes,
    as mask labels with the score attributes; CVAT parses the spec; the variant is one
    setting, AVS by default."""
    assert len(cls.SPEC_CLASSES) == MAX_QUERIES == len(set(cls.SPEC_CLASSES))
    for name in ("function.yaml", "function-gpu.yaml"):
        doc = yaml.safe_load((ROOT / "plugins/cvat" / name).read_text())
        spec = json.loads(doc["metadata"]["annotations"]["spec"])
        assert [lb["name"] for lb in spec] == ["sounding", *cls.SPEC_CLASSES]
        for lb in spec:
            assert lb["type"] == "mask"
            assert [a["name"] for a in lb["attributes"]] == ["confidence", "review_priority"]
        assert [lb["name"] for lb in ce.CvatEmulator.check_spec(spec)] == [
            lb["name"] for lb in spec]
        env = {e["name"]: e["value"] for e in doc["spec"]["env"]}
        assert env["AURALSAM2_VARIANT"] == "avs"


def test_emulator_refuses_what_cvat_refuses_in_specs_and_mappings(emu, clip):
    """CVAT's rules (lambda_manager/views.py): unique spec labels; a dialog mapping naming an
    unknown model label, an unknown task label, an incompatible type or an unknown attribute
    is a 400 before any frame is sent."""
    with pytest.raises(ce.HttpError, match="non-unique labels"):
        ce.CvatEmulator.check_spec([{"name": "dog"}, {"name": "dog"}])
    task = emu.add_task(ce.EmuTask(5, clip, labels=[label(10, "Hund"),
                                                    label(20, "box", "rectangle")]))
    never = lambda payload, headers: pytest.fail("no frame may be sent")  # noqa: E731
    for mapping, message in (({"tuba": {"name": "Hund"}}, "Unknown model label"),
                             ({"dog": {"name": "Katze"}}, "Unknown db label"),
                             ({"dog": {"name": "box"}}, "are not compatible"),
                             ({"dog": {"name": "Hund", "attributes": {"confidence": "x"}}},
                              "Unknown db attribute")):
        with pytest.raises(ce.HttpError, match=message):
            emu.run_auto_annotation(never, FUNCTION, SPEC, task, mapping=mapping)
    assert emu.calls("GET", "/api/lambda/requests") == []


# ----------------------------------------------------------------------------- classes


def test_classes_from_task_labels_and_for_the_detector():
    def lb(name, type_="mask", query=None):
        raw = label(1, name, type_, query)
        return SimpleNamespace(**{**raw, "attributes": [SimpleNamespace(**a)
                                                        for a in raw["attributes"]]})

    labels = [lb("dog"), lb("guitar", "any", GUITAR), lb("box", "rectangle"), lb("flute",
                                                                                  "polygon")]
    got = cls.task_classes(7, labels)
    assert got.queries == ("dog", GUITAR, "flute") and got.names == ("dog", "guitar", "flute")
    # the detector: 'flute' is no spec class, so CVAT's dialog may map any class onto it
    det = cls.detector_classes(7, labels)
    assert det.names == cls.SPEC_CLASSES and det.queries[cls.SPEC_CLASSES.index("guitar")] \
        == GUITAR
    det = cls.detector_classes(7, labels[:3])  # every mask label is a spec class: just those
    assert det.names == ("dog", "guitar") and det.queries == ("dog", GUITAR)
    with pytest.raises(cls.Unprocessable, match="no label a mask can be saved under"):
        cls.task_classes(7, [lb("box", "rectangle")])
    with pytest.raises(cls.Unprocessable, match="given twice"):
        cls.task_classes(7, [lb("dog"), lb("hound", query="dog")])
    with pytest.raises(cls.Unprocessable, match="at most 16"):
        cls.task_classes(7, [lb(f"class {i}") for i in range(17)])


def test_variant_setting():
    assert CvatFunctionSettings.from_env({}).variant == "avs"
    assert CvatFunctionSettings.from_env({"AURALSAM2_VARIANT": "refavs"}).variant == "refavs"
    with pytest.raises(ValueError, match="AURALSAM2_VARIANT"):
        CvatFunctionSettings.from_env({"AURALSAM2_VARIANT": "ref-avs"})


# ----------------------------------------------------------------------------- task paths


def test_task_call_prelabels_each_task_label_under_its_own_label(emu, refavs_env, clip,
                                                                 engine):
    """The task's mask labels are the queries (a name, or the 'query' attribute); each
    object's mask shapes go on its label, with its scores; other labels and annotators'
    work are untouched; a re-run replaces the tool's own shapes on every label."""
    labels = [label(10, "dog", scores=True), label(20, "guitar", "any", query=GUITAR),
              label(30, "box", "rectangle")]
    task = emu.add_task(ce.EmuTask(7, clip, labels=labels, segment_size=6, overlap=1))
    manual = {"id": 900, "type": "mask", "label_id": 10, "frame": 2, "points":
              [0, 4, 4, 0, 0, 1, 1], "outside": False, "occluded": False, "z_order": 0,
              "rotation": 0.0, "group": 0, "source": "manual", "attributes": [],
              "elements": []}
    emu.put_annotations(task.annotation_jobs()[0], shapes=[manual])
    platform = Platform()
    status, report = call(platform, {"task_id": task.id, "wait": 60, "threshold": 0.01})
    assert status == 200 and report["state"] == "done", report
    ref = engine("dog", GUITAR)
    assert len(task.annotation_jobs()) == 2
    for job in task.annotation_jobs():  # each job holds its own copy of a shared frame
        got = check_saved(task, {10: ref["dog"], 20: ref[GUITAR]}, 0.01, job)
        assert got[10] and got[20]  # both classes pre-labelled in this job
    for s in task.shapes:
        if s["source"] == "auto":
            spec_ids = [a["spec_id"] for a in s["attributes"]]
            assert spec_ids == ([11] if s["label_id"] == 10 else [])  # the label's own score
    assert report["labels"] == {
        name: sum(want_mask(r, 0.01) is not None for r in ref[q].values())
        for name, q in (("dog", "dog"), ("guitar", GUITAR))}
    assert report["sounding_frames"] == sum(report["labels"].values())
    assert any(s["id"] == 900 for s in task.shapes)  # the annotator's mask stays
    n = report["shapes_created"]
    status, report = call(platform, {"task_id": task.id, "wait": 60, "threshold": 0.01})
    assert status == 200 and report["shapes_deleted"] == n and report["shapes_created"] == n
    assert any(s["id"] == 900 for s in task.shapes)
    emu.check_ui_and_export()


def test_a_label_added_later_is_a_query_in_the_next_run(emu, refavs_env, clip, engine):
    """Each run reads the task's labels: a label added since is pre-labelled next time, by
    the task call and by Automatic annotation (the function keeps its process between)."""
    task = emu.add_task(ce.EmuTask(18, clip, labels=[label(10, "dog")]))
    invoke = invoker()
    status, report = invoke({"task_id": task.id, "wait": 60, "threshold": 0.01}, {})
    assert status == 200 and set(report["labels"]) == {"dog"}, report
    run = emu.run_auto_annotation(invoke, FUNCTION, SPEC, task, threshold=0.01)
    assert {item["label"] for fc in run.calls for item in fc.body} == {"dog"}
    task.labels.append(label(20, "guitar", query=GUITAR))
    status, report = invoke({"task_id": task.id, "wait": 60, "threshold": 0.01}, {})
    assert status == 200 and set(report["labels"]) == {"dog", "guitar"}, report
    ref = engine("dog", GUITAR)
    check_saved(task, {10: ref["dog"], 20: ref[GUITAR]}, 0.01)
    run = emu.run_auto_annotation(invoke, FUNCTION, SPEC, task, threshold=0.01)
    check_answers(run, task, {"dog": ref["dog"], "guitar": ref[GUITAR]}, {"dog", "guitar"},
                  0.01)
    emu.check_ui_and_export()


def test_task_call_polygon_tracks_go_on_each_label(emu, refavs_env, clip, monkeypatch):
    monkeypatch.setenv("AURALSAM2_CVAT_UPLOAD", "polygon-tracks")
    task = emu.add_task(ce.EmuTask(8, clip, labels=[label(10, "dog"),
                                                    label(20, "guitar", "polygon", GUITAR)]))
    status, report = call(Platform(), {"task_id": task.id, "wait": 60, "threshold": 0.01})
    assert status == 200 and report["tracks_created"], report
    assert {t["label_id"] for t in task.tracks} == {10, 20}
    assert all(s["type"] == "polygon" for t in task.tracks for s in t["shapes"])
    emu.check_ui_and_export()


@pytest.mark.parametrize("labels, message", [
    ([label(30, "box", "rectangle")], "no label a mask can be saved under"),
    ([label(10, "dog"), label(20, "hound", query="dog")], "cannot be the model's queries"),
    ([label(10, "dog"), label(20, "guitar", query="the man playing the guitar")],
     "the model cannot read the classes ('dog', 'guitar' as 'the man playing the guitar')"),
])
def test_task_call_says_why_the_labels_cannot_be_queries(emu, refavs_env, clip, labels,
                                                         message):
    task = emu.add_task(ce.EmuTask(9, clip, labels=labels))
    status, report = call(Platform(), {"task_id": task.id, "wait": 60})
    assert status == 422 and message in report["error"], report
    assert not task.shapes


# ----------------------------------------------------------------------------- Automatic annotation


def check_answers(run, task, ref, names, threshold):
    """Each frame's answer: one mask per spec class with a mask, under that class's name,
    equal to the engine's mask for the class's query."""
    assert run.status == "finished", run.error
    for fc in run.calls:
        want = {n: m for n, r in ref.items()
                if (m := want_mask(r[task.media_frame(fc.frame)], threshold)) is not None}
        got = {}
        for item in fc.body:
            assert item["label"] in names and item["type"] == "mask"
            assert item["label"] not in got
            got[item["label"]] = from_detector_mask(item["mask"], task.width, task.height)
        assert set(got) == set(want), f"frame {fc.frame}"
        for n, m in want.items():
            assert np.array_equal(got[n], m), f"frame {fc.frame} {n}"


def test_automatic_annotation_default_mapping_uses_the_task_labels(emu, refavs_env, clip,
                                                                   engine):
    """Task labels named like spec classes: CVAT maps them by name; the function answers those
    classes only, each read through the label's 'query' attribute, and CVAT saves each mask
    on its label."""
    task = emu.add_task(ce.EmuTask(11, clip, labels=[
        label(10, "dog", scores=True), label(20, "guitar", "any", GUITAR)]))
    run = emu.run_auto_annotation(invoker(), FUNCTION, SPEC, task, threshold=0.01)
    ref = engine("dog", GUITAR)
    check_answers(run, task, {"dog": ref["dog"], "guitar": ref[GUITAR]}, {"dog", "guitar"},
                  0.01)
    got = check_saved(task, {10: ref["dog"], 20: ref[GUITAR]}, 0.01)
    assert got[10] and got[20]
    emu.check_ui_and_export()


def test_automatic_annotation_with_the_label_mapping_dialog(emu, refavs_env, clip, engine):
    """Task labels that name no spec class: the function answers every spec class (it cannot
    know the mapping), CVAT keeps the mapped ones and saves them under the task labels they
    were mapped to; the rest are dropped."""
    task = emu.add_task(ce.EmuTask(12, clip, labels=[label(10, "Hund"), label(20, "Gitarre")]))
    mapping = {"dog": {"name": "Hund"}, "guitar": {"name": "Gitarre"}}
    run = emu.run_auto_annotation(invoker(), FUNCTION, SPEC, task, threshold=0.01,
                                  mapping=mapping)
    ref = engine(*cls.SPEC_CLASSES)
    check_answers(run, task, ref, set(cls.SPEC_CLASSES), 0.01)
    got = check_saved(task, {10: ref["dog"], 20: ref["guitar"]}, 0.01)
    assert got[10] and got[20]
    emu.check_ui_and_export()


def test_both_paths_at_once_fetch_the_video_once_and_keep_their_own_classes(emu, refavs_env,
                                                                          clip, engine):
    """A task call and an Automatic annotation run of the same task at the same time ask
    different classes (the task's labels; the spec classes, here all of them since 'flute'
    is none): two runs of the model, one download of the task's video."""
    task = emu.add_task(ce.EmuTask(17, clip, labels=[label(10, "dog"), label(20, "flute")]))
    invoke = invoker()
    status, report = invoke({"task_id": task.id, "threshold": 0.01}, {})  # in the background
    assert status == 202, report
    run = emu.run_auto_annotation(invoke, FUNCTION, SPEC, task, threshold=0.01,
                                  mapping={"dog": {"name": "dog"}})
    check_answers(run, task, engine(*cls.SPEC_CLASSES), set(cls.SPEC_CLASSES), 0.01)
    status, report = invoke({"task_id": task.id, "action": "status", "wait": 60}, {})
    assert status == 200 and set(report["labels"]) == {"dog", "flute"}, report
    assert len(emu.calls("POST", "/backup/export")) == 1


def test_automatic_annotation_of_a_task_without_mask_labels_fails_at_once(emu, refavs_env,
                                                                          clip):
    task = emu.add_task(ce.EmuTask(13, clip, labels=[label(30, "box", "rectangle")]))
    run = emu.run_auto_annotation(invoker(), FUNCTION, SPEC, task)
    assert run.status == "failed" and len(run.calls) == 1
    assert run.calls[0].status == 422 and "no mask, polygon or any label" in \
        run.calls[0].body["error"]
    assert not task.shapes


def test_through_the_shared_service_the_labels_are_the_same(emu, clip, engine, refavs_model,
                                                            monkeypatch, tmp_path):
    """AURALSAM2_SERVER_URL: the function loads no model and sends the task's classes to the
    shared service as job queries; each object still lands on its own label, with the
    engine's masks."""
    from helpers import service_env as se

    def no_load(spec):
        raise AssertionError("the function must not load a model with a service set")
    monkeypatch.setattr(main, "load_model", no_load)
    (tmp_path / "cache").mkdir()  # the function's cache, where the service reads the video
    with se.ServiceThread(tmp_path / "state", [tmp_path / "cache"], model=refavs_model) as srv:
        function_env(monkeypatch, emu.url, tmp_path / "cache", AURALSAM2_VARIANT="refavs",
                     **srv.env())
        task = emu.add_task(ce.EmuTask(16, clip, labels=[label(10, "dog"),
                                                         label(20, "guitar", query=GUITAR)]))
        status, report = invoker()({"task_id": task.id, "wait": 60, "threshold": 0.01}, {})
        assert status == 200 and report["state"] == "done", report
        assert [j.options["queries"] for j in srv.service.jobs.values()] == [["dog", GUITAR]]
    ref = engine("dog", GUITAR)
    got = check_saved(task, {10: ref["dog"], 20: ref[GUITAR]}, 0.01)
    assert got[10] and got[20]
    emu.check_ui_and_export()


# ----------------------------------------------------------------------------- AVS default


@pytest.fixture
def avs_env(monkeypatch, tmp_path, emu):
    env = {"AURALSAM2_SAM2_CONFIG": "sam2_hiera_t", "AURALSAM2_IMAGE_SIZE": "64",
           "AURALSAM2_FUSER_CONFIG": '{"f_depths": [1, 1, 1]}', "AURALSAM2_DEVICE": "cpu"}
    torch.manual_seed(3)
    model_spec.load_model.cache_clear()
    model = model_spec.load_model(model_spec.ModelSpec.from_env(env))
    yield model, function_env(monkeypatch, emu.url, tmp_path / "cache", **env)
    model_spec.load_model.cache_clear()


def test_without_the_setting_the_avs_model_labels_one_sounding_object(emu, avs_env, clip):
    """The default is unchanged: the class labels are ignored, one 'sounding' object per
    frame, in both paths."""
    model, _ = avs_env
    assert model.variant == "avs"
    task = emu.add_task(ce.EmuTask(14, clip, labels=[label(10, "sounding"), label(20, "dog")]))
    invoke = invoker()
    status, report = invoke({"task_id": task.id, "wait": 60}, {})
    assert status == 200 and "labels" not in report, report
    ref = {r.index: r for r in prelabel(model, clip, PrelabelOptions())}
    assert check_saved(task, {10: ref}, 0.5)[10]
    run = emu.run_auto_annotation(invoke, FUNCTION, SPEC, task, cleanup=True)
    assert run.status == "finished"
    assert {item["label"] for fc in run.calls for item in fc.body} <= {"sounding"}
    check_saved(task, {10: ref}, 0.5)
    emu.check_ui_and_export()


# ----------------------------------------------------------------------------- the demo model


needs_refer_bundle = pytest.mark.skipif(
    not (refer_model_dir() / "model.json").is_file(),
    reason="the bundled Ref-AVS demo model (auralsam2_core/data/refer_demo_model) is not "
           "installed")


@needs_refer_bundle
def test_two_classes_in_one_video_with_the_bundled_refavs_demo_model(emu, monkeypatch,
                                                                     tmp_path):
    """The bundled Ref-AVS demo model (AURALSAM2_VARIANT=refavs, nothing else set), a clip with
    two named shapes, a task whose labels are those two classes (one read through its 'query'
    attribute): each is pre-labelled under its own label, with the engine's masks."""
    c = make_clip(11, size=(96, 128), fps=5, seconds=2.0, num_objects=2, schedule="all",
                  colours="named")
    clip = write_clip(c, tmp_path / "two.mp4")
    first, second = c.shapes  # the task's classes name the clip's own shapes
    model_spec.load_model.cache_clear()
    function_env(monkeypatch, emu.url, tmp_path / "cache", AURALSAM2_VARIANT="refavs",
                 AURALSAM2_DEVICE="cpu")
    model = model_spec.load_model(model_spec.ModelSpec.from_env())
    assert model.variant == "refavs" and model.meta["sam2_config"].startswith("bundled")
    queries = (f"the {first}", second)
    task = emu.add_task(ce.EmuTask(15, clip, labels=[label(10, first, query=queries[0]),
                                                     label(20, second)]))
    status, report = call(Platform(), {"task_id": task.id, "wait": 60, "threshold": 0.01})
    assert status == 200 and report["state"] == "done", report
    ref = {q: {} for q in queries}
    for r in prelabel(model, clip, PrelabelOptions(queries=queries)):
        ref[r.query][r.index] = r
    got = check_saved(task, {10: ref[queries[0]], 20: ref[second]}, 0.01)
    assert got[10] and got[20]
    emu.check_ui_and_export()
    model_spec.load_model.cache_clear()
