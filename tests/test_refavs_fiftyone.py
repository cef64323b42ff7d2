"""Pre-labelling a FiftyOne dataset with its own classes (Ref-AVS, issue #15), against real
FiftyOne and its own database.

The clip: a disc and a triangle (named colours) that sound together. The classes are the
engine's queries (``class_queries``); the plugin labels each class's detections and
intervals with the class. Correctness runs on tiny random Ref-AVS models whose object score
is raised (``sounding``) so that their masks are not empty and their probabilities cross the
interval threshold: ``tiny_refavs_model`` (conftest) through the Python API and
``apply_model``, and the same recipe built from a spec for the operators (which take their
model from the plugin's cache). Each test compares with what the engine yields for the same
model, file and queries. The bundled Ref-AVS demo model, once shipped, pre-labels the two
shapes under their own labels (skipped until ``refer_model_dir()/model.json`` exists).

Skipped as a whole when ``fiftyone`` is not importable.
"""

from __future__ import annotations

import contextlib
import os
import re

import numpy as np
import pytest
import torch

from helpers import fiftyone_env

fiftyone_env.prepare()

fo = pytest.importorskip(
    "fiftyone", reason="fiftyone is not installed (bash scripts/setup.d/20-fiftyone.sh)")

from auralsam2_fiftyone import convert  # noqa: E402
from auralsam2_fiftyone.model import AuralSAM2VideoModel  # noqa: E402
from auralsam2_fiftyone.prelabel import PrelabelSettings, prelabel_collection  # noqa: E402
from auralsam2_fiftyone.spec import ModelSpec, resolve_model, spec_to_params  # noqa: E402
from fiftyone.operators import execute_operator  # noqa: E402
from fiftyone.operators.executor import ExecutionError  # noqa: E402

from auralsam2_core.evaluation import metrics  # noqa: E402
from auralsam2_core.inference.engine import PrelabelOptions, prelabel  # noqa: E402
from auralsam2_core.inference.results import Hysteresis, sounding_intervals  # noqa: E402
from auralsam2_core.modeling.build import refer_model_dir  # noqa: E402
from auralsam2_core.modeling.text_encoder import (  # noqa: E402
    save_text_encoder,
    tiny_random_text_encoder,
)
from auralsam2_core.training.synthetic import make_clip, write_clip  # noqa: E402

PLUGIN = "@auralsam2/auralsam2"
PRELABEL = f"{PLUGIN}/prelabel_sounding_objects"
EVALUATE = f"{PLUGIN}/evaluate_sounding_objects"
SIZE, FPS, SECONDS = (64, 96), 5.0, 1.2  # 6 frames
TINY = {"sam2_config": "sam2_hiera_t", "image_size": 64, "fuser_config": {"f_depths": [1, 1, 1]}}
AVS_SPEC = ModelSpec(**TINY)
needs_refer_bundle = pytest.mark.skipif(
    not (refer_model_dir() / "model.json").is_file(),
    reason="the bundled Ref-AVS demo model is not installed (refer_model_dir()/model.json "
           "is missing)")


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module", autouse=True)
def fiftyone_setup(tmp_path_factory):
    with fiftyone_env.plugin_installed(tmp_path_factory.mktemp("fo_plugins")):
        yield


def sounding(model):
    """Open the fusion residuals (as conftest's fused models) and raise the object score by
    0.75 logits: the random model's masks are then non-empty, differ per query, and its
    probabilities (about 0.65) make sounding intervals. Returns the model (changed in place).
    """
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for fm in model.fuser.fusion_modules:
            for bn in (fm.W_z[1], fm.W_z2[1]):
                if not bn.weight.abs().sum():
                    bn.weight.data = torch.rand(bn.weight.shape, generator=g) + 0.5
        head = model.sam2.sam_mask_decoder.pred_obj_score_head
        (head.layers[-1] if hasattr(head, "layers") else head).bias += 0.75
    return model


@pytest.fixture(scope="module")
def refer(tiny_refavs_model):
    return sounding(tiny_refavs_model)


@pytest.fixture(scope="module")
def op_spec(tmp_path_factory) -> ModelSpec:
    """The operators' Ref-AVS model: tiny, random, its text encoder a saved folder."""
    folder = tmp_path_factory.mktemp("text_encoder")
    save_text_encoder(tiny_random_text_encoder(seed=0), folder)
    return ModelSpec(**TINY, variant="refavs", text_encoder=str(folder))


@pytest.fixture
def op_model(op_spec):
    """The instance the operators get from the plugin's cache, made sounding once. The cache
    holds two models, so a test of another spec (AVS, the bundled model) may have evicted it:
    it is then built again, from the same seed."""
    torch.manual_seed(1)
    model = resolve_model(op_spec, "cpu")
    if not getattr(model, "_made_sounding", False):
        sounding(model)
        model._made_sounding = True
    return model


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A disc and a triangle, both sounding in every frame."""
    c = make_clip(1, size=SIZE, fps=FPS, seconds=SECONDS, num_objects=2, schedule="all",
                  colours="named")
    assert sorted(c.shapes) == ["disc", "triangle"]
    return write_clip(c, tmp_path_factory.mktemp("refer") / "two.mp4"), c


@pytest.fixture(scope="module")
def bundled_clip(tmp_path_factory):
    """For the bundled Ref-AVS demo model: a clip as its demo's (2 s, 96 x 128) that it gets
    right (seed 8, a disc and a triangle: J 0.91 and 0.87). Its J varies from clip to clip
    (README, "Ref-AVS demo model"); these tests are about the plugin."""
    c = make_clip(8, size=(96, 128), fps=FPS, seconds=2.0, num_objects=2, schedule="all",
                  colours="named")
    assert sorted(c.shapes) == ["disc", "triangle"]
    return write_clip(c, tmp_path_factory.mktemp("refer-bundled") / "two.mp4"), c


#: class names, one with a hint (the expression the model reads for it)
def classes_of(c):
    return [(c.shapes[0], f"the {c.colour_names[0]} {c.shapes[0]}"), c.shapes[1]]


def queries_of(c):
    return (f"the {c.colour_names[0]} {c.shapes[0]}", c.shapes[1])


def engine(model, path, queries) -> dict[str, list]:
    """query -> the engine's results for it, frame by frame."""
    out: dict[str, list] = {q: [] for q in queries}
    for r in prelabel(model, path, PrelabelOptions(queries=tuple(queries))):
        out[r.query].append(r)
    return out


def dataset(path, **kw):
    ds = fo.Dataset()
    ds.add_sample(fo.Sample(filepath=str(path)))
    ds.compute_metadata()
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def class_masks(sample, field, label) -> dict[int, np.ndarray]:
    """frame number -> the pasted mask of the detections labelled ``label``."""
    out = {}
    size = (sample.metadata.frame_height, sample.metadata.frame_width) if sample.metadata \
        else SIZE
    for n, frame in sample.frames.items():
        if frame[field] is None:
            continue
        m = np.zeros(size, bool)
        for d in frame[field].detections:
            if d.label == label:
                convert.paste(d.bounding_box, d.mask, size, out=m)
        out[n] = m
    return out


def assert_classes_match_engine(sample, field, want: dict[str, list], names: list[str],
                                sounding: bool = True):
    """Per class (in order, with its query's results): its own label, track index, masks
    and scores on every frame; intervals per class, labelled with it (with ``sounding``,
    at least one each)."""
    assert len(want) == len(names) == 2
    for k, (results, name) in enumerate(zip(want.values(), names, strict=True)):
        got = class_masks(sample, field, name)
        assert sorted(got) == [r.index + 1 for r in results]
        for r in results:
            np.testing.assert_array_equal(got[r.index + 1], r.mask,
                                          err_msg=f"{name}, frame {r.index + 1}")
            dets = sample.frames[r.index + 1][field]
            assert dets.classes == names
            assert dets.class_probs[k] == pytest.approx(r.sounding_prob, abs=1e-6)
            mine = [d for d in dets.detections if d.label == name]
            assert len(mine) == int(r.mask.any())  # one detection per class, none if empty
            for d in mine:
                assert d.index == k + 1 and d.confidence == pytest.approx(r.sounding_prob)
        # intervals: the engine's hysteresis on this query's probabilities
        recs = [{"index": r.index, "time": r.time, "sounding_prob": r.sounding_prob}
                for r in results]
        spans = [(iv["start_frame"] + 1, iv["end_frame"] + 1)
                 for iv in sounding_intervals(recs, FPS, Hysteresis())]
        stored = [tuple(t.support) for t in sample[f"{field}_intervals"].detections
                  if t.label == name]
        assert stored == spans and (spans or not sounding), (name, stored, spans)
    labels = {d.label for _, f in sample.frames.items() for d in f[field].detections}
    assert labels == set(names)  # no "sounding" anywhere
    summary = sample[f"{field}_summary"]
    assert summary.status == "complete" and summary.classes == names


# ------------------------------------------------------------------------------ tests


def test_random_models_give_distinct_non_empty_masks_per_query(refer, op_model, clip):
    """The premise of the comparisons below: both models' masks are not empty and differ
    between the two queries (so a swapped class would be caught)."""
    path, c = clip
    for model in (refer, op_model):
        a, b = engine(model, path, queries_of(c)).values()
        assert all(r.mask.any() for r in a + b)
        assert any((ra.mask != rb.mask).any() for ra, rb in zip(a, b, strict=True))
        assert min(r.sounding_prob for r in a + b) > 0.6


def test_python_api_labels_each_class(refer, clip):
    path, c = clip
    ds = dataset(path)
    [out] = prelabel_collection(ds, refer, PrelabelSettings(classes=classes_of(c)))
    assert out.status == "complete"
    sample = ds.first()
    assert_classes_match_engine(sample, "auralsam2", engine(refer, path, queries_of(c)),
                                list(c.shapes))
    assert sample.auralsam2_summary.queries == list(queries_of(c))
    # the frame's overall scores are the largest of the classes' (review order, sound panel)
    f1 = sample.frames[1].auralsam2
    assert f1.sounding_prob == max(f1.class_probs)
    assert f1.review_priority == max(f1.class_priorities)
    # the sound panel draws one probability line per class, the engine's, and names the
    # class of each interval
    from auralsam2_fiftyone import panel

    want = engine(refer, path, queries_of(c))
    track = panel.sound_track(ds.view(), sample.id, "auralsam2")
    assert list(track["classes"]) == list(c.shapes)
    for name, query in zip(c.shapes, queries_of(c), strict=True):
        assert [n for n, _ in track["classes"][name]] == [r.index + 1 for r in want[query]]
        assert [p for _, p in track["classes"][name]] == pytest.approx(
            [r.sounding_prob for r in want[query]], abs=1e-6)
    traces = panel.plot_traces(track)
    assert [t["name"] for t in traces[:-2]] == list(c.shapes)
    assert traces[-2]["name"] == "threshold" and traces[-1]["name"].startswith("hearing")
    assert len({t["line"]["color"] for t in traces[:-2]}) == len(c.shapes)
    assert panel.plot_layout(track)["showlegend"]
    lines = panel.interval_lines(track)
    assert sorted(line.split("**")[1] for line in lines) == sorted(
        d.label for d in sample.auralsam2_intervals.detections)


def test_operator_with_classes(op_spec, op_model, clip):
    path, c = clip
    ds = dataset(path)
    result = execute_operator(PRELABEL, dataset=ds, params={
        **spec_to_params(op_spec), "device": "cpu", "classes": list(c.shapes)})
    assert result.error is None, result.error
    assert result.result["complete"] == 1 and result.result["classes"] == list(c.shapes)
    assert_classes_match_engine(ds.first(), "auralsam2", engine(op_model, path, c.shapes),
                                list(c.shapes))
    field = ds.get_field("frames.auralsam2")
    assert "labelled with the class" in field.description
    # again: finished, skipped; other classes: the old labels are replaced, not mixed
    again = execute_operator(PRELABEL, dataset=ds, params={
        **spec_to_params(op_spec), "device": "cpu", "classes": list(c.shapes)}).result
    assert again["skipped"] == 1
    other = execute_operator(PRELABEL, dataset=ds, params={
        **spec_to_params(op_spec), "device": "cpu", "classes": ["piano", c.shapes[0]]}).result
    assert other["complete"] == 1
    sample = ds.first()
    labels = {d.label for _, f in sample.frames.items() for d in f.auralsam2.detections}
    assert labels == {"piano", c.shapes[0]} and sample.auralsam2_summary.classes == \
        ["piano", c.shapes[0]]
    assert {t.label for t in sample.auralsam2_intervals.detections} <= labels


def test_operator_with_classes_through_the_shared_service(refer, clip, monkeypatch, tmp_path):
    """AURALSAM2_SERVER_URL set: the classes travel as the service's queries, the operator
    loads no model, and the stored per-class masks are the engine's."""
    from auralsam2_fiftyone import operators

    from helpers import service_env as se

    path, c = clip
    with se.ServiceThread(tmp_path / "service", [path.parent], model=refer) as srv:
        for k, v in srv.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.setattr(operators, "resolve_model",
                            lambda *a: pytest.fail("a model was loaded"))
        ds = dataset(path)
        out = execute_operator(PRELABEL, dataset=ds, params={
            "device": "cpu", "classes": classes_of(c)}).result
        assert out["complete"] == 1 and srv.service.counters["done"] == 1
    sample = ds.first()
    want = engine(refer, path, queries_of(c))
    for k, (results, name) in enumerate(zip(want.values(), c.shapes, strict=True)):
        got = class_masks(sample, "auralsam2", name)
        for r in results:
            np.testing.assert_array_equal(got[r.index + 1], r.mask)
            assert sample.frames[r.index + 1].auralsam2.class_probs[k] == pytest.approx(
                r.sounding_prob, abs=6e-6)


def test_classes_default_to_the_datasets_own(op_spec, op_model, clip):
    """``variant`` refavs without classes: a chosen label field's classes (declared, else its
    labels), else the dataset's ``default_classes``."""
    path, c = clip
    base = {**spec_to_params(op_spec), "device": "cpu"}
    ds = dataset(path, default_classes=list(c.shapes))
    r = execute_operator(PRELABEL, dataset=ds, params={**base, "label_field": "dflt"})
    assert r.error is None, r.error
    assert ds.first().dflt_summary.classes == list(c.shapes)
    assert_classes_match_engine(ds.first(), "dflt", engine(op_model, path, c.shapes),
                                list(c.shapes))
    # a label field's labels (frame field "gt"), then its declared classes
    sample = ds.first()
    sample.frames[1]["gt"] = fo.Detections(detections=[
        fo.Detection(label="triangle", bounding_box=[0, 0, 0.5, 0.5]),
        fo.Detection(label="disc", bounding_box=[0.5, 0.5, 0.5, 0.5])])
    sample.save()
    r = execute_operator(PRELABEL, dataset=ds, params={
        **base, "label_field": "fromgt", "variant": "refavs", "classes_field": "frames.gt"})
    assert r.error is None, r.error
    assert ds.first().fromgt_summary.classes == ["disc", "triangle"]  # sorted labels
    ds.classes = {"frames.gt": ["triangle", "disc"]}
    ds.save()
    r = execute_operator(PRELABEL, dataset=ds, params={
        **base, "label_field": "declared", "classes_field": "frames.gt"})
    assert r.error is None, r.error
    assert ds.first().declared_summary.classes == ["triangle", "disc"]


def test_avs_default_is_unchanged_without_classes(clip):
    """No classes, no variant: the AVS model's one ``sounding`` label, as before #15, also
    on a dataset that has default_classes."""
    path, c = clip
    torch.manual_seed(2)
    avs = resolve_model(AVS_SPEC, "cpu")
    ds = dataset(path, default_classes=list(c.shapes))
    r = execute_operator(PRELABEL, dataset=ds, params={**spec_to_params(AVS_SPEC),
                                                       "device": "cpu"})
    assert r.error is None, r.error
    sample = ds.first()
    want = list(prelabel(avs, path, PrelabelOptions()))
    got = class_masks(sample, "auralsam2", "sounding")
    assert sorted(got) == [x.index + 1 for x in want]
    for x in want:
        np.testing.assert_array_equal(got[x.index + 1], x.mask)
        assert not sample.frames[x.index + 1].auralsam2.has_field("classes")
    assert not sample.auralsam2_summary.has_field("classes")
    assert all(t.label == "sounding" for t in sample.auralsam2_intervals.detections)


def test_apply_model_with_classes(refer, clip):
    path, c = clip
    ds = dataset(path)
    ds.apply_model(AuralSAM2VideoModel(model=refer, classes=classes_of(c)), label_field="am")
    prelabel_collection(ds, refer, PrelabelSettings(label_field="pc", classes=classes_of(c)))
    sample = ds.first()
    for name in c.shapes:
        a, b = class_masks(sample, "am", name), class_masks(sample, "pc", name)
        assert sorted(a) == sorted(b) == list(range(1, 7))
        for n in a:
            np.testing.assert_array_equal(a[n], b[n])
    for f in sample.frames.values():
        assert [d.label for d in f.am.detections] == [d.label for d in f.pc.detections]
        assert f.am.class_probs == f.pc.class_probs


def test_evaluate_per_class(refer, clip):
    """J and F per class against ground truth of the same label equal the core metrics on
    the engine's masks of that class's query; the overall numbers are their means."""
    path, c = clip
    ds = dataset(path)
    prelabel_collection(ds, refer, PrelabelSettings(classes=classes_of(c)))
    sample = ds.first()
    gt_frames = [1, 3, 6]
    for n in gt_frames:
        dets = []
        for k, name in enumerate(c.shapes):
            m = c.object_masks[k, n - 1]
            x0, y0, x1, y1 = convert.mask_box(m)
            dets.append(fo.Detection(label=name, **{k_: v for k_, v in convert.detection_dict(
                m, confidence=1, predicted_iou=1, review_priority=0, mask_score=1).items()
                if k_ in ("bounding_box", "mask")}))
        sample.frames[n]["gt"] = fo.Detections(detections=dets)
    sample.save()
    result = execute_operator(EVALUATE, dataset=ds, params={
        "pred_field": "auralsam2", "gt_field": "gt"})
    assert result.error is None, result.error
    out = result.result
    want = engine(refer, path, queries_of(c))
    rows = []
    for k, (results, name) in enumerate(zip(want.values(), c.shapes, strict=True)):
        probs = np.stack([results[n - 1].mask for n in gt_frames]).astype(np.float32)
        gts = c.object_masks[k][[n - 1 for n in gt_frames]]
        report = metrics.evaluate([probs], [gts], [name])
        rows.append({"class": name, "J": report.J, "F": report.F})
    assert [p["class"] for p in out["per_class"]] == sorted(c.shapes)  # every label held
    got = {p["class"]: p for p in out["per_class"]}
    for row in rows:
        assert got[row["class"]]["J"] == pytest.approx(row["J"])
        assert got[row["class"]]["F"] == pytest.approx(row["F"])
    assert out["J"] == pytest.approx(np.mean([r["J"] for r in rows]))
    assert rows[0]["J"] != rows[1]["J"]  # the classes are scored apart
    stored = ds.first().auralsam2_avs
    assert {p["class"]: p["J"] for p in stored.per_class} == pytest.approx(
        {r["class"]: r["J"] for r in rows})


def test_clear_errors(refer, op_spec, clip):
    path, c = clip
    ds = dataset(path)
    base = {**spec_to_params(op_spec), "device": "cpu"}

    def error(**params):
        with pytest.raises(ExecutionError) as e:
            execute_operator(PRELABEL, dataset=ds, params={**base, **params})
        return str(e.value)

    assert "default_classes" in error(variant="refavs")  # no classes anywhere
    assert "given twice" in error(classes=["dog", "dog"])
    assert "is not a label field" in error(variant="refavs", classes_field="nope")
    assert "Path: variant" in error(variant="ref", classes=["dog"])  # FiftyOne's enum check
    # classes need the Ref-AVS model: an AVS model is refused before anything is written
    with pytest.raises(ValueError, match="queries need a Ref-AVS model"):
        prelabel_collection(ds, resolve_model(AVS_SPEC, "cpu"),
                            PrelabelSettings(classes=["dog"]))
    assert ds.get_field("frames.auralsam2") is None
    with pytest.raises(ValueError, match="instances and classes"):
        PrelabelSettings(classes=["dog"], instance_min_area=0.01)
    with pytest.raises(ValueError, match="class 1 has no name"):
        PrelabelSettings(classes=["dog", ("", "the cat")])
    with pytest.raises(ValueError, match="classes need a Ref-AVS model"):
        AuralSAM2VideoModel(spec=AVS_SPEC, classes=["dog"], device="cpu")
    with pytest.raises(ValueError, match="segments the objects you name"):
        AuralSAM2VideoModel(model=refer)  # a Ref-AVS model without classes


def _form(ds, **params) -> dict:
    """The pre-label form as the App receives it: its properties by name."""
    import asyncio

    from fiftyone.operators.executor import resolve_type
    from fiftyone.operators.registry import OperatorRegistry

    form = asyncio.run(resolve_type(OperatorRegistry(), PRELABEL, {
        "dataset_name": ds.name, "view": ds.view()._serialize(), "params": params}))
    return form.to_json()["type"]["properties"]


def test_form_offers_the_classes_switch_and_fills_the_classes(clip):
    """The form: "Labels" (variant) defaults to the AVS model; choosing the dataset's classes
    names the classes the run will use (default_classes, a chosen label field's, or a list
    typed in) and drops Instances; without classes it says where to give them."""
    path, c = clip
    ds = dataset(path, default_classes=["dog", "piano"])
    avs = _form(ds)
    assert avs["variant"]["default"] == "avs" and "classes" not in avs
    assert "instances" in avs
    refer = _form(ds, variant="refavs")
    assert "classes" in refer and "instances" not in refer
    assert refer["classes_note"]["view"]["label"] == "Labels: dog, piano"
    sample = ds.first()
    sample.frames[2]["gt"] = fo.Detections(detections=[
        fo.Detection(label="violin", bounding_box=[0, 0, 0.5, 0.5])])
    sample.save()
    assert "classes_field" not in refer  # no label field yet
    assert "frames.gt" in str(_form(ds, variant="refavs")["classes_field"])
    picked = _form(ds, variant="refavs", classes_field="frames.gt")
    assert picked["classes_note"]["view"]["label"] == "Labels: violin"
    assert _form(ds, variant="refavs", classes=["cello", "drum"])["classes_note"]["view"][
        "label"] == "Labels: cello, drum"
    bare = dataset(path)
    none = _form(bare, variant="refavs")
    assert none["summary"]["view"]["name"] == "Error"
    assert "default_classes" in none["summary"]["view"]["label"]
    if not (refer_model_dir() / "model.json").is_file():  # the bundled choice says so
        assert "not installed" in refer["model_missing"]["view"]["label"]


def test_bundled_refer_model_missing_is_said_plainly(clip, monkeypatch, tmp_path):
    import auralsam2_core.modeling.build as build

    monkeypatch.setattr(build, "refer_model_dir", lambda: tmp_path / "not-installed")
    path, c = clip
    ds = dataset(path)
    assert "not installed" in _form(ds, variant="refavs")["model_missing"]["view"]["label"]
    with pytest.raises(ExecutionError, match="Ref-AVS demo model is not installed"):
        execute_operator(PRELABEL, dataset=ds, params={"device": "cpu",
                                                       "classes": list(c.shapes)})
    with pytest.raises(FileNotFoundError, match="Ref-AVS demo model is not installed"):
        AuralSAM2VideoModel(classes=list(c.shapes), device="cpu")


@needs_refer_bundle
def test_bundled_refer_model_labels_two_classes(bundled_clip):
    """The bundled Ref-AVS demo model (the operator's default with classes) pre-labels the
    disc and the triangle under their own labels, masks equal to the engine's, and each
    class's mask lies on its own shape."""
    from auralsam2_core.model_spec import load_model

    path, c = bundled_clip
    names = list(c.shapes)
    ds = dataset(path)
    r = execute_operator(PRELABEL, dataset=ds, params={
        "device": "cpu", "variant": "refavs", "classes": [f"the {s}" for s in names]})
    assert r.error is None, r.error
    sample = ds.first()
    model = load_model(ModelSpec(variant="refavs", device="cpu"))
    want = engine(model, path, [f"the {s}" for s in names])
    assert_classes_match_engine(sample, "auralsam2", want, [f"the {s}" for s in names],
                                sounding=False)
    for k, name in enumerate(names):
        got = class_masks(sample, "auralsam2", f"the {name}")
        own = np.mean([(got[n] & c.object_masks[k, n - 1]).sum() / max(got[n].sum(), 1)
                       for n in got])
        assert own >= 0.5, (name, own)


# ------------------------------------------------------------------------------ the App


@pytest.fixture(params=["tiny", pytest.param("bundled", marks=needs_refer_bundle)])
def app_labelled(request):
    """A two-shape clip pre-labelled by the operator with its two classes: by the tiny
    Ref-AVS model (its output checked above: masks on every frame for both classes), or by
    the bundled Ref-AVS demo model (on its own clip, above)."""
    path, c = request.getfixturevalue("clip" if request.param == "tiny" else "bundled_clip")
    names = [f"the {s}" for s in c.shapes]
    if request.param == "tiny":
        spec = request.getfixturevalue("op_spec")
        request.getfixturevalue("op_model")  # the sounding instance in the plugin's cache
        params = {**spec_to_params(spec), "device": "cpu"}
    else:
        params = {"device": "cpu", "variant": "refavs"}
    ds = dataset(path, default_classes=names)  # what the form fills in (form test below)
    r = execute_operator(PRELABEL, dataset=ds, params={**params, "classes": names})
    assert r.error is None, r.error
    yield request.param, ds, names
    ds.delete()


@pytest.mark.slow
def test_app_shows_each_class_under_its_own_label(app_labelled):
    """In the App's modal, the pre-label field and the intervals list both classes by their
    labels (screenshots: the modal with each field expanded); the pre-label form switches to
    the dataset's classes with one choice and names them."""
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                        "(scripts/setup.d/20-fiftyone.sh)")
    from helpers import fiftyone_browser as fb

    if fb.CHROMIUM is None:
        pytest.skip("needs Debian's chromium")
    which, ds, names = app_labelled
    old_env = os.environ.get("FIFTYONE_PLUGINS_DIR")
    os.environ["FIFTYONE_PLUGINS_DIR"] = fo.config.plugins_dir
    out = fb.artifacts_dir()
    url, session = fb.launch(fo, ds)
    try:
        with fb.page(height=1200) as pg:
            fb.open_grid(pg, url)
            fb.open_modal(pg, 0)
            shots, sidebars = {}, {}
            for field in ("frames.auralsam2", "auralsam2_intervals"):
                arrow = pg.locator(f'#modal [data-cy="sidebar-field-arrow-enabled-{field}"]')
                arrow.scroll_into_view_if_needed(timeout=10_000)
                arrow.click(timeout=10_000)
                pg.wait_for_timeout(2500)
                key = field.replace("frames.", "frames_")
                shots[field] = out / f"fiftyone_refavs_{which}_{key}.png"
                side = pg.locator("#modal [data-cy=sidebar]")
                with contextlib.suppress(Exception):  # show the class values, if listed
                    side.get_by_text(names[-1], exact=True).last.scroll_into_view_if_needed(
                        timeout=5_000)
                pg.screenshot(path=shots[field])
                text = side.inner_text()
                sidebars[field] = text[text.index(field):]
                arrow.click(timeout=10_000)  # fold it again
                pg.wait_for_timeout(1000)
            # the sound panel beside the video: one probability line per class
            pg.locator("[data-cy=panel-tab-sounding_objects_sound]").wait_for(timeout=30_000)
            pg.locator("#modal button[title='Split horizontally']").first.click()
            pg.wait_for_function("() => { const g = document.querySelector("
                                 "'#modal .js-plotly-plot'); return g && g.data && "
                                 "g.data.length > 2 }", timeout=30_000)
            pg.wait_for_timeout(1000)
            plotted = pg.evaluate("() => document.querySelector('#modal .js-plotly-plot')"
                                  ".data.map(t => ({name: t.name, y: t.y}))")
            panel_text = pg.locator("#modal").inner_text()
            pg.screenshot(path=out / f"fiftyone_refavs_{which}_sound_panel.png")
            # the form: one setting switches to the classes, which it names
            pg.mouse.click(5, 5)  # close the modal
            pg.locator("#modal canvas").first.wait_for(state="detached", timeout=15_000)
            pg.keyboard.press("`")
            pg.locator("[data-cy=operators-browser-search]").wait_for(timeout=30_000)
            pg.keyboard.type("pre-label sounding")
            pg.get_by_text("AuralSAM2: pre-label sounding objects").click()
            pg.get_by_text("AuralSAM2 pre-label").wait_for(timeout=30_000)
            pg.get_by_text("The dataset's classes: one label per class (Ref-AVS model)").click()
            note = f"Labels: {', '.join(names)}"
            pg.get_by_text(note).wait_for(timeout=30_000)
            pg.wait_for_timeout(1000)
            form = out / f"fiftyone_refavs_{which}_form.png"
            pg.screenshot(path=form)
            pg.get_by_text(note).scroll_into_view_if_needed(timeout=10_000)
            pg.wait_for_timeout(500)
            pg.screenshot(path=out / f"fiftyone_refavs_{which}_form_classes.png")
            form_text = pg.locator("body").inner_text()
    finally:
        session.close()
        if old_env is None:
            os.environ.pop("FIFTYONE_PLUGINS_DIR", None)
        else:
            os.environ["FIFTYONE_PLUGINS_DIR"] = old_env
    # the sidebar counts what the dataset holds: each class's detections and intervals
    sample = ds.first()
    dets = [d.label for _, f in sample.frames.items() for d in f.auralsam2.detections]
    spans = [t.label for t in sample.auralsam2_intervals.detections]
    assert all(dets.count(n) for n in names), dets  # both classes were pre-labelled
    if which == "tiny":  # its masks and probabilities were checked above
        assert [dets.count(n) for n in names] == [6, 6] and sorted(spans) == sorted(names)
    frames_side, intervals_side = sidebars["frames.auralsam2"], sidebars["auralsam2_intervals"]
    assert re.search(rf"frames\.auralsam2\s+{len(dets)}\b", frames_side), frames_side
    assert re.search(rf"auralsam2_intervals\s+{len(spans)}\b", intervals_side), intervals_side
    for name in names:
        assert re.search(rf"\n{name}\s+{dets.count(name)}\b", frames_side), frames_side
        if spans.count(name):
            assert re.search(rf"\n{name}\s+{spans.count(name)}\b", intervals_side), \
                intervals_side
    # the panel drew each class's probabilities as stored, and named each interval's class
    assert [t["name"] for t in plotted[:-2]] == names, plotted
    for name, trace in zip(names, plotted, strict=False):
        k = names.index(name)
        stored = [f.auralsam2.class_probs[k] for _, f in sample.frames.items() if f.auralsam2]
        assert trace["y"] == pytest.approx(stored, abs=1e-6)
    for name in spans:
        assert f"{name} sounding" in panel_text, panel_text
    assert note in form_text and "Classes from label field" in form_text
    assert "Bundled demo model (Ref-AVS)" in form_text and "Instances" not in form_text
    assert "\nsounding\n" not in frames_side + intervals_side  # no AVS label anywhere
