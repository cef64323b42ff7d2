"""The FiftyOne plugin ``@auralsam2/auralsam2`` against real FiftyOne and its own database.

A generated dataset of synthetic clips (``auralsam2_core.training.synthetic``: stereo, mono, one
without audio, plus a corrupt file) with a sparse ground-truth frame field is pre-labelled
through FiftyOne's own operator executor, immediately and as a queued delegated run, and with
``dataset.apply_model``. The model is a tiny random-weight AuralSAM2: these tests check the
platform I/O (frames, masks, fields, ownership, failures), and compare against what the
engine itself yields for the same model and file.

Skipped as a whole when ``fiftyone`` is not importable (``scripts/setup.d/20-fiftyone.sh``
installs it; CI runs it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import fiftyone_env

fiftyone_env.prepare()
PLUGIN_DIR = fiftyone_env.PLUGIN_DIR

fo = pytest.importorskip(
    "fiftyone", reason="fiftyone is not installed (bash scripts/setup.d/20-fiftyone.sh)")

import bson  # noqa: E402  (comes with pymongo, a FiftyOne dependency)
import torch  # noqa: E402
import yaml  # noqa: E402
from auralsam2_fiftyone import convert  # noqa: E402
from auralsam2_fiftyone.model import AuralSAM2VideoModel  # noqa: E402
from auralsam2_fiftyone.review import frames_by_priority  # noqa: E402
from auralsam2_fiftyone.spec import ModelSpec, resolve_model, spec_to_params  # noqa: E402
from fiftyone.operators import execute_operator  # noqa: E402
from fiftyone.operators.delegated import DelegatedOperationService  # noqa: E402
from fiftyone.operators.executor import ExecutionError  # noqa: E402

from auralsam2_core.evaluation import metrics  # noqa: E402
from auralsam2_core.inference.engine import PrelabelOptions, prelabel  # noqa: E402
from auralsam2_core.training.synthetic import make_clip, write_clip  # noqa: E402

PLUGIN = "@auralsam2/auralsam2"
PRELABEL = f"{PLUGIN}/prelabel_sounding_objects"
EVALUATE = f"{PLUGIN}/evaluate_sounding_objects"
REVIEW = f"{PLUGIN}/review_sounding_objects"
PANEL = f"{PLUGIN}/sounding_objects_sound"
SPEC = ModelSpec("sam2_hiera_t", image_size=64, fuser_config={"f_depths": [1, 1, 1]})
PARAMS = {**spec_to_params(SPEC), "device": "cpu"}
SIZE, FPS, SECONDS = (48, 64), 5.0, 1.2  # 6 frames per clip
GT_FRAMES = {"stereo": [1, 2, 3, 4, 5, 6], "stereo2": [2, 4, 5], "mono": [1, 6],
             "noaudio": [3]}  # sparse on purpose: frame docs != frames of the video


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module", autouse=True)
def fiftyone_setup(tmp_path_factory):
    """Plugins dir holding this repo's plugin (as `fiftyone plugins download` would), one
    torch thread, and no non-persistent dataset left behind."""
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with fiftyone_env.plugin_installed(tmp_path_factory.mktemp("fo_plugins")):
        yield
    torch.set_num_threads(old_threads)


@pytest.fixture(scope="module")
def model():
    """The instance the plugin's cache hands out (so not conftest's ``tiny_model``)."""
    torch.manual_seed(2)  # a seed whose random model gives empty and non-empty masks
    return resolve_model(SPEC, "cpu")  # the operators get this very instance from the cache


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """name -> (video path, ground-truth masks (T, H, W) bool or None)."""
    root = tmp_path_factory.mktemp("fo_media")
    out = {}
    for seed, (name, kw) in enumerate([("stereo", {}), ("stereo2", {}),
                                       ("mono", {"channels": 1}),
                                       ("noaudio", {"audio": False})], start=21):
        clip = make_clip(seed, size=SIZE, fps=FPS, seconds=SECONDS)
        out[name] = (write_clip(clip, root / f"{name}.mp4", **kw), clip.sounding_mask)
    corrupt = root / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    out["corrupt"] = (corrupt, None)
    return out


@pytest.fixture(scope="module")
def reference(model, media):
    """What the engine yields for each playable clip with audio (0-based FrameResults)."""
    return {name: list(prelabel(model, path, PrelabelOptions()))
            for name, (path, _) in media.items() if name in ("stereo", "stereo2", "mono")}


def make_dataset(media, names=("stereo", "stereo2", "mono", "noaudio", "corrupt")):
    ds = fo.Dataset()
    for name in names:
        path, gt = media[name]
        sample = fo.Sample(filepath=str(path), clip_name=name)
        for n in GT_FRAMES.get(name, []):
            sample.frames[n]["gt"] = fo.Segmentation(mask=gt[n - 1].astype(np.uint8) * 255)
        ds.add_sample(sample)
    ds.compute_metadata()  # like a user's dataset; corrupt.mp4 only warns
    return ds


def by_name(ds) -> dict:
    return {s.clip_name: s for s in ds}


def raw_docs(ds) -> tuple[dict, dict]:
    """Every sample and frame document as stored (BSON bytes per field)."""
    samples = {d["_id"]: d for d in ds._sample_collection.find({})}
    frames = {(d["_sample_id"], d["frame_number"]): d for d in ds._frame_collection.find({})}
    return samples, frames


def assert_untouched(before, after, ours: set[str]):
    """Documents that existed keep every field we do not own byte for byte."""
    for kind, b_docs, a_docs in (("sample", before[0], after[0]),
                                 ("frame", before[1], after[1])):
        for key, b in b_docs.items():
            a = a_docs[key]
            strip = ours | {"last_modified_at"}
            b_keep = {k: v for k, v in b.items() if k not in strip}
            a_keep = {k: v for k, v in a.items() if k not in strip}
            assert bson.encode(a_keep) == bson.encode(b_keep), f"{kind} {key} changed"


def run_prelabel(ds, view=None, **params):
    ctx = {"view": view} if view is not None else {}
    return execute_operator(PRELABEL, dataset=ds, params={**PARAMS, **params}, **ctx)


def frame_masks(sample, field, size=SIZE) -> dict[int, np.ndarray]:
    out = {}
    for n, frame in sample.frames.items():
        dets = frame[field]
        if dets is None:
            continue
        m = np.zeros(size, bool)
        for d in dets.detections:
            convert.paste(d.bounding_box, d.mask, size, out=m)
        out[n] = m
    return out


def assert_matches_engine(sample, field, results, frames=None):
    """frames.<field> holds exactly the engine's frames (index + 1), masks and scores."""
    want = {r.index + 1: r for r in results if frames is None or r.index + 1 in frames}
    got = frame_masks(sample, field)
    assert sorted(got) == sorted(want)
    for n, r in want.items():
        np.testing.assert_array_equal(got[n], r.mask, err_msg=f"frame {n}")
        dets = sample.frames[n][field]
        assert dets.sounding_prob == pytest.approx(r.sounding_prob, abs=1e-6)
        assert dets.review_priority == pytest.approx(r.review_priority, abs=1e-6)
        for d in dets.detections:  # FiftyOne's own decoding agrees with ours
            assert d.label == "sounding" and d.index == 1
            assert d.confidence == pytest.approx(r.sounding_prob)
            assert d.predicted_iou == pytest.approx(r.predicted_iou)
            assert d.review_priority == pytest.approx(r.review_priority)
            seg = d.to_segmentation(frame_size=(SIZE[1], SIZE[0])).mask > 0
            np.testing.assert_array_equal(seg, r.mask)


# ------------------------------------------------------------------------------ tests


def test_plugin_is_discovered_with_every_operator():
    import fiftyone.operators as foo
    import fiftyone.plugins as fop

    meta = yaml.safe_load((PLUGIN_DIR / "fiftyone.yml").read_text())
    assert meta["name"] == PLUGIN
    assert PLUGIN in [p.name for p in fop.list_plugins()]
    registered = {op.uri for op in foo.list_operators() if op.plugin_name == PLUGIN}
    assert registered == {f"{PLUGIN}/{name}" for name in meta["operators"] + meta["panels"]}
    assert {PRELABEL, EVALUATE, REVIEW, PANEL} <= registered


def test_plugin_imports_the_installed_package_and_declares_its_secrets(tmp_path):
    """The plugin folder puts nothing on sys.path: its code is the installed
    ``auralsam2_fiftyone`` (importable in a clean interpreter away from the repository), and
    FiftyOne reads the service's address and token as the plugin's declared secrets."""
    import subprocess
    import sys

    import fiftyone.plugins as fop
    from auralsam2_fiftyone.operators import SERVICE_SECRETS

    run = subprocess.run([sys.executable, "-I", "-c",
                          "import auralsam2_fiftyone.spec as s; print(s.__file__)"],
                         cwd=tmp_path, capture_output=True, text=True, env={})
    assert run.returncode == 0, run.stderr
    assert Path(run.stdout.strip()).parent == PLUGIN_DIR / "auralsam2_fiftyone"
    assert "sys.path" not in (PLUGIN_DIR / "__init__.py").read_text()
    assert fop.get_plugin(PLUGIN).secrets == list(SERVICE_SECRETS)


@pytest.fixture(scope="module")
def labelled(media, model):
    """The whole dataset, pre-labelled once by an immediate operator run."""
    ds = make_dataset(media)
    before = raw_docs(ds)
    result = run_prelabel(ds)
    return ds, before, result


def test_immediate_run_writes_engine_masks_at_media_frame_numbers(labelled, reference):
    ds, _, result = labelled
    assert result.error is None
    out = result.result
    assert (out["complete"], out["failed"], out["skipped"]) == (3, 2, 0)
    samples = by_name(ds)
    for name, results in reference.items():
        assert len(results) == 6
        assert_matches_engine(samples[name], "auralsam2", results)
    # reload requested for the App
    # the random model gives both empty and non-empty masks: both paths are exercised
    assert 0 < ds.count("frames.auralsam2.detections") < 18
    requested = [r["operator_uri"] for r in result.executor.to_json()["requests"]]
    assert "reload_dataset" in requested


def test_intervals_and_summary(labelled, reference):
    ds, _, _ = labelled
    samples = by_name(ds)
    for name, results in reference.items():
        s = samples[name]
        frames = [convert.frame_dict(r) for r in results]
        want = convert.interval_supports(frames, fps=FPS, last_frame=6)
        got = [{"label": d.label, "support": list(d.support), "confidence": d.confidence,
                "frame_range": d.frame_range, "time_range": d.time_range}
               for d in s.auralsam2_intervals.detections]
        assert got == want
        summary = s.auralsam2_summary
        assert summary.status == "complete" and summary.error is None
        assert summary.labelled_frames == 6 and summary.media_frames == 6
        assert summary.sounding_frames == sum(r.sounding_prob >= 0.5 for r in results)
        assert summary.max_review_priority == pytest.approx(
            max(r.review_priority for r in results), abs=1e-6)
    for f in ("frames.auralsam2", "auralsam2_intervals", "auralsam2_summary"):
        assert "auralsam2" in ds.get_field(f).info  # ownership mark
    for attr in ("frame_range", "time_range"):  # in the schema: the App's sidebar lists them
        assert ds.get_field(f"auralsam2_intervals.detections.{attr}") is not None


def test_strided_intervals_from_stored_probabilities(media, monkeypatch):
    """Intervals and strided frame numbers, with a stand-in engine whose probabilities are
    known (the random model hovers around 0.5 and never opens an interval)."""
    from auralsam2_core.inference.engine import FrameResult
    from auralsam2_core.serving import engines as remote

    probs = {0: 0.9, 2: 0.8, 4: 0.1}  # frames 1, 3, 5 of 6 with stride 2

    def fake_prelabel(model, path, opts, *, info=None, on_progress=None, prompts=None):
        assert opts.stride == 2
        for k, i in enumerate(range(0, info.num_frames, opts.stride)):
            mask = np.zeros(SIZE, bool)
            mask[10:20, 5 + i:30] = probs[i] >= 0.5
            yield FrameResult(i, i / FPS, mask, probs[i], 0.75, 0.6, 1 - probs[i])
            if on_progress:
                on_progress(k + 1)

    monkeypatch.setattr(remote, "prelabel", fake_prelabel)  # what LocalEngine runs
    ds = make_dataset(media, names=("stereo",))
    assert run_prelabel(ds, stride=2).result["complete"] == 1
    s = ds.first()
    assert sorted(frame_masks(s, "auralsam2")) == [1, 3, 5]
    (iv,) = s.auralsam2_intervals.detections
    assert list(iv.support) == [1, 4] and iv.confidence == pytest.approx(0.85)
    det = s.frames[3]["auralsam2"].detections[0]
    assert det.bounding_box == pytest.approx([7 / 64, 10 / 48, 23 / 64, 10 / 48])
    assert s.auralsam2_summary.sounding_frames == 2 and s.auralsam2_summary.stride == 2


def test_operator_through_the_shared_service(media, model, reference, monkeypatch, tmp_path):
    """AURALSAM2_SERVER_URL set: the operator loads no model; the service labels the videos
    and the stored masks are the in-process ones (probabilities as in the results format)."""
    from auralsam2_fiftyone import operators

    from helpers import service_env as se

    root = media["stereo"][0].parent
    with se.ServiceThread(tmp_path / "service", [root], model=model) as srv:
        for k, v in srv.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.setattr(operators, "resolve_model",
                            lambda *a: pytest.fail("a model was loaded"))
        ds = make_dataset(media, names=("stereo", "noaudio"))
        out = run_prelabel(ds).result
        assert (out["complete"], out["failed"]) == (1, 1)
        assert srv.service.counters["done"] == 1 and srv.service.counters["failed"] == 1
        sample = by_name(ds)["stereo"]
        got = frame_masks(sample, "auralsam2")
        want = {r.index + 1: r for r in reference["stereo"]}
        assert sorted(got) == sorted(want)
        for n, r in want.items():
            np.testing.assert_array_equal(got[n], r.mask)
            assert sample.frames[n]["auralsam2"].sounding_prob == pytest.approx(
                r.sounding_prob, abs=6e-6)
        assert "audio" in by_name(ds)["noaudio"].auralsam2_summary.error


def test_failures_are_isolated_and_reported(labelled):
    ds, _, result = labelled
    samples = by_name(ds)
    failures = {Path(f["filepath"]).stem: f["error"] for f in result.result["failures"]}
    assert set(failures) == {"noaudio", "corrupt"}
    assert "audio" in failures["noaudio"]
    for name in ("noaudio", "corrupt"):
        s = samples[name]
        assert s.auralsam2_summary.status == "failed" and s.auralsam2_summary.error
        assert s.auralsam2_intervals is None
        assert not frame_masks(s, "auralsam2")


def test_other_fields_are_byte_identical(labelled):
    ds, before, _ = labelled
    ours = {"auralsam2", "auralsam2_intervals", "auralsam2_summary"}
    assert_untouched(before, raw_docs(ds), ours)
    assert ds.count("frames.gt") == sum(len(v) for v in GT_FRAMES.values())


def test_rerun_skips_finished_and_changes_nothing(labelled):
    ds, _, _ = labelled
    first = raw_docs(ds)
    again = run_prelabel(ds).result
    assert (again["skipped"], again["failed"], again["complete"]) == (3, 2, 0)
    second = raw_docs(ds)
    assert_untouched(first, second, {"auralsam2_summary"})  # failed ones are retried
    assert set(second[1]) == set(first[1])  # no frame document added or removed


def test_refuses_fields_it_did_not_create(media, reference):
    ds = make_dataset(media, names=("stereo",))
    sample = ds.first()
    sample.frames[1]["mine"] = fo.Detections(detections=[fo.Detection(label="x")])
    sample.save()
    before = raw_docs(ds)
    with pytest.raises(ExecutionError, match="not created by AuralSAM2"):
        run_prelabel(ds, label_field="mine")
    with pytest.raises(ExecutionError, match="gt"):  # a Segmentation field: wrong type
        run_prelabel(ds, label_field="gt", overwrite=True)
    assert_untouched(before, raw_docs(ds), set())
    assert ds.get_field("mine_summary") is None
    out = run_prelabel(ds, label_field="mine", overwrite=True).result
    assert out["complete"] == 1
    assert_matches_engine(ds.first(), "mine", reference["stereo"])
    assert "auralsam2" in ds.get_field("frames.mine").info  # claimed


def test_delegated_run_is_queued_then_executed(media, reference):
    ds = make_dataset(media, names=("mono", "noaudio"))
    queued = execute_operator(PRELABEL, dataset=ds, params=PARAMS, request_delegation=True)
    assert queued.delegated
    assert ds.get_field("frames.auralsam2") is None  # nothing ran yet
    svc = DelegatedOperationService()
    done = svc.execute_queued_operations(dataset_name=ds.name)
    assert len(done) == 1 and done[0].error is None, done[0].error
    op = svc.get(queued.result["id"])
    assert op.run_state == "completed"
    assert op.status is not None and op.status.progress == pytest.approx(1.0)
    assert op.result.result["complete"] == 1 and op.result.result["failed"] == 1
    samples = by_name(ds)
    assert_matches_engine(samples["mono"], "auralsam2", reference["mono"])
    assert samples["noaudio"].auralsam2_summary.status == "failed"


def test_clips_view_is_labelled_on_its_support(media, reference):
    ds = make_dataset(media, names=("stereo", "mono"))
    clips = ds.to_clips([[(2, 3), (5, 5)], [(4, 6)]])
    out = run_prelabel(ds, view=clips, view_target="CURRENT_VIEW").result
    assert out["partial"] == 2
    samples = by_name(ds)
    assert_matches_engine(samples["stereo"], "auralsam2", reference["stereo"], {2, 3, 5})
    assert_matches_engine(samples["mono"], "auralsam2", reference["mono"], {4, 5, 6})
    assert samples["stereo"].auralsam2_summary.status == "partial"
    assert samples["stereo"].auralsam2_summary.frame_ranges == [[2, 3], [5, 5]]
    assert run_prelabel(ds, view=clips, view_target="CURRENT_VIEW").result["skipped"] == 2


def test_evaluate_operator_equals_core_metrics(labelled, reference, media):
    ds, _, _ = labelled
    result = execute_operator(EVALUATE, dataset=ds, params={
        "pred_field": "auralsam2", "gt_field": "gt"}).result
    names = ["stereo", "stereo2", "mono"]  # noaudio has GT but no prediction: skipped
    probs, gts = [], []
    for name in names:
        keep = GT_FRAMES[name]
        masks = {r.index + 1: r.mask for r in reference[name]}
        probs.append(np.stack([masks[n] for n in keep]).astype(np.float32))
        gts.append(media[name][1][[n - 1 for n in keep]])
    report = metrics.evaluate(probs, gts, names)
    assert result["J"] == report.J and result["F"] == report.F
    assert result["num_videos"] == 3 and result["skipped"] == 2  # + corrupt: no GT
    samples = by_name(ds)
    for name, row in zip(names, report.per_video, strict=True):
        stored = samples[name]["auralsam2_avs"]
        assert (stored.J, stored.F, stored.frames) == (row["J"], row["F"], row["frames"])
    overall = ds.info["auralsam2_evaluations"]["auralsam2_avs"]
    assert (overall["J"], overall["F"]) == (report.J, report.F)


def test_review_orders_least_confident_first(labelled, reference):
    ds, _, _ = labelled
    out = execute_operator(REVIEW, dataset=ds, params={"label_field": "auralsam2"}).result
    view = ds.load_saved_view(out["view_name"])
    got = view.values("clip_name")
    maxima = {n: max(r.review_priority for r in rs) for n, rs in reference.items()}
    assert got == sorted(maxima, key=lambda n: -round(maxima[n], 6))
    rows = frames_by_priority(ds, "auralsam2")
    assert len(rows) == 18
    prios = [r["review_priority"] for r in rows]
    assert prios == sorted(prios, reverse=True)
    # what the output shows a person: frames as the App's timeline does (#0 = frame 1)
    top = out["top_frames"][0]
    n = rows[0]["frame_number"] - 1
    assert top["frame"] == f"#{n} (0:{n / 5:05.2f})"  # 5 fps
    assert top["review_priority"] == rows[0]["review_priority"]
    clips = execute_operator(REVIEW, dataset=ds, params={
        "label_field": "auralsam2", "level": "clips", "threshold": 0.0}).result
    assert clips["count"] == 3  # every labelled frame qualifies: one clip per video


def test_apply_model_reads_audio_from_filepath(media, model, reference):
    ds = make_dataset(media, names=("stereo", "noaudio"))
    before = raw_docs(ds)
    ds.apply_model(AuralSAM2VideoModel(model=model), label_field="am")  # skips failures
    samples = by_name(ds)
    assert_matches_engine(samples["stereo"], "am", reference["stereo"])
    assert not frame_masks(samples["noaudio"], "am")
    assert_untouched(before, raw_docs(ds), {"am"})


def test_app_forms_and_delegation_default(labelled):
    """What the App asks the server for: the operators' forms and execution options."""
    import asyncio

    from fiftyone.operators.executor import resolve_execution_options, resolve_type
    from fiftyone.operators.registry import OperatorRegistry

    ds = labelled[0]
    registry = OperatorRegistry()

    def request(view, **params):
        return {"dataset_name": ds.name, "view": view._serialize(), "params": params}

    form = asyncio.run(resolve_type(registry, PRELABEL, request(ds.view(), label_field="gt")))
    props = form.to_json()["type"]["properties"]
    assert {"view_target", "label_field", "model", "device", "stride", "overwrite",
            "conflict"} <= set(props)  # "conflict": gt exists and is not ours
    ok = asyncio.run(resolve_type(registry, PRELABEL, request(ds.view())))
    assert "conflict" not in ok.to_json()["type"]["properties"]
    short = asyncio.run(resolve_execution_options(registry, PRELABEL, request(ds.limit(2))))
    long = asyncio.run(resolve_execution_options(registry, PRELABEL, request(ds.view())))
    assert short.allow_immediate_execution and short.allow_delegated_execution
    assert not short.default_choice_to_delegated  # 12 frames
    assert long.default_choice_to_delegated  # corrupt.mp4 has no metadata: counted as long
    for uri in (EVALUATE, REVIEW):
        assert asyncio.run(resolve_type(registry, uri, request(ds.view()))).to_json()["type"]


def test_app_server_lists_the_operators(labelled, monkeypatch):
    """The App's own server (started as `fo.launch_app(remote=True)` does) offers them."""
    import json
    import socket
    import time
    import urllib.request

    ds = labelled[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("FIFTYONE_PLUGINS_DIR", fo.config.plugins_dir)  # for the server
    fo.launch_app(ds, remote=True, port=port, address="127.0.0.1", auto=False)
    body = json.dumps({"dataset_name": ds.name}).encode()
    deadline, error = time.monotonic() + 90, None
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/operators", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                listed = json.load(r)
            break
        except OSError as e:
            error = e
            time.sleep(0.5)
    else:
        pytest.fail(f"the App server did not answer: {error}")
    uris = {op["uri"] for op in listed["operators"]}
    assert {PRELABEL, EVALUATE, REVIEW} <= uris
    assert not [e for e in listed.get("errors", []) if "auralsam2" in json.dumps(e)]


def _form_notes(ds, view, **request):
    """The pre-label form's account of the run, as the App receives it: {name: (view, label,
    description)} for the notes the plugin adds (issue #17.8)."""
    import asyncio

    from fiftyone.operators.executor import resolve_type
    from fiftyone.operators.registry import OperatorRegistry

    params = request.pop("params", {})
    form = asyncio.run(resolve_type(OperatorRegistry(), PRELABEL, {
        "dataset_name": ds.name, "view": view._serialize(), "params": params, **request}))
    props = form.to_json()["type"]["properties"]
    return {k: (props[k]["view"]["name"], props[k]["view"]["label"],
                props[k]["view"].get("description"))
            for k in ("summary", "mode") if k in props}


def test_prelabel_form_states_what_will_happen(labelled, monkeypatch):
    """How many videos, how many already done (skipped), and whether Execute runs it now or
    the App schedules it: the App's own decision (Schedule exists only with legacy
    orchestrators allowed or a registered orchestrator)."""
    ds = labelled[0]  # stereo, stereo2, mono complete; noaudio (6 frames) and corrupt failed
    notes = _form_notes(ds, ds.view())
    assert notes["summary"][:2] == ("Notice", "5 videos in the dataset: 3 already pre-labelled "
                                    "in `auralsam2` (skipped), 2 to pre-label (about 6 frames "
                                    "+ 1 video of unknown length)")
    kind, label, description = notes["mode"]  # corrupt.mp4 counts as long; no orchestrator
    assert kind == "Warning" and label.startswith("Runs at once when you press Execute")
    assert f"after {fo.config.operator_timeout} s" in label
    assert "FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true" in description

    monkeypatch.setattr(fo.config, "allow_legacy_orchestrators", True)  # Schedule offered
    kind, label, description = _form_notes(ds, ds.view())["mode"]
    assert (kind, label) == ("Notice", "Scheduled as a delegated run (Schedule is the "
                                       "default for this size)")
    assert "fiftyone delegated launch" in description
    monkeypatch.setattr(fo.config, "allow_legacy_orchestrators", False)

    done = ds.select([s.id for s in ds if s.clip_name in ("stereo", "stereo2", "mono")])
    notes = _form_notes(ds, done)
    assert notes["summary"][:2] == ("Warning", "All 3 videos in the current view already "
                                    "have results in `auralsam2`: Execute would skip every one")
    assert "mode" not in notes
    notes = _form_notes(ds, done, params={"overwrite": True})
    assert notes["summary"][1] == ("3 videos in the current view: 3 to pre-label (about 18 "
                                   "frames)")
    assert notes["mode"][:2] == ("Notice", "Runs at once when you press Execute")
    assert _form_notes(ds, done, params={"stride": 4, "overwrite": True})["summary"][1] \
        .endswith("(about 6 frames)")  # 2 of 6 frames per video
    assert _form_notes(ds, done, request_delegation=True, params={"overwrite": True})[
        "mode"][1].startswith("Scheduled as a delegated run")

    one = by_name(ds)["stereo"].id
    notes = _form_notes(ds, ds.view(), selected=[one], params={
        "view_target": "SELECTED_SAMPLES"})
    assert notes["summary"][1] == ("The video selected already has results in `auralsam2`: "
                                   "Execute would skip it")
    notes = _form_notes(ds, ds.view(), params={"label_field": "other"})
    assert notes["summary"][1].startswith("5 videos in the dataset: 5 to pre-label")
    notes = _form_notes(ds, ds.to_frames(sample_frames=False))
    assert notes["summary"][0] == "Error" and "pre-labels videos" in notes["summary"][1]

    # what the form says is what a run does
    assert run_prelabel(ds, view=done).result["skipped"] == 3


def test_sound_panel_reads_the_sample_media_and_probabilities(labelled, reference):
    """What the sound panel (issue #17.5) plays and draws, for a video and for a clip of it;
    the App test checks the same in the browser."""
    from auralsam2_fiftyone import panel

    ds = labelled[0]
    sample = by_name(ds)["stereo"]
    assert panel.owned_frame_fields(ds) == ["auralsam2"]
    track = panel.sound_track(ds.view(), sample.id, "auralsam2")
    assert track["filepath"] == sample.filepath and track["num_frames"] == 6
    assert track["fps"] == pytest.approx(FPS)
    want = [(r.index + 1, r.sounding_prob) for r in reference["stereo"]]
    assert [n for n, _ in track["frames"]] == [n for n, _ in want]
    assert [p for _, p in track["frames"]] == pytest.approx([p for _, p in want], abs=1e-6)
    assert track["intervals"] == [list(d.support) for d in sample.auralsam2_intervals.detections]
    prob, threshold, marker = panel.plot_traces(track)
    assert prob["x"] == pytest.approx([(n - 1) / FPS for n, _ in want])  # the App's time axis
    assert prob["text"][3].startswith("#3 (0:00.60)")
    assert marker["x"] == [0.0, 0.0] and marker["name"] == "hearing #0 (0:00.00)"
    clips = ds.select(sample.id).to_clips([[(3, 5)]])
    assert panel.sound_track(clips, clips.first().id,
                             "auralsam2")["filepath"] == sample.filepath  # the source video
    assert panel.sound_track(ds.view(), "0" * 24, "auralsam2") is None
    assert panel.media_url("/data/a b/c#1.mp4") == "/media?filepath=%2Fdata%2Fa%20b%2Fc%231.mp4"
    assert panel.media_url("https://host/v.mp4") == "https://host/v.mp4"
    assert [panel.frame_at(t, FPS, 6) for t in (0.0, 0.199, 0.2, 1.0, 99.0)] == [1, 1, 2, 6, 6]
