"""``auralsam2 check``: build the model, verify the authors' fuser layout and run one clip."""

from __future__ import annotations

import json
import math
import sys
import time

import torch

from auralsam2_core import __version__

from .model_args import (
    add_model_options,
    build_model,
    model_spec,
    warn_random_weights,
    weights_label,
)


def _synthetic_clip(frames: int, size: int, seconds_per_frame: float = 1.0):
    """A disc moving across the frame and a stereo tone: enough to exercise every layer."""
    from auralsam2_core.media.log_mel import VGGISH_SAMPLE_RATE, log_mel_examples

    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    video = torch.zeros(frames, 3, size, size)
    for t in range(frames):
        cx = size * (0.25 + 0.5 * t / max(frames - 1, 1))
        disc = ((xx - cx) ** 2 + (yy - size / 2) ** 2) < (size / 6) ** 2
        video[t, 0][disc] = 1.0
    from auralsam2_core.inference.engine import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    n = int(frames * seconds_per_frame * VGGISH_SAMPLE_RATE)
    t_axis = torch.arange(n) / VGGISH_SAMPLE_RATE
    audio = torch.stack([0.5 * torch.sin(2 * math.pi * 440 * t_axis),
                         0.3 * torch.sin(2 * math.pi * 880 * t_axis)])
    log_mel = log_mel_examples(audio, VGGISH_SAMPLE_RATE, min_examples=frames)[:frames]
    return (video - mean) / std, log_mel


def _fuser_layout_report(fuser) -> dict:
    """The fuser's state dict against the authors' key list of its variant."""
    from importlib.resources import files

    key_list = "refavs_fuser_keys.tsv" if fuser.variant == "refavs" else "official_fuser_keys.tsv"
    rows = [line.rstrip("\n").split("\t") for line in
            files("auralsam2_core").joinpath("data", key_list).open()
            if line.strip() and not line.startswith("#")]
    sd = fuser.state_dict()
    expected = {k: (tuple(int(x) for x in shape.split(",") if x), dtype)
                for k, shape, dtype in rows}
    ours = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()}
    vgg = sum(p.numel() for n, p in fuser.named_parameters() if n.startswith("vgg."))
    return {
        "keys": len(ours), "official_keys": len(expected),
        "same_keys_in_order": list(ours) == [r[0] for r in rows],
        "mismatches": sorted(k for k in expected if ours.get(k) != expected[k]),
        "fuser_params": sum(p.numel() for p in fuser.parameters()) - vgg, "vggish_params": vgg,
    }


def _build_refavs_check_model(args):
    """``check --variant refavs``: the Ref-AVS model with distilroberta-base from the Hugging
    Face cache, or a tiny random text encoder when it is not cached (said on stderr)."""
    from auralsam2_core.model_spec import BUNDLED
    from auralsam2_core.modeling.text_encoder import (
        TEXT_ENCODER_NAME,
        load_text_encoder,
        tiny_random_text_encoder,
    )
    from auralsam2_core.modeling.weights import REGISTRY

    if args.sam2_config in (None, BUNDLED):
        raise ValueError("--variant refavs needs --sam2-config (the bundled demo model is an "
                         "AVS model), e.g. --sam2-config sam2_hiera_t")
    spec = model_spec(args, refavs=True)
    if REGISTRY[TEXT_ENCODER_NAME].is_cached():
        encoder = load_text_encoder(TEXT_ENCODER_NAME)
    else:
        encoder = tiny_random_text_encoder()
        print(f"auralsam2: {TEXT_ENCODER_NAME} is not in the Hugging Face cache; using a tiny "
              f"random text encoder (`auralsam2 download {TEXT_ENCODER_NAME}` fetches the "
              "real one)", file=sys.stderr)
    warn_random_weights(spec)
    return spec.build(text_encoder=encoder)


def cmd_check(args) -> int:
    t0 = time.perf_counter()
    refavs = args.variant == "refavs"
    model = _build_refavs_check_model(args) if refavs else build_model(args)
    bundled = str(model.meta.get("sam2_config", "")).startswith("bundled")
    layout = {"bundled_demo_model": True, "sha256_verified": True} if bundled else \
        _fuser_layout_report(model.fuser)
    n_frames = args.frames or (10 if refavs else 5)
    frames, log_mel = _synthetic_clip(n_frames, model.image_size)
    text = {"text": args.text} if refavs else {}
    t1 = time.perf_counter()
    with torch.inference_mode():
        out = model.forward_clip(frames.to(model.device), log_mel.to(model.device), **text)
    t2 = time.perf_counter()
    report = {
        "version": __version__, "device": str(model.device), "variant": args.variant,
        "sam2_config": model.meta.get("sam2_config", args.sam2_config),
        "image_size": model.image_size, "frames": n_frames,
        "weights": {"sam2": weights_label(model, "sam2", args.sam2_checkpoint),
                    "fuser": weights_label(model, "fuser", args.fuser_checkpoint)},
        "fuser_layout": layout,
        "outputs": {"mask_logits": list(out.mask_logits.shape),
                    "ious": [[round(x, 3) for x in row] for row in out.ious.tolist()],
                    "sounding_prob": [round(x, 3) for x in
                                      out.object_score_logits.sigmoid().flatten().tolist()]},
        "seconds": {"build": round(t1 - t0, 2), "forward_clip": round(t2 - t1, 2)},
    }
    if refavs:
        source = model.text_encoder.source
        report["text"] = {"expression": args.text, "conditioning_frame": n_frames // 2,
                          "encoder": source if source != "tiny-random" else
                          "tiny random RoBERTa (distilroberta-base not cached)"}
    print(json.dumps(report, indent=2))
    ok = bundled or (layout["same_keys_in_order"] and not layout["mismatches"])
    print("check: OK" if ok else "check: FAILED (fuser layout differs from the authors')",
          file=sys.stderr)
    return 0 if ok else 1


def register(sub) -> None:
    c = sub.add_parser("check", help="build the model, verify the authors' layout and run one "
                                     "clip end to end (no downloads)")
    add_model_options(c, image_size=256)
    c.add_argument("--frames", type=int, default=None,
                   help="clip length T (authors: 5 for AVS, 10 for Ref-AVS)")
    c.add_argument("--variant", choices=("avs", "refavs"), default="avs",
                   help="refavs: the Ref-AVS (text-referred) fuser with its text encoder")
    c.add_argument("--text", default="the sounding object",
                   help="referring expression for --variant refavs")
    c.set_defaults(func=cmd_check)
