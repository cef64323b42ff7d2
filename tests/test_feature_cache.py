"""The refinement cache (feature_cache.py): a click re-runs only SAM2's tracking on features
the first pass kept, with the same results as computing them again, within a byte bound."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from auralsam2_core.inference import engine
from auralsam2_core.inference.engine import PrelabelOptions, prelabel
from auralsam2_core.inference.feature_cache import FeatureCache, nbytes
from auralsam2_core.modeling.model import PointPrompt

from helpers import media_factory as mf

pytestmark = pytest.mark.skipif(mf.FFMPEG is None, reason="needs the ffmpeg command")

T = 3  # clip length
BOX = PointPrompt.box(8, 6, 40, 30)  # display pixels of the 64 x 48 video


@pytest.fixture(scope="module")
def model(tiny_fused_model):
    return tiny_fused_model  # fusion residuals on: the fuser's output matters


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return mf.make_video(tmp_path_factory.mktemp("cache") / "v.mp4", frames=11, fps=10,
                         channels=(mf.tone(440),))


@pytest.fixture
def calls(monkeypatch, model):
    """How often the engine runs the image encoder and decodes frames."""
    return count_calls(monkeypatch, model)


def count_calls(monkeypatch, model) -> dict:
    n = {"encode": 0, "decode": 0}
    encode, frames = type(model).encode_images, engine.iter_frames

    def counted_encode(self, x):
        n["encode"] += x.shape[0]
        return encode(self, x)

    def counted_frames(*a, **k):
        for f in frames(*a, **k):
            n["decode"] += 1
            yield f

    monkeypatch.setattr(type(model), "encode_images", counted_encode)
    monkeypatch.setattr(engine, "iter_frames", counted_frames)
    return n


def fields(results):
    return [(r.index, r.time, r.mask.tobytes(), r.sounding_prob, r.predicted_iou, r.mask_score,
             r.review_priority) for r in results]


def refine(model, video, frame, stop, cache=None, prompt=BOX):
    opts = PrelabelOptions(clip_len=T, start_frame=frame, stop_frame=stop, clip_origin=0)
    return list(prelabel(model, video, opts, prompts={frame: prompt}, cache=cache))


def test_refinement_from_the_cache_equals_recomputing(model, video, calls):
    plain = list(prelabel(model, video, PrelabelOptions(clip_len=T)))
    cache = FeatureCache.from_mb(64)
    first = list(prelabel(model, video, PrelabelOptions(clip_len=T), cache=cache))
    assert fields(first) == fields(plain)  # filling the cache changes nothing
    assert len(cache) == 4  # clips 0-2, 3-5, 6-8 and the last one, 9-10
    # A box on frame 4 (mid-clip), re-propagated to frame 8: without a cache ...
    calls.update(encode=0, decode=0)
    fresh = refine(model, video, 4, 8)
    assert [r.index for r in fresh] == [4, 5, 6, 7]
    assert calls == {"encode": 6, "decode": 6}  # clips 3-5 and 6-8, whole
    # ... and from it: bit for bit the same, without decoding or encoding anything.
    calls.update(encode=0, decode=0)
    hit = refine(model, video, 4, 8, cache)
    assert fields(hit) == fields(fresh)
    assert calls == {"encode": 0, "decode": 0}
    assert cache.stats()["hits"] >= 2
    # The refinement did change the labels (the box is a prompt the first pass did not have).
    assert [(r.sounding_prob, r.predicted_iou) for r in hit] != [
        (r.sounding_prob, r.predicted_iou) for r in first[4:8]]
    # To the end of the video, through its short last clip.
    assert fields(refine(model, video, 7, None, cache)) == fields(refine(model, video, 7, None))


def test_refavs_queries_are_kept_per_query_and_a_click_reuses_them(tiny_refavs_model, video,
                                                                   monkeypatch):
    """Ref-AVS: the first pass with two queries keeps each query's clips (the image encoder
    ran once per clip for both); a click refining one query on the whole video's clips takes
    that query's features from the cache (nothing decoded or encoded) and equals recomputing
    them; the other query's features are not used for it."""
    m = tiny_refavs_model
    n = count_calls(monkeypatch, m)
    both = ("the disc", "a square")
    plain = list(prelabel(m, video, PrelabelOptions(clip_len=T, queries=both)))
    cache = FeatureCache.from_mb(64)
    n.update(encode=0, decode=0)
    first = list(prelabel(m, video, PrelabelOptions(clip_len=T, queries=both), cache=cache))
    assert fields(first) == fields(plain) and [r.query for r in first[:2]] == list(both)
    assert n == {"encode": 11, "decode": 11}  # one encoder pass per frame for both queries
    assert len(cache) == 2 * 4  # 4 clips x 2 queries

    def click(c=None):
        opts = PrelabelOptions(clip_len=T, queries=("a square",), start_frame=4, stop_frame=8,
                               clip_origin=0)
        return list(prelabel(m, video, opts, prompts={4: BOX}, cache=c))

    fresh = click()
    n.update(encode=0, decode=0)
    hits = cache.stats()["hits"]
    texts = []
    encode_text = type(m).encode_text
    monkeypatch.setattr(type(m), "encode_text", lambda self, q: texts.append(q) or
                        encode_text(self, q))
    hit = click(cache)
    assert fields(hit) == fields(fresh) and [r.index for r in hit] == [4, 5, 6, 7]
    assert n == {"encode": 0, "decode": 0} and cache.stats()["hits"] == hits + 2
    assert texts == []  # the cache's prompts already hold the text: none is encoded
    click()
    assert texts == ["a square"]  # computed: encoded once for the whole run
    assert {r.query for r in hit} == {"a square"}
    assert [r.sounding_prob for r in hit] != [r.sounding_prob for r in first[9:17:2]]


def test_origin_on_a_clip_boundary_is_a_run_from_there(model, video):
    """The fuser's clips from clip_origin 0 starting at frame 6 are those of a run from 6."""
    aligned = PrelabelOptions(clip_len=T, start_frame=6, stop_frame=9, clip_origin=0)
    assert fields(prelabel(model, video, aligned, prompts={6: BOX})) == fields(
        prelabel(model, video, PrelabelOptions(clip_len=T, start_frame=6, stop_frame=9),
                 prompts={6: BOX}))
    with pytest.raises(ValueError, match="clip_origin"):
        PrelabelOptions(start_frame=2, clip_origin=3)
    with pytest.raises(ValueError, match="clip_origin"):
        PrelabelOptions(start_frame=3, stride=2, clip_origin=0)


def test_the_byte_bound_evicts_and_evicted_clips_are_recomputed(model, video, calls):
    probe_cache = FeatureCache.from_mb(64)
    list(prelabel(model, video, PrelabelOptions(clip_len=T, stop_frame=3), cache=probe_cache))
    one_clip = probe_cache.bytes
    assert one_clip > 0
    cache = FeatureCache(2 * one_clip + one_clip // 2)  # room for two whole clips
    list(prelabel(model, video, PrelabelOptions(clip_len=T), cache=cache))
    st = cache.stats()
    # The last clip (2 frames) is smaller: clips 6-8 and 9-10 are kept, 0-2 and 3-5 evicted.
    assert st["clips"] == 2 and st["evictions"] == 2 and st["bytes"] <= cache.max_bytes
    assert st["bytes"] == sum(c.nbytes for c in cache._clips.values())
    # Refinements on kept clips take them from the cache; on evicted ones they recompute
    # them, with the same results.
    calls.update(encode=0, decode=0)
    kept = refine(model, video, 7, None, cache)
    assert calls["encode"] == 0
    assert fields(kept) == fields(refine(model, video, 7, None))
    calls.update(encode=0, decode=0)
    got = refine(model, video, 1, 5, cache)
    assert calls["encode"] == 6  # clips 0-2 and 3-5, evicted, computed again
    assert fields(got) == fields(refine(model, video, 1, 5))
    assert cache.bytes <= cache.max_bytes
    # A bound smaller than a whole clip keeps only the short last one; a zero bound nothing.
    for small, kept in ((one_clip - 1, [(9, 10)]), (0, [])):
        tiny = FeatureCache(small)
        list(prelabel(model, video, PrelabelOptions(clip_len=T), cache=tiny))
        assert [c.indices for c in tiny._clips.values()] == kept
        assert tiny.bytes <= small


def test_a_changed_file_or_model_is_not_served_from_the_cache(model, tmp_path, calls):
    video = mf.make_video(tmp_path / "v.mp4", frames=6, fps=10, channels=(mf.tone(440),))
    cache = FeatureCache.from_mb(64)
    list(prelabel(model, video, PrelabelOptions(clip_len=T), cache=cache))
    # Another file under the same name (other audio), with a later modification time.
    mf.make_video(tmp_path / "other.mp4", frames=6, fps=10, channels=(mf.tone(880),))
    os.replace(tmp_path / "other.mp4", video)
    st = os.stat(video)
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    calls.update(encode=0, decode=0)
    assert fields(refine(model, video, 3, 6, cache)) == fields(refine(model, video, 3, 6))
    assert calls["encode"] == 6  # twice the clip 3-5: the cache had the old file's
    # New weights (fine-tuning updates them in place): the cache empties itself.
    assert len(cache) > 0
    with torch.no_grad():
        p = next(model.fuser.parameters())
        p.add_(0.0)  # the same values, a new version: conservative
    calls.update(encode=0)
    refine(model, video, 3, 6, cache)
    assert calls["encode"] == 3 and len(cache) == 1
    # Weights replaced by new tensors with the same values (load_state_dict(assign=True)).
    model.fuser.load_state_dict(model.fuser.state_dict(), assign=True)
    refine(model, video, 3, 6, cache)
    assert calls["encode"] == 6 and len(cache) == 1


def test_a_run_that_stops_skips_only_the_memory_nothing_reads(model, video, monkeypatch):
    """A run with a stop frame does not encode its last frame's memory (a one-frame click is
    a quarter cheaper): its labels are those of a longer run, bit for bit."""
    encoded = []
    monkeypatch.setattr(model.sam2.memory_encoder, "forward", _counted(
        model.sam2.memory_encoder.forward, encoded))
    cache = FeatureCache.from_mb(64)
    list(prelabel(model, video, PrelabelOptions(clip_len=T), cache=cache))
    for frame, stop in ((4, 5), (4, 6), (4, 9), (3, 6)):
        encoded.clear()
        short = refine(model, video, frame, stop, cache)
        assert len(encoded) == stop - frame - 1
        assert fields(short) == fields(refine(model, video, frame, None, cache)[:stop - frame])


def _counted(fn, log: list):
    def counted(*a, **k):
        log.append(1)
        return fn(*a, **k)
    return counted


def test_nbytes_counts_shared_storage_once():
    x = torch.zeros(10, 4)
    assert nbytes([x, x[2:], x.t()]) == 160
    assert nbytes([x, torch.zeros(3)]) == 172
    assert np.isclose(FeatureCache.from_mb(1.5).max_bytes, 1.5 * 2**20)
    with pytest.raises(ValueError, match=">= 0"):
        FeatureCache(-1)
