"""The one engine interface (auralsam2_core.serving.engines): the local model loaded once on first
use and shared in turns, the one results loop with its streaming callback, and the shared service
behind the same calls, refinements (``clip_origin``) included."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytest.importorskip("uvicorn")

from auralsam2_core.inference.engine import PrelabelOptions  # noqa: E402
from auralsam2_core.inference.results import (  # noqa: E402
    ResultsWriter,
    frame_records,
    frame_results,
    read_results,
    track,
)
from auralsam2_core.modeling.model import PointPrompt  # noqa: E402
from auralsam2_core.serving.engines import (  # noqa: E402
    LocalEngine,
    ModelTurns,
    engine_from_env,
    start_worker,
)
from auralsam2_core.training.synthetic import make_clip, write_clip  # noqa: E402

from helpers import service_env as se  # noqa: E402


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine-media")
    return write_clip(make_clip(21, size=(64, 80), fps=10, seconds=1.6), root / "c.mp4")


def test_the_local_model_loads_once_on_first_use_from_any_thread(bundled_model):
    calls, seen = [], []

    def load():
        calls.append(1)
        time.sleep(0.2)  # a second thread arrives while the first one builds
        return bundled_model

    engine = LocalEngine(load=load, on_load=seen.append)
    assert not engine.loaded and calls == []
    threads = [threading.Thread(target=lambda: engine.model) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and seen == [bundled_model] and engine.loaded
    assert engine.meta == bundled_model.meta
    lazy = engine_from_env(lambda: calls.append(2) or bundled_model, env={}, lazy=True)
    assert isinstance(lazy, LocalEngine) and not lazy.loaded and calls == [1]
    with pytest.raises(TypeError):
        LocalEngine()


def test_turns_time_out_and_go_to_the_longest_waiting():
    turns = ModelTurns()
    assert turns.acquire()
    assert turns.acquire(timeout=0.05) is False  # busy: gives up, leaves the line
    order = []

    def waiter(name):
        with turns:
            order.append(name)

    a = threading.Thread(target=waiter, args=("a",))
    a.start()
    time.sleep(0.1)
    b = threading.Thread(target=waiter, args=("b",))
    b.start()
    time.sleep(0.1)
    turns.pass_turn()  # a and b (waiting already) go first, in order, then us again
    turns.release()
    a.join(5)
    b.join(5)
    assert order == ["a", "b"]
    assert turns.acquire(timeout=0)  # free again: the timed-out ticket left no trace
    turns.release()


def test_one_results_loop_streams_each_record_as_written(bundled_model, clip, tmp_path):
    writer = ResultsWriter(tmp_path / "out" / "deeper", "c")
    assert not (tmp_path / "out").exists()  # naming a results file creates nothing
    streamed, partial_lines = [], []

    def on_record(rec):
        streamed.append(rec)
        writer._fh.flush()
        partial_lines.append(len(writer.partial.read_text().splitlines()))

    doc = LocalEngine(bundled_model).to_results(clip, writer, PrelabelOptions(stride=2),
                                                on_record=on_record)
    assert streamed == track(doc)["frames"] == list(frame_records(doc))
    assert partial_lines == list(range(1, len(streamed) + 1))  # each one as it was written
    assert read_results(writer.final) == doc and not writer.partial.exists()
    rebuilt = list(frame_results(doc))
    assert [r.index for r in rebuilt] == [f["index"] for f in streamed]
    assert all(r.mask.shape == (64, 80) for r in rebuilt)


def test_the_service_through_the_same_calls(bundled_model, clip, tmp_path):
    """RemoteEngine.to_results stores the service's document byte for byte as the local loop
    would, streams the same records, and a refinement (prompt + clip_origin) equals the local
    one."""
    media = clip.parent
    local = LocalEngine(bundled_model)
    box = {7: PointPrompt.box(40, 30, 80, 64)}
    refine = PrelabelOptions(start_frame=7, stop_frame=13, clip_origin=0)
    unaligned = PrelabelOptions(start_frame=7, stop_frame=13)
    with se.ServiceThread(tmp_path / "state", [media], model=bundled_model) as srv:
        remote = srv.engine()
        streamed = []
        writer = ResultsWriter(tmp_path / "remote", "c")
        doc = remote.to_results(clip, writer, PrelabelOptions(stride=2),
                                on_record=streamed.append)
        [job] = srv.service.jobs.values()
        assert writer.final.read_bytes() == \
            (srv.settings.state_dir / "results" / f"{job.id}.json").read_bytes()
        want = local.document(clip, PrelabelOptions(stride=2))
        assert streamed == track(want)["frames"] == track(doc)["frames"]
        got = remote.document(clip, refine, prompts=box)
        job = max(srv.service.jobs.values(), key=lambda j: j.created)
        assert job.options["clip_origin"] == 0  # sent, and kept in the job file
        assert "clip_origin" not in next(j for j in srv.service.jobs.values()
                                         if j.prompts == {}).options
    mine = local.document(clip, refine, prompts=box)
    assert track(got)["frames"] == track(mine)["frames"]
    assert [f["index"] for f in track(got)["frames"]] == list(range(7, 13))
    # The alignment matters: without it the fuser's clips start at frame 7 and masks differ.
    other = local.document(clip, unaligned, prompts=box)
    assert any(not np.array_equal(a.mask, b.mask) or a.sounding_prob != b.sounding_prob
               for a, b in zip(frame_results(other), frame_results(mine), strict=True))


def test_the_worker_thread_runs_queued_items_in_order_and_waits_for_more():
    cv, queue, done = threading.Condition(), [], []
    finished = threading.Event()

    def run(item):
        done.append((item, threading.current_thread().name))
        if len(done) == 3:
            finished.set()

    with cv:
        queue += ["a", "b"]
    start_worker("test-worker", cv, lambda: queue.pop(0) if queue else None, run)
    time.sleep(0.2)  # drains the queue, then waits on cv
    with cv:
        queue.append("c")
        cv.notify()
    assert finished.wait(5)
    assert done == [("a", "test-worker"), ("b", "test-worker"), ("c", "test-worker")]
