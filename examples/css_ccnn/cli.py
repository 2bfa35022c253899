"""Command line: ``python -m examples.css_ccnn <command> [options]`` (run from the repository root).

Commands: ``train`` (everything on a dataset of yours), ``demo`` (everything on synthetic crowds),
the steps they run: ``make-synthetic``, ``stage1``, ``stage2``, ``baselines``, ``evaluate``, and
``families`` (the results tables of the synthetic families). They take the configuration options
(``--preset``, ``--config``, ``--set``, ``--cf-max``, ``--kind``, ``--device``, ``--seed``,
``--threads``, ``--data-root``, ``--out``); ``predict`` and ``export`` take a trained checkpoint
(its configuration is stored in it). ``python -m examples.css_ccnn <command> --help`` explains
each. Training commands resume from ``last.pt`` when it exists.

User errors (a bad option, a missing or damaged file) print one line ``error: ...`` and exit
with status 2; Ctrl-C prints one line saying where the run can be resumed and exits with 130.
Set the environment variable ``CSS_CCNN_TRACEBACK=1`` to see the full traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import pipeline
from .baselines import train_supervised
from .config import PRESETS, Config, DataConfig, make_config, save_config
from .data.datasets import KINDS
from .data.synthetic import FAMILY_NAMES
from .demo import run_demo
from .families import run_families
from .stage1 import train_stage1
from .stage2 import train_stage2
from .training import set_threads

__all__ = ["build_parser", "main"]

_EPILOG = """\
Configuration is resolved as: preset, then --config FILE (JSON or TOML with the same sections as
the resolved config.json every run writes), then each --set section.key=value (JSON values, e.g.
--set stage2.lr=1e-4 --set model.width=0.5 --set prior.cf_max=3000). Sections: data, model,
stage1, prior, stage2, baselines, eval. Presets: paper (the original code's hyper-parameters: SGD
lr 1e-3 / 1e-5, momentum 0.9, weight decay 1e-4, batch 4 / 32, crops 224, 1000 / 600 epochs,
patience 300, eps 0.1, scale 0.01; S_crop 4), cpu (the paper's geometry at half resolution with
a quarter-width network; the demo's), tiny (seconds; tests).

The prior (paper Section 3.1) needs one number from you, Cf_max (--cf-max), the approximate
largest number of people in an image. Derived without labels and printed before stage 2 (and
saved in config.json, prior_report.json and the checkpoints): S_crop (prior.crops_per_image), the
mean area of the training images as resized for training over the area of one crop's 3 x 3
cells; and S (prior.num_images), the size of the image collection Cf_max is the maximum of, by
default the number of images of the dataset, all splits (the paper: 482 for ShanghaiTech A).
λ solves CDF(Cf_max / (9 S_crop)) = 1 - 1/S; when no λ > 0 does (few images), λ = 0 is used with
a warning. Override any of them with --set prior.<key>=VALUE.
"""


def _common(
    parser: argparse.ArgumentParser,
    *,
    default_preset: str = "cpu",
    default_out: str = "runs/<preset>",
) -> None:
    g = parser.add_argument_group("configuration")
    g.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=default_preset,
        help=f"hyper-parameter preset (default: {default_preset})",
    )
    g.add_argument(
        "--config",
        metavar="FILE",
        help="JSON or TOML file with overrides (applied after the preset)",
    )
    g.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override one setting, e.g. --set stage2.epochs=100 (repeatable; applied last)",
    )
    g.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default=None,
        help="compute device (default: the config's, 'auto' = CUDA if available)",
    )
    g.add_argument("--seed", type=int, default=None, help="random seed of this run (default: 0)")
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (0 = torch's default; the cpu preset uses 1)",
    )
    g.add_argument(
        "--data-root",
        default=None,
        help="dataset root (default: the config's data.root, 'data/synthetic')",
    )
    g.add_argument(
        "--kind",
        choices=list(KINDS),
        default=None,
        help="dataset layout (default: data.kind, 'shanghaitech'; 'folder': any images, no labels)",
    )
    g.add_argument(
        "--cf-max",
        type=float,
        default=None,
        metavar="N",
        help="Cf_max, about the largest number of people in an image (sets prior.cf_max; "
        "synthetic datasets know theirs)",
    )
    g.add_argument("--out", default=None, help=f"run directory (default: {default_out})")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _command(sub, name: str, func, *, default_out: str = "runs/<preset>", **kwargs):
    """A sub-command parser with the configuration options, dispatching to ``func``."""
    p = sub.add_parser(
        name, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs
    )
    _common(p, default_out=default_out)
    p.set_defaults(func=func)
    return p


# --------------------------------------------------------------------------- make-synthetic


def _add_make_synthetic(sub) -> None:
    p = _command(
        sub,
        "make-synthetic",
        _cmd_make_synthetic,
        help="write a synthetic crowd dataset (ShanghaiTech layout)",
    )
    p.add_argument(
        "--num-train",
        type=int,
        default=None,
        help="training images (default: data.synthetic_num_train)",
    )
    p.add_argument(
        "--num-test", type=int, default=None, help="test images (default: data.synthetic_num_test)"
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="square image side in px (default: data.synthetic_image_size)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing dataset with other parameters"
    )


def _cmd_make_synthetic(args: argparse.Namespace, cfg: Config, out: Path) -> int:
    try:
        root = pipeline.make_synthetic_dataset(
            cfg,
            num_train=args.num_train,
            num_test=args.num_test,
            image_size=args.image_size,
            overwrite=args.overwrite,
        )
    except FileExistsError as err:  # the library says overwrite=True; here it is a flag
        raise FileExistsError(str(err).replace("overwrite=True", "--overwrite")) from None
    print(f"synthetic dataset at {root}")
    return 0


# --------------------------------------------------------------------------- stage1, stage2


def _add_stage1(sub) -> None:
    _command(
        sub, "stage1", _cmd_stage1, help="stage 1: rotation self-supervision of the FEN (no labels)"
    )


def _cmd_stage1(args: argparse.Namespace, cfg: Config, out: Path) -> int:
    target = pipeline.seed_dir(out, cfg.seed) / "stage1"
    result = train_stage1(
        pipeline.open_train(cfg, labels=False), cfg, target, progress=not args.no_progress
    )
    print(
        f"stage 1: best validation rotation accuracy {result.best_accuracy:.3f} "
        f"at epoch {result.fit.best_epoch}; checkpoint {result.best_path}"
    )
    return 0


def _add_stage2(sub) -> None:
    p = _command(
        sub,
        "stage2",
        _cmd_stage2,
        help="stage 2: Sinkhorn distribution matching of the density head (no labels)",
    )
    p.add_argument(
        "--variant",
        choices=["plain", "plus"],
        default="plain",
        help="plain = CSS-CCNN (L_sink); plus = CSS-CCNN++ (L++_sink, Canny pseudo-density split)",
    )
    p.add_argument(
        "--stage1-checkpoint",
        default=None,
        help="stage-1 checkpoint (default: <out>/seed<seed>/stage1/best.pt)",
    )
    p.add_argument(
        "--no-stage1",
        action="store_true",
        help="ablation 'Without Stage 1': a random frozen FEN (written to stage2_nostage1)",
    )


def _cmd_stage2(args: argparse.Namespace, cfg: Config, out: Path) -> int:
    sdir = pipeline.seed_dir(out, cfg.seed)
    if args.no_stage1:
        fen, target = None, sdir / "stage2_nostage1"
    else:
        fen = Path(args.stage1_checkpoint or sdir / "stage1" / "best.pt")
        if not fen.is_file():
            return _error(
                f"stage-1 checkpoint {fen} not found (run 'stage1' first or pass "
                "--stage1-checkpoint)"
            )
        target = sdir / f"stage2_{args.variant}"
    cfg = pipeline.prepare_prior(cfg, out)
    result = train_stage2(
        pipeline.open_train(cfg, labels=False),
        cfg,
        target,
        fen_checkpoint=fen,
        variant=args.variant,
        progress=not args.no_progress,
    )
    print(
        f"stage 2 ({args.variant}): best validation Sinkhorn loss {result.fit.best_metric:.4g} "
        f"at epoch {result.fit.best_epoch}; Cf_max {result.cf_max:g}, "
        f"λ {result.prior_lambda:.4g}; checkpoint {result.best_path}"
    )
    return 0


# --------------------------------------------------------------------------- baselines, evaluate


def _add_baselines(sub) -> None:
    p = _command(
        sub,
        "baselines",
        _cmd_baselines,
        help="train the labeled baselines (Fully Supervised, Self-Supervised with Labels)",
    )
    p.add_argument(
        "--which",
        nargs="+",
        choices=["full", "ssl"],
        default=["full", "ssl"],
        help="full = CCNN Fully Supervised, ssl = CCNN Self-Supervised with Labels "
        "(Random, Mean and P_prior need no training: 'evaluate' computes them)",
    )


def _cmd_baselines(args: argparse.Namespace, cfg: Config, out: Path) -> int:
    sdir = pipeline.seed_dir(out, cfg.seed)
    labeled = pipeline.open_train(cfg, labels=True)
    for mode in args.which:
        fen = sdir / "stage1" / "best.pt" if mode == "ssl" else None
        if fen is not None and not fen.is_file():
            return _error(f"{fen} not found (run 'stage1' first)")
        result = train_supervised(
            labeled,
            cfg,
            sdir / f"supervised_{mode}",
            mode=mode,
            fen_checkpoint=fen,
            progress=not args.no_progress,
        )
        print(
            f"baseline {mode}: best validation MAE {result.fit.best_metric:.2f} "
            f"at epoch {result.fit.best_epoch}"
        )
    return 0


def _add_evaluate(sub) -> None:
    p = _command(
        sub,
        "evaluate",
        _cmd_evaluate,
        help="evaluate every model of a run directory on the test set; write the table",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="seeds to evaluate (default: every seed<k> folder under --out)",
    )


def _cmd_evaluate(args: argparse.Namespace, cfg: Config, out: Path) -> int:
    seeds = args.seeds
    if seeds is None:
        seeds = sorted(int(p.name[4:]) for p in out.glob("seed*") if p.name[4:].isdigit())
    if not seeds:
        return _error(f"no seed<k> folders under {out}")
    save_config(cfg, out / "evaluate_config.json")
    table, _ = pipeline.evaluate_run(cfg, out, seeds, progress=not args.no_progress)
    print(table.markdown())
    print(f"written: {out / 'results.json'}, {out / 'results.csv'}, {out / 'results.md'}")
    return 0


# --------------------------------------------------------------------------- train


def _add_train(sub) -> None:
    p = _command(
        sub,
        "train",
        _cmd_train,
        default_out="runs/train",
        help="everything on your dataset: stage 1, CSS-CCNN, CSS-CCNN++; labeled baselines and "
        "evaluation where labels exist",
        description="Trains CSS-CCNN on the images under --data-root (layout --kind, default "
        "ShanghaiTech; --kind folder for a plain folder of images) from Cf_max alone: stage 1, "
        "then CSS-CCNN and CSS-CCNN++ on its frozen FEN. Where the training images have labels "
        "it also trains the labeled baselines, and where the test images have labels it "
        "evaluates every model (results.md). Interrupted runs resume where they stopped; a "
        "finished step is not retrained. Seeds --seed .. --seed + N - 1.",
    )
    p.add_argument("--seeds", type=int, default=1, help="independent runs (default 1)")
    p.add_argument(
        "--ablation", action="store_true", help="also run the 'Without Stage 1' ablation"
    )
    p.add_argument("--skip-supervised", action="store_true", help="skip the labeled baselines")


def _cmd_train(args: argparse.Namespace, cfg: Config, out: Path) -> int:
    if args.seeds < 1:
        return _error(f"--seeds must be >= 1, got {args.seeds}")
    seeds = list(range(cfg.seed, cfg.seed + args.seeds))
    t0 = time.perf_counter()
    run = pipeline.run_experiment(
        cfg,
        out,
        seeds,
        supervised=not args.skip_supervised,
        ablation=args.ablation,
        progress=not args.no_progress,
    )
    save_config(run["config"], out / "config.json")
    print(f"train finished in {time.perf_counter() - t0:.0f} s; run directory {out}")
    return 0


# --------------------------------------------------------------------------- demo


def _add_demo(sub) -> None:
    p = _command(
        sub,
        "demo",
        _cmd_demo,
        default_out="runs/demo",
        help="everything on a fresh synthetic dataset: data, stage 1, both stage-2 "
        "variants, baselines, evaluation, table and figures",
        description="Generates the synthetic dataset under <out>/data (unless --data-root or "
        "data.root is given), then for seeds 0..N-1 runs stage 1, CSS-CCNN, CSS-CCNN++ and the "
        "labeled baselines, evaluates everything, prints the table and writes figures and "
        "demo_summary.json (wall time, and whether CSS-CCNN's MAE <= 0.8 x the best of CCNN Mean "
        "and CCNN P_prior with CCNN Random worse than both). --seed is not used: see --seeds.",
    )
    p.add_argument(
        "--seeds", type=int, default=3, help="independent runs (seeds 0..N-1; default 3)"
    )
    p.add_argument(
        "--skip-supervised", action="store_true", help="skip the two labeled training baselines"
    )
    p.add_argument(
        "--ablation", action="store_true", help="also run the 'Without Stage 1' ablation"
    )


def _cmd_demo(args: argparse.Namespace, cfg: Config, out: Path) -> int:
    t0 = time.perf_counter()
    run_demo(
        cfg,
        out if args.out else Path("runs") / "demo",
        seeds=args.seeds,
        supervised=not args.skip_supervised,
        ablation=args.ablation,
        progress=not args.no_progress,
        data_root_given=cfg.data.root != DataConfig().root,  # default: <out>/data
    )
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return 0


# --------------------------------------------------------------------------- families


def _add_families(sub) -> None:
    p = _command(
        sub,
        "families",
        _cmd_families,
        default_out="runs/families",
        help="the whole experiment on every synthetic family (the results tables)",
        description="For each family: generate its dataset under <out>/data/<family>, train and "
        "evaluate everything (with the 'Without Stage 1' ablation) for seeds --seed .. --seed + "
        "N - 1 with one configuration, and write <out>/families.md and families.json.",
    )
    p.add_argument(
        "--families",
        nargs="+",
        choices=list(FAMILY_NAMES),
        default=["sparse", "medium", "dense", "blind"],
        help="families to run (default: sparse medium dense blind)",
    )
    p.add_argument("--seeds", type=int, default=3, help="independent runs (default 3)")
    p.add_argument("--num-train", type=int, default=60, help="training images (default 60)")
    p.add_argument("--num-test", type=int, default=30, help="test images (default 30)")


def _cmd_families(args: argparse.Namespace, cfg: Config, out: Path) -> int:
    run_families(
        cfg,
        out if args.out else Path("runs") / "families",
        families=args.families,
        seeds=list(range(cfg.seed, cfg.seed + args.seeds)),
        num_train=args.num_train,
        num_test=args.num_test,
        progress=not args.no_progress,
    )
    print(f"written: {out / 'families.md'}, {out / 'families.json'}")
    return 0


# --------------------------------------------------------------------------- predict, export


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="count people in images, folders and videos with a trained checkpoint",
        description="Counts every image (and every k-th frame of every video) with the density "
        "head of CHECKPOINT (a stage-2 or baseline best.pt). Writes OUT/counts.csv, "
        "OUT/counts.json and density overlays (OUT/overlays/*.png, *.mp4 for videos). Images are "
        "resized as in evaluation (the checkpoint's data.min_side / data.max_side) and tiled "
        "when a side exceeds --tile.",
    )
    p.add_argument(
        "checkpoint", help="a trained checkpoint, e.g. runs/cpu/seed0/stage2_plain/best.pt"
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, video files")
    p.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    p.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: auto"
    )
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    p.add_argument("--every", type=int, default=1, help="count every k-th video frame (default 1)")
    p.add_argument(
        "--tile", type=int, default=1024, help="largest tile side in pixels (default 1024)"
    )
    p.add_argument(
        "--min-side", type=int, default=None, help="default: the checkpoint's (0: no upscaling)"
    )
    p.add_argument(
        "--max-side", type=int, default=None, help="default: the checkpoint's (0: full resolution)"
    )
    p.add_argument("--no-overlays", action="store_true", help="write only the counts")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_cmd_predict, standalone=True)


def _side(value: int | None, name: str) -> int | str | None:
    if value is None:
        return "checkpoint"
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value or None


def _cmd_predict(args: argparse.Namespace) -> int:
    from .counter import load_counter
    from .predict import predict

    set_threads(args.threads)
    counter = load_counter(
        args.checkpoint,
        device=args.device,
        min_side=_side(args.min_side, "--min-side"),
        max_side=_side(args.max_side, "--max-side"),
        tile=args.tile,
        batch_size=args.batch_size,
    )
    summary = predict(
        counter,
        args.inputs,
        args.out,
        every=args.every,
        overlays=not args.no_overlays,
        progress=not args.no_progress,
    )
    rate = (summary.images + summary.frames) / max(summary.seconds, 1e-9)
    print(
        f"counted {summary.images} images and {summary.frames} video frames "
        f"({rate:.1f} per second), total {summary.total:.1f} people; written: "
        f"{summary.csv_path}, {summary.json_path}"
        + (f", {summary.overlay_dir}/" if summary.overlay_dir is not None else "")
    )
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained checkpoint to ONNX and TorchScript",
        description="Writes OUT/NAME.onnx (dynamic batch, height and width) and/or "
        "OUT/NAME.torchscript.pt. Input: (B, 3, H, W) float32 RGB 0-255, H and W multiples of 8; "
        "outputs: density (B, 1, H/8, W/8) and count (B,). The resizing settings are stored in "
        "the files' metadata.",
    )
    p.add_argument("checkpoint", help="a trained checkpoint (stage-2 or baseline best.pt)")
    p.add_argument(
        "--format",
        nargs="+",
        choices=["onnx", "torchscript"],
        default=["onnx", "torchscript"],
        help="what to write (default: both)",
    )
    p.add_argument("--out", default=None, help="output folder (default: the checkpoint's)")
    p.add_argument("--name", default=None, help="file stem (default: the checkpoint's, e.g. best)")
    p.set_defaults(func=_cmd_export, standalone=True)


def _cmd_export(args: argparse.Namespace) -> int:
    from .counter import load_counter
    from .export import export_onnx, export_torchscript

    checkpoint = Path(args.checkpoint)
    counter = load_counter(checkpoint, device="cpu")
    out = Path(args.out) if args.out else checkpoint.parent
    name = args.name or checkpoint.stem
    written = []
    if "onnx" in args.format:
        written.append(export_onnx(counter, out / f"{name}.onnx"))
    if "torchscript" in args.format:
        written.append(export_torchscript(counter, out / f"{name}.torchscript.pt"))
    print(f"written: {', '.join(map(str, written))}")
    return 0


# --------------------------------------------------------------------------- entry point

_COMMANDS = (
    _add_train,
    _add_demo,
    _add_make_synthetic,
    _add_stage1,
    _add_stage2,
    _add_baselines,
    _add_evaluate,
    _add_families,
    _add_predict,
    _add_export,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m examples.css_ccnn`` parser: one sub-command per step."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.css_ccnn",
        description="CSS-CCNN (Babu Sam et al.): completely self-supervised crowd counting by "
        "matching the distribution of predicted cell counts to a power-law prior with Sinkhorn "
        "losses from sinkmatch.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")
    for add in _COMMANDS:
        add(sub)
    return parser


def resolve(args: argparse.Namespace) -> tuple[Config, Path]:
    """The configuration and run directory of parsed arguments."""
    overrides = list(args.overrides)
    if args.device is not None:
        overrides.append(f"device={json.dumps(args.device)}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.threads is not None:
        overrides.append(f"threads={args.threads}")
    if args.data_root is not None:
        overrides.append(f"data.root={json.dumps(args.data_root)}")
    if args.kind is not None:
        overrides.append(f"data.kind={json.dumps(args.kind)}")
    if args.cf_max is not None:
        overrides.append(f"prior.cf_max={args.cf_max!r}")
    cfg = make_config(args.preset, file=args.config, overrides=overrides)
    out = Path(args.out) if args.out else Path("runs") / args.preset
    return cfg, out


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


_USER_ERRORS = (ValueError, TypeError, OSError, ImportError)


def _run(args: argparse.Namespace) -> int:
    if getattr(args, "standalone", False):  # predict, export: the checkpoint holds the config
        return args.func(args)
    cfg, out = resolve(args)
    set_threads(cfg.threads)
    return args.func(args, cfg, out)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, resolve the configuration and run the command; returns the exit code.

    User errors print one line and return 2, Ctrl-C prints one line and returns 130 (module
    docstring); ``CSS_CCNN_TRACEBACK=1`` re-raises them instead.
    """
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt as err:
        if os.environ.get("CSS_CCNN_TRACEBACK"):
            raise
        print(" ".join(str(err).split()) or "interrupted", file=sys.stderr)
        return 130
    except _USER_ERRORS as err:
        if os.environ.get("CSS_CCNN_TRACEBACK"):
            raise
        return _error(" ".join(str(err).split()) or type(err).__name__)
