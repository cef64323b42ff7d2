"""Queries (Ref-AVS classes, #15) through the shared model service over HTTP and the batch
runner: the job options carry the queries, the results are format version 2 with one object
per query, in the queries' order, equal to the engine's own results for the same queries."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from auralsam2_core.inference.engine import PrelabelOptions
from auralsam2_core.inference.prelabel_videos import prelabel_to_results
from auralsam2_core.inference.results import FORMAT_VERSION, ResultsWriter, objects, read_results
from auralsam2_core.model_spec import ModelSpec
from auralsam2_core.training.synthetic import make_clip, write_clip

from helpers import service_env as se

QUERIES = ["dog", "the red disc"]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("refavs_service")
    return {"root": root, "clip": write_clip(make_clip(3, size=(48, 64), fps=5, seconds=1.2,
                                                       colours="named"), root / "clip.mp4")}


@pytest.fixture(scope="module")
def local(tiny_refavs_model, media, tmp_path_factory):
    """The engine's own results document for the queries."""
    return prelabel_to_results(tiny_refavs_model, media["clip"],
                               ResultsWriter(tmp_path_factory.mktemp("local"), "clip"),
                               PrelabelOptions(queries=QUERIES))


def check_v2(doc, local):
    assert doc["format_version"] == FORMAT_VERSION == 2 and doc["status"] == "complete"
    assert [(o["label"], o["query"]) for o in objects(doc)] == [(q, q) for q in QUERIES]
    assert doc["model"]["queries"] == QUERIES and doc["summary"]["objects"] == 2
    assert [o["frames"] for o in objects(doc)] == [o["frames"] for o in objects(local)]
    assert all(len(o["frames"]) == 6 for o in objects(doc))


def test_service_job_with_queries_over_http(tmp_path, media, tiny_refavs_model, local):
    auth = {"Authorization": f"Bearer {se.TOKEN}"}
    with se.ServiceThread(tmp_path / "state", [media["root"]], model=tiny_refavs_model) as srv:
        r = httpx.post(f"{srv.url}/v1/jobs", headers=auth,
                       json={"video": str(media["clip"]), "options": {"queries": QUERIES}})
        assert r.status_code == 202, r.text
        job = r.json()["id"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = httpx.get(f"{srv.url}/v1/jobs/{job}", headers=auth).json()
            if status["status"] in ("done", "failed"):
                break
            time.sleep(0.1)
        assert status["status"] == "done", status
        doc = httpx.get(f"{srv.url}/v1/jobs/{job}/results", headers=auth).json()
        check_v2(doc, local)
        # the adapters' way: RemoteEngine with the same options
        remote = srv.engine().document(media["clip"], PrelabelOptions(queries=QUERIES))
        check_v2(remote, local)
        # a query too long for the model's text encoder: 400 naming the field, no job
        r = httpx.post(f"{srv.url}/v1/jobs", headers=auth,
                       json={"video": str(media["clip"]), "options": {"queries": ["x" * 300]}})
        assert r.status_code == 400 and r.json()["field"] == "options.queries"


def test_batch_with_queries_writes_results_v2(tmp_path, media, tiny_refavs_model, local,
                                              monkeypatch):
    from auralsam2_service import batch

    monkeypatch.setattr(batch, "load_model", lambda spec: tiny_refavs_model)
    report = batch.run_batch([media["clip"]], tmp_path / "out",
                             PrelabelOptions(queries=QUERIES),
                             served=ModelSpec(variant="refavs"), progress=False)
    assert len(report.done) == 1 and not report.failed, report.as_dict()
    path = report.done[0].results
    raw = json.loads(path.read_text())
    assert raw["format_version"] == 2 and "frames" not in raw  # written as version 2
    check_v2(read_results(path), local)
    # the same queries again: reused; other queries: redone
    again = batch.run_batch([media["clip"]], tmp_path / "out", PrelabelOptions(queries=QUERIES),
                            served=ModelSpec(variant="refavs"), progress=False)
    assert len(again.skipped) == 1
    other = batch.run_batch([media["clip"]], tmp_path / "out", PrelabelOptions(queries=["cat"]),
                            served=ModelSpec(variant="refavs"), progress=False)
    assert len(other.done) == 1
    assert [o["query"] for o in objects(read_results(other.done[0].results))] == ["cat"]
