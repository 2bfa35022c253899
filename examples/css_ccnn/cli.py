"""Command line: ``python -m examples.css_ccnn <command> [options]`` (run from the repository root).

Commands: ``make-synthetic``, ``stage1``, ``stage2``, ``baselines``, ``evaluate``, ``demo``.
Every command takes the configuration options (``--preset``, ``--config``, ``--set``,
``--device``, ``--seed``, ``--threads``, ``--data-root``, ``--out``); ``python -m examples.css_ccnn
<command> --help`` explains each. Training commands resume from ``last.pt`` when it exists.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .config import PRESETS, Config, make_config, save_config

__all__ = ["build_parser", "main"]

_EPILOG = """\
Configuration is resolved as: preset, then --config FILE (JSON or TOML with the same sections as
the resolved config.json every run writes), then each --set section.key=value (JSON values, e.g.
--set stage2.lr=1e-4 --set model.width=0.5 --set prior.cf_max=3000). Sections: data, model,
stage1, prior, stage2, baselines, eval. Presets: paper (the original code's hyper-parameters: SGD
lr 1e-3 / 1e-5, momentum 0.9, weight decay 1e-4, batch 4 / 32, crops 224, 1000 / 600 epochs,
patience 300, eps 0.1, scale 0.01), cpu (small and fast, used by the demo), tiny (seconds; tests).
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
    g.add_argument("--out", default=None, help=f"run directory (default: {default_out})")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.css_ccnn",
        description="CSS-CCNN (Babu Sam et al.): completely self-supervised crowd counting by "
        "matching the distribution of predicted cell counts to a power-law prior with Sinkhorn "
        "losses from sinkmatch.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")

    p = sub.add_parser(
        "make-synthetic",
        help="write a synthetic crowd dataset (ShanghaiTech layout)",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
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

    p = sub.add_parser(
        "stage1",
        help="stage 1: rotation self-supervision of the FEN (no labels)",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)

    p = sub.add_parser(
        "stage2",
        help="stage 2: Sinkhorn distribution matching of the density head (no labels)",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
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

    p = sub.add_parser(
        "baselines",
        help="train the labeled baselines (Fully Supervised, Self-Supervised with Labels)",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    p.add_argument(
        "--which",
        nargs="+",
        choices=["full", "ssl"],
        default=["full", "ssl"],
        help="full = CCNN Fully Supervised, ssl = CCNN Self-Supervised with Labels "
        "(Random, Mean and P_prior need no training: 'evaluate' computes them)",
    )

    p = sub.add_parser(
        "evaluate",
        help="evaluate every model of a run directory on the test set; write the table",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="seeds to evaluate (default: every seed<k> folder under --out)",
    )

    p = sub.add_parser(
        "demo",
        help="everything on a fresh synthetic dataset: data, stage 1, both stage-2 "
        "variants, baselines, evaluation, table and figures",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generates the synthetic dataset under <out>/data (unless --data-root or "
        "data.root is given), then for seeds 0..N-1 runs stage 1, CSS-CCNN, CSS-CCNN++ and the "
        "labeled baselines, evaluates everything, prints the table and writes figures and "
        "demo_summary.json (wall time, and whether CSS-CCNN's MAE <= 0.8 x the best of CCNN Mean "
        "and CCNN P_prior with CCNN Random worse than both). --seed is not used: see --seeds.",
    )
    _common(p, default_out="runs/demo")
    p.add_argument(
        "--seeds", type=int, default=3, help="independent runs (seeds 0..N-1; default 3)"
    )
    p.add_argument(
        "--skip-supervised", action="store_true", help="skip the two labeled training baselines"
    )
    p.add_argument(
        "--ablation", action="store_true", help="also run the 'Without Stage 1' ablation"
    )
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
    cfg = make_config(args.preset, file=args.config, overrides=overrides)
    out = Path(args.out) if args.out else Path("runs") / args.preset
    return cfg, out


def _make_synthetic(cfg: Config, args: argparse.Namespace | None = None) -> Path:
    from .data.synthetic import make_synthetic

    d = cfg.data
    num_train = getattr(args, "num_train", None) or d.synthetic_num_train
    num_test = getattr(args, "num_test", None) or d.synthetic_num_test
    size = getattr(args, "image_size", None) or d.synthetic_image_size
    return make_synthetic(
        d.root,
        num_train=num_train,
        num_test=num_test,
        image_size=(size, size),
        count_range=(d.synthetic_count_min, d.synthetic_count_max),
        seed=d.synthetic_seed,
        overwrite=bool(getattr(args, "overwrite", False)),
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg, out = resolve(args)
    from .training import set_threads

    set_threads(cfg.threads)
    progress = not args.no_progress
    from . import pipeline

    if args.command == "make-synthetic":
        root = _make_synthetic(cfg, args)
        print(f"synthetic dataset at {root}")
        return 0
    if args.command == "stage1":
        from .stage1 import train_stage1

        target = pipeline.seed_dir(out, cfg.seed) / "stage1"
        result = train_stage1(
            pipeline.open_train(cfg, labels=False), cfg, target, progress=progress
        )
        print(
            f"stage 1: best validation rotation accuracy {result.best_accuracy:.3f} "
            f"at epoch {result.fit.best_epoch}; checkpoint {result.best_path}"
        )
        return 0
    if args.command == "stage2":
        from .stage2 import train_stage2

        sdir = pipeline.seed_dir(out, cfg.seed)
        if args.no_stage1:
            fen, target = None, sdir / "stage2_nostage1"
        else:
            fen = (
                Path(args.stage1_checkpoint)
                if args.stage1_checkpoint
                else sdir / "stage1" / "best.pt"
            )
            if not fen.is_file():
                print(
                    f"error: stage-1 checkpoint {fen} not found (run 'stage1' first or pass "
                    "--stage1-checkpoint)",
                    file=sys.stderr,
                )
                return 2
            target = sdir / f"stage2_{args.variant}"
        result = train_stage2(
            pipeline.open_train(cfg, labels=False),
            cfg,
            target,
            fen_checkpoint=fen,
            variant=args.variant,
            progress=progress,
        )
        print(
            f"stage 2 ({args.variant}): best validation Sinkhorn loss {result.fit.best_metric:.4g} "
            f"at epoch {result.fit.best_epoch}; Cf_max {result.cf_max:g}, λ {result.prior_lambda:.4g}; "
            f"checkpoint {result.best_path}"
        )
        return 0
    if args.command == "baselines":
        from .baselines import train_supervised

        sdir = pipeline.seed_dir(out, cfg.seed)
        labeled = pipeline.open_train(cfg, labels=True)
        for mode in args.which:
            fen = sdir / "stage1" / "best.pt" if mode == "ssl" else None
            if fen is not None and not fen.is_file():
                print(f"error: {fen} not found (run 'stage1' first)", file=sys.stderr)
                return 2
            result = train_supervised(
                labeled,
                cfg,
                sdir / f"supervised_{mode}",
                mode=mode,
                fen_checkpoint=fen,
                progress=progress,
            )
            print(
                f"baseline {mode}: best validation MAE {result.fit.best_metric:.2f} at epoch {result.fit.best_epoch}"
            )
        return 0
    if args.command == "evaluate":
        seeds = args.seeds
        if seeds is None:
            seeds = sorted(int(p.name[4:]) for p in out.glob("seed*") if p.name[4:].isdigit())
        if not seeds:
            print(f"error: no seed<k> folders under {out}", file=sys.stderr)
            return 2
        save_config(cfg, out / "evaluate_config.json")
        table, _ = pipeline.evaluate_run(cfg, out, seeds, progress=progress)
        print(table.markdown())
        print(f"written: {out / 'results.json'}, {out / 'results.csv'}, {out / 'results.md'}")
        return 0
    if args.command == "demo":
        from .demo import run_demo

        t0 = time.perf_counter()
        from .config import DataConfig

        root_given = cfg.data.root != DataConfig().root  # default: <out>/data
        run_demo(
            cfg,
            out if args.out else Path("runs") / "demo",
            seeds=args.seeds,
            supervised=not args.skip_supervised,
            ablation=args.ablation,
            progress=progress,
            data_root_given=root_given,
        )
        print(f"demo finished in {time.perf_counter() - t0:.0f} s")
        return 0
    raise AssertionError(args.command)  # argparse restricts commands
