"""The CVAT adapter (plugins/cvat) against an emulated CVAT that is as strict as CVAT
(tests/helpers/cvat_emulator.py): the nuclio function run through nuclio_sdk.test.Platform and
driven by CVAT's own Automatic annotation loop, the whole-task upload of mask shapes, webhooks
through CVAT's SSRF proxy, the command, the frame mapping, the mask formats, the two
function.yaml files and deploy.sh.

Each emulated CVAT rule has a test showing the emulator rejecting what CVAT rejects, next to a
test showing the adapter passing it. The model is the tiny random-weight SAM2 used across the
tests (seeded so that its masks are not empty); "the engine's masks" are computed by running the
core engine directly.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import hmac
import json
import os
import stat
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("cvat_sdk")
nuclio_sdk = pytest.importorskip("nuclio_sdk")
yaml = pytest.importorskip("yaml")

from cvat_sdk import models  # noqa: E402
from cvat_sdk.api_client.exceptions import ApiException  # noqa: E402
from cvat_sdk.core.client import Client  # noqa: E402
from cvat_sdk.masks import decode_mask, encode_mask  # noqa: E402
from nuclio_sdk.test import Platform  # noqa: E402

from auralsam2_core import model_spec  # noqa: E402
from auralsam2_core.inference.engine import PrelabelOptions, prelabel  # noqa: E402
from auralsam2_core.training.synthetic import make_clip, write_clip  # noqa: E402
from auralsam2_plugins.cvat import config, main  # noqa: E402
from auralsam2_plugins.cvat.classes import SPEC_CLASSES  # noqa: E402
from auralsam2_plugins.cvat.cli import register  # noqa: E402
from auralsam2_plugins.cvat.frames import (  # noqa: E402
    FrameMap,
    choose_frame,
    expected_frame,
    job_frames,
    parse_frame_step,
)
from auralsam2_plugins.cvat.masks import (  # noqa: E402
    from_detector_mask,
    resize_mask,
    to_cvat_points,
    to_detector_mask,
)

from helpers import cvat_emulator as ce  # noqa: E402
from helpers.cvat_function_env import FUNCTION, ROOT, SPEC, TOKEN, call, function_env  # noqa: E402

pytestmark = pytest.mark.usefixtures("cvat_function_threads_joined")
SECRET = "webhook-shared-secret"
MODEL_ENV = {"AURALSAM2_SAM2_CONFIG": "sam2_hiera_t", "AURALSAM2_IMAGE_SIZE": "64",
             "AURALSAM2_FUSER_CONFIG": '{"f_depths": [1, 1, 1]}', "AURALSAM2_DEVICE": "cpu"}
LABEL = {"id": 70, "name": "sounding", "type": "mask", "attributes": [
    {"id": 71, "name": "confidence", "mutable": True, "input_type": "number",
     "values": ["0", "100", "1"], "default_value": "0"},
    {"id": 72, "name": "review_priority", "mutable": False, "input_type": "number",
     "values": ["0", "100", "1"], "default_value": "0"}]}
OTHER_LABEL = {"id": 80, "name": "car", "type": "any", "attributes": []}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model():
    """The instance the handler's cache hands out (so not conftest's ``tiny_model``)."""
    torch.manual_seed(3)  # a random init whose masks are not empty on these clips
    model_spec.load_model.cache_clear()
    yield model_spec.load_model(model_spec.ModelSpec.from_env(MODEL_ENV))
    model_spec.load_model.cache_clear()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("cvat_clips")
    out = {seed: write_clip(make_clip(seed, size=(48, 64), fps=5, seconds=2.0),
                            d / f"clip{seed}.mp4") for seed in (3, 4)}
    out["silent"] = write_clip(make_clip(5, size=(48, 64), fps=5, seconds=1.0),
                               d / "silent.mp4", audio=False)
    moving = make_clip(6, size=(48, 64), fps=5, seconds=1.2)
    still = dataclasses.replace(moving, frames=np.repeat(moving.frames[:1], len(moving.frames),
                                                         axis=0))
    out["still"] = write_clip(still, d / "still.mp4")  # one image, changing sound
    return out


@pytest.fixture(scope="module")
def reference(model, clips):
    """The engine's own results, by (clip, stride) and media frame."""
    cache = {}

    def get(clip, start, step, last):
        key = (clip, start, step, last)
        if key not in cache:
            cache[key] = {r.index: r for r in prelabel(
                model, clips[clip], PrelabelOptions(clip_len=5, stride=step, start_frame=start,
                                                    stop_frame=last + 1))}
        return cache[key]
    return get


@pytest.fixture
def env(monkeypatch, tmp_path, emu, model):
    return function_env(monkeypatch, emu.url, tmp_path / "cache", **MODEL_ENV)


@pytest.fixture
def platform(env):
    return Platform()  # init_context runs on the first call, with the environment above


def invoker(platform):
    """The function as the nuclio dashboard invokes it for CVAT."""
    return lambda payload, headers: call(platform, payload, headers)


def task_a(emu, clips, **kw):
    """Media frames 1, 3, 5, 7, 9 as task frames 0..4; task frame 2 deleted."""
    return emu.add_task(ce.EmuTask(7, clips[3], start=1, step=2, deleted=[2],
                                   labels=[LABEL, OTHER_LABEL], **kw))


def task_b(emu, clips):
    """Media frames 0, 2, 4, 6, 8 (stop 8) of another clip."""
    return emu.add_task(ce.EmuTask(9, clips[4], start=0, stop=8, step=2, labels=[LABEL]))


def run(emu, platform, task, **kw) -> ce.AutoAnnotationRun:
    """CVAT's Automatic annotation of the task (or kw job) with the function."""
    return emu.run_auto_annotation(invoker(platform), FUNCTION, SPEC, task, **kw)


def cvat_frames(task, job=None):
    return [f for f in (task.job_frames(job) if job else range(task.size))
            if f not in task.deleted]


def expected_answer(ref, threshold=0.5):
    if ref.sounding_prob < threshold or not ref.mask.any():
        return None
    return ref.mask


def check_answer(task, frame, body, ref):
    want = expected_answer(ref)
    if want is None:
        assert body == [], f"frame {frame}: expected no shape"
        return
    assert len(body) == 1, f"frame {frame}: {body}"
    shape = body[0]
    assert shape["label"] == "sounding" and shape["type"] == "mask"
    got = from_detector_mask(shape["mask"], task.width, task.height)
    assert np.array_equal(got, want), f"task {task.id} frame {frame}: mask differs"
    attrs = {a["name"]: a["value"] for a in shape["attributes"]}
    assert attrs["confidence"] == str(round(100 * ref.sounding_prob))
    assert attrs["review_priority"] == str(round(100 * ref.review_priority))
    assert abs(float(shape["confidence"]) - ref.sounding_prob) < 1e-3


def saved_masks(task, jobs=None):
    """What CVAT saved, decoded: {(job id, frame): mask} of automatic mask shapes."""
    out = {}
    for job in jobs or task.annotation_jobs():
        for s in job.shapes:
            if s["source"] == "auto" and s["type"] == "mask" and s["label_id"] == 70:
                assert (job.id, s["frame"]) not in out, f"duplicate at frame {s['frame']}"
                out[job.id, s["frame"]] = decode_mask(s["points"], image_width=task.width,
                                                      image_height=task.height)
    return out


def check_saved(task, ref, frames=None):
    """Exactly the engine's sounding masks, once per job holding the frame."""
    frames = cvat_frames(task) if frames is None else frames
    want = {}
    for job in task.annotation_jobs():
        for f in task.job_frames(job):
            if f in frames and f not in task.deleted:
                m = expected_answer(ref[task.media_frame(f)])
                if m is not None:
                    want[job.id, f] = m
    got = saved_masks(task)
    assert set(got) == set(want)
    for key, mask in got.items():
        assert np.array_equal(mask, want[key]), f"job/frame {key}"


def sdk(emu, token=TOKEN, org=None) -> Client:
    """cvat-sdk's client for an account, optionally in an organisation's context."""
    client = Client(emu.url, check_server_version=False)
    client.api_client.configuration.access_token = token
    client.organization_slug = org
    return client


# ----------------------------------------------------------------------------- pure parts


def test_frame_map_from_cvat_meta():
    fm = FrameMap.from_meta({"start_frame": 10, "stop_frame": 30, "frame_filter": "step=5",
                             "size": 5, "deleted_frames": [3]})
    assert [fm.media_frame(i) for i in range(5)] == [10, 15, 20, 25, 30]
    assert fm.task_frame(20) == 2 and fm.task_frame(21) is None and fm.task_frame(5) is None
    assert fm.task_frame(35) is None  # past the stop frame
    assert fm.task_frames() == [0, 1, 2, 4]
    assert fm.engine_stride == 5 and fm.last_media_frame == 30
    assert FrameMap(start=3, step=2, size=4).engine_stride == 2  # from start_frame 3
    no_size = FrameMap.from_meta({"start_frame": 2, "stop_frame": 11, "frame_filter": "step=3"})
    assert no_size.size == 4 and no_size.last_media_frame == 11
    with pytest.raises(IndexError):
        fm.media_frame(5)
    assert parse_frame_step("") == 1 and parse_frame_step("step=4") == 4
    with pytest.raises(ValueError, match="frame_filter"):
        parse_frame_step("every=2")


def test_jobs_expected_frame_and_choice():
    fm = FrameMap(start=0, step=1, size=10, deleted=frozenset({4}))
    assert job_frames(fm, 3, 6) == [3, 5, 6]
    assert job_frames(fm, 8, 20) == [8, 9]
    # a ground-truth job: the media frames its data meta lists (with start 10 and step 5)
    gt = FrameMap(start=10, step=5, size=10, deleted=frozenset({4}))
    assert job_frames(gt, 1, 8, included=[40, 15, 30, 31, 55]) == [1, 6]  # 30: deleted
    frames = [3, 5, 6]
    assert expected_frame(frames, None) == 3
    assert expected_frame(frames, 3) == 5
    assert expected_frame(frames, 6) == 3  # a new run starts over
    assert expected_frame(list(range(10)), None, progress=50, size=10) == 5
    # a still scene: several frames look the same; the expected one wins
    assert choose_frame([0, 1, 2, 3], [2.0, 1.0, 1.2, 9.0], expected=2, tolerance=5)[0] == 2
    assert choose_frame([0, 1, 2, 3], [2.0, 1.0, 5.0, 9.0], expected=3, tolerance=5)[0] == 1
    assert choose_frame([0, 1], [20.0, 30.0], expected=0, tolerance=5) == (None, 20.0)


def test_mask_formats_round_trip():
    rng = np.random.default_rng(0)
    mask = np.zeros((30, 40), bool)
    mask[5:20, 7:33] = rng.random((15, 26)) > 0.4
    flat = to_detector_mask(mask)
    assert flat[-4:] == [int(np.flatnonzero(mask.any(0))[0]), 5,
                         int(np.flatnonzero(mask.any(0))[-1]), 19]
    assert np.array_equal(from_detector_mask(flat, 40, 30), mask)
    assert to_detector_mask(np.zeros((4, 4), bool)) is None
    points = to_cvat_points(mask)
    assert np.array_equal(decode_mask(points, image_width=40, image_height=30), mask)
    # what CVAT makes of a detector mask (views.py _parse_anno, emulated) is CVAT's own RLE
    assert ce.run_lengths(flat[:-4]) + flat[-4:] == [int(v) for v in encode_mask(mask)]
    big = resize_mask(mask, 80, 60)
    assert big.shape == (60, 80) and np.array_equal(big[::2, ::2], mask)


def test_invoke_timeout_header():
    from auralsam2_plugins.cvat.detector import header, invoke_timeout

    assert invoke_timeout({"X-Nuclio-Invoke-Timeout": "120s"}) == 120
    assert invoke_timeout({b"x-nuclio-invoke-timeout": b"2m"}) == 120  # nuclio: bytes, any case
    assert invoke_timeout({"X-Nuclio-Invoke-Timeout": "1500ms"}) == 1.5
    assert invoke_timeout({"X-Nuclio-Invoke-Timeout": "soon"}) is None
    assert invoke_timeout({}) is None and invoke_timeout(None) is None
    assert header({"X-Signature-256": "sha256=ab"}, "x-signature-256") == "sha256=ab"


def test_settings_from_env_and_secrets(tmp_path):
    secret = tmp_path / "token"
    secret.write_text("file-token\n")
    hook = tmp_path / "hook"
    hook.write_text("hook-secret")
    s = config.CvatFunctionSettings.from_env({"CVAT_URL": "http://cvat:8080",
                                  "CVAT_ACCESS_TOKEN_FILE": str(secret), "CVAT_ORG": "lab",
                                  "AURALSAM2_CVAT_WEBHOOK_SECRET_FILE": str(hook),
                                  "NUCLIO_FUNCTION_NAME": "my-fn"})
    assert s.token == "file-token" and s.function_name == "my-fn" and s.org == "lab"
    assert s.webhook_secret == "hook-secret"
    assert "file-token" not in repr(s) and "hook-secret" not in repr(s)
    with pytest.raises(ValueError, match="CVAT_URL"):
        config.CvatFunctionSettings.from_env({"CVAT_URL": "ftp://x"})
    with pytest.raises(ValueError, match="CVAT_ACCESS_TOKEN_FILE=.*cannot be read"):
        config.CvatFunctionSettings.from_env({"CVAT_ACCESS_TOKEN_FILE": str(tmp_path / "missing")})
    assert model_spec.ModelSpec.from_env({}).sam2_config == "bundled"
    assert model_spec.ModelSpec.from_env(
        {"AURALSAM2_FUSER_CHECKPOINT": "auralsam2_avs_v1m"}).sam2_config == "sam2_hiera_l"


def test_shapes_per_sounding_frame_and_cvat_attribute_rules():
    from auralsam2_core.inference import rle
    from auralsam2_plugins.cvat.detector import score_attributes
    from auralsam2_plugins.cvat.upload import attribute_value, build_shapes, is_own

    label = ce.to_model(models.Label, LABEL)
    rng = np.random.default_rng(1)
    frames = [0, 1, 3, 4, 5]  # task frame 2 deleted
    masks = {f: rng.random((12, 16)) > 0.5 for f in frames}
    masks[4][:] = False  # sounding but nothing visible: no shape
    probs = {0: 0.9, 1: 0.8, 3: 0.2, 4: 0.7, 5: 0.95}
    records = {f: {"index": f, "sounding_prob": probs[f], "review_priority": 0.1 * f,
                   "mask": rle.encode(masks[f])} for f in frames}
    shapes = build_shapes(frames, records, label, 0.5, 16, 12)
    assert sorted(shapes) == [0, 1, 5]
    for f, (shape,) in shapes.items():  # one shape per frame (instances off)
        assert str(shape.type) == "mask" and shape.frame == f and shape.source == "auto"
        got = decode_mask(shape.points, image_width=16, image_height=12)
        assert np.array_equal(got, masks[f])
    assert [(a.spec_id, a.value) for a in shapes[0][0].attributes] == [(71, "90"), (72, "0")]

    def attr(kind, values):
        return ce.to_model(models.AttributeRequest, {"name": "confidence", "mutable": True,
                                                     "input_type": kind, "values": values})

    # CVAT's rule for a number attribute: int bounds, min <= v <= max, (v - min) % step == 0
    assert attribute_value(attr("number", ["0", "100", "1"]), 0.874) == "87"
    assert attribute_value(attr("number", ["0", "10", "5"]), 0.87) == "10"
    assert attribute_value(attr("number", ["0", "10", "5"]), 0.3) == "5"
    assert attribute_value(attr("number", ["10", "20", "3"]), 1.0) == "19"  # 20 is off-step
    assert attribute_value(attr("number", ["0", "1.5", "1"]), 0.5) is None  # CVAT's int() fails
    assert attribute_value(attr("text", []), 0.95) == "0.950"
    assert attribute_value(attr("checkbox", ["false"]), 0.95) is None
    # detector answers: fitted to the task label's attributes, unreadable ones left out
    rec = {"sounding_prob": 0.87, "review_priority": 0.4}
    assert score_attributes(rec, None) == [{"name": "confidence", "value": "87"},
                                           {"name": "review_priority", "value": "40"}]
    assert score_attributes(rec, {"confidence": attr("number", ["0", "10", "1"]),
                                  "review_priority": attr("number", ["0", "1.5", "1"])}) == [
        {"name": "confidence", "value": "9"}]
    # own shapes: this label, source auto, masks only
    made = ce.to_model(models.LabeledShape, {"id": 1, "label_id": 70, "frame": 0, "source":
                                             "auto", "type": "mask", "points": [1, 0, 0, 0, 0]})
    assert is_own(made, 70) and not is_own(made, 71)
    for change in ({"source": "manual"}, {"source": "semi-auto"}, {"type": "polygon"}):
        assert not is_own(ce.to_model(models.LabeledShape, {**made.to_dict(), **change}), 70)


def largest_part(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected part of a mask (plain flood fill)."""
    seen, best = np.zeros_like(mask, bool), np.zeros_like(mask, bool)
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        part, todo = np.zeros_like(mask, bool), [start]
        seen[start] = part[start] = True
        while todo:
            y, x = todo.pop()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    q = (y + dy, x + dx)
                    if 0 <= q[0] < mask.shape[0] and 0 <= q[1] < mask.shape[1] and mask[q] \
                            and not seen[q]:
                        seen[q] = part[q] = True
                        todo.append(q)
        if part.sum() > best.sum():
            best = part
    return best


def raster(points, width, height) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("L", (width, height))
    ImageDraw.Draw(img).polygon(list(zip(points[::2], points[1::2], strict=True)), fill=1,
                                outline=1)
    return np.asarray(img, bool)


def iou(a, b) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_mask_outline_as_a_polygon():
    from auralsam2_plugins.cvat import polygons
    from auralsam2_plugins.cvat.polygons import outline

    rng = np.random.default_rng(2)
    for density in (0.3, 0.5, 0.6, 0.7):  # the run-based search finds the largest part
        m = rng.random((30, 40)) < density
        got = polygons.largest_part(m)
        assert got.sum() == largest_part(m).sum() and not (got & ~m).any()
        assert np.array_equal(largest_part(got), got)  # one part

    yy, xx = np.mgrid[:60, :80]
    disk = (yy - 30) ** 2 + (xx - 35) ** 2 < 15 ** 2
    speck = (yy - 5) ** 2 + (xx - 75) ** 2 < 3 ** 2
    hole = (yy - 30) ** 2 + (xx - 35) ** 2 < 4 ** 2
    ell = np.zeros((60, 80), bool)
    ell[10:50, 10:20] = ell[40:50, 10:60] = True
    for mask, want in ((disk, disk), (disk | speck, disk), (disk & ~hole, disk), (ell, ell)):
        points = outline(mask)
        assert len(points) % 2 == 0 and len(points) >= 6
        assert iou(raster(points, 80, 60), want) > 0.95  # the largest part, holes filled
    assert len(outline(ell)) == 12  # six corners after simplification
    assert outline(np.zeros((5, 5), bool)) is None
    assert outline(np.eye(5, dtype=bool)) is None  # no area: no polygon


# ----------------------------------------------------------------------------- yaml, deploy


@pytest.mark.parametrize("name", ["function.yaml", "function-gpu.yaml"])
def test_function_yaml(name):
    from auralsam2_core.modeling.weights import REGISTRY

    path = ROOT / "plugins" / "cvat" / name
    doc = yaml.safe_load(path.read_text())
    meta, spec = doc["metadata"], doc["spec"]
    assert meta["name"] == FUNCTION == config.DEFAULT_FUNCTION_NAME
    ann = meta["annotations"]
    assert ann["type"] == "detector" and ann["framework"] == "pytorch" and ann["name"]
    labels = json.loads(ann["spec"])
    # 'sounding' (the AVS model's) and the Ref-AVS classes (tests/test_refavs_cvat.py)
    assert [(lb["name"], lb["type"]) for lb in labels] == [
        (name, "mask") for name in ("sounding", *SPEC_CLASSES)]
    for lb in labels:
        attrs = {a["name"]: a for a in lb["attributes"]}
        assert set(attrs) == {"confidence", "review_priority"}
        assert all(a["input_type"] == "number" and a["values"] == ["0", "100", "1"]
                   for a in attrs.values())
    # python runtime matching the package, and main:handler importable from the function dir
    assert spec["runtime"] == "python:3.11" and spec["handler"] == "main:handler"
    module, fn = spec["handler"].split(":")
    assert (path.parent / f"{module}.py").is_file()
    assert callable(getattr(main, fn)) and callable(main.init_context)
    # the build installs this package (the wheel deploy.sh builds) with its CVAT extra
    directives = spec["build"]["directives"]
    runs = [d["value"] for phase in ("preCopy", "postCopy") for d in directives[phase]
            if d["kind"] == "RUN"]
    assert any("/opt/nuclio/dist/auralsam2-" in r and "[cvat]" in r for r in runs)
    assert any("sam2==1.1.0" in r for r in runs) and any("torch==2.9.1" in r for r in runs)
    # on CVAT's Docker network, where http://cvat-server:8080 resolves (as CVAT's own
    # serverless/deploy_cpu.sh passes with --platform-config)
    assert spec["platform"]["attributes"]["network"] == "cvat_cvat"
    # timeouts: nuclio never cuts a waiting request; an answer comes within CVAT's timeout
    env = {e["name"]: e["value"] for e in spec["env"]}
    assert env["CVAT_URL"] == "http://cvat-server:8080"
    wait = float(env["AURALSAM2_CVAT_FRAME_WAIT"])
    assert float(spec["eventTimeout"].rstrip("s")) > wait + 10
    trigger = spec["triggers"]["myHttpTrigger"]
    queue = trigger["workerAvailabilityTimeoutMilliseconds"] / 1000
    assert queue + wait + 5 <= config.CVAT_DEFAULT_TIMEOUT
    assert trigger["kind"] == "http" and trigger["maxWorkers"] == 1
    assert trigger["attributes"]["maxRequestBodySize"] >= 32 * 2**20
    # no secret in the spec (nuclio keeps the spec in its store and in container labels)
    assert not {"CVAT_ACCESS_TOKEN", "CVAT_PASSWORD", "AURALSAM2_CVAT_WEBHOOK_SECRET"} & set(env)
    if "gpu" in name:
        assert spec["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert env["AURALSAM2_DEVICE"] == "cuda"
        for key in ("AURALSAM2_SAM2_CHECKPOINT", "AURALSAM2_FUSER_CHECKPOINT"):
            assert env[key] in REGISTRY
            assert any("auralsam2 download" in r and env[key] in r for r in runs)
    else:
        assert "resources" not in spec and env["AURALSAM2_SAM2_CONFIG"] == "bundled"


def _fake_tools(bin_dir: Path, record: Path, nuctl_version: str = "1.15.9") -> None:
    """nuctl, docker and python stand-ins that record their arguments (no Docker here)."""
    bin_dir.mkdir()
    tools = {
        "nuctl": f'''echo "nuctl $*" >> {record}
if [ "$1" = version ]; then
  echo 'Client version:'; echo '"Label: {nuctl_version}, Git commit: x, OS: linux"'
fi''',
        "docker": f'''echo "docker $*" >> {record}
if [ "$1 $2" = "network inspect" ]; then [ "$3" = cvat_cvat ] && exit 0 || exit 1; fi''',
        "python-fake": f'''echo "python $*" >> {record}
out=$(echo "$*" | sed -n 's/.* -w \\([^ ]*\\) .*/\\1/p'); mkdir -p "$out"
touch "$out/auralsam2-0.1.0-py3-none-any.whl"''',
    }
    for name, body in tools.items():
        p = bin_dir / name
        p.write_text("#!/usr/bin/env bash\n" + body + "\n")
        p.chmod(0o755)


def test_deploy_script_keeps_secrets_out_of_the_spec(tmp_path):
    record, bin_dir, secrets = tmp_path / "calls", tmp_path / "bin", tmp_path / "secrets"
    _fake_tools(bin_dir, record)
    base = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path),
            "PYTHON": str(bin_dir / "python-fake"), "AURALSAM2_CVAT_SECRETS": str(secrets)}
    script = ROOT / "manifests/cvat/deploy.sh"
    env = {**base, "CVAT_URL": "http://cvat-server:8080", "CVAT_ACCESS_TOKEN": TOKEN,
           "CVAT_ORG": "lab", "AURALSAM2_CVAT_WEBHOOK_SECRET": SECRET}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    calls = record.read_text()
    [deploy] = [line for line in calls.splitlines() if line.startswith("nuctl deploy")]
    assert TOKEN not in calls and SECRET not in calls  # never on a command line or in the spec
    assert "--platform-config" in deploy and '"network": "cvat_cvat"' in deploy
    assert "--env CVAT_ORG=lab" in deploy and "--env CVAT_URL=http://cvat-server:8080" in deploy
    token_file = secrets / "cvat-access-token"
    assert token_file.read_text().strip() == TOKEN
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    assert f"--volume {token_file}:/run/secrets/auralsam2/cvat-access-token" in deploy
    assert "--env CVAT_ACCESS_TOKEN_FILE=/run/secrets/auralsam2/cvat-access-token" in deploy
    assert "--env AURALSAM2_CVAT_WEBHOOK_SECRET_FILE=/run/secrets/auralsam2/" in deploy
    # a token handed to nuctl --env would land in the spec: refused
    bad = subprocess.run(["bash", str(script), "--env", f"CVAT_ACCESS_TOKEN={TOKEN}"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "CVAT_ACCESS_TOKEN" in bad.stderr
    # an older nuclio, or CVAT's network missing, stops it with the reason
    bin2 = tmp_path / "bin2"
    _fake_tools(bin2, record, nuctl_version="1.11.24")
    old = subprocess.run(["bash", str(script)], env={**env, "PATH": f"{bin2}:{os.environ['PATH']}",
                         "PYTHON": str(bin2 / "python-fake")}, capture_output=True, text=True,
                         timeout=60)
    assert old.returncode != 0 and "1.13.0" in old.stderr
    _fake_tools(tmp_path / "bin3", record)
    nonet = subprocess.run(["bash", str(script)], env={
        **env, "CVAT_NETWORK": "nope_cvat", "PATH": f"{tmp_path / 'bin3'}:{os.environ['PATH']}",
        "PYTHON": str(tmp_path / "bin3" / "python-fake")}, capture_output=True, text=True,
        timeout=60)
    assert nonet.returncode != 0 and "nope_cvat" in nonet.stderr


# ----------------------------------------------------------------------------- emulated rules


def test_emulator_refuses_mask_tracks_as_cvat_does(emu, clips):
    """CVAT has no mask tracks: a task-level upload that must cut one at a job boundary fails
    with 500; one inside a job is stored, but the job no longer opens in the UI and the task
    no longer exports."""
    task = emu.add_task(ce.EmuTask(21, clips[3], labels=[LABEL], segment_size=5))
    points = to_cvat_points(np.eye(task.height, task.width, dtype=bool))

    def mask_track(frames, end=None):
        return models.LabeledTrackRequest(label_id=70, frame=frames[0], source="auto", shapes=[
            models.TrackedShapeRequest(type=models.ShapeType("mask"), frame=f, points=points,
                                       outside=f == end) for f in frames])

    client = sdk(emu)
    with pytest.raises(ApiException) as e:
        client.api_client.tasks_api.partial_update_annotations(
            "create", task.id, patched_labeled_data_request=models.PatchedLabeledDataRequest(
                tracks=[mask_track([3, 4, 5, 6])]))
    assert e.value.status == 500 and "NotImplementedError" in str(e.value.body)
    client.api_client.tasks_api.partial_update_annotations(
        "create", task.id, patched_labeled_data_request=models.PatchedLabeledDataRequest(
            tracks=[mask_track([1, 2, 3], end=3)]))  # ends inside job 0
    with pytest.raises(ce.CvatUiError, match='An unexpected type of track "mask"'):
        emu.ui_load_job(task.jobs[0])
    with pytest.raises(ce.HttpError, match="NotImplementedError"):
        emu.export_dataset(task)
    emu.ui_load_job(task.jobs[1])  # the other job still opens
    task.jobs[0].tracks.clear()  # (the fixture checks every job at the end)
    # CVAT's own checks of ids: an unknown label or attribute is a 400
    with pytest.raises(ApiException) as e:
        client.api_client.jobs_api.partial_update_annotations(
            "create", task.jobs[0].id, patched_labeled_data_request=models.
            PatchedLabeledDataRequest(shapes=[models.LabeledShapeRequest(
                type=models.ShapeType("mask"), frame=0, label_id=70, points=points,
                attributes=[models.AttributeValRequest(spec_id=99, value="1")])]))
    assert e.value.status == 400 and "spec_id `99` is invalid" in str(e.value.body)


def test_emulator_lists_lambda_requests_by_role_and_organisation(emu, clips):
    """lambda.rego's filter: an admin sees every request; anyone else only those of tasks
    they own or are assigned to, unless they name an organisation in which they are a
    maintainer or owner."""
    emu.add_user("alice", "alice-token")  # maintainer of "lab"
    bob = emu.add_user("bob", "bob-token")  # worker of "lab", owns task 32
    carol = emu.add_user("carol", "carol-token")  # no organisation, owns task 33
    lab = emu.add_org("lab", emu.admin, alice="maintainer", bob="worker")
    for task_id, owner, org in ((31, emu.admin, lab), (32, bob, lab), (33, carol, None)):
        emu.add_task(ce.EmuTask(task_id, clips[3], labels=[LABEL], owner_id=owner.id,
                                org_id=org.id if org else None))
        emu.start_lambda(FUNCTION, task_id)

    def visible(token, org=None):
        with sdk(emu, token, org) as client:
            calls, _ = client.api_client.lambda_api.list_requests()
            return sorted(c.function.task for c in calls)

    assert visible(TOKEN) == [31, 32, 33]  # admin, no organisation: everything
    assert visible(TOKEN, "lab") == [31, 32]
    assert visible("alice-token") == []  # a maintainer without the organisation: nothing
    assert visible("alice-token", "lab") == [31, 32]
    assert visible("bob-token") == [32] and visible("bob-token", "lab") == [32]
    assert visible("carol-token") == [33] and visible("carol-token", "") == [33]
    with pytest.raises(ApiException) as e:
        visible("carol-token", "nowhere")
    assert e.value.status == 404
    # objects are checked in their own organisation: alice reads task 31 without the header,
    # carol may not (not a member)
    with sdk(emu, "alice-token") as client:
        assert client.api_client.tasks_api.retrieve(31)[0].id == 31
    with sdk(emu, "carol-token") as client, pytest.raises(ApiException) as e:
        client.api_client.tasks_api.retrieve(31)
    assert e.value.status == 403


def test_emulator_runs_cvats_loop_raise_for_status_and_partial_saves(emu, clips):
    """CVAT's Automatic annotation: frames in order, the first non-2xx answer ends the run,
    what was saved before (every 100 frames; here every 2) stays, and a rerun duplicates it."""
    task = emu.add_task(ce.EmuTask(41, clips[3], labels=[LABEL]))
    mask = np.zeros((task.height, task.width), bool)
    mask[4:9, 5:12] = True
    seen = []

    def detector(payload, headers):
        seen.append(headers)
        frame = len(seen) - 1
        if frame == 5:
            return 503, {"error": "not ready"}
        return 200, [{"label": "sounding", "type": "mask", "mask": to_detector_mask(mask),
                      "attributes": [{"name": "confidence", "value": "150"},
                                     {"name": "review_priority", "value": "40"}]}]

    first = emu.run_auto_annotation(detector, FUNCTION, SPEC, task, save_every=2)
    assert first.status == "failed" and "503" in first.error
    assert [c.frame for c in first.calls] == [0, 1, 2, 3, 4, 5]  # nothing after the 503
    assert all(h == {"X-Nuclio-Invoke-Timeout": "120s"} for h in seen)
    saved = saved_masks(task)
    assert sorted(f for _, f in saved) == [0, 1, 2, 3, 4]  # saved at frames 2 and 4
    assert all(np.array_equal(m, mask) for m in saved.values())
    shape = task.annotation_jobs()[0].shapes[0]
    assert [a["spec_id"] for a in shape["attributes"]] == [72]  # 150 is out of 0..100: dropped
    seen.clear()
    emu.run_auto_annotation(detector, FUNCTION, SPEC, task, save_every=2)
    with pytest.raises(AssertionError, match="duplicate"):
        saved_masks(task)
    for job in task.jobs:
        job.shapes.clear()
    # a task attribute with float bounds: CVAT's int() raises and the whole run fails
    floaty = emu.add_task(ce.EmuTask(42, clips[3], labels=[{**LABEL, "attributes": [
        {**LABEL["attributes"][0], "values": ["0", "1.5", "1"]}]}]))
    bad = emu.run_auto_annotation(lambda p, h: detector(p, []), FUNCTION, SPEC, floaty)
    assert bad.status == "failed" and len(bad.calls) == 1


# ----------------------------------------------------------------------------- detector path


def test_automatic_annotation_saves_the_engine_masks(emu, platform, clips, reference, capsys,
                                                     caplog):
    task = task_a(emu, clips, segment_size=3, overlap=1)  # jobs 0..2, 2..4
    ref = reference(3, 1, 2, 9)  # the engine starts at the task's first frame, steps by 2
    done = run(emu, platform, task, threshold=0.5)
    assert done.status == "finished", done.error
    assert [c.frame for c in done.calls] == [0, 1, 3, 4]  # the deleted frame is never asked
    for c in done.calls:
        assert c.status == 200
        check_answer(task, c.frame, c.body, ref[task.media_frame(c.frame)])
    check_saved(task, ref)  # CVAT's task-level save put a copy in each job holding a frame
    assert saved_masks(task)  # (the random model sounds somewhere)
    # a job of the task: its frames only
    for job in task.jobs:
        job.shapes.clear()
    job = task.jobs[1]
    done = run(emu, platform, task, job=job)
    assert done.status == "finished" and [c.frame for c in done.calls] == [3, 4]
    for c in done.calls:
        check_answer(task, c.frame, c.body, ref[task.media_frame(c.frame)])
    # the original video was fetched once; only the configured host was contacted, always
    # with the token, and the token never appears in any log or answer
    assert len(emu.calls("POST", "/backup/export")) == 1
    assert emu.auth_failures == 0
    logs = capsys.readouterr().out + caplog.text
    assert TOKEN not in logs and "auralsam2" in logs


def test_ground_truth_job_frames(emu, platform, clips, reference):
    """A ground-truth job (specific frames): CVAT asks for its frames only, and the function
    places each image among those (in a still scene only the job's frame set tells frame 4
    from frame 1)."""
    task = emu.add_task(ce.EmuTask(52, clips["still"], labels=[LABEL]))
    gt = emu.add_gt_job(task, [0, 4])
    ref = reference("still", 0, 1, task.size - 1)
    done = run(emu, platform, task, job=gt)
    assert done.status == "finished" and [c.frame for c in done.calls] == [0, 4]
    for c in done.calls:
        check_answer(task, c.frame, c.body, ref[task.media_frame(c.frame)])


def test_results_are_cached_per_task(emu, env, clips, reference, monkeypatch):
    from auralsam2_core.inference import prelabel_videos as jobs

    runs = []
    engine = jobs.prelabel
    monkeypatch.setattr(jobs, "prelabel", lambda *a, **k: runs.append(a) or engine(*a, **k))
    task = task_a(emu, clips)
    assert run(emu, Platform(), task).status == "finished"
    assert len(runs) == 1 and len(emu.calls("POST", "/backup/export")) == 1
    cache = Path(env["AURALSAM2_CVAT_CACHE"])
    deadline = time.monotonic() + 30  # the results file is written when the engine ends
    while not list(cache.glob("task-7-*/results/results-*.json")):
        assert time.monotonic() < deadline, "no cached results"
        time.sleep(0.05)
    # a new worker (fresh state, same cache) neither downloads nor runs the model again
    ref = reference(3, 1, 2, 9)
    done = run(emu, Platform(), task)
    for c in done.calls:
        assert c.status == 200
        check_answer(task, c.frame, c.body, ref[task.media_frame(c.frame)])
    assert len(runs) == 1 and len(emu.calls("POST", "/backup/export")) == 1


def test_a_late_frame_gets_no_mask_and_the_run_goes_on(emu, env, clips, reference,
                                                      monkeypatch):
    """CVAT ends the whole run on a non-2xx answer: a frame the model has not reached in time
    is answered [] (and logged), never 503."""
    from auralsam2_core.inference import prelabel_videos as jobs

    gate = threading.Event()
    engine = jobs.prelabel

    def held_after_one_frame(*args, **kwargs):
        for n, result in enumerate(engine(*args, **kwargs)):
            if n == 1:  # the engine visits media frames 1, 3, ...: hold before frame 3
                gate.wait(60)
            yield result

    monkeypatch.setattr(jobs, "prelabel", held_after_one_frame)
    task = task_a(emu, clips)
    platform, ref = Platform(), reference(3, 1, 2, 9)

    def invoke(payload, headers):
        answer = call(platform, payload, headers)
        if len(emu.last_run.calls) == 1:  # after the held frame's answer, let the model go
            gate.set()
        return answer

    started = time.monotonic()
    # CVAT_NUCLIO_DEFAULT_TIMEOUT=20: the function keeps 15 s free, so it waits 5 s per frame
    # (1 s, as before, let frame 0 itself miss its wait on a busy machine)
    try:
        done = emu.run_auto_annotation(invoke, FUNCTION, SPEC, task, timeout=20)
    finally:
        gate.set()
    assert time.monotonic() - started < 30  # not AURALSAM2_CVAT_FRAME_WAIT's 60 s
    assert done.status == "finished", done.error
    assert [(c.frame, c.status) for c in done.calls] == [(0, 200), (1, 200), (3, 200),
                                                         (4, 200)]
    assert done.answers[1] == []  # not pre-labelled within the wait
    for c in done.calls:
        if c.frame != 1:
            check_answer(task, c.frame, c.body, ref[task.media_frame(c.frame)])
    check_saved(task, ref, frames=[0, 3, 4])


def test_two_tasks_annotated_at_once_are_told_apart(emu, platform, clips, reference):
    a, b = task_a(emu, clips), task_b(emu, clips)
    ref = {a.id: reference(3, 1, 2, 9), b.id: reference(4, 0, 2, 8)}
    runs = [(t, emu.auto_annotation(invoker(platform), FUNCTION, SPEC, t)) for t in (a, b)]
    done = {a.id: [], b.id: []}
    while runs:
        for item in list(runs):
            task, steps = item
            step = next(steps, None)
            if step is None:
                runs.remove(item)
                continue
            assert step.status == 200, step.body
            check_answer(task, step.frame, step.body, ref[task.id][task.media_frame(step.frame)])
            done[task.id].append(step.frame)
    assert done == {7: [0, 1, 3, 4], 9: [0, 1, 2, 3, 4]}


def test_a_new_run_starts_at_its_first_frame_in_a_still_scene(emu, platform, clips, reference):
    """Identical frames are told apart by CVAT's order, per run: after a cancelled run, a new
    run's first image is frame 0 again, not the frame after the old run's last."""
    task = emu.add_task(ce.EmuTask(51, clips["still"], labels=[LABEL]))
    ref = reference("still", 0, 1, task.size - 1)
    # same image, different pre-labels: answering frame 3 for frame 0 would show
    assert not np.array_equal(ref[0].mask, ref[3].mask)
    steps = emu.auto_annotation(invoker(platform), FUNCTION, SPEC, task)
    for _ in range(3):
        next(steps)
    steps.close()  # the user cancels; CVAT drops the request
    emu.lambda_requests.clear()
    done = run(emu, platform, task)
    assert done.status == "finished"
    for c in done.calls:
        check_answer(task, c.frame, c.body, ref[task.media_frame(c.frame)])


def test_malformed_payloads_get_clear_4xx(emu, platform, clips):
    task = task_a(emu, clips)
    cases = [
        (b"not json{", "not JSON"),
        ([1, 2], "JSON object"),
        ({}, "expected CVAT's detector request"),
        ({"image": ""}, "base64"),
        ({"image": "@@@not-base64@@@"}, "base64"),
        ({"image": "aGVsbG8="}, "not a readable image"),
        ({"image": task.frame_b64(0), "threshold": "high"}, "threshold"),
        ({"task_id": "seven"}, "task_id"),
        ({"task_id": 7, "wait": -1}, "wait"),
        ({"event": "create:task"}, "task"),
    ]
    emu.start_lambda(FUNCTION, task.id)
    for body, words in cases:
        status, answer = call(platform, body)
        assert status == 400, (body, answer)
        assert words in answer["error"], (words, answer)


def test_the_functions_bad_request_is_the_cores():
    """One BadRequest for every front end: CVAT's is the core's (Label Studio's backend
    raises the core's own), and still answered like the function's other errors."""
    from auralsam2_core.errors import BadRequest
    from auralsam2_plugins.cvat.errors import AdapterError, CvatBadRequest

    e = CvatBadRequest("'task_id' must be a positive integer")
    assert isinstance(e, BadRequest) and isinstance(e, AdapterError) and e.status == 400
    assert BadRequest("too large", status=413).status == 413 and BadRequest("x").status == 400


def test_unplaceable_images_and_silent_tasks(emu, platform, clips):
    task = task_a(emu, clips)
    # no running Automatic annotation of this function: say so instead of guessing
    emu.start_lambda("some-other-function", task.id)
    status, answer = call(platform, {"image": task.frame_b64(0)})
    assert status == 409 and "no running Automatic annotation" in answer["error"]
    assert "CVAT_ORG" in answer["error"]
    # during a run, an image that is no frame of the task gets no mask, and the run goes on
    emu.lambda_requests.clear()
    other = ce.EmuTask(99, clips[4])
    done = emu.run_auto_annotation(
        lambda payload, headers: call(platform, {**payload, "image": other.frame_b64(5)}
                                      if payload["image"] == task.frame_b64(1) else payload,
                                      headers), FUNCTION, SPEC, task)
    assert done.status == "finished" and done.answers[1] == []
    # a video without audio: the run ends at its first frame, with nothing saved
    silent = emu.add_task(ce.EmuTask(11, clips["silent"], labels=[LABEL]))
    done = run(emu, platform, silent)
    assert done.status == "failed" and len(done.calls) == 1 and done.calls[0].status == 422
    assert "no audio" in done.calls[0].body["error"] and not silent.shapes
    status, answer = call(platform, {"task_id": silent.id, "wait": 30})
    assert status == 422 and "no audio" in answer["error"]


def test_backup_url_on_another_host_is_refused(emu, platform, clips):
    hits = []

    class Other(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    other = ThreadingHTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        emu.result_url_override = f"http://127.0.0.1:{other.server_port}/steal"
        task = task_a(emu, clips)
        done = run(emu, platform, task)
    finally:
        other.shutdown()
        other.server_close()
    # nothing could work: the run ends at its first frame, saying why
    assert done.status == "failed" and done.calls[0].status == 502
    assert "another host" in done.calls[0].body["error"]
    assert hits == []


# ----------------------------------------------------------------------------- accounts


def test_an_organisation_maintainer_needs_cvat_org(emu, env, clips, reference, monkeypatch):
    """A non-admin account sees the running requests of an organisation's tasks only with
    CVAT_ORG (X-Organization) and a maintainer or owner role there."""
    emu.add_user("fn", "fn-token")
    emu.add_user("worker", "worker-token")
    lab = emu.add_org("lab", emu.admin, fn="maintainer", worker="worker")
    task = task_a(emu, clips, org_id=lab.id)
    monkeypatch.setenv("CVAT_ACCESS_TOKEN", "fn-token")
    without = run(emu, Platform(), task)  # no CVAT_ORG: CVAT lists nothing to this account
    assert without.status == "failed" and without.calls[0].status == 409
    assert "CVAT_ORG" in without.calls[0].body["error"] and not task.shapes
    monkeypatch.setenv("CVAT_ORG", "lab")
    done = run(emu, Platform(), task)
    assert done.status == "finished"
    ref = reference(3, 1, 2, 9)
    for c in done.calls:
        check_answer(task, c.frame, c.body, ref[task.media_frame(c.frame)])
    assert all(h.get("X-Organization") == "lab" for h in emu.request_headers[-3:])
    # a worker of the organisation cannot see others' tasks, even with CVAT_ORG
    monkeypatch.setenv("CVAT_ACCESS_TOKEN", "worker-token")
    emu.lambda_requests.clear()
    assert run(emu, Platform(), task).calls[0].status == 409


def test_an_old_cvat_stops_the_function_at_start(emu, env, clips):
    emu.version = "2.47.2"
    with pytest.raises(Exception, match="needs CVAT 2.48.0 or newer"):
        Platform().call_handler(main.handler, nuclio_sdk.Event(body={}))
    parser = argparse.ArgumentParser(prog="auralsam2")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["cvat", "prelabel", "--url", emu.url, "--task", "7", "--quiet"])
    assert args.func(args) == 2


# ----------------------------------------------------------------------------- task level


def annotator_work(emu, task):
    """An annotator's rectangle track, an edited automatic mask, a manual polygon."""
    job = task.annotation_jobs()[0]
    manual_track = {"id": 1, "label_id": 70, "frame": 0, "group": 0, "source": "manual",
                    "attributes": [], "elements": [],
                    "shapes": [{"id": 2, "type": "rectangle", "frame": 0, "points":
                                [1.0, 1.0, 9.0, 9.0], "outside": False, "occluded": False,
                                "z_order": 0, "rotation": 0.0, "attributes": []}]}
    edited = {"id": 3, "type": "mask", "label_id": 70, "frame": 1, "points": to_cvat_points(
                  np.eye(task.height, task.width, dtype=bool)), "outside": False,
              "occluded": False, "z_order": 0, "rotation": 0.0, "group": 0,
              "source": "semi-auto", "attributes": [], "elements": []}
    polygon = {"id": 5, "type": "polygon", "label_id": 80, "frame": 1, "points":
               [0.0, 0.0, 5.0, 0.0, 5.0, 5.0], "outside": False, "occluded": False,
               "z_order": 0, "rotation": 0.0, "group": 0, "source": "manual",
               "attributes": [], "elements": []}
    emu.put_annotations(job, shapes=[edited, polygon], tracks=[manual_track])
    return json.loads(json.dumps({"tracks": [manual_track], "shapes": [edited, polygon]}))


def theirs(task):
    return {"tracks": [t for t in task.tracks if t["source"] != "auto"],
            "shapes": [s for s in task.shapes if s["source"] != "auto"]}


def test_task_call_uploads_mask_shapes_per_job_and_replaces_only_its_own(emu, platform, clips,
                                                                          reference):
    task = task_a(emu, clips, segment_size=3, overlap=1)  # jobs 0..2 and 2..4
    gt = emu.add_gt_job(task, [0, 3])
    work = annotator_work(emu, task)
    status, report = call(platform, {"task_id": task.id, "wait": 60})
    assert status == 200 and report["state"] == "done", report
    ref = reference(3, 1, 2, 9)
    check_saved(task, ref)
    assert [t["id"] for t in task.tracks] == [1]  # the annotator's only: no tracks made
    assert report["shapes_created"] == len(saved_masks(task)) and report["jobs"] == 2
    assert not gt.shapes and not gt.tracks  # the ground-truth job is never written
    first_ids = {s["id"] for s in task.shapes if s["source"] == "auto"}
    assert theirs(task) == work  # annotators' annotations untouched
    # a re-run replaces its own shapes, never duplicates them
    status, report = call(platform, {"task_id": task.id, "wait": 60})
    assert status == 200 and report["shapes_deleted"] == len(first_ids)
    check_saved(task, ref)
    assert not first_ids & {s["id"] for s in task.shapes}
    assert theirs(task) == work
    status, snap = call(platform, {"task_id": task.id, "action": "status"})
    assert status == 200 and snap["state"] == "done"
    # every job opens in CVAT's UI, the task exports (checked again by the fixture)
    emu.check_ui_and_export()


def test_polygon_tracks_option(emu, env, clips, reference, monkeypatch):
    """AURALSAM2_CVAT_UPLOAD=polygon-tracks: a polygon track per sounding stretch, cut into the
    jobs on their frames; CVAT opens and exports them (interpolation works for polygons);
    re-runs, in either form, replace the tool's own objects only."""
    monkeypatch.setenv("AURALSAM2_CVAT_UPLOAD", "polygon-tracks")
    task = task_a(emu, clips, segment_size=3, overlap=1)  # jobs 0..2 and 2..4
    work = annotator_work(emu, task)
    status, report = call(Platform(), {"task_id": task.id, "wait": 60})
    assert status == 200 and report["state"] == "done" and report["tracks_created"], report
    ref = reference(3, 1, 2, 9)
    frames = cvat_frames(task)
    sounding = [f for f in frames if expected_answer(ref[task.media_frame(f)]) is not None]
    for job in task.annotation_jobs():
        job_frames_ = task.job_frames(job)
        own = [t for t in job.tracks if t["source"] == "auto"]
        got = {}
        for t in own:
            assert t["frame"] == t["shapes"][0]["frame"]
            assert all(s["type"] == "polygon" for s in t["shapes"])
            for s in t["shapes"]:
                assert s["frame"] in job_frames_  # only the job's frames
                if s["outside"]:  # ends where the sound stops
                    assert s["frame"] not in sounding and s is t["shapes"][-1]
                else:
                    got[s["frame"]] = s
            assert [a["spec_id"] for a in t["attributes"]] == [72]  # immutable: per track
        assert set(got) == {f for f in sounding if f in job_frames_}
        for f, s in got.items():
            mask = largest_part(expected_answer(ref[task.media_frame(f)]))
            assert iou(raster(s["points"], task.width, task.height), mask) > 0.5, f
            assert [a["spec_id"] for a in s["attributes"]] == [71]
    emu.check_ui_and_export()  # polygon tracks open and export
    assert theirs(task) == work
    # again as polygon tracks: replaced; then as masks: the tracks go, masks come
    n = report["tracks_created"]
    status, report = call(Platform(), {"task_id": task.id, "wait": 60})
    assert report["tracks_deleted"] == n and report["tracks_created"] == n
    monkeypatch.setenv("AURALSAM2_CVAT_UPLOAD", "shapes")
    status, report = call(Platform(), {"task_id": task.id, "wait": 60})
    assert report["tracks_deleted"] == n and report["tracks_created"] == 0
    assert [t["id"] for t in task.tracks] == [1]
    check_saved(task, ref)
    assert theirs(task) == work


def test_cvat_failing_mid_upload_is_retried_or_reported(emu, platform, clips, reference):
    task = task_a(emu, clips)
    ref = reference(3, 1, 2, 9)
    # CVAT applies the create but the answer is lost: the upload is redone from a fresh read
    emu.fail("PATCH", r"/annotations", status=500, times=1, after=True)
    status, report = call(platform, {"task_id": task.id, "wait": 60})
    assert status == 200 and report["state"] == "done", report
    assert len(emu.calls("PATCH", "action=create")) == 2
    check_saved(task, ref)
    # CVAT down for longer than the retries: reported, with CVAT's status
    emu.fail("PATCH", r"/annotations", status=503, times=100)
    status, report = call(platform, {"task_id": task.id, "wait": 60})
    assert status == 502 and report["state"] == "failed" and "503" in report["error"]
    emu.failures.clear()
    status, report = call(platform, {"task_id": task.id, "wait": 60})
    assert status == 200
    check_saved(task, ref)  # no duplicates after recovery


def test_webhook_prelabels_a_new_task_once(emu, platform, clips, reference):
    status, body = call(platform, {"event": "ping", "webhook_id": 1})
    assert status == 200 and body["ok"]
    status, body = call(platform, {"event": "update:job", "job": {"id": 3}})
    assert status == 200 and "ignored" in body
    task = task_a(emu, clips)
    payload = {"event": "create:task", "webhook_id": 1, "task": {"id": task.id,
                                                                 "url": "http://evil/"}}
    status, body = call(platform, payload)
    assert status == 202 and body["task_id"] == task.id and body["started"]
    status, report = call(platform, {"task_id": task.id, "action": "status", "wait": 60})
    assert status == 200 and report["state"] == "done", report
    check_saved(task, reference(3, 1, 2, 9))
    n = len(task.shapes)
    status, body = call(platform, {**payload, "event": "update:task"})
    assert status == 200 and "already" in body["ignored"]
    assert len(task.shapes) == n
    assert all(urlpath.startswith("/api/") for _, urlpath in emu.log)


def test_webhooks_pass_cvats_ssrf_proxy_only_when_allowed_and_are_signed(
        emu, env, clips, reference, monkeypatch):
    """CVAT sends webhooks through smokescreen, which refuses private and loopback addresses
    unless SMOKESCREEN_OPTS allows them; with a secret, the function checks X-Signature-256
    (over the body nuclio decoded) and refuses anything unsigned."""
    pytest.importorskip("requests")  # what CVAT sends webhooks with
    monkeypatch.setenv("AURALSAM2_CVAT_WEBHOOK_SECRET", SECRET)
    platform = Platform()
    trigger = ce.NuclioHttpTrigger(lambda event: platform.call_handler(main.handler, event))
    try:
        lab = emu.add_org("lab", emu.admin)
        hook = emu.add_webhook(trigger.url, secret=SECRET, org=lab)
        first = ce.EmuTask(61, clips[3], start=1, step=2, labels=[LABEL], org_id=lab.id)
        [refused] = emu.create_task(first)
        assert refused["status_code"] == 407 and not trigger.events  # never reached
        emu.smokescreen_opts = "--unsafe-allow-private-ranges"  # loopback stays refused
        assert emu.send_webhook(hook, {"event": "ping"})["status_code"] == 407
        emu.smokescreen_opts = "--allow-address=127.0.0.1"
        task = ce.EmuTask(62, clips[3], start=1, step=2, deleted=[2], labels=[LABEL],
                          org_id=lab.id)
        [delivered] = emu.create_task(task)
        assert delivered["status_code"] == 202, delivered
        assert isinstance(trigger.events[-1].body, dict)  # nuclio decoded the JSON body
        status, report = call(platform, *signed({"task_id": task.id, "action": "status",
                                                 "wait": 60}))
        assert status == 200 and report["state"] == "done", report
        check_saved(task, reference(3, 1, 2, 9))
        # a wrong secret, or none: 401, nothing started
        hook["secret"] = "not-the-secret"
        third = ce.EmuTask(63, clips[4], labels=[LABEL], org_id=lab.id)
        [forged] = emu.create_task(third)
        assert forged["status_code"] == 401 and "does not match" in forged["response"]
        status, answer = call(platform, {"task_id": third.id})
        assert status == 401 and "X-Signature-256" in answer["error"]
        assert not third.shapes
    finally:
        trigger.close()


def signed(body: dict) -> tuple:
    raw = json.dumps(body).encode()
    return body, {"X-Signature-256": "sha256=" + hmac.new(SECRET.encode(), raw,
                                                          hashlib.sha256).hexdigest()}


# ----------------------------------------------------------------------------- command


def test_cli_register_and_prelabel(emu, env, clips, reference, capsys):
    parser = argparse.ArgumentParser(prog="auralsam2")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    task = task_a(emu, clips)
    args = parser.parse_args(["cvat", "prelabel", "--url", emu.url, "--task", str(task.id),
                              "--quiet"])
    assert args.command == "cvat" and args.cvat_command == "prelabel" and args.task == [7]
    assert args.func(args) == 0
    out = capsys.readouterr()
    report = json.loads(out.out.strip().splitlines()[-1])
    assert report["state"] == "done" and report["shapes_created"] == len(task.shapes)
    check_saved(task, reference(3, 1, 2, 9))
    assert TOKEN not in out.out + out.err
    with pytest.raises(SystemExit):
        parser.parse_args(["cvat", "prelabel", "--url", emu.url])  # --task is required


def test_cli_prelabel_through_the_shared_service(emu, env, clips, reference, capsys, model,
                                                 monkeypatch, tmp_path):
    """AURALSAM2_SERVER_URL set: the function loads no model, the service runs the video, and
    the masks are those of the in-process run."""
    from helpers import service_env as se

    with se.ServiceThread(tmp_path / "service", [tmp_path / "cache"], model=model) as srv:
        for k, v in srv.env().items():
            monkeypatch.setenv(k, v)
        model_spec.load_model.cache_clear()
        parser = argparse.ArgumentParser(prog="auralsam2")
        register(parser.add_subparsers(dest="command", required=True))
        task = task_a(emu, clips)
        args = parser.parse_args(["cvat", "prelabel", "--url", emu.url, "--task",
                                  str(task.id), "--quiet"])
        assert args.func(args) == 0
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert report["state"] == "done"
        check_saved(task, reference(3, 1, 2, 9))
        assert model_spec.load_model.cache_info().currsize == 0  # no model here
        assert srv.service.counters["done"] == 1
