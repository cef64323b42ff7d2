"""Ref-AVS queries through the engine: one track per query, the image encoder once per clip,
masks equal to ``forward_clip(text=...)``, results format 2 (and version-1 files still read),
and the query options of the wire format, the service, the batch runner and the command.

Models are built here, tiny and offline: a small SAM2 + the Ref-AVS fuser at 64 px with the
demo's word-level text encoder (random weights: the tests compare paths, not quality)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from auralsam2_core.cli import main
from auralsam2_core.inference.engine import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_QUERIES,
    PrelabelOptions,
    prelabel,
)
from auralsam2_core.inference.prelabel_videos import prelabel_to_results
from auralsam2_core.inference.results import (
    FORMAT,
    ResultsWriter,
    frame_masks,
    frame_results,
    model_record,
    objects,
    read_results,
    track,
    video_record,
    why_stale,
)
from auralsam2_core.media.audio_track import AudioStream
from auralsam2_core.media.video import iter_frames, probe
from auralsam2_core.modeling.build import build_auralsam2
from auralsam2_core.modeling.model import PointPrompt, upsample_logits
from auralsam2_core.modeling.text_encoder import tiny_word_text_encoder
from auralsam2_core.serving.wire import OptionsError, options_from_wire, options_to_wire

from helpers import media_factory as mf

pytestmark = pytest.mark.skipif(mf.FFMPEG is None, reason="needs the ffmpeg command")

QUERIES = ["the red disc", "a blue square", "the sounding triangle"]


@pytest.fixture(scope="module")
def refavs():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield build_auralsam2("sam2_hiera_t", image_size=64, fuser_config={"f_depths": [1, 1, 1]},
                          device="cpu", variant="refavs", text_encoder=tiny_word_text_encoder())
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def avs():
    torch.manual_seed(0)
    return build_auralsam2("sam2_hiera_t", image_size=64, fuser_config={"f_depths": [1, 1, 1]},
                           device="cpu")


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """13 frames: one full Ref-AVS clip (T = 10) and a short one of 3."""
    return mf.make_video(tmp_path_factory.mktemp("q") / "clip.mp4", frames=13, fps=5,
                         size=(80, 48))


def _clips(model, video, clip_len):
    """The frames and log-mel examples of each clip, read as the engine reads them."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    info = probe(video)
    frames = list(iter_frames(video, size=model.image_size, fps_hint=info.fps))
    audio = AudioStream.from_file(video, info.audio_track)
    for s in range(0, len(frames), clip_len):
        batch = frames[s:s + clip_len]
        rgb = torch.from_numpy(np.stack([f.rgb for f in batch])).permute(0, 3, 1, 2).float()
        yield [f.index for f in batch], (rgb - mean) / std, audio.examples_at(
            [f.time for f in batch])


def test_queries_default_to_ten_frame_clips_and_are_checked():
    assert PrelabelOptions().clip_len == 5
    assert PrelabelOptions(queries=["dog"]).clip_len == 10
    assert PrelabelOptions(queries=["dog"], clip_len=4).clip_len == 4
    assert PrelabelOptions(queries=["  the   dog\n"]).queries == ("the dog",)
    for bad, message in (([""], "query 0 is empty"), (["dog", "  "], "query 1 is empty"),
                         (["x" * 201], "201 characters"), (["dog", "dog"], "given twice"),
                         ([f"q{i}" for i in range(MAX_QUERIES + 1)], f"at most {MAX_QUERIES}"),
                         ([3], "query 0 must be a string"), ("dog", "list of strings")):
        with pytest.raises(ValueError, match=message):
            PrelabelOptions(queries=bad)


def test_engine_masks_equal_forward_clip_per_query(refavs, video):
    """Per query, the engine's masks and probabilities are those of forward_clip(text=q) on
    the same frames, clip after clip with that query's own memory (first clip: conditioned on
    its middle frame); per frame, one result per query in the queries' order."""
    got = list(prelabel(refavs, video, PrelabelOptions(queries=QUERIES)))
    assert [r.query for r in got] == QUERIES * 13
    assert [r.index for r in got] == [i for i in range(13) for _ in QUERIES]
    info = probe(video)
    for k, q in enumerate(QUERIES):
        mine = got[k::len(QUERIES)]
        state = refavs.new_state(info.num_frames)
        want_masks, want_probs = [], []
        with torch.inference_mode():
            for _, frames, log_mel in _clips(refavs, video, 10):
                out = refavs.forward_clip(frames, log_mel, state, text=q)
                want_masks += list((upsample_logits(out.mask_logits, (48, 80))[:, 0] > 0)
                                   .numpy())
                want_probs += out.object_score_logits.sigmoid().flatten().tolist()
        assert [r.sounding_prob for r in mine] == pytest.approx(want_probs, abs=1e-6)
        for r, m in zip(mine, want_masks, strict=True):
            assert r.mask.shape == (48, 80) and np.array_equal(r.mask, m)
    # the queries are different tracks: text changes what the fuser sees
    assert any(a.sounding_prob != b.sounding_prob
               for a, b in zip(got[0::3], got[1::3], strict=True))
    # the first clip alone, without a state, is forward_clip as published (fresh video)
    _, frames, log_mel = next(_clips(refavs, video, 10))
    with torch.inference_mode():
        out = refavs.forward_clip(frames, log_mel, text=QUERIES[1])
    first = (upsample_logits(out.mask_logits, (48, 80))[:, 0] > 0).numpy()
    assert all(np.array_equal(r.mask, m) for r, m in zip(got[1:30:3], first, strict=True))


def test_image_encoder_runs_once_per_clip_for_all_queries(refavs, video):
    """And so do the audio encoder and SAM2's tracking inputs (they do not depend on the
    text); only the fuser (and tracking) repeat per query."""
    calls = {"encoder": 0, "fuser": 0, "audio": 0, "conv_s0": 0}

    def count(name):
        def hook(*_):
            calls[name] += 1
        return hook

    fuser = refavs.fuser
    audio = fuser.vgg if hasattr(fuser, "vgg") else fuser.audio_encoder
    handles = [refavs.sam2.image_encoder.register_forward_hook(count("encoder")),
               fuser.register_forward_hook(count("fuser")),
               audio.register_forward_hook(count("audio")),
               refavs.sam2.sam_mask_decoder.conv_s0.register_forward_hook(count("conv_s0"))]
    try:
        results = list(prelabel(refavs, video, PrelabelOptions(queries=QUERIES)))
    finally:
        for h in handles:
            h.remove()
    assert len(results) == 13 * 3
    # 2 clips (10 + 3 frames), 3 queries
    assert calls == {"encoder": 2, "fuser": 2 * 3, "audio": 2, "conv_s0": 2}


def test_query_features_equal_one_clip_features_call_per_text(refavs, avs, video):
    """What the engine computes once per clip for all queries changes nothing: every
    query's prompts and tracking inputs are those of its own clip_features call, exactly."""
    _, frames, log_mel = next(_clips(refavs, video, 10))
    with torch.inference_mode():
        enc = refavs.encode_images(frames)
        texts = [refavs.encode_text(q) for q in QUERIES]
        shared = refavs.query_features(enc, log_mel, texts)
        for text, got in zip(texts, shared, strict=True):
            want, _ = refavs.clip_features(enc, log_mel, text)
            for a, b in zip(got.tensors(), want.tensors(), strict=True):
                assert torch.equal(a, b)
        assert not torch.equal(shared[0].audio[2], shared[1].audio[2])  # text matters
        enc = avs.encode_images(frames[:5])
        (got,), (want, _) = (avs.query_features(enc, log_mel[:5], [None]),
                             avs.clip_features(enc, log_mel[:5]))
        assert all(torch.equal(a, b)
                   for a, b in zip(got.tensors(), want.tensors(), strict=True))


def test_model_and_query_mismatches_are_clear_errors(refavs, avs, video):
    with pytest.raises(ValueError, match="queries need a Ref-AVS model"):
        next(prelabel(avs, video, PrelabelOptions(queries=["dog"])))
    with pytest.raises(ValueError, match="give at least one query"):
        next(prelabel(refavs, video, PrelabelOptions()))
    with pytest.raises(ValueError, match="prompts .* need a single query"):
        next(prelabel(refavs, video, PrelabelOptions(queries=["dog", "cat"]),
                      prompts={0: PointPrompt(((5.0, 5.0),), (1,))}))
    long = " ".join(["red"] * 30)  # 30 words: more than the 25 tokens the encoder reads
    with pytest.raises(ValueError, match="query 0 .* tokens long; the text encoder reads 25"):
        next(prelabel(refavs, video, PrelabelOptions(queries=[long])))


def test_results_v2_objects_and_cache_keys(refavs, video, tmp_path):
    opts = PrelabelOptions(queries=QUERIES[:2], stride=2)
    seen = []
    doc = prelabel_to_results(refavs, video, ResultsWriter(tmp_path, "clip"), opts,
                              on_frame=seen.append)
    assert seen == list(range(1, 8))  # progress counts frames, not frames x queries
    back = read_results(tmp_path / "clip.json")
    assert back == doc and doc["format"] == FORMAT and doc["format_version"] == 2
    assert [(o["label"], o["query"]) for o in objects(doc)] == [(q, q) for q in QUERIES[:2]]
    assert doc["model"]["queries"] == QUERIES[:2] and doc["model"]["clip_len"] == 10
    direct = list(prelabel(refavs, video, opts))
    for k, q in enumerate(QUERIES[:2]):
        obj = track(doc, q)
        assert [f["index"] for f in obj["frames"]] == [0, 2, 4, 6, 8, 10, 12]
        assert obj["summary"]["frames"] == 7
        assert obj["summary"]["intervals"] == len(obj["intervals"])
        for (i, mask), r in zip(frame_masks(doc, q), direct[k::2], strict=True):
            assert i == r.index and np.array_equal(mask, r.mask)
    assert doc["summary"]["objects"] == 2 and doc["summary"]["frames"] == 7
    with pytest.raises(ValueError, match="2 objects"):
        track(doc)
    with pytest.raises(ValueError, match="no object follows the query 'a dog'"):
        track(doc, "a dog")
    # the queries are part of what results are reused for
    info = probe(video)
    same = model_record(refavs.meta, opts)
    assert why_stale(doc, video_record(info), same) is None
    other = model_record(refavs.meta, PrelabelOptions(queries=QUERIES[:1], stride=2))
    assert "queries" in why_stale(doc, video_record(info), other)
    # frames rebuilt from the document come in the engine's order
    rebuilt = list(frame_results(doc))
    assert [(r.index, r.query) for r in rebuilt] == [(r.index, r.query) for r in direct]


def test_version_1_files_stay_readable(avs, video, tmp_path):
    """A version-1 file (one object's frames and intervals at the top level) reads as one
    "sounding" object with the same frames, for every reader (accessors, renders, reuse)."""
    from auralsam2_core.inference.review import write_png_masks, write_timeline

    doc = prelabel_to_results(avs, video, ResultsWriter(tmp_path, "new"), PrelabelOptions())
    obj = track(doc)
    assert (obj["label"], obj["query"]) == ("sounding", None)
    v1 = {k: v for k, v in doc.items() if k not in ("objects",)}
    v1.update(format_version=1, frames=obj["frames"], intervals=obj["intervals"],
              summary={k: doc["summary"][k] for k in ("frames", "sounding_frames", "intervals",
                                                      "seconds")})
    v1["model"] = {k: v for k, v in doc["model"].items() if k != "queries"}
    (tmp_path / "old.json").write_text(json.dumps(v1))
    old = read_results(tmp_path / "old.json")
    assert old["format_version"] == 2 and old["upgraded_from_version"] == 1
    assert track(old)["frames"] == obj["frames"] and track(old)["intervals"] == obj["intervals"]
    assert [i for i, _ in frame_masks(old)] == list(range(13))
    assert why_stale(old, video_record(probe(video)),
                     model_record(avs.meta, PrelabelOptions())) is None
    pngs = write_png_masks(old, tmp_path / "masks")
    assert len(list(pngs.glob("*.png"))) == 13
    assert write_timeline(old, tmp_path / "t.png").stat().st_size > 0


def test_renders_of_several_objects(refavs, video, tmp_path):
    from auralsam2_core.inference.review import write_overlay, write_png_masks

    opts = PrelabelOptions(queries=QUERIES[:2], stop_frame=4)
    doc = prelabel_to_results(refavs, video, ResultsWriter(tmp_path, "r"), opts)
    out = write_png_masks(doc, tmp_path / "masks")
    for k, q in enumerate(QUERIES[:2]):
        assert (out / str(k) / "query.txt").read_text().strip() == q
        assert sorted(p.name for p in (out / str(k)).glob("*.png")) == [
            f"{i:06d}.png" for i in range(4)]
    assert write_overlay(video, doc, tmp_path / "o.mp4").stat().st_size > 0


def test_wire_options_carry_queries_strictly():
    opts, _ = options_from_wire({"queries": ["dog", "the guitar"]})
    assert opts.queries == ("dog", "the guitar") and opts.clip_len == 10
    wire = options_to_wire(opts)
    assert wire["queries"] == ["dog", "the guitar"] and options_from_wire(wire)[0] == opts
    assert options_from_wire({})[0].queries == ()
    box = {"coords": [[1, 1], [20, 20]], "labels": [2, 3]}
    for raw, field in (({"queries": "dog"}, "options.queries"),
                       ({"queries": [""]}, "options.queries"),
                       ({"queries": [1]}, "options.queries"),
                       ({"queries": ["a"] * 2}, "options.queries"),
                       ({"queries": [f"q{i}" for i in range(17)]}, "options.queries"),
                       ({"queries": ["x" * 500]}, "options.queries"),
                       ({"queries": ["dog", "cat"], "prompts": {"0": box}}, "options.prompts")):
        with pytest.raises(OptionsError) as e:
            options_from_wire(raw)
        assert e.value.field == field
    # one query with a prompt: a refinement of that query's track (Label Studio's classes)
    opts, prompts = options_from_wire({"queries": ["dog"], "prompts": {"0": box}})
    assert opts.queries == ("dog",) and list(prompts) == [0]


def test_service_takes_queries_and_refuses_what_its_model_cannot_read(refavs, avs, video,
                                                                      tmp_path):
    from auralsam2_core.model_spec import ModelSpec
    from auralsam2_service.config import ServiceSettings
    from auralsam2_service.job_service import JobService, Refused

    settings = ServiceSettings(token="t" * 32, media_roots=(video.parent.resolve(),),
                               state_dir=tmp_path / "s1")
    service = JobService(settings, ModelSpec(), model=refavs, start_worker=False)
    for options in ({}, {"queries": []}, {"queries": [" "]}, {"queries": "dog"}):
        with pytest.raises(Refused) as e:
            service.submit(str(video), options)
        assert e.value.status == 400 and e.value.field == "options.queries"
    job = service.submit(str(video), {"queries": ["dog", "a red disc"], "stop_frame": 3})
    assert job.options["queries"] == ["dog", "a red disc"]
    service.run_job(job)
    assert job.status == "done", job.error
    doc = service.results(job.id)
    assert [o["query"] for o in objects(doc)] == ["dog", "a red disc"]
    local = prelabel_to_results(refavs, video, ResultsWriter(tmp_path, "l"),
                                PrelabelOptions(queries=["dog", "a red disc"], stop_frame=3))
    assert [o["frames"] for o in objects(doc)] == [o["frames"] for o in objects(local)]
    service.close()
    other = JobService(ServiceSettings(token="t" * 32, media_roots=(video.parent.resolve(),),
                                    state_dir=tmp_path / "s2"), ModelSpec(), model=avs,
                    start_worker=False)
    with pytest.raises(Refused) as e:
        other.submit(str(video), {"queries": ["dog"]})
    assert e.value.status == 400 and e.value.field == "options.queries"
    other.close()


def test_batch_refuses_queries_for_an_avs_model(video, tmp_path):
    from auralsam2_core.model_spec import ModelSpec
    from auralsam2_service.batch import run_batch

    with pytest.raises(ValueError, match="Ref-AVS"):
        run_batch([video], tmp_path, PrelabelOptions(queries=["dog"]), served=ModelSpec())
    with pytest.raises(ValueError, match="Ref-AVS"):
        run_batch([video], tmp_path, PrelabelOptions(), served=ModelSpec(variant="refavs"))


def test_command_without_a_refavs_model_says_what_to_give(video, tmp_path, monkeypatch,
                                                          capsys):
    import auralsam2_core.modeling.build as build

    monkeypatch.setattr(build, "refer_model_dir", lambda: tmp_path / "not-installed")
    rc = main(["prelabel", str(video), "--out", str(tmp_path / "out"), "--query", "dog"])
    err = capsys.readouterr().err
    assert rc == 2 and "bundled Ref-AVS demo model is not installed" in err
    assert "--fuser-checkpoint auralsam2_refavs_best" in err
    rc = main(["prelabel", str(video), "--out", str(tmp_path / "out"), "--variant", "refavs"])
    assert rc == 2 and "needs at least one --query" in capsys.readouterr().err
    rc = main(["prelabel", str(video), "--out", str(tmp_path / "out"), "--query", ""])
    assert rc == 2 and "query 0 is empty" in capsys.readouterr().err


def test_class_queries_map_each_class_to_what_the_model_reads():
    from auralsam2_core.inference.engine import class_queries

    got = class_queries(["dog", ("guitar", "the man playing  the guitar"), ("piano", "")])
    assert got == {"dog": "dog", "the man playing the guitar": "guitar", "piano": "piano"}
    assert list(got) == ["dog", "the man playing the guitar", "piano"]
    with pytest.raises(ValueError, match="given twice"):
        class_queries(["dog", ("puppy", "dog")])
    with pytest.raises(ValueError, match="class 1 has no name"):
        class_queries(["dog", ("  ", "a cat")])
    with pytest.raises(ValueError, match="at most 16"):
        class_queries([f"c{i}" for i in range(17)])


def test_a_prompt_refines_a_single_query(refavs, video):
    """A box on one query's track (an annotator refining one class) joins that query's text
    and audio prompts on its frame: the frame's mask changes, the query is kept."""
    opts = PrelabelOptions(queries=["the dog"], stop_frame=4)
    plain = list(prelabel(refavs, video, opts))
    box = PointPrompt(((2.0, 2.0), (20.0, 20.0)), (2, 3))
    refined = list(prelabel(refavs, video, opts, prompts={1: box}))
    assert [r.query for r in refined] == ["the dog"] * 4
    assert (plain[0].mask == refined[0].mask).all()  # before the prompt: as without it
    assert (plain[1].sounding_prob, plain[1].predicted_iou, plain[1].mask.sum()) != \
        (refined[1].sounding_prob, refined[1].predicted_iou, refined[1].mask.sum())
