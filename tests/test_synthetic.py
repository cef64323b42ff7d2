"""Tests for the synthetic sounding-object clips (``auralsam2_core.training.synthetic``).

Every other part of the project trusts these clips as ground truth, so the tests check the
ground truth itself: determinism, mask semantics (visible pixels, top object wins), schedules,
that the audio really carries each shape's signature (FFT), panning, and the written files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from auralsam2_core.training.synthetic import (
    COLOUR_NAMES,
    SHAPES,
    SIGNATURE_HZ,
    _centres,
    _shape_masks,
    make_clip,
    make_dataset,
    referring_expression,
    silence,
    swap_audio,
    write_clip,
)

SMALL = {"size": (64, 64), "fps": 5.0, "seconds": 2.0}


def dominant_hz(audio: np.ndarray, sr: int) -> float:
    """Frequency of the largest peak of the (mono-mixed, Hann-windowed) spectrum."""
    x = audio.mean(axis=0).astype(np.float64)
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    spec[0] = 0
    return float(np.fft.rfftfreq(x.size, 1 / sr)[np.argmax(spec)])


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_clip_and_different_seeds_differ():
    a, b = make_clip(7, **SMALL), make_clip(7, **SMALL)
    for name in ("frames", "audio", "object_masks", "sounding"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.shapes == b.shapes
    c = make_clip(8, **SMALL)
    assert not np.array_equal(a.frames, c.frames)
    assert a.audio.shape != c.audio.shape or not np.array_equal(a.audio, c.audio)
    # Colours are random per clip and not tied to the shape: over a few seeds each shape
    # appears in several different colours.
    colours: dict[str, set] = {s: set() for s in SHAPES}
    for seed in range(12):
        clip = make_clip(seed, **SMALL)
        for k, shape in enumerate(clip.shapes):
            colours[shape].add(tuple(clip.scene.colours[k]))
    assert all(len(v) >= 3 for v in colours.values()), colours


def test_schedule_does_not_change_the_video():
    mixed = make_clip(3, **SMALL, schedule="mixed")
    one = make_clip(3, **SMALL, schedule="one")
    np.testing.assert_array_equal(mixed.frames, one.frames)
    np.testing.assert_array_equal(mixed.object_masks, one.object_masks)


# --------------------------------------------------------------------------- shapes and masks


@pytest.mark.parametrize(
    ("size", "fps", "seconds", "num_t", "num_s"),
    [
        ((128, 128), 5.0, 2.0, 10, 32000),
        ((96, 96), 1.0, 5.0, 5, 80000),
        ((37, 50), 4.0, 1.0, 4, 16000),
    ],
)
def test_shapes_and_dtypes(size, fps, seconds, num_t, num_s):
    clip = make_clip(1, size=size, fps=fps, seconds=seconds)
    k = len(clip.shapes)
    assert 2 <= k <= 3 and len(set(clip.shapes)) == k and set(clip.shapes) <= set(SHAPES)
    assert clip.frames.shape == (num_t, *size, 3) and clip.frames.dtype == np.uint8
    assert clip.audio.shape == (2, num_s) and clip.audio.dtype == np.float32
    assert np.abs(clip.audio).max() <= 1.0
    assert clip.object_masks.shape == (k, num_t, *size) and clip.object_masks.dtype == bool
    assert clip.sounding.shape == (k, num_t) and clip.sounding.dtype == bool
    assert clip.sounding_mask.shape == (num_t, *size) and clip.sounding_mask.dtype == bool
    assert clip.sample_rate == 16000 and clip.fps == fps


def test_num_objects_and_bad_arguments():
    assert {len(make_clip(s, **SMALL).shapes) for s in range(10)} == {2, 3}
    for k in (1, 2, 3):
        assert len(make_clip(0, **SMALL, num_objects=k).shapes) == k
    with pytest.raises(ValueError):
        make_clip(0, **SMALL, num_objects=4)
    with pytest.raises(ValueError):
        make_clip(0, **SMALL, schedule="loud")


def test_masks_are_visible_pixels_and_sounding_mask_is_the_union():
    for seed in range(6):
        clip = make_clip(seed, **SMALL)
        masks = clip.object_masks
        # Visibility: a pixel belongs to at most one object, and shows that object's colour.
        assert masks.sum(axis=0).max() <= 1
        for k in range(len(clip.shapes)):
            assert masks[k].any()
            assert (clip.frames[masks[k]] == clip.scene.colours[k]).all()
        expected = np.zeros(masks.shape[1:], dtype=bool)
        for k in range(len(clip.shapes)):
            for t in range(clip.num_frames):
                if clip.sounding[k, t]:
                    expected[t] |= masks[k, t]
        np.testing.assert_array_equal(clip.sounding_mask, expected)


def test_overlap_top_object_wins():
    """Each pixel belongs to the topmost object covering it; overlaps do happen."""
    overlaps = 0
    for seed in range(12):
        clip = make_clip(seed, **SMALL, num_objects=3)
        t = np.arange(clip.num_frames) / clip.fps
        full = _shape_masks(clip.scene, t, 64, 64)
        owner = np.full(full.shape[1:], -1)
        for k in clip.scene.order:  # bottom first: later objects overwrite
            owner[full[k]] = k
        for k in range(3):
            np.testing.assert_array_equal(clip.object_masks[k], owner == k)
        overlaps += int((full.sum(axis=0) > 1).any())
    assert overlaps >= 2


def test_motion_is_smooth_and_objects_move():
    clip = make_clip(2, size=(128, 128), fps=5.0, seconds=2.0)
    c = clip.centres  # (K, T, 2)
    step = np.linalg.norm(np.diff(c, axis=1), axis=-1)
    assert step.max() < 0.2 * 128  # at 5 fps: no jumps
    assert (np.abs(np.diff(step, axis=1)) < 0.1 * 128).all()  # no sudden changes of speed
    assert (np.linalg.norm(c[:, -1] - c[:, 0], axis=-1) > 5).any()


# --------------------------------------------------------------------------- schedules


def test_mixed_has_silent_stretches_and_switching():
    silent_found = False
    for seed in range(20):
        clip = make_clip(seed, **SMALL, schedule="mixed")
        assert clip.sounding.any()  # never silent throughout
        silent_found |= bool((~clip.sounding.any(axis=0)).any())
    assert silent_found
    switching = [make_clip(s, **SMALL).sounding for s in range(20)]
    assert any((s.any(axis=1) & ~s.all(axis=1)).any() for s in switching)


def test_one_has_exactly_one_sounder_every_frame():
    for seed in range(10):
        clip = make_clip(seed, **SMALL, schedule="one")
        assert (clip.sounding.sum(axis=0) == 1).all()
        assert clip.sounding.all(axis=1).sum() == 1  # the same object throughout


def test_silent_schedule_and_silence():
    clip = make_clip(4, **SMALL, schedule="silent")
    assert not clip.sounding.any() and not clip.sounding_mask.any()
    assert rms(clip.audio) < 0.01
    loud = make_clip(4, **SMALL, schedule="one")
    quiet = silence(loud)
    np.testing.assert_array_equal(quiet.frames, loud.frames)
    assert quiet.audio.shape == loud.audio.shape
    assert rms(quiet.audio) < 0.01 < rms(loud.audio)
    assert not quiet.sounding_mask.any() and quiet.variant == "silence"


# --------------------------------------------------------------------------- audio content


def test_each_shape_has_its_signature():
    seen = set()
    for seed in range(12):
        clip = make_clip(seed, **SMALL, schedule="one")
        k = int(np.flatnonzero(clip.sounding.any(axis=1))[0])
        shape = clip.shapes[k]
        f = dominant_hz(clip.audio, clip.sample_rate)
        assert abs(f - clip.scene.pitch[k]) < 15, (shape, f, clip.scene.pitch[k])
        assert abs(f / SIGNATURE_HZ[shape] - 1) < 0.06
        seen.add(shape)
    assert seen == set(SHAPES)


def test_swap_audio_changes_audio_and_ground_truth_consistently():
    checked = 0
    for seed in range(6):
        clip = make_clip(seed, **SMALL, schedule="one")
        j = int(np.flatnonzero(clip.sounding.any(axis=1))[0])
        for o in range(len(clip.shapes)):
            if o == j:
                continue
            sw = swap_audio(clip, o)
            np.testing.assert_array_equal(sw.frames, clip.frames)
            assert not np.allclose(sw.audio, clip.audio)
            assert sw.sounding[o].all() and sw.sounding.sum() == clip.num_frames
            np.testing.assert_array_equal(sw.sounding_mask, clip.object_masks[o])
            f = dominant_hz(sw.audio, sw.sample_rate)
            assert abs(f / SIGNATURE_HZ[sw.shapes[o]] - 1) < 0.06, (sw.shapes[o], f)
            assert sw.variant == f"swap:{o}"
            checked += 1
    assert checked >= 6
    # Same on/off times in a mixed clip: the new object sounds whenever anyone sounded.
    mixed = make_clip(0, **SMALL, schedule="mixed")
    sw = swap_audio(mixed, 1)
    np.testing.assert_array_equal(sw.sounding[1], mixed.sounding.any(axis=0))
    assert not np.delete(sw.sounding, 1, axis=0).any()
    with pytest.raises(ValueError):
        swap_audio(mixed, 5)


def test_audio_is_silent_when_nobody_sounds():
    for seed in range(20):
        clip = make_clip(seed, **SMALL, schedule="mixed")
        quiet = np.flatnonzero(~clip.sounding.any(axis=0))
        loud = np.flatnonzero(clip.sounding.any(axis=0))
        if quiet.size and loud.size:
            spf = int(clip.sample_rate / clip.fps)
            margin = spf // 10  # skip the fade ramps at the frame edges
            inner = [clip.audio[:, t * spf + margin : (t + 1) * spf - margin] for t in range(
                clip.num_frames)]
            q = np.concatenate([inner[t] for t in quiet], axis=1)
            lo = np.concatenate([inner[t] for t in loud], axis=1)
            assert rms(q) < 0.01 and rms(lo) > 0.05
            return
    pytest.fail("no clip with both silent and sounding frames")


def test_panning_follows_horizontal_position():
    """Per frame, the single sounder's left/right balance follows its x position."""
    xs, balance = [], []
    for seed in range(12):
        clip = make_clip(seed, **SMALL, schedule="one")
        k = int(np.flatnonzero(clip.sounding.any(axis=1))[0])
        spf = int(clip.sample_rate / clip.fps)
        t_mid = (np.arange(clip.num_frames) + 0.5) / clip.fps
        x = _centres(clip.scene, t_mid, 64, 64)[k, :, 0] / 63  # mid-frame position
        for t in range(clip.num_frames):
            seg = clip.audio[:, t * spf : (t + 1) * spf]
            xs.append(x[t])
            balance.append(np.log(rms(seg[0]) / rms(seg[1])))
    xs, balance = np.array(xs), np.array(balance)
    left, right = xs < 0.35, xs > 0.65
    assert left.sum() >= 5 and right.sum() >= 5
    assert (balance[left] > np.log(1.4)).all()  # louder on the left
    assert (balance[right] < -np.log(1.4)).all()
    assert np.corrcoef(xs, balance)[0, 1] < -0.95


# --------------------------------------------------------------------------- files


def _decode(path):
    av = pytest.importorskip("av")
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        info = {
            "fps": float(vs.average_rate),
            "width": vs.codec_context.width,
            "height": vs.codec_context.height,
            "audio_streams": len(c.streams.audio),
        }
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    info["frames"] = np.stack(frames)
    if info["audio_streams"]:
        with av.open(str(path)) as c:
            a = c.streams.audio[0]
            info["channels"] = a.codec_context.channels
            info["rate"] = a.codec_context.sample_rate
            info["audio"] = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
    return info


def test_write_clip_round_trip(tmp_path):
    image = pytest.importorskip("PIL.Image")
    clip = make_clip(11, size=(64, 80), fps=5.0, seconds=2.0, schedule="one")
    path = write_clip(clip, tmp_path / "v" / "clip.mp4", gt_dir=tmp_path / "gt")
    assert path.exists() and path.suffix == ".mp4"
    info = _decode(path)
    t = clip.num_frames
    assert info["frames"].shape == (t, 64, 80, 3)
    assert info["fps"] == pytest.approx(5.0)
    assert info["channels"] == 2 and info["rate"] == 16000
    duration = info["audio"].shape[1] / info["rate"]
    assert abs(duration - t / clip.fps) <= 1 / clip.fps
    # H.264 at crf 18 is close to the source; AAC keeps the signature and the panning.
    assert np.abs(info["frames"].astype(int) - clip.frames).mean() < 4
    assert abs(dominant_hz(info["audio"], 16000) - dominant_hz(clip.audio, 16000)) < 10
    n = min(info["audio"].shape[1], clip.audio.shape[1])
    lr_src = rms(clip.audio[0]) > rms(clip.audio[1])
    assert (rms(info["audio"][0, :n]) > rms(info["audio"][1, :n])) == lr_src
    pngs = sorted((tmp_path / "gt").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(t)]
    for i, p in enumerate(pngs):
        m = np.asarray(image.open(p))
        assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255}
        np.testing.assert_array_equal(m == 255, clip.sounding_mask[i])
    meta = json.loads((tmp_path / "gt" / "meta.json").read_text())
    assert meta["seed"] == 11 and meta["fps"] == 5.0 and meta["shapes"] == clip.shapes
    assert meta["sounding"] == clip.sounding.astype(int).tolist()
    assert meta["num_frames"] == t and meta["size"] == [64, 80] and meta["schedule"] == "one"


def test_write_clip_odd_size_mono_and_no_audio(tmp_path):
    image = pytest.importorskip("PIL.Image")
    clip = make_clip(2, size=(45, 51), fps=1.0, seconds=3.0)
    write_clip(clip, tmp_path / "odd.mp4", gt_dir=tmp_path / "gt", channels=1)
    info = _decode(tmp_path / "odd.mp4")
    assert info["frames"].shape == (3, 46, 52, 3)  # padded bottom / right to even
    assert info["fps"] == pytest.approx(1.0) and info["channels"] == 1
    assert abs(info["audio"].shape[1] / 16000 - 3.0) <= 1.0
    m = np.asarray(image.open(tmp_path / "gt" / "00000.png"))
    assert m.shape == (46, 52) and not m[45].any() and not m[:, 51].any()
    np.testing.assert_array_equal(m[:45, :51] == 255, clip.sounding_mask[0])
    assert json.loads((tmp_path / "gt" / "meta.json").read_text())["video_size"] == [46, 52]
    write_clip(clip, tmp_path / "mute.mp4", audio=False)
    assert _decode(tmp_path / "mute.mp4")["audio_streams"] == 0


def test_make_dataset(tmp_path):
    paths = make_dataset(tmp_path / "ds", 2, seed=3, size=(32, 32), seconds=1.0, channels=1)
    assert [p.name for p in paths] == ["clip_00000.mp4", "clip_00001.mp4"]
    assert all(p.exists() for p in paths)
    index = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert [c["seed"] for c in index["clips"]] == [3_000_000, 3_000_001]
    meta = json.loads((tmp_path / "ds" / "gt" / "clip_00001" / "meta.json").read_text())
    assert meta["seed"] == 3_000_001 and meta["size"] == [32, 32]
    assert len(list((tmp_path / "ds" / "gt" / "clip_00001").glob("*.png"))) == 5


# --------------------------------------------------------------------------- Ref-AVS clips


def test_named_colours_are_distinct_and_drawn_in_their_colour():
    seen = set()
    for seed in range(10):
        clip = make_clip(seed, **SMALL, colours="named")
        names = clip.colour_names
        assert len(names) == len(clip.shapes) == len(set(names))
        for k, name in enumerate(names):
            rgb = clip.scene.colours[k].astype(int)
            assert np.abs(rgb - np.array(COLOUR_NAMES[name])).max() <= 12
            # the visible pixels of the object carry exactly that colour
            ys, xs = np.nonzero(clip.object_masks[k, 0])
            if ys.size:
                assert (clip.frames[0, ys, xs] == clip.scene.colours[k]).all()
            seen.add(name)
    assert len(seen) >= 5
    assert make_clip(3, **SMALL).colour_names is None
    assert "colour_names" not in clip_meta_of(make_clip(3, **SMALL))
    assert clip_meta_of(make_clip(3, **SMALL, colours="named"))["colour_names"]
    with pytest.raises(ValueError, match="colours"):
        make_clip(3, **SMALL, colours="pastel")


def clip_meta_of(clip):
    from auralsam2_core.training.synthetic import clip_meta

    return clip_meta(clip)


def test_all_schedule_sounds_every_object_every_frame():
    clip = make_clip(5, **SMALL, schedule="all", num_objects=2)
    assert clip.sounding.all()
    # both signatures are in the mix
    spec = np.abs(np.fft.rfft(clip.audio.mean(axis=0) * np.hanning(clip.audio.shape[1])))
    freqs = np.fft.rfftfreq(clip.audio.shape[1], 1 / clip.sample_rate)
    for k in range(2):
        band = np.abs(freqs - clip.scene.pitch[k]) < 20
        assert spec[band].max() > 0.1 * spec.max()
    np.testing.assert_array_equal(clip.frames, make_clip(5, **SMALL, schedule="one",
                                                         num_objects=2).frames)


def test_referring_expressions_name_the_shape_and_colour_in_demo_words():
    from auralsam2_core.modeling.text_encoder import DEMO_WORDS

    rng = np.random.default_rng(0)
    for shape in SHAPES:
        for colour in (None, *COLOUR_NAMES):
            for _ in range(5):
                e = referring_expression(shape, colour, rng)
                words = e.split()
                assert set(words) <= set(DEMO_WORDS), e
                assert shape in words or (shape == "disc" and "circle" in words), e
                assert (colour in words) if colour else not set(words) & set(COLOUR_NAMES)
    with pytest.raises(ValueError, match="shape"):
        referring_expression("hexagon", None, rng)
