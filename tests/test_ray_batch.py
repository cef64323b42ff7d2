"""``auralsam2 batch`` locally and on a local 2-CPU Ray cluster, and the Ray Serve deployment.

The Ray runs must write the very results the local run writes (one model actor per CPU, each
writing into the shared results folder), resume, and isolate a broken file.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from auralsam2_core.cli import main
from auralsam2_core.inference.results import read_results
from auralsam2_core.inference.results import track as sounding_track
from auralsam2_core.model_spec import ModelSpec, load_model
from auralsam2_core.training.synthetic import make_clip, write_clip
from auralsam2_service.batch import BatchItem, ManifestError, read_manifest, run_batch

from helpers import media_factory as mf

ray = pytest.importorskip("ray", reason="ray is not installed (scripts/setup.d/50-ray.sh)")

# Ray's own deprecation warnings (Serve's pydantic models, Ray Data's context defaults).
pytestmark = [
    pytest.mark.filterwarnings("ignore:Using extra keyword arguments:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context"),
]
TOKEN = "test-token-ray"
CLIPS = ("clip0", "clip1", "clip2")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ray_media")
    for seed, name in enumerate(CLIPS):
        write_clip(make_clip(seed, size=(48, 64), fps=5, seconds=1.0), d / "videos" / f"{name}.mp4")
    (d / "videos" / "broken.mp4").write_bytes(b"this is not a video\n" * 50)
    (d / "manifest.txt").write_text("# three clips and a broken file\n\nvideos/clip0.mp4\n"
                                    "videos/broken.mp4\nvideos/clip1.mp4\n"
                                    f"{d / 'videos' / 'clip2.mp4'}\n")
    return d


@pytest.fixture(scope="module")
def cluster(media):
    """A local Ray cluster with 2 CPUs; the service settings are in its workers' environment."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AURALSAM2_SERVER_TOKEN", TOKEN)
        mp.setenv("AURALSAM2_SERVER_MEDIA_ROOTS", str(media))
        mp.setenv("AURALSAM2_SERVER_STATE", str(media / "serve_state"))
        mp.delenv("RAY_ADDRESS", raising=False)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def local_run(media):
    items = read_manifest(media / "manifest.txt")
    out = media / "local"
    report = run_batch(items, out, ray=False, num_workers=None, served=ModelSpec(),
                       progress=False)
    return out, report


def _comparable(path: Path) -> dict:
    doc = read_results(path)
    doc.pop("created")
    doc["summary"].pop("seconds")
    return doc


def test_read_manifest_text_and_jsonl(media, tmp_path):
    items = read_manifest(media / "manifest.txt")
    assert [i.name for i in items] == [None] * 4  # named when the batch runs (plan_outputs)
    assert all(i.video.is_absolute() and i.video.is_file() for i in items)

    jl = media / "named.jsonl"
    jl.write_text('{"video": "videos/clip0.mp4", "name": "first"}\n# comment\n'
                  '{"video": "videos/clip1.mp4"}\n')
    assert read_manifest(jl) == [BatchItem((media / "videos/clip0.mp4").resolve(), "first"),
                                 BatchItem((media / "videos/clip1.mp4").resolve())]

    def error(text: str, suffix: str = ".txt") -> str:
        m = media / f"bad{suffix}"
        m.write_text(text)
        with pytest.raises(ManifestError) as e:
            read_manifest(m)
        return str(e.value)

    msg = error("videos/clip0.mp4\nvideos/nope.mp4\nvideos/other.mp4\n")
    assert "line 2: videos/nope.mp4: video not found" in msg and "line 3: videos/other.mp4" in msg
    assert "repeats line 1" in error("videos/clip0.mp4\n./videos/../videos/clip0.mp4\n")
    assert "lists no videos" in error("# nothing\n\n")
    assert "line 1" in error("{not json\n", ".jsonl")
    assert "plain file name" in error('{"video": "videos/clip0.mp4", "name": "../x"}\n',
                                      ".jsonl")
    assert "at most 200 bytes" in error('{"video": "videos/clip0.mp4", "name": "%s"}\n'
                                        % ("n" * 201), ".jsonl")
    assert "unknown keys" in error('{"video": "videos/clip0.mp4", "frames": 3}\n', ".jsonl")
    assert "same results" in error('{"video": "videos/clip0.mp4", "name": "a"}\n'
                                   '{"video": "videos/clip1.mp4", "name": "a"}\n', ".jsonl")
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "missing.txt")


def test_local_batch_reports_the_broken_file_and_finishes_the_others(local_run, media):
    out, report = local_run
    assert [o.video.name for o in report.done] == ["clip0.mp4", "clip1.mp4", "clip2.mp4"]
    [bad] = report.failed
    assert bad.video.name == "broken.mp4" and "not a readable media file" in bad.error
    assert sorted(p.name for p in out.iterdir()) == [f"{c}.json" for c in CLIPS]


def test_local_batch_reuses_only_up_to_date_results_and_keeps_other_videos(media, tmp_path):
    """Issue #13: ``batch`` reused results by name (another day's cam.mp4, another stride)."""
    for day in ("day1", "day2"):
        (tmp_path / day).mkdir()
    (tmp_path / "day1" / "cam.mp4").write_bytes((media / "videos" / "clip0.mp4").read_bytes())
    (tmp_path / "day2" / "cam.mp4").write_bytes((media / "videos" / "clip1.mp4").read_bytes())
    out = tmp_path / "out"

    def batch(*videos, **options):
        from auralsam2_core.inference.engine import PrelabelOptions

        report = run_batch([tmp_path / v for v in videos], out, PrelabelOptions(**options),
                           served=ModelSpec(), progress=False)
        return report.done + report.skipped + report.failed

    [day1] = batch("day1/cam.mp4")
    assert (day1.status, day1.results) == ("done", out / "cam.json")
    kept = day1.results.read_bytes()
    [day2] = batch("day2/cam.mp4")
    assert day2.status == "done" and day2.results.name.startswith("cam-")
    assert day1.results.read_bytes() == kept
    assert read_results(day2.results)["video"]["path"] == str(tmp_path / "day2" / "cam.mp4")
    again = batch("day2/cam.mp4", "day1/cam.mp4")
    assert [(o.status, o.results) for o in again] == [("skipped", day2.results),
                                                      ("skipped", day1.results)]
    strided = batch("day1/cam.mp4", "day2/cam.mp4", stride=2)
    assert [(o.status, o.note) for o in strided] == [
        ("done", "redone: options changed: stride 1 -> 2")] * 2
    cam = sounding_track(read_results(out / "cam.json"))
    assert [f["index"] for f in cam["frames"]] == [0, 2, 4]
    kept = (out / "cam.json").read_bytes()
    named = tmp_path / "named.jsonl"  # a name given in the manifest is not moved elsewhere
    named.write_text('{"video": "day2/cam.mp4", "name": "cam"}\n')
    report = run_batch(read_manifest(named), out, served=ModelSpec(), progress=False)
    [o] = report.failed
    assert o.error == (f"{out / 'cam.json'} holds the results of {tmp_path / 'day1' / 'cam.mp4'}"
                       "; not overwriting it, give this video another name")
    assert (out / "cam.json").read_bytes() == kept


def test_batch_command_takes_an_audio_track(media, tmp_path, capsys):
    mf.make_two_track_video(tmp_path / "two.mkv", frames=3, default=1)
    manifest = tmp_path / "m.txt"
    manifest.write_text("two.mkv\n")
    out = tmp_path / "out"
    assert main(["batch", str(manifest), "--out", str(out), "--quiet"]) == 0
    assert read_results(out / "two.json")["video"]["audio"]["track"] == 1  # the default
    assert main(["batch", str(manifest), "--out", str(out), "--quiet",
                 "--audio-track", "0"]) == 0
    assert "redone: options changed: audio track 1 -> 0" in capsys.readouterr().out
    assert read_results(out / "two.json")["video"]["audio"]["track"] == 0
    assert main(["batch", str(manifest), "--out", str(out), "--quiet",
                 "--audio-track", "2"]) == 1
    assert "has no audio track 2; it has 2 audio tracks" in capsys.readouterr().out


def test_ray_batch_writes_the_same_results_as_the_local_run(cluster, local_run, media):
    local_out, _ = local_run
    out = media / "ray_out"
    report = run_batch(read_manifest(media / "manifest.txt"), out, ray=True, num_workers=2,
                       served=ModelSpec(), progress=False)
    assert report.backend == "ray" and report.workers == 2
    assert [o.video.name for o in report.done] == ["clip0.mp4", "clip1.mp4", "clip2.mp4"]
    assert [o.results for o in report.done] == [out / f"{c}.json" for c in CLIPS]
    [bad] = report.failed
    assert bad.video.name == "broken.mp4" and "not a readable media file" in bad.error
    assert sorted(p.name for p in out.iterdir()) == [f"{c}.json" for c in CLIPS]  # no partials
    for c in CLIPS:
        ray_doc, local_doc = _comparable(out / f"{c}.json"), _comparable(local_out / f"{c}.json")
        assert len(sounding_track(ray_doc)["frames"]) == 5
        assert ray_doc == local_doc  # same frames, RLE masks, probabilities, intervals


def test_ray_batch_resumes_and_skips_complete_videos(cluster, local_run, media):
    local_out, _ = local_run
    out = media / "resume_out"
    out.mkdir()
    for c in ("clip0", "clip2"):  # finished earlier
        (out / f"{c}.json").write_bytes((local_out / f"{c}.json").read_bytes())
    (out / "clip1.partial.jsonl").write_text('{"index": 0}\n')  # a killed run's leftovers
    before = {c: (out / f"{c}.json").stat().st_mtime_ns for c in ("clip0", "clip2")}
    report = run_batch(read_manifest(media / "manifest.txt"), out, ray=True, num_workers=2,
                       served=ModelSpec(), progress=False)
    assert [o.video.name for o in report.skipped] == ["clip0.mp4", "clip2.mp4"]
    assert {o.note for o in report.skipped} == {"same video, options and model"}
    assert [o.video.name for o in report.done] == ["clip1.mp4"]
    assert [o.video.name for o in report.failed] == ["broken.mp4"]
    assert {c: (out / f"{c}.json").stat().st_mtime_ns for c in before} == before
    assert not (out / "clip1.partial.jsonl").exists()
    assert _comparable(out / "clip1.json") == _comparable(local_out / "clip1.json")


def test_a_video_that_kills_its_ray_worker_is_reported_and_the_others_finish(
        cluster, media, monkeypatch):
    import auralsam2_service.batch as batch

    class Crashing(batch._Prelabeller):  # a local class: Ray ships it by value
        def __call__(self, rows):
            if "crash" in str(rows["name"][0]):
                import os

                os._exit(1)  # what an out-of-memory kill or a segfault looks like to Ray
            return super().__call__(rows)

    monkeypatch.setattr(batch, "_Prelabeller", Crashing)
    videos = media / "videos"
    (videos / "crash.mp4").write_bytes((videos / "clip1.mp4").read_bytes())
    out = media / "crash_out"
    report = run_batch([videos / "clip0.mp4", videos / "crash.mp4", videos / "clip2.mp4"], out,
                       ray=True, num_workers=2, served=ModelSpec(), progress=False)
    assert [o.video.name for o in report.done] == ["clip0.mp4", "clip2.mp4"]
    [bad] = report.failed
    assert bad.video.name == "crash.mp4" and "worker died" in bad.error
    assert sorted(p.name for p in out.iterdir()) == ["clip0.json", "clip2.json"]


def test_batch_command_on_ray(cluster, local_run, media, capsys):
    local_out, _ = local_run
    out, report_path = media / "cli_out", media / "cli_report.json"
    rc = main(["batch", str(media / "manifest.txt"), "--out", str(out), "--ray",
               "--workers", "2", "--quiet", "--report", str(report_path)])
    assert rc == 1  # the broken file failed; the others are done
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[0] for line in lines) == ["done", "done", "done", "failed"]
    report = json.loads(report_path.read_text())
    assert report["backend"] == "ray" and report["workers"] == 2
    assert [Path(r["video"]).name for r in report["failed"]] == ["broken.mp4"]
    assert _comparable(out / "clip2.json") == _comparable(local_out / "clip2.json")

    (media / "good.txt").write_text("videos/clip0.mp4\nvideos/clip2.mp4\n")
    assert main(["batch", str(media / "good.txt"), "--out", str(out), "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["skipped", "skipped"]
    assert all(line.endswith("(same video, options and model)") for line in lines)
    assert main(["batch", str(media / "missing.txt"), "--out", str(out)]) == 2


def test_shared_state_replicas_answer_for_each_other(media, tmp_path):
    """Two replicas' services on one state volume: either answers for a job the other ran."""
    from auralsam2_service.config import ServiceSettings
    from auralsam2_service.job_service import Refused
    from auralsam2_service.ray_serve import SharedStateService

    model = load_model(ModelSpec())
    root = tmp_path / "state"

    def replica(rank: int) -> SharedStateService:
        settings = ServiceSettings(token=TOKEN, media_roots=(media.resolve(),),
                                   state_dir=root / f"replica-{rank}")
        return SharedStateService(settings, ModelSpec(), root=root, model=model,
                                  start_worker=False)

    a, b = replica(0), replica(1)
    job = a.submit(str(media / "videos" / "clip0.mp4"))
    with pytest.raises(Refused) as e:
        b.results(job.id)
    assert e.value.status == 409  # queued on replica 0, seen from replica 1
    a.run_job(job)
    assert b.get(job.id).status == "done" and job.id not in b.jobs
    assert b.results(job.id) == a.results(job.id)
    for bad in ("0123456789abcdef", "..", "*"):
        with pytest.raises(Refused) as e:
            b.get(bad)
        assert e.value.status == 404


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(base: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(base + path, data=json.dumps(body).encode() if body else None,
                                 headers={"Authorization": f"Bearer {TOKEN}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_ray_serve_deployment_runs_jobs_over_http(cluster, local_run, media):
    from ray import serve

    from auralsam2_service.ray_serve import build_app

    local_out, _ = local_run
    port = _free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"replicas": "2", "num_cpus": "1"}), route_prefix="/",
                  blocking=False)
    except Exception as e:  # noqa: BLE001 - an environment that cannot run Serve
        pytest.skip(f"Ray Serve cannot start here: {type(e).__name__}: {e}")
    try:
        base = f"http://127.0.0.1:{port}"
        status, health = _call(base, "/health")
        assert status == 200 and health["model_loaded"] is True
        assert _call(base, "/v1/jobs", {"video": "/etc/hostname"})[0] == 403  # outside roots
        jobs = {}
        for c in CLIPS:
            status, job = _call(base, "/v1/jobs", {"video": str(media / "videos" / f"{c}.mp4")})
            assert status == 202
            jobs[c] = job["id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = [_call(base, f"/v1/jobs/{j}")[1]["status"] for j in jobs.values()]
            if all(s in ("done", "failed") for s in states):
                break
            time.sleep(0.5)
        assert states == ["done"] * 3
        for c, j in jobs.items():
            for _ in range(3):  # whichever replica answers
                status, doc = _call(base, f"/v1/jobs/{j}/results")
                assert status == 200
                doc.pop("created")
                doc["summary"].pop("seconds")
                doc["video"].pop("path")
                want = _comparable(local_out / f"{c}.json")
                want["video"].pop("path")
                assert doc == want
        replicas = sorted(p.name for p in (media / "serve_state").iterdir())
        assert replicas == ["replica-0", "replica-1"]
    finally:
        serve.shutdown()
