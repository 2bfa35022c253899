# ruff: noqa: UP045  (typing.get_type_hints must evaluate these annotations on Python 3.9)
"""Configuration of the CSS-CCNN example: typed sections, presets, overrides, files.

A run is described by one :class:`Config` (nested dataclasses, one per stage). It is built from a
preset (``paper``: the original hyper-parameters; ``cpu``: small and fast, the demo's; ``tiny``:
seconds, for tests), then a JSON/TOML file, then ``--set section.key=value`` overrides, in that
order. Every run writes the resolved configuration next to its outputs (:func:`save_config`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .checkpoint import atomic_write_text

__all__ = [
    "PRESETS",
    "BaselineConfig",
    "Config",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "PriorConfig",
    "Stage1Config",
    "Stage2Config",
    "apply_overrides",
    "cell_size",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "make_config",
    "save_config",
]


@dataclass
class DataConfig:
    """Where the images are and how they are prepared.

    Attributes:
        root: dataset root (ShanghaiTech layout for ``kind="shanghaitech"``, see ``data/``).
        kind: dataset kind passed to ``open_dataset``.
        fold: UCF-CC-50 fold (``None`` elsewhere).
        val_fraction: fraction of the *training* images held out for label-free validation
            (the paper: 10 %).
        split_seed: seed of the train/validation split (the same for every stage and seed).
        scale, min_side, max_side: images are scaled by ``scale``, then resized so the short side
            is at least ``min_side`` and the long side at most ``max_side``, then to a multiple of 8
            (train and test alike). The paper: 1, 224, 1024.
        cache_images: keep the resized training images in memory.
        synthetic_*: settings of ``make-synthetic`` (and of the demo's dataset): the family
            (``data.synthetic.FAMILY_NAMES``) and, where not ``None``, a fixed square image size
            and count range replacing the family's.
    """

    root: str = "data/synthetic"
    kind: str = "shanghaitech"
    fold: Optional[int] = None
    val_fraction: float = 0.1
    split_seed: int = 0
    scale: float = 1.0
    min_side: int = 224
    max_side: int = 1024
    cache_images: bool = True
    synthetic_family: str = "default"
    synthetic_num_train: int = 60
    synthetic_num_test: int = 20
    synthetic_image_size: Optional[int] = None
    synthetic_count_min: Optional[int] = None
    synthetic_count_max: Optional[int] = None
    synthetic_seed: int = 0


@dataclass
class ModelConfig:
    """Network shape.

    Attributes:
        width: channel multiplier (1.0 = the paper's 64/128/256 FEN channels).
        rotations: number of rotation classes of stage 1 (2, 4 or 8).
    """

    width: float = 1.0
    rotations: int = 4


@dataclass
class Stage1Config:
    """Stage 1: rotation self-supervision (paper Section 3.2).

    Attributes:
        crop_size: random crop side; the network sees its rotated centre (``crop_size // 2``).
        batch_size, epochs, lr, momentum, weight_decay, optimizer: optimisation
            (``sgd`` | ``adam``).
        schedule: ``constant`` (the paper) or ``cosine`` (lr · (1 + cos(π e / epochs)) / 2 at
            epoch e; a function of the epoch only, so resuming stays exact).
        patience: stop when validation rotation accuracy has not improved for this many epochs.
        crops_per_image: random crops drawn from each training image per epoch.
        val_crops_per_image: fixed crop positions per validation image (each in every rotation).
        hflip: random horizontal flips.
    """

    crop_size: int = 224
    batch_size: int = 4
    epochs: int = 1000
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    optimizer: str = "sgd"
    schedule: str = "constant"
    patience: int = 300
    crops_per_image: int = 1
    val_crops_per_image: int = 4
    hflip: bool = True


@dataclass
class PriorConfig:
    r"""The count prior (paper Section 3.1), fixed from Cf_max.

    λ solves the tail rule :math:`F(C_{max}) = 1 - 1/S` with
    :math:`C_{max} = Cf_{max} / (M N S_{crop})`: the fullest cell is a 1-in-S event.

    Attributes:
        cf_max: maximum crowd count of a full image (the one number the user gives); ``None``
            reads ``cf_max`` from the dataset's ``synthetic.json`` (an error for real datasets).
        num_images: S, the size of the image collection the maximum is taken over (the paper:
            the whole data set, 482 images for ShanghaiTech A); ``None``: the number of images of
            the dataset, all splits (counting images reads no label). When no λ > 0 meets the
            rule (few images, large C_max), λ = 0 is used with a warning (see ``prior.py``).
        alpha: power-law exponent.
        grid: cells per crop side (M = N).
        crops_per_image: S_crop, the average number of crops that make up a training image;
            ``None``: measured from the training images as resized for training (their mean
            area over the area the crop's M × N cells cover). The ``paper`` preset keeps 4.
        head_mass: probability mass redistributed uniformly to [0, 1].
        mode: ``exact`` (normalised CDF) or ``legacy`` (the original code's λ and threshold).
    """

    cf_max: Optional[float] = None
    num_images: Optional[float] = None
    alpha: float = 2.0
    grid: int = 3
    crops_per_image: Optional[float] = None
    head_mass: float = 0.3
    mode: str = "exact"


@dataclass
class Stage2Config:
    """Stage 2: Sinkhorn distribution matching (paper Sections 3.3-3.4).

    Attributes:
        crop_size: training crop side (multiple of 8); the output is ``crop_size / 8`` wide.
        cell_size: cell side in output pixels (the original: 8, i.e. 3×3 cells of a 28×28
            output with the last 4 rows/columns dropped); ``None``: ``crop_size // 8 // grid``.
        batch_size, epochs, lr, momentum, weight_decay, optimizer: optimisation.
        schedule: ``constant`` or ``cosine`` (see :class:`Stage1Config`).
        crops_per_image: random crops per training image per epoch.
        prior_samples_per_crop: prior samples drawn per crop (original: 7 * 7 = 49 for 9 cells);
            ``None``: as many samples as predicted cells.
        eps, scale, value: Sinkhorn settings of ``DistributionMatchingLoss``.
        split_percentile: CSS-CCNN++ split of the Canny pseudo density (percent).
        patience, ma_window: label-free early stopping on the moving average of the validation
            Sinkhorn loss.
        val_crops_per_image: fixed crop positions per validation image for that loss.
        cache_features: compute the frozen FEN once per training image (and its mirror) and take
            crops on the feature maps (exact up to zero padding at crop borders; much faster).
        solver: extra keyword arguments for the Sinkhorn solver.
    """

    crop_size: int = 224
    cell_size: Optional[int] = 8
    batch_size: int = 32
    epochs: int = 600
    lr: float = 1e-5
    momentum: float = 0.9
    weight_decay: float = 1e-4
    optimizer: str = "sgd"
    schedule: str = "constant"
    crops_per_image: int = 1
    prior_samples_per_crop: Optional[int] = 49
    eps: float = 0.1
    scale: float = 0.01
    value: str = "transport"
    split_percentile: float = 30.0
    patience: int = 300
    ma_window: int = 5
    val_crops_per_image: int = 4
    cache_features: bool = False
    solver: dict = field(default_factory=dict)


@dataclass
class BaselineConfig:
    """The labeled baselines (CCNN Fully Supervised, CCNN Self-Supervised with Labels).

    Attributes:
        crop_size, batch_size, epochs, lr, momentum, weight_decay, optimizer: optimisation of the
            MSE-on-density-maps training.
        schedule: ``constant`` or ``cosine`` (see :class:`Stage1Config`).
        crops_per_image: random crops per training image per epoch.
        sigma: Gaussian σ of the ground-truth density maps (1/8 resolution pixels).
        patience: early stopping on validation MAE (these baselines are labeled).
        prior_draws: independent draws averaged per image for CCNN P_prior (1 = the paper's single
            random draw).
    """

    crop_size: int = 224
    batch_size: int = 4
    epochs: int = 300
    lr: float = 1e-5
    momentum: float = 0.9
    weight_decay: float = 1e-4
    optimizer: str = "sgd"
    schedule: str = "constant"
    crops_per_image: int = 1
    sigma: float = 1.0
    patience: int = 50
    prior_draws: int = 1


@dataclass
class EvalConfig:
    """Evaluation on full test images.

    Attributes:
        game_levels: GAME(0..L) with 4^L regions.
    """

    game_levels: int = 3


@dataclass
class Config:
    """A complete run description.

    Attributes:
        derived: settings derived from the data (S_crop, S, Cf_max, λ) with their sources, filled
            in by :func:`examples.css_ccnn.prior.resolve_prior` and saved with the run.
    """

    preset: str = "paper"
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    prior: PriorConfig = field(default_factory=PriorConfig)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    derived: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- presets

_PAPER: dict[str, Any] = {"preset": "paper", "prior": {"crops_per_image": 4.0}}

_CPU: dict[str, Any] = {
    "preset": "cpu",
    "threads": 1,
    "data": {
        # the paper's geometry at half resolution: images halved (bounds 224/1024 -> 112/512),
        # crops 224 -> 96 with 3 x 3 cells of 32 px (the paper: 64 px)
        "scale": 0.5,
        "min_side": 112,
        "max_side": 512,
        "val_fraction": 0.2,
        "synthetic_family": "medium",  # the demo's dataset: 40 training, 20 test images
        "synthetic_num_train": 40,
        "synthetic_num_test": 20,
    },
    "model": {"width": 0.25},
    # schedules chosen from label-free curves only (docs/css_ccnn.md, "How the cpu preset was
    # chosen"): stage-1 validation rotation accuracy, stage-2 validation Sinkhorn loss
    "stage1": {
        "crop_size": 128,  # the network sees the rotated centre 64 px
        "batch_size": 32,
        "epochs": 30,
        "lr": 1e-3,
        "optimizer": "adam",
        "schedule": "cosine",
        "weight_decay": 1e-4,
        "patience": 30,
        "crops_per_image": 16,
        "val_crops_per_image": 16,
    },
    "stage2": {
        "crop_size": 96,
        "batch_size": 32,
        "epochs": 30,
        "lr": 3e-4,
        "optimizer": "adam",
        "schedule": "cosine",
        "weight_decay": 0.0,
        "crops_per_image": 16,
        "patience": 30,
        "ma_window": 3,
        "val_crops_per_image": 8,
        "cache_features": True,
        "cell_size": None,
        "prior_samples_per_crop": None,
        "value": "regularized",
        "solver": {"init": "exact1d", "tol": 0.01},
    },
    "baselines": {
        "crop_size": 96,
        "batch_size": 16,
        "epochs": 20,
        "lr": 1e-3,
        "optimizer": "adam",
        "schedule": "cosine",
        "weight_decay": 0.0,
        "crops_per_image": 8,
        "patience": 20,
    },
}

_TINY: dict[str, Any] = {
    "preset": "tiny",
    "data": {
        "val_fraction": 0.34,
        "min_side": 64,
        "max_side": 128,
        "synthetic_num_train": 6,
        "synthetic_num_test": 3,
        "synthetic_family": "default",
        "synthetic_image_size": 96,
        "synthetic_count_min": 20,
        "synthetic_count_max": 150,
    },
    "model": {"width": 0.125},
    "stage1": {
        "crop_size": 64,
        "batch_size": 4,
        "epochs": 2,
        "lr": 1e-3,
        "optimizer": "adam",
        "patience": 2,
        "crops_per_image": 1,
        "val_crops_per_image": 1,
    },
    "stage2": {
        "crop_size": 48,
        "batch_size": 4,
        "epochs": 2,
        "lr": 1e-3,
        "optimizer": "adam",
        "crops_per_image": 1,
        "patience": 2,
        "ma_window": 2,
        "cache_features": True,
        "cell_size": None,
    },
    "baselines": {
        "crop_size": 48,
        "batch_size": 4,
        "epochs": 2,
        "lr": 1e-3,
        "optimizer": "adam",
        "patience": 2,
    },
    "eval": {"game_levels": 2},
}

PRESETS: dict[str, dict[str, Any]] = {"paper": _PAPER, "cpu": _CPU, "tiny": _TINY}


# --------------------------------------------------------------------------- (de)serialisation


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The configuration as plain JSON-able nested dicts."""
    return dataclasses.asdict(cfg)


def _merge_into(obj: Any, values: dict[str, Any], where: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in names:
            raise ValueError(
                f"unknown configuration key {where}{key!r}; valid keys: {sorted(names)}"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise TypeError(
                    f"configuration section {where}{key} expects a table/dict, got {value!r}"
                )
            _merge_into(current, value, f"{where}{key}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], f"{where}{key}"))


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Check/convert ``value`` to the annotated type ``hint`` (str/int/float/bool/dict/Optional)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"{name} expects true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise TypeError(f"{name} expects an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} expects a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError(f"{name} expects a string, got {value!r}")
        return value
    if hint is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{name} expects a table/dict, got {value!r}")
        return dict(value)
    return value


def config_from_dict(values: dict[str, Any], *, base: Optional[Config] = None) -> Config:
    """Build a :class:`Config` from nested dicts (unknown keys and wrong types raise)."""
    cfg = copy.deepcopy(base) if base is not None else Config()
    _merge_into(cfg, values, "")
    return cfg


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a JSON (``.json``) or TOML (``.toml``) configuration file into nested dicts."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {str(path)!r}")
    if path.suffix == ".json":
        data = json.loads(path.read_text())
    elif path.suffix == ".toml":
        try:
            import tomllib  # standard library from Python 3.11 on
        except ModuleNotFoundError as err:  # Python < 3.11
            raise ValueError("TOML config files need Python >= 3.11 (tomllib)") from err
        data = tomllib.loads(path.read_text())
    else:
        raise ValueError(f"config file must end in .json or .toml, got {str(path)!r}")
    if not isinstance(data, dict):
        raise TypeError(f"config file {str(path)!r} must hold a table/object, got {type(data)}")
    return data


def _parse_scalar(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.key=value`` overrides (values parsed as JSON, else taken as strings).

    Example:
        >>> cfg = apply_overrides(make_config("cpu"), ["stage2.lr=1e-4", "model.width=0.5"])
        >>> (cfg.stage2.lr, cfg.model.width)
        (0.0001, 0.5)
    """
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        nested: dict[str, Any] = {parts[-1]: _parse_scalar(text)}
        for part in reversed(parts[:-1]):
            nested = {part: nested}
        _merge_into(cfg, nested, "")
    return cfg


def make_config(
    preset: str = "paper",
    *,
    file: Optional[str | Path] = None,
    overrides: Optional[list[str]] = None,
) -> Config:
    """Resolve a configuration: preset, then a JSON/TOML file, then ``key=value`` overrides."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    cfg = Config()
    _merge_into(cfg, PRESETS[preset], "")
    if file is not None:
        _merge_into(cfg, load_config(file), "")
    if overrides:
        apply_overrides(cfg, overrides)
    validate_config(cfg)
    return cfg


def validate_config(cfg: Config) -> None:
    """Cross-field checks that a typo would otherwise turn into a shape error deep inside."""
    if cfg.model.rotations not in (2, 4, 8):
        raise ValueError(f"model.rotations must be 2, 4 or 8, got {cfg.model.rotations}")
    if not cfg.model.width > 0:
        raise ValueError(f"model.width must be > 0, got {cfg.model.width}")
    if cfg.stage1.crop_size % 32 != 0:
        raise ValueError(f"stage1.crop_size must be a multiple of 32, got {cfg.stage1.crop_size}")
    for section in ("stage2", "baselines"):
        size = getattr(cfg, section).crop_size
        if size % 8 != 0:
            raise ValueError(f"{section}.crop_size must be a multiple of 8, got {size}")
    if cell_size(cfg) < 1 or cfg.stage2.crop_size // 8 // cell_size(cfg) < 1:
        raise ValueError(
            f"stage2.cell_size={cfg.stage2.cell_size} does not fit a {cfg.stage2.crop_size} crop"
        )
    for section in ("stage1", "stage2", "baselines"):
        opt = getattr(cfg, section).optimizer
        if opt not in ("sgd", "adam"):
            raise ValueError(f"{section}.optimizer must be 'sgd' or 'adam', got {opt!r}")
        schedule = getattr(cfg, section).schedule
        if schedule not in ("constant", "cosine"):
            raise ValueError(f"{section}.schedule must be 'constant' or 'cosine', got {schedule!r}")
        for key in ("epochs", "patience"):
            value = getattr(getattr(cfg, section), key)
            if value < 1:
                raise ValueError(f"{section}.{key} must be >= 1, got {value}")
    if cfg.stage2.value not in ("regularized", "transport", "divergence"):
        raise ValueError(
            "stage2.value must be 'regularized', 'transport' or 'divergence', got "
            f"{cfg.stage2.value!r}"
        )
    if not 0.0 < cfg.data.scale <= 4.0:
        raise ValueError(f"data.scale must be in (0, 4], got {cfg.data.scale}")
    if cfg.prior.crops_per_image is not None and not cfg.prior.crops_per_image > 0:
        raise ValueError(
            f"prior.crops_per_image must be > 0 (or null: measured), got "
            f"{cfg.prior.crops_per_image}"
        )
    if cfg.prior.num_images is not None and not cfg.prior.num_images >= 2:
        raise ValueError(
            f"prior.num_images (S) must be >= 2 (or null: the dataset's image count), got "
            f"{cfg.prior.num_images}"
        )
    if not 0.0 < cfg.data.val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {cfg.data.val_fraction}")
    if cfg.device not in ("auto", "cpu", "cuda") and not cfg.device.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {cfg.device!r}")


def cell_size(cfg: Config) -> int:
    """Side of a cell in density (1/8 resolution) pixels."""
    if cfg.stage2.cell_size is not None:
        return int(cfg.stage2.cell_size)
    return cfg.stage2.crop_size // 8 // cfg.prior.grid


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved configuration as JSON (atomically) and return its path."""
    return atomic_write_text(Path(path), json.dumps(config_to_dict(cfg), indent=2) + "\n")
