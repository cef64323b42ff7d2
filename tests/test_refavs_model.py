"""The Ref-AVS AuralSAM2 (SAM2 + refavs fuser + text encoder) at small sizes: the authors'
clip handling (docs/numerics.md, Ref-AVS: T = 10, conditioning frame int(T/2) processed first, rows
0..T-1 injected, iou_select), the shared image encoder for K expressions, and building."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from auralsam2_core.modeling.build import build_auralsam2, refer_model_dir
from auralsam2_core.modeling.model import AuralSAM2, upsample_logits
from auralsam2_core.modeling.prompting import PromptedTwoWayTransformer
from auralsam2_core.modeling.text_encoder import tiny_random_text_encoder

from helpers.text_model_factory import make_hf_cache

SIZE = 64
T = 10
SMALL = {"f_depths": [1, 1, 1]}


@pytest.fixture(scope="module")
def model(tiny_refavs_model):
    return tiny_refavs_model


def _clip(t: int = T, n_audio: int | None = None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(t, 3, SIZE, SIZE, generator=g),
            torch.randn(t if n_audio is None else n_audio, 2, 96, 64, generator=g))


@contextlib.contextmanager
def _record_track_steps(model: AuralSAM2):
    """Each SAM2 track step: (frame_idx, is_cond, cond frames and non-cond frames in memory,
    num_frames) plus the audio prompts the decoder got."""
    calls: list[dict] = []
    sam2 = model.sam2
    original = sam2._track_step
    prompts_cm = PromptedTwoWayTransformer.prompts

    def track_step(frame_idx, is_cond, *args):
        output_dict, num_frames = args[5], args[6]
        calls.append({"frame": frame_idx, "cond": is_cond, "num_frames": num_frames,
                      "mem_cond": sorted(output_dict["cond_frame_outputs"]),
                      "mem_non_cond": sorted(output_dict["non_cond_frame_outputs"])})
        return original(frame_idx, is_cond, *args)

    @contextlib.contextmanager
    def prompts(self, frame_prompts):
        calls.append({"audio": [a.clone() for a in frame_prompts.audio]})
        with prompts_cm(self, frame_prompts):
            yield

    sam2._track_step = track_step
    PromptedTwoWayTransformer.prompts = prompts
    try:
        yield calls
    finally:
        del sam2._track_step
        PromptedTwoWayTransformer.prompts = prompts_cm


def _steps(calls):
    """Pair each prompt record with the track step that follows it."""
    out = []
    for prompt, step in zip(calls[::2], calls[1::2], strict=True):
        out.append({**step, **prompt})
    return out


def test_clip_end_to_end_like_the_authors(model):
    frames, log_mel = _clip()
    captured = []
    hook = model.fuser.register_forward_hook(lambda m, i, out: captured.append(out))
    try:
        with torch.inference_mode(), _record_track_steps(model) as calls:
            out = model.forward_clip(frames, log_mel, text="the man playing the guitar")
    finally:
        hook.remove()
    steps = _steps(calls)
    # conditioning frame int(T/2) = 5 first, then 0..4, 6..9; one clip = one video of T frames
    assert [s["frame"] for s in steps] == [5, 0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert [s["cond"] for s in steps] == [True] + [False] * 9
    assert all(s["num_frames"] == T for s in steps)
    mem = {s["frame"]: (s["mem_cond"], s["mem_non_cond"]) for s in steps}
    assert mem[5] == ([], [])
    assert mem[0] == ([5], [])  # frame 0 sees only frame 5
    assert mem[6] == ([5], [0, 1, 2, 3, 4])  # 5 is not re-used as idx-1; 4..0 are
    assert mem[7] == ([5], [0, 1, 2, 3, 4, 6])
    # decoder: frame t gets row t of d3, d2, d1 (rows 0..9 of the 35 audio + text rows)
    audio = captured[0][1]
    assert [tuple(d.shape) for d in audio] == [(T + 25, 256)] * 3
    for s in steps:
        t = s["frame"]
        for got, d in zip(s["audio"], reversed(audio), strict=True):
            assert torch.equal(got.reshape(d[t].shape), d[t])  # (B=1, 1, C) batched
    # outputs per frame in frame order; iou_select = argmax of the predicted IoUs
    s4 = SIZE // 4
    assert out.multimask_logits.shape == (T, 3, s4, s4) and out.ious.shape == (T, 3)
    assert model.mask_choice == "iou_select"
    assert torch.equal(out.chosen, out.ious.argmax(dim=1))
    assert torch.equal(out.mask_logits[:, 0], out.multimask_logits[torch.arange(T), out.chosen])
    assert upsample_logits(out.multimask_logits[:1], (SIZE, SIZE)).shape == (1, 3, SIZE, SIZE)


def test_text_string_equals_embedding_and_text_matters(model):
    frames, log_mel = _clip()
    with torch.inference_mode():
        emb = model.encode_text("the dog on the left")
        assert emb.shape == (1, 25, 768)
        by_string = model.forward_clip(frames, log_mel, text="the dog on the left")
        by_embedding = model.forward_clip(frames, log_mel, text=emb)
        other = model.forward_clip(frames, log_mel, text="a woman singing loudly")
    assert torch.equal(by_string.multimask_logits, by_embedding.multimask_logits)
    differ = [(a - b).abs().max() for a, b in (
        (by_string.multimask_logits, other.multimask_logits),
        (by_string.object_score_logits, other.object_score_logits),
        (by_string.ious, other.ious))]
    assert max(differ) > 1e-3


def test_queries_share_one_image_encoder_pass(model):
    frames, log_mel = _clip(seed=3)
    texts = ["the dog", "the man playing the guitar", model.encode_text("the piano")]
    encoder_calls, audio_calls = [], []
    audio = model.fuser.vgg if hasattr(model.fuser, "vgg") else model.fuser.audio_encoder
    hooks = [model.sam2.image_encoder.register_forward_hook(
        lambda m, i, o: encoder_calls.append(1)),
        audio.register_forward_hook(lambda m, i, o: audio_calls.append(1))]
    try:
        with torch.inference_mode():
            shared = model.forward_queries(frames, log_mel, texts)
            assert len(encoder_calls) == len(audio_calls) == 1
            single = [model.forward_clip(frames, log_mel, text=t) for t in texts]
    finally:
        for hook in hooks:
            hook.remove()
    assert len(shared) == 3
    for a, b in zip(shared, single, strict=True):
        assert torch.equal(a.multimask_logits, b.multimask_logits)
        assert torch.equal(a.object_score_logits, b.object_score_logits)
    with pytest.raises(ValueError, match="track states"):
        model.forward_queries(frames, log_mel, texts, states=[model.new_state()])


@pytest.mark.parametrize("n_audio", [9, 11])
def test_audio_rows_other_than_frames(model, n_audio):
    """As the authors' loader allows: with 9 examples frame 9 takes the first text row as its
    "audio" prompt; with 11 the spare audio row stays in the fuser only."""
    frames, log_mel = _clip(n_audio=n_audio)
    captured = []
    hook = model.fuser.register_forward_hook(lambda m, i, out: captured.append(out))
    try:
        with torch.inference_mode(), _record_track_steps(model) as calls:
            out = model.forward_clip(frames, log_mel, text="the sounding object")
    finally:
        hook.remove()
    d1 = captured[0][1][0]
    assert d1.shape == (n_audio + 25, 256)
    last = next(s for s in _steps(calls) if s["frame"] == T - 1)
    # row 9: a text row when n_audio = 9
    assert torch.equal(last["audio"][-1].reshape(-1), d1[T - 1])
    assert out.mask_logits.shape[0] == T


def test_continuing_a_video_has_no_new_conditioning_frame(model):
    frames, log_mel = _clip(seed=5)
    state = model.new_state()
    with torch.inference_mode():
        model.forward_clip(frames, log_mel, state, text="the dog")
        assert state.next_frame == T and list(state.output_dict["cond_frame_outputs"]) == [5]
        with _record_track_steps(model) as calls:
            model.forward_clip(frames, log_mel, state, text="the dog")
    steps = _steps(calls)
    assert [s["frame"] for s in steps] == list(range(T, 2 * T))
    assert not any(s["cond"] for s in steps)
    assert state.next_frame == 2 * T


def test_bad_inputs_are_clear_errors(model):
    frames, log_mel = _clip(t=2)
    with pytest.raises(ValueError, match="needs a referring expression"):
        model.forward_clip(frames, log_mel)
    with pytest.raises(ValueError, match="expression 0 is empty"):
        model.forward_clip(frames, log_mel, text=" ")
    with pytest.raises(ValueError, match="at least one log-mel"):
        model.forward_clip(frames, log_mel[:0], text="x")
    with pytest.raises(ValueError, match="frames must be"):
        model.forward_clip(frames[:, :, :32], log_mel, text="x")
    no_text = AuralSAM2(model.sam2, model.fuser)
    with pytest.raises(ValueError, match="no text encoder"):
        no_text.forward_clip(frames, log_mel, text="x")


def test_avs_model_refuses_text():
    m = build_auralsam2("sam2_hiera_t", image_size=SIZE, fuser_config=SMALL, device="cpu")
    frames, log_mel = _clip(t=2)
    with pytest.raises(ValueError, match="only for the Ref-AVS model"):
        m.forward_clip(frames, log_mel, text=torch.zeros(1, 25, 768))
    with pytest.raises(ValueError, match="goes with the Ref-AVS fuser"):
        AuralSAM2(m.sam2, m.fuser, text_encoder=tiny_random_text_encoder())
    with pytest.raises(ValueError, match="only for variant='refavs'"):
        build_auralsam2("sam2_hiera_t", image_size=SIZE, text_encoder=tiny_random_text_encoder())
    if not (refer_model_dir() / "model.json").is_file():  # not shipped yet (#14)
        with pytest.raises(FileNotFoundError, match="Ref-AVS demo model is not installed"):
            build_auralsam2("bundled", variant="refavs")


def test_build_loads_the_text_encoder_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(FileNotFoundError, match="auralsam2 download distilroberta-base"):
        build_auralsam2("sam2_hiera_t", image_size=SIZE, fuser_config=SMALL, device="cpu",
                        variant="refavs")
    snap, _ = make_hf_cache(tmp_path / "hf" / "hub")
    m = build_auralsam2("sam2_hiera_t", image_size=SIZE, fuser_config=SMALL, device="cpu",
                        variant="refavs")
    assert m.variant == "refavs" and m.meta["text_encoder"] == str(snap)
    assert m.meta["variant"] == "refavs"
    frames, log_mel = _clip(t=3)
    with torch.inference_mode():
        out = m.forward_clip(frames, log_mel, text="the sounding object")
    assert out.mask_logits.shape == (3, 1, SIZE // 4, SIZE // 4)


# --------------------------------------------------------------------------- auralsam2 check


def test_cli_check_refavs_without_a_cached_text_encoder(tmp_path, monkeypatch, capsys):
    from auralsam2_core.cli import main

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert main(["check", "--variant", "refavs", "--sam2-config", "sam2_hiera_t",
                 "--image-size", "64", "--frames", "4", "--device", "cpu"]) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)
    layout = report["fuser_layout"]
    assert layout["keys"] == layout["official_keys"] == 752
    assert layout["same_keys_in_order"] and layout["mismatches"] == []
    assert report["variant"] == "refavs" and report["frames"] == 4
    assert report["outputs"]["mask_logits"] == [4, 1, SIZE // 4, SIZE // 4]
    assert report["text"]["conditioning_frame"] == 2
    assert "tiny random" in report["text"]["encoder"]
    assert "not in the Hugging Face cache" in out.err and "check: OK" in out.err


def test_cli_check_refavs_uses_the_cached_text_encoder(tmp_path, monkeypatch, capsys):
    from auralsam2_core.cli import main

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    snap, _ = make_hf_cache(tmp_path / "hf" / "hub")
    assert main(["check", "--variant", "refavs", "--sam2-config", "sam2_hiera_t",
                 "--image-size", "64", "--frames", "2", "--device", "cpu",
                 "--text", "the dog barking"]) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert report["text"] == {"expression": "the dog barking", "conditioning_frame": 1,
                              "encoder": str(snap)}
    assert "not in the Hugging Face cache" not in out.err
    # the bundled demo model is AVS: a clear error, not a traceback
    assert main(["check", "--variant", "refavs"]) == 2
    assert "needs --sam2-config" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_matches_cpu(model):
    """On CUDA the whole clip, RoBERTa included, runs under bf16 autocast as the authors'."""
    frames, log_mel = _clip()
    with torch.inference_mode():
        cpu = model.forward_clip(frames, log_mel, text="the man playing the guitar")
        model.cuda()
        try:
            gpu = model.forward_clip(frames.cuda(), log_mel.cuda(),
                                     text="the man playing the guitar")
        finally:
            model.cpu()
    agree = ((gpu.mask_logits.cpu() > 0) == (cpu.mask_logits > 0)).float().mean()
    assert agree > 0.9
