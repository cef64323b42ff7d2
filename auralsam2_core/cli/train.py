"""``auralsam2 train``: fine-tune the fuser, or train the demo models on synthetic clips."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _dataset_from_args(args, image_size: int):
    from auralsam2_core.training.datasets import (
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
                                    render_size=args.render_size,
                                    queries_per_clip=args.queries_per_clip,
                                    num_objects=args.num_objects,
                                    focus_shapes=args.focus_shapes.split(",")
                                    if args.focus_shapes else None,
                                    focus_fraction=args.focus_fraction,
                                    **_schedule_weights(args.schedule_weights)), False
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


def _schedule_weights(text: str | None) -> dict:
    """``--schedule-weights all=0.5,one=0.3,...`` as ReferringClipDataset keywords."""
    if not text:
        return {}
    pairs = [part.split("=", 1) for part in text.split(",")]
    try:
        weights = {name.strip(): float(w) for name, w in pairs}
    except ValueError:
        raise ValueError(f"--schedule-weights: expected name=weight,... got {text!r}") from None
    from auralsam2_core.training.synthetic import SCHEDULES

    unknown = set(weights) - set(SCHEDULES)
    if unknown or any(w < 0 for w in weights.values()) or not sum(weights.values()):
        raise ValueError(f"--schedule-weights: schedules are {', '.join(SCHEDULES)} with "
                         f"weights >= 0, not all 0; got {text!r}")
    return {"schedules": tuple(weights), "schedule_weights": tuple(weights.values())}


def cmd_train(args) -> int:
    from auralsam2_core.training.losses import LossWeights
    from auralsam2_core.training.train import (
        TrainConfig,
        command_line,
        demo_spec,
        official_spec,
        train,
    )

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
                      threads=args.threads, train_candidate=candidate,
                      text_lr_scale=args.text_lr_scale, sound_id_weight=args.sound_id_weight,
                      sound_id_rows=args.sound_id_rows)
    evaluate = None
    if args.synthetic and args.eval_every:
        from auralsam2_core.evaluation.demo import quick_audio_checks
        from auralsam2_core.evaluation.refer_demo import quick_refer_checks

        checks, heard = (quick_refer_checks, lambda r: (
            f"J referred {r['j_referred']:.3f}, J other query {r['j_other_query']:.3f}, "
            f"null S {r['null_s']:.4f}")) if refer else (quick_audio_checks, lambda r: (
                f"J sounding {r['j_sounding']:.3f}, J swapped {r['j_swapped_audio']:.3f}"))

        def evaluate(model, step):
            r = checks(model, n=args.eval_clips)
            print(f"[step {step}] held-out: {heard(r)}, silent < 0.5 on "
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
        from auralsam2_core.training.train import export_demo_bundle, export_refer_demo_bundle

        bundle = (export_refer_demo_bundle if refer else export_demo_bundle)(args.out,
                                                                             args.bundle)
        print(json.dumps({"bundle": args.bundle, "files": bundle["files"],
                          "measured": {k: v for k, v in bundle["measured"].items()
                                       if k not in ("per_clip", "per_query")}}, indent=1))
    return 0


def register(sub) -> None:
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
    t.add_argument("--queries-per-clip", type=int, default=1, metavar="K",
                   help="--synthetic --variant refavs: K consecutive samples share a clip and "
                        "name different shapes in it (or a missing one), so that only the "
                        "text tells them apart (keep --batch-size a multiple of K)")
    t.add_argument("--schedule-weights", metavar="NAME=W,...",
                   help="--synthetic --variant refavs: how often each sound schedule is drawn "
                        "(mixed, one, all, silent; default mixed=0.35,one=0.3,all=0.25,"
                        "silent=0.1)")
    t.add_argument("--num-objects", type=int, metavar="K",
                   help="--synthetic --variant refavs: shapes per clip (default 2 or 3)")
    t.add_argument("--focus-shapes", metavar="A,B",
                   help="--synthetic --variant refavs: this share (--focus-fraction) of the "
                        "clips shows exactly these shapes (e.g. disc,square: the pair hardest "
                        "to tell apart by name)")
    t.add_argument("--focus-fraction", type=float, default=0.5)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--text-lr-scale", type=float, default=1.0, metavar="X",
                   help="Ref-AVS: text_proj learns at X times --lr")
    t.add_argument("--sound-id-weight", type=float, default=0.0, metavar="W",
                   help="--synthetic: add W x a training-only loss that makes the audio "
                        "embedding tell which shapes sound (how the Ref-AVS demo learns to "
                        "tell the disc's tone from the square's)")
    t.add_argument("--sound-id-rows", choices=("embedding", "prompts"), default="embedding",
                   help="what the sound-identity loss reads: the audio encoder's embedding, or "
                        "the fuser's audio rows that reach SAM2's decoder")
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
