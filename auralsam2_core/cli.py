"""The ``auralsam2`` command."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from . import __version__


def _synthetic_clip(frames: int, size: int, seconds_per_frame: float = 1.0):
    """A disc moving across the frame and a stereo tone: enough to exercise every layer."""
    from .log_mel import VGGISH_SAMPLE_RATE, log_mel_examples

    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    video = torch.zeros(frames, 3, size, size)
    for t in range(frames):
        cx = size * (0.25 + 0.5 * t / max(frames - 1, 1))
        disc = ((xx - cx) ** 2 + (yy - size / 2) ** 2) < (size / 6) ** 2
        video[t, 0][disc] = 1.0
    from .engine import IMAGENET_MEAN, IMAGENET_STD

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


def _model_spec(args, refavs: bool = False):
    """The model the flags name: THE defaulting rule (:meth:`ModelSpec.resolved`) with the
    command line's defaults (``sam2_hiera_t`` for AVS, ``sam2_hiera_l`` for Ref-AVS, and the
    command's input size)."""
    from dataclasses import replace

    from .model_spec import CLI_DEFAULTS, CLI_REFAVS_DEFAULTS, ModelSpec

    defaults = replace(CLI_REFAVS_DEFAULTS if refavs else CLI_DEFAULTS,
                       image_size=args.default_image_size)
    return ModelSpec.resolved(defaults, sam2_config=args.sam2_config,
                              sam2_checkpoint=args.sam2_checkpoint,
                              fuser_checkpoint=args.fuser_checkpoint,
                              image_size=args.image_size, device=args.device,
                              mask_choice=args.mask_choice,
                              variant="refavs" if refavs else None,
                              text_encoder=getattr(args, "text_encoder", None) if refavs else None)


def _warn_random_weights(spec) -> None:
    if not (spec.sam2_checkpoint and spec.fuser_checkpoint):
        print("auralsam2: warning: no --sam2-checkpoint/--fuser-checkpoint given; using random "
              "weights, so the masks are meaningless", file=sys.stderr)


def _build_refavs_check_model(args):
    """``check --variant refavs``: the Ref-AVS model with distilroberta-base from the Hugging
    Face cache, or a tiny random text encoder when it is not cached (said on stderr)."""
    from .model_spec import BUNDLED
    from .text_encoder import TEXT_ENCODER_NAME, load_text_encoder, tiny_random_text_encoder
    from .weights import REGISTRY

    if args.sam2_config in (None, BUNDLED):
        raise ValueError("--variant refavs needs --sam2-config (the bundled demo model is an "
                         "AVS model), e.g. --sam2-config sam2_hiera_t")
    spec = _model_spec(args, refavs=True)
    if REGISTRY[TEXT_ENCODER_NAME].is_cached():
        encoder = load_text_encoder(TEXT_ENCODER_NAME)
    else:
        encoder = tiny_random_text_encoder()
        print(f"auralsam2: {TEXT_ENCODER_NAME} is not in the Hugging Face cache; using a tiny "
              f"random text encoder (`auralsam2 download {TEXT_ENCODER_NAME}` fetches the "
              "real one)", file=sys.stderr)
    _warn_random_weights(spec)
    return spec.build(text_encoder=encoder)


def cmd_check(args) -> int:
    t0 = time.perf_counter()
    refavs = args.variant == "refavs"
    model = _build_refavs_check_model(args) if refavs else _build_model(args)
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
        "weights": {"sam2": _weights_label(model, "sam2", args.sam2_checkpoint),
                    "fuser": _weights_label(model, "fuser", args.fuser_checkpoint)},
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


def _weights_label(model, part: str, given: str | None) -> str:
    if given:
        return given
    desc = (model.meta.get("checkpoints") or {}).get(part)
    return desc["path"] if desc else "random init"


def _check_bundled_refavs(spec) -> None:
    from .build import refer_model_dir

    if spec.image_size is not None or spec.sam2_checkpoint or spec.fuser_checkpoint \
            or spec.text_encoder:
        raise ValueError("the bundled Ref-AVS demo model has its own weights, input size "
                         "and text encoder; give --sam2-config with the checkpoints for "
                         "other ones")
    if not (refer_model_dir() / "model.json").is_file():
        raise ValueError("queries need a Ref-AVS model, and the bundled Ref-AVS demo model "
                         f"is not installed ({refer_model_dir()}); give the published one: "
                         "--sam2-config sam2_hiera_l --sam2-checkpoint sam2_hiera_large "
                         "--fuser-checkpoint auralsam2_refavs_best (text encoder: "
                         "`auralsam2 download distilroberta-base`)")
    print("auralsam2: using the bundled Ref-AVS demo model (tiny, trained on synthetic "
          "shapes; it knows only a few words)", file=sys.stderr)


def _check_bundled_avs(spec) -> None:
    if spec.image_size is not None:
        raise ValueError("the bundled demo model runs at its own input size; drop "
                         "--image-size, or give --sam2-config to build another model")
    if spec.sam2_checkpoint or spec.fuser_checkpoint:
        raise ValueError("the bundled demo model has its own weights; give --sam2-config "
                         "with --sam2-checkpoint/--fuser-checkpoint for other ones")
    print("auralsam2: using the bundled demo model (tiny, trained on synthetic clips; "
          "give --sam2-config/--*-checkpoint for the published model)", file=sys.stderr)


def _build_model(args):
    """The bundled demo model unless a SAM2 config, a checkpoint or (AVS) an input size is
    given; ``prelabel --query`` (``--variant refavs``): the Ref-AVS one."""
    refavs = getattr(args, "variant", None) == "refavs" and args.command == "prelabel"
    spec = _model_spec(args, refavs)
    if spec.bundled:
        (_check_bundled_refavs if refavs else _check_bundled_avs)(spec)
    else:
        _warn_random_weights(spec)
    return spec.build()


def cmd_prelabel(args) -> int:
    """Exit 0: every video done or up to date; 1: some video failed (each is reported and
    the others still run); 2: the command itself is wrong (options, --out unusable)."""
    from .engine import PrelabelOptions
    from .jobs import OutputOptions, outcome_line, prelabel_videos, prepare_out_dir
    from .results import Hysteresis

    opts = PrelabelOptions(clip_len=args.clip_len, stride=args.stride, no_audio=args.no_audio,
                           audio_track=args.audio_track, queries=args.query or ())
    if args.variant is None:  # queries name objects: only the Ref-AVS model reads them
        args.variant = "refavs" if opts.queries else "avs"
    if bool(opts.queries) != (args.variant == "refavs"):
        raise ValueError("--variant refavs needs at least one --query" if not opts.queries
                         else "--query needs the Ref-AVS model: drop --variant avs")
    if args.text_encoder and args.variant != "refavs":
        raise ValueError("--text-encoder is for the Ref-AVS model (--query)")
    outs = OutputOptions(png_masks=args.png_masks, overlay=args.overlay,
                         timeline=args.timeline, overwrite=args.overwrite,
                         hysteresis=Hysteresis(args.enter, args.exit, args.min_frames))
    out = prepare_out_dir(args.out)
    outcomes = prelabel_videos(lambda: _build_model(args), args.videos, out, opts, outs,
                               progress=not args.quiet)
    for o in outcomes:
        print(outcome_line(o))
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def cmd_weights(args) -> int:
    from .weights import REGISTRY, cache_dir

    print(f"cache: {cache_dir()}  (set AURALSAM2_HOME to move it)")
    for name, w in REGISTRY.items():
        state = "cached" if w.is_cached() else "-"
        print(f"{name:26s} {w.kind:22s} {state:7s} {w.url}")
    return 0


def cmd_download(args) -> int:
    from .weights import fetch

    for name in args.names:
        print(fetch(name))
    return 0


def _dataset_from_args(args, image_size: int):
    from .datasets import (
        AVSBenchMS3,
        AVSBenchS4,
        AVSBenchV2,
        CorrectedResultsDataset,
        ReferringClipDataset,
        SyntheticClipDataset,
    )

    if args.synthetic and args.variant == "refavs":
        return ReferringClipDataset(args.steps * args.batch_size, image_size=image_size,
                                    seed_base=args.seed * 10_000_000,
                                    render_size=args.render_size), False
    if args.synthetic:
        return SyntheticClipDataset(args.steps * args.batch_size, image_size=image_size,
                                    clip_len=args.clip_len, seed_base=args.seed * 10_000_000,
                                    render_size=args.render_size), False
    if args.avsbench_s4:
        return AVSBenchS4(args.avsbench_s4, args.split, image_size=image_size), True
    if args.avsbench_ms3:
        return AVSBenchMS3(args.avsbench_ms3, args.split, image_size=image_size), True
    if args.avsbench_v2:
        return AVSBenchV2(args.avsbench_v2, args.split, image_size=image_size), True
    return CorrectedResultsDataset(args.results, image_size=image_size,
                                   clip_len=args.clip_len), True


def cmd_train(args) -> int:
    from .losses import LossWeights
    from .train import TrainConfig, command_line, demo_spec, official_spec, train

    demo = args.model == "demo" if args.model else args.synthetic
    refer = args.variant == "refavs"
    if (args.text_encoder or args.fuser_init) and not refer:
        raise ValueError("--text-encoder and --fuser-init are for --variant refavs")
    given = {"sam2_config": args.sam2_config, "image_size": args.image_size,
             "mask_choice": args.mask_choice, "sam2_checkpoint": args.sam2_checkpoint,
             "fuser_checkpoint": args.fuser_checkpoint, "variant": args.variant,
             "text_encoder": args.text_encoder, "fuser_init": args.fuser_init}
    if args.fuser_config:
        given["fuser_config"] = json.loads(Path(args.fuser_config).read_text()) \
            if Path(args.fuser_config).is_file() else json.loads(args.fuser_config)
    given = {k: v for k, v in given.items() if v is not None}
    # demo: trained from scratch, BCE for the IoU head (see losses.py)
    spec = demo_spec(**given) if demo else official_spec(**given)
    iou_loss = args.iou_loss or ("bce" if demo else "l1")
    candidate = args.train_candidate
    if not args.unfreeze_sam2 and not spec.sam2_checkpoint:
        raise ValueError("SAM2 would stay frozen at random weights: give --sam2-checkpoint "
                         "or --unfreeze-sam2 (the demo model trains SAM2 from scratch)")
    if args.bundle and not (demo and args.synthetic and (args.unfreeze_sam2 or refer)):
        raise ValueError("--bundle packages a synthetic run of the demo model "
                         "(--synthetic; --unfreeze-sam2 for the AVS one)")
    dataset, shuffle = _dataset_from_args(args, spec.image_size)
    cfg = TrainConfig(out=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
                      grad_clip=args.grad_clip, seed=args.seed,
                      checkpoint_every=args.checkpoint_every, unfreeze_sam2=args.unfreeze_sam2,
                      loss_weights=LossWeights(contrastive=args.contrastive_weight,
                                               supervise_all_iou=not args.iou_best_only,
                                               iou_loss=iou_loss),
                      device=args.device, progress=not args.quiet, resume=args.resume,
                      threads=args.threads, train_candidate=candidate)
    evaluate = None
    if args.synthetic and args.eval_every and refer:
        from .refer_demo import quick_refer_checks

        def evaluate(model, step):
            r = quick_refer_checks(model, n=args.eval_clips)
            print(f"[step {step}] held-out: J referred {r['j_referred']:.3f}, J other query "
                  f"{r['j_other_query']:.3f}, null S {r['null_s']:.4f}, silent < 0.5 on "
                  f"{r['silent_low_confidence_fraction']:.1%} of frames", file=sys.stderr)
            return r
    elif args.synthetic and args.eval_every:
        from .demo import quick_audio_checks

        def evaluate(model, step):
            r = quick_audio_checks(model, n=args.eval_clips)
            print(f"[step {step}] held-out: J sounding {r['j_sounding']:.3f}, J swapped "
                  f"{r['j_swapped_audio']:.3f}, silent < 0.5 on "
                  f"{r['silent_low_confidence_fraction']:.1%} of frames", file=sys.stderr)
            return r
    if args.stop_after is not None and args.bundle:
        raise ValueError("--stop-after ends a stage early: bundle the run's last stage")
    result = train(cfg, dataset, spec, shuffle=shuffle, command=command_line(),
                   evaluate=evaluate, eval_every=args.eval_every, stop_after=args.stop_after)
    print(json.dumps({"out": str(result.out), "fuser": str(result.fuser),
                      "sam2": str(result.sam2) if result.sam2 else None,
                      "steps": result.steps, "seconds": round(result.seconds, 1),
                      "last_losses": result.last_losses}, indent=1))
    if args.bundle:
        from .train import export_demo_bundle, export_refer_demo_bundle

        bundle = (export_refer_demo_bundle if refer else export_demo_bundle)(args.out,
                                                                             args.bundle)
        print(json.dumps({"bundle": args.bundle, "files": bundle["files"],
                          "measured": {k: v for k, v in bundle["measured"].items()
                                       if k not in ("per_clip", "per_query")}}, indent=1))
    return 0


def cmd_refer_demo(args) -> int:
    """``demo --refer``: the bundled Ref-AVS demo model queried with referring expressions."""
    from .build import build_refer_demo_model
    from .refer_demo import REFER_PASS_MARKS, run_refer_demo

    if args.sam2_config or args.fuser_checkpoint or args.sam2_checkpoint:
        raise ValueError("demo --refer runs the bundled Ref-AVS demo model; drop --sam2-config "
                         "and the checkpoints")
    model = build_refer_demo_model(device=args.device)
    s = run_refer_demo(args.out, n_clips=args.clips, size=args.size, model=model)
    keys = ("j_referred", "f_referred", "j_other_query", "f_other_query", "null_s",
            "silent_low_confidence_fraction", "j_sounding_alone", "passed", "seconds")
    print(json.dumps({k: s[k] for k in keys if k in s}, indent=1))
    print(f"summary: {Path(args.out) / 'summary.json'}", file=sys.stderr)
    ok = all(s["passed"].get(k, False) for k in REFER_PASS_MARKS)
    print("demo --refer: checks PASSED" if ok else "demo --refer: checks FAILED",
          file=sys.stderr)
    return 0 if ok or not args.strict else 1


def cmd_demo(args) -> int:
    from .demo import PASS_MARKS, run_demo

    if args.refer:
        return cmd_refer_demo(args)
    if args.sam2_config or args.fuser_checkpoint or args.sam2_checkpoint:
        model = _build_model(args)
    else:
        from .build import build_demo_model

        model = build_demo_model(device=args.device)
    s = run_demo(args.out, n_clips=args.clips, size=args.size, model=model,
                 overlay=not args.no_overlay, timeline=not args.no_overlay,
                 progress=not args.quiet)
    keys = ("j_sounding", "f_sounding", "j_swapped_audio", "f_swapped_audio",
            "silent_low_confidence_fraction", "passed", "seconds")
    print(json.dumps({k: s[k] for k in keys}, indent=1))
    print(f"summary: {Path(args.out) / 'summary.json'}", file=sys.stderr)
    ok = all(s["passed"].get(k, False) for k in PASS_MARKS)
    print("demo: audio checks PASSED" if ok else "demo: audio checks FAILED", file=sys.stderr)
    return 0 if ok or not args.strict else 1


def cmd_eval(args) -> int:
    from .datasets import evaluate_predictions

    report = evaluate_predictions(args.pred, args.gt)
    d = report.to_dict()
    if args.json:
        Path(args.json).write_text(json.dumps(d, indent=1))
    for v in d["per_video"]:
        print(f"{v['name']:40s} J={v['J']:.4f} F={v['F']:.4f} frames={v['frames']}")
    print(f"overall ({d['protocol']}): J={d['J']:.4f} F={d['F']:.4f} J&F={d['J&F']:.4f} "
          f"over {d['num_videos']} videos, {d['num_frames']} frames")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .build import SAM2_CONFIGS
    from .model import MASK_CHOICES
    from .model_spec import CLI_DEFAULTS, DEFAULT_SAM2_CONFIG

    p = argparse.ArgumentParser(prog="auralsam2", description=__doc__)
    p.add_argument("--version", action="version", version=__version__)
    sub = p.add_subparsers(dest="command", required=True)

    def model_options(c: argparse.ArgumentParser, image_size: int) -> None:
        c.add_argument("--sam2-config", default=None,
                       help=f"one of {', '.join(SAM2_CONFIGS)}, a yaml path, or 'bundled' "
                            f"(published model: {DEFAULT_SAM2_CONFIG}). Default: the bundled "
                            "demo model when no checkpoint is given, else "
                            f"{CLI_DEFAULTS.config_with_weights}")
        c.add_argument("--sam2-checkpoint", help="Meta SAM2 checkpoint (path, URL or registry "
                                                 "name, e.g. sam2_hiera_large)")
        c.add_argument("--fuser-checkpoint", help="AuralSAM2 fuser checkpoint (e.g. "
                                                  "auralsam2_avs_v1m)")
        c.add_argument("--image-size", type=int, default=None,
                       help=f"SAM2 input size (default {image_size}; published model: 1024; "
                            "the bundled model has its own)")
        c.set_defaults(default_image_size=image_size)
        c.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
        c.add_argument("--mask-choice", default="iou_select", choices=MASK_CHOICES)

    c = sub.add_parser("check", help="build the model, verify the authors' layout and run one "
                                     "clip end to end (no downloads)")
    model_options(c, image_size=256)
    c.add_argument("--frames", type=int, default=None,
                   help="clip length T (authors: 5 for AVS, 10 for Ref-AVS)")
    c.add_argument("--variant", choices=("avs", "refavs"), default="avs",
                   help="refavs: the Ref-AVS (text-referred) fuser with its text encoder")
    c.add_argument("--text", default="the sounding object",
                   help="referring expression for --variant refavs")
    c.set_defaults(func=cmd_check)

    pl = sub.add_parser("prelabel", help="pre-label videos: one results JSON per video")
    pl.add_argument("videos", nargs="+", help="video files (any container/codec FFmpeg reads)")
    pl.add_argument("--out", required=True, help="results directory (created if needed)")
    model_options(pl, image_size=1024)
    pl.add_argument("--clip-len", type=int, default=None,
                    help="frames per fuser clip (default: the authors' T, 5; 10 with --query)")
    pl.add_argument("--query", action="append", default=None, metavar="TEXT",
                    help="Ref-AVS: name an object to segment, e.g. --query dog --query 'the "
                         "man playing the guitar' (one track each; up to 16)")
    pl.add_argument("--variant", choices=("avs", "refavs"), default=None,
                    help="model variant (default: refavs with --query, else avs)")
    pl.add_argument("--text-encoder", default=None,
                    help="Ref-AVS with checkpoints: text encoder, registry name or folder "
                         "(default distilroberta-base from the Hugging Face cache)")
    pl.add_argument("--stride", type=int, default=1, help="pre-label every N-th frame")
    pl.add_argument("--no-audio", choices=("error", "silent"), default="error",
                    help="video without audio: error (default) or mark every frame silent")
    pl.add_argument("--audio-track", type=int, default=None, metavar="N",
                    help="audio track to hear: the N-th audio track of each file, 0-based "
                         "(default: the track marked default, else the first)")
    pl.add_argument("--png-masks", action="store_true", help="also write one PNG per frame")
    pl.add_argument("--overlay", action="store_true",
                    help="also write a review video (tinted masks, original audio)")
    pl.add_argument("--timeline", action="store_true", help="also write a timeline plot PNG")
    pl.add_argument("--enter", type=float, default=0.6, help="interval starts at p >= this")
    pl.add_argument("--exit", type=float, default=0.4, help="interval ends at p < this")
    pl.add_argument("--min-frames", type=int, default=1, help="shortest interval kept")
    pl.add_argument("--overwrite", action="store_true",
                    help="redo videos whose results are up to date")
    pl.add_argument("--quiet", action="store_true", help="no progress bar")
    pl.set_defaults(func=cmd_prelabel)

    t = sub.add_parser("train", help="fine-tune the fuser (or train the demo model from "
                                     "scratch on synthetic clips)")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", action="store_true",
                     help="synthetic sounding-shape clips generated on the fly")
    src.add_argument("--avsbench-s4", metavar="ROOT", help="AVSBench Single-source folder")
    src.add_argument("--avsbench-ms3", metavar="ROOT", help="AVSBench Multi-sources folder")
    src.add_argument("--avsbench-v2", metavar="ROOT",
                     help="AVSBench-semantic folder (metadata.csv, v1s/, v1m/, v2/)")
    src.add_argument("--results", metavar="DIR", help="corrected pre-labels: results JSON "
                                                      "files (engine format) + their videos")
    t.add_argument("--out", required=True, help="run folder (weights, logs, checkpoints)")
    t.add_argument("--model", choices=("demo", "official"),
                   help="demo: tiny SAM2 yaml + compact fuser (default with --synthetic); "
                        "official: sam2_hiera_l at 1024 + the authors' fuser")
    t.add_argument("--sam2-config", help="override the SAM2 config (name or yaml)")
    t.add_argument("--image-size", type=int, help="override the input size")
    t.add_argument("--fuser-config", help="fuser config: JSON string or file")
    t.add_argument("--sam2-checkpoint", help="SAM2 weights to start from")
    t.add_argument("--fuser-checkpoint", help="fuser weights to start from")
    t.add_argument("--unfreeze-sam2", action="store_true",
                   help="train SAM2 too (needed when it starts from random weights)")
    t.add_argument("--variant", choices=("avs", "refavs"), default="avs",
                   help="refavs: the referring-expression model (with --synthetic: clips "
                        "with expressions naming a shape)")
    t.add_argument("--text-encoder",
                   help="refavs: text encoder (registry name, folder, or demo-words: the "
                        "demo's tiny word encoder; default distilroberta-base)")
    t.add_argument("--fuser-init", metavar="AVS_FUSER",
                   help="refavs: start the fuser from an AVS fuser's weights (the keys both "
                        "share; text_proj and the projection heads start fresh)")
    t.add_argument("--split", default="train", help="AVSBench split (default train)")
    t.add_argument("--steps", type=int, default=600)
    t.add_argument("--batch-size", type=int, default=8, help="clips per step")
    t.add_argument("--clip-len", type=int, default=5, help="frames per clip (authors: 5)")
    t.add_argument("--render-size", type=int, default=128,
                   help="synthetic clips are drawn at this size, then scaled to the input")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--weight-decay", type=float, default=0.05)
    t.add_argument("--warmup-steps", type=int, default=30)
    t.add_argument("--grad-clip", type=float, default=1.0)
    t.add_argument("--contrastive-weight", type=float, default=1.0)
    t.add_argument("--train-candidate", choices=("best", "first"), default="best",
                   help="mask candidate the mask losses train: best of 3 (published) or first")
    t.add_argument("--mask-choice", choices=("first", "iou_select", "iou_occ_select"),
                   help="inference mask choice saved with the model (default iou_select)")
    t.add_argument("--iou-loss", choices=("l1", "bce"),
                   help="IoU-head loss: l1 (published; default for --model official) or bce "
                        "(default for the demo model, trained from scratch)")
    t.add_argument("--iou-best-only", action="store_true",
                   help="IoU loss on the best candidate only (default: all three, as the "
                        "authors' config)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint-every", type=int, default=100)
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    t.add_argument("--stop-after", type=int, metavar="N",
                   help="stop after step N of the --steps schedule (checkpoint and fuser.pth "
                        "written): a first stage whose fuser the next stage starts from")
    t.add_argument("--eval-every", type=int, default=0,
                   help="synthetic: held-out audio checks every N steps (logged)")
    t.add_argument("--eval-clips", type=int, default=6)
    t.add_argument("--device", default="auto")
    t.add_argument("--threads", type=int, help="torch CPU threads")
    t.add_argument("--bundle", metavar="DIR",
                   help="afterwards, package the run as a demo model in DIR (model.json with "
                        "sha256s and the measured demo numbers)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    dm = sub.add_parser("demo", help="held-out synthetic clips pre-labelled by the bundled "
                                     "model through the engine; J with the real, swapped and "
                                     "no audio -> summary.json")
    dm.add_argument("--out", required=True)
    dm.add_argument("--clips", type=int, default=6, help="held-out clips (x3 variants)")
    dm.add_argument("--size", type=int, default=128, help="clip size in pixels (even)")
    dm.add_argument("--no-overlay", action="store_true", help="skip overlay videos/timelines")
    dm.add_argument("--strict", action="store_true", help="exit 1 when a check fails")
    dm.add_argument("--refer", action="store_true",
                    help="the Ref-AVS demo: the bundled referring-expression model queried "
                         "for each shape, a missing shape and a silent one")
    dm.add_argument("--quiet", action="store_true", help="no progress bars")
    model_options(dm, image_size=1024)
    dm.set_defaults(func=cmd_demo)

    ev = sub.add_parser("eval", help="AVSBench J and F of predictions against ground truth")
    ev.add_argument("pred", help="results folder (engine JSON files) or PNG tree "
                                 "(<video>/<frame>.png)")
    ev.add_argument("gt", help="ground-truth PNG tree (<video>/<frame>.png, 0/255)")
    ev.add_argument("--json", help="also write the full report here")
    ev.set_defaults(func=cmd_eval)

    w = sub.add_parser("weights", help="list the known weight files and the cache")
    w.set_defaults(func=cmd_weights)
    d = sub.add_parser("download", help="download weight files into the cache")
    d.add_argument("names", nargs="+", help="registry names or URLs")
    d.set_defaults(func=cmd_download)
    _register_plugin_commands(sub)
    return p


def _register_plugin_commands(sub) -> None:
    """Platform adapters add their subcommands (e.g. ``auralsam2 cvat``) through the
    ``auralsam2.commands`` entry-point group, so this core module imports no platform."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="auralsam2.commands"):
        try:
            register = ep.load()
        except ImportError as e:  # the platform's extra is not installed
            stub = sub.add_parser(ep.name, help=f"(unavailable: {e})")
            stub.set_defaults(func=lambda _a, e=e, n=ep.name: _unavailable(n, e))
            continue
        register(sub)


def _unavailable(name: str, error: Exception) -> int:
    print(f"auralsam2 {name}: this command needs its platform package ({error}); install the "
          f"matching extra, e.g. pip install -e '.[{name}]'", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "sam2_checkpoint", None) or getattr(args, "fuser_checkpoint", None):
        from .weights import fetch

        args.sam2_checkpoint = args.sam2_checkpoint and str(fetch(args.sam2_checkpoint))
        args.fuser_checkpoint = args.fuser_checkpoint and str(fetch(args.fuser_checkpoint))
    try:
        return args.func(args)
    except (ValueError, RuntimeError, OSError) as e:  # OSError: a path that cannot be used
        if isinstance(e, OSError) and e.strerror and e.filename:
            e = f"{e.strerror}: {e.filename}"
        print(f"auralsam2 {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
