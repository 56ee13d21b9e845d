"""Run configuration: YAML files turned into typed, nested dataclasses.

Every field can be overridden from the command line with ``--set a.b=value``
(the value is parsed as YAML). Unknown keys, values of the wrong type and values out of
range raise :class:`~structseg.errors.ConfigError` naming the dotted key when the config is
read (:mod:`structseg.engine.typed` does the checking), so a typo never silently falls back to
a default and a bad run fails before it touches any data.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, overload

import yaml

from structseg.crf.params import DenseCRFConfig, check_dense_params
from structseg.engine.typed import (
    Fraction,
    NonNegative,
    NonNegativeFloat,
    Positive,
    PositiveFloat,
    Range,
    Size,
    build,
    describe_value,
    parse_override,
    set_path,
)
from structseg.errors import ConfigError

C = TypeVar("C")


@dataclass
class DataConfig:
    """Which data, how it is augmented and batched."""

    layout: str = "synthetic"
    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    val_split: str = "val"
    resize: Size | None = None  # training pairs resized once (area / nearest) before augmentation
    preload: bool = False  # decode every training pair into RAM once
    crop_size: Size | None = None
    scale_range: list[PositiveFloat] = field(default_factory=lambda: [0.5, 2.0])
    hflip: Fraction = 0.5  # probability
    rotation: NonNegativeFloat = 0.0  # degrees, either way
    color_jitter: NonNegativeFloat = 0.0
    batch_size: Positive = 8  # global: split across distributed processes
    workers: NonNegative = 0
    eval_batch_size: Positive = 1
    class_weights: Literal["none", "enet", "median", "inverse"] = "none"
    check: bool = True  # read every item of the splits the run uses before the first step
    # input normalization (RGB in [0, 1]); null: the model's weights' own (their metadata for weights: imagenet,
    # the source run's with model.init_from, else the ImageNet statistics). A run records the resolved values.
    mean: list[Fraction] | None = None
    std: list[PositiveFloat] | None = None

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise ConfigError("config keys 'data.mean' and 'data.std' are set together (or both left null)")
        for key, values in (("data.mean", self.mean), ("data.std", self.std)):
            if values is not None and len(values) != 3:
                raise ConfigError(f"config key '{key}' must be three numbers (R, G, B in [0, 1] units), got {values!r}")
        if len(self.scale_range) != 2 or self.scale_range[0] > self.scale_range[1]:
            raise ConfigError(f"config key 'data.scale_range' must be [low, high] with 0 < low <= high, "
                              f"got {self.scale_range}")




@dataclass
class StructuredHeadConfig:
    """Options of the SVM heads (``model.head: svm | ssvm``, :mod:`structseg.engine.heads`); unused with softmax.

    Both heads read the base model's penultimate features, average-pooled by
    ``feature_stride`` (a coarser grid makes ssvm inference cheaper). svm: a
    per-pixel Crammer-Singer hinge with ``margin``. ssvm: unary + pairwise
    (``pairwise``, on a ``connectivity`` grid: 4, 8 or a range box [ry, rx]),
    structured hinge (a wrong node's Hamming loss is ``margin``) with loss-augmented inference by ``solver``; MAP
    inference at evaluation / prediction by ``eval_solver`` (null: ``solver``). ``solver_options``
    go to both solvers (e.g. ``{max_iter: 30}`` for bp, ``{truncate: true}`` for expansion).
    ``residual``: the network's logits are added to the head's unary scores (the head starts as the network and
    learns a correction); ``train_backbone: false`` freezes the network; ``upsample``: how ssvm's MAP on the grid
    reaches the label resolution (nearest | refine, see :class:`structseg.structured.models.StructuredSVMHead`);
    ``pairwise: contrast`` with ``grid: input``: a contrast-sensitive Potts model on the input's pixels;
    ``pairwise: dense`` with ``grid: input``: the dense CRF's kernels (widths and mean-field iterations from the
    ``crf:`` section) with K x K penalties the hinge learns, mean-field inference
    (:class:`structseg.structured.dense.DenseSSVMHead`).
    """

    feature_stride: Positive = 1
    margin: PositiveFloat = 1.0
    pairwise: Literal["agreement", "full", "contrast", "dense"] = "agreement"
    connectivity: int | list[int] = 4
    grid: Literal["features", "input"] = "features"  # ssvm nodes: the feature grid or the input's pixels
    contrast_sigma: PositiveFloat = 0.3  # pairwise=contrast: colour scale, in the normalized input's units
    contrast_constant: bool = True  # pairwise=contrast: learn a_c (false: held at 0, only the contrast term)
    attractive: bool = False  # pairwise=contrast: rewards clipped at 0 (a Potts metric)
    solver: str = "bp"  # a name of structseg.structured.list_solvers(), checked with model.head=ssvm
    eval_solver: str | None = None
    solver_options: dict[str, Any] = field(default_factory=dict)
    loss_normalize: bool = True  # divide each image's structured hinge by its labelled nodes
    downsample: Literal["majority", "nearest"] = "majority"  # the target brought to the feature grid
    residual: bool = False
    train_backbone: bool = True
    train_unary: bool = True  # ssvm residual: false keeps the unary layer at zero (only pairwise terms learn)
    upsample: Literal["nearest", "refine"] = "nearest"

    def __post_init__(self) -> None:
        key = "config key 'model.structured"
        from structseg.structured.inference import list_solvers  # the registry (NumPy / SciPy, no torch)

        valid = list_solvers()
        for name in ("solver", "eval_solver"):
            value = getattr(self, name)
            if value is not None and value not in valid:
                raise ConfigError(f"{key}.{name}': unknown solver {value!r}; valid: {', '.join(map(repr, valid))}")
        if self.pairwise == "dense":
            self._check_dense(key)
        if not self.train_unary and not self.residual:
            raise ConfigError(f"{key}.train_unary'=false needs {key}.residual'=true: without the network's logits "
                              "the unary scores would stay 0")
        c = self.connectivity
        box = isinstance(c, list) and len(c) == 2 and min(c) >= 0 and sum(c) > 0
        if c not in (4, 8) and not box:
            raise ConfigError(f"{key}.connectivity' must be 4, 8 or a range box [ry, rx] (non-negative, "
                              f"not [0, 0]), got {c!r}")


    def _check_dense(self, key: str) -> None:
        """pairwise=dense: the input grid, and none of the sparse graph's inference options."""
        if self.grid != "input":
            raise ConfigError(f"{key}.pairwise'=dense joins every pair of the input's pixels and needs "
                              f"'model.structured.grid'=input, got {self.grid!r}")
        unused = [f"{name}={getattr(self, name)!r}" for name, default in (
            ("eval_solver", None), ("solver_options", {}), ("upsample", "nearest")) if getattr(self, name) != default]
        if unused:
            raise ConfigError(f"{key}.pairwise'=dense infers by mean-field on the input's pixels (crf.iterations "
                              f"steps); {', '.join(unused)} does not apply: leave it unset")


@dataclass
class CNNCRFConfig:
    """Options of Lin et al.'s CNN-CRF head (``model.head: cnn_crf``, :class:`structseg.crf.cnn_crf.CNNCRFModel`)
    and of the message estimators (``model.head: message_net``, which use the graph options and no inference)."""

    hidden: Positive = 64
    feature_stride: Positive = 2
    surrounding: NonNegative = 2  # radius of the "surrounding" box; 0: no such edges
    above_below: list[NonNegative] = field(default_factory=lambda: [3, 1])  # [rows below, columns across]; []: none
    method: str = "meanfield"  # structseg.graph.list_marginal_methods()
    iterations: Positive = 5
    damping: Annotated[float, Range(low=0, high=1, open_high=True)] = 0.5
    train_backbone: bool = True
    residual: bool = False  # the network's logits are the unaries' prior; output = network + upsampled change
    pairwise: Literal["raw", "pmi"] = "raw"  # cnn_crf inference on raw piecewise scores or their PMI
    pairwise_weight: Annotated[float, Range(low=0)] = 1.0  # cnn_crf: the pair scores' weight at inference
    training: Literal["piecewise", "meanfield"] = "piecewise"  # cnn_crf: local likelihoods, or through inference

    def __post_init__(self) -> None:
        from structseg.graph.marginals import list_marginal_methods

        if self.method not in list_marginal_methods():
            raise ConfigError(f"config key 'model.cnn_crf.method': unknown method {self.method!r}; valid: "
                              f"{', '.join(map(repr, list_marginal_methods()))}")
        if self.above_below and (len(self.above_below) != 2 or self.above_below[0] < 1):
            raise ConfigError("config key 'model.cnn_crf.above_below' must be [rows below >= 1, columns across] "
                              f"or [], got {self.above_below}")
        if not self.surrounding and not self.above_below:
            raise ConfigError("model.cnn_crf: surrounding=0 and above_below=[] leave the CRF without edges")


@dataclass
class ModelConfig:
    """Architecture passed to :func:`structseg.models.build_model`.

    ``head``: "softmax" (the model's own classifier, trained with the ``loss`` section), or an SVM
    head on the model's penultimate features, trained with its own hinge loss: "svm" (per pixel) or
    "ssvm" (structured, MAP inference); options in ``structured`` (see :class:`StructuredHeadConfig`).
    ``init_from``: start a new run from another run's (or a file's) model weights
    (:mod:`structseg.engine.init_from`).
    """

    name: str = "deeplabv3plus"
    backbone: str | None = None
    num_classes: int | None = None  # None: taken from the data set's classes
    output_stride: int | None = None
    weights: str | None = None
    # fine-tuning: a run directory (its best checkpoint, else its latest) or a checkpoint / state-dict file
    # whose model weights start this new run (a different class count re-initialises the classifier);
    # see structseg.engine.init_from. Ignored by train --resume.
    init_from: str | None = None
    aux: bool = False
    aux_weight: NonNegativeFloat = 0.4
    fast_path: Literal["auto", "off"] = "auto"
    head: Literal["softmax", "svm", "ssvm", "cnn_crf", "message_net"] = "softmax"
    crf: Literal["none", "meanfield"] = "none"  # meanfield: CRF-as-RNN on the logits, from the crf: section
    options: dict[str, Any] = field(default_factory=dict)
    structured: StructuredHeadConfig = field(default_factory=StructuredHeadConfig)
    cnn_crf: CNNCRFConfig = field(default_factory=CNNCRFConfig)


@dataclass
class LossTerm:
    """One term of the training loss: ``weight * build_loss(name, **params)``."""

    name: str = "cross_entropy"
    weight: NonNegativeFloat = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: PositiveFloat = 0.01
    backbone_lr_mult: NonNegativeFloat = 0.1  # 0 freezes the encoder
    momentum: Annotated[float, Range(low=0, high=1, open_high=True)] = 0.9
    weight_decay: NonNegativeFloat = 1e-4
    grad_clip: PositiveFloat | None = None  # max gradient norm; null: no clipping


@dataclass
class ScheduleConfig:
    """Learning-rate factor per iteration; see :mod:`structseg.engine.schedules`."""

    name: Literal["constant", "step", "multistep", "plateau", "poly", "warmup_cosine"] = "poly"
    step_size: Positive = 1000
    milestones: list[Positive] = field(default_factory=list)
    patience: Positive = 3
    gamma: PositiveFloat = 0.1
    power: PositiveFloat = 0.9
    warmup_iters: NonNegative = 0
    min_lr_ratio: Fraction = 0.0
    # with train.max_minutes: progress = max(iteration / iterations, training time / max_minutes), so the
    # decay ends at the time budget however fast the machine turns out to be
    by_time: bool = False


@dataclass
class TrainConfig:
    iterations: Positive = 1000
    eval_every: NonNegative | Literal["epoch"] = 200  # 0: only at the end
    checkpoint_every: NonNegative = 200  # 0: only at the end (and best)
    log_every: Positive = 10
    seed: int = 0
    deterministic: bool = False
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    sync_bn: bool = False
    resume: bool = False
    device: str = "auto"
    progress: bool = True
    max_minutes: PositiveFloat | None = None  # stop (evaluate, checkpoint) after this much training time
    num_threads: Positive | None = None  # torch intra-op threads; None leaves torch's default


@dataclass
class EvalConfig:
    """Test-time inference: whole image or sliding window, optional flip / multi-scale."""

    mode: Literal["whole", "slide"] = "whole"
    window: Size | None = None
    stride: Size | None = None
    blend: Literal["gaussian", "uniform"] = "gaussian"
    flip: bool = False
    scales: list[PositiveFloat] = field(default_factory=lambda: [1.0])


@dataclass
class CRFConfig:
    """Dense-CRF refinement of the probabilities in ``structseg eval`` / ``predict``: the parameters and defaults
    of :class:`structseg.crf.params.DenseCRFConfig` (pydensecrf's names; Potts weights here) and its checks,
    plus ``mode``. ``threads``: CPU intra-op threads while the CRF runs; 1 is the safe choice on a shared CPU."""

    mode: Literal["none", "dense"] = "none"
    iterations: int = DenseCRFConfig.iterations
    sxy_gaussian: float = DenseCRFConfig.sxy_gaussian
    compat_gaussian: float = DenseCRFConfig.compat_gaussian  # type: ignore[assignment]
    sxy_bilateral: float = DenseCRFConfig.sxy_bilateral
    srgb: float = DenseCRFConfig.srgb
    compat_bilateral: float = DenseCRFConfig.compat_bilateral  # type: ignore[assignment]
    threads: int | None = 1

    def __post_init__(self) -> None:
        check_dense_params(self.dense_params(), key=lambda name: f"config key 'crf.{name}'")

    def dense_params(self) -> dict[str, Any]:
        """The keyword arguments of :class:`structseg.crf.params.DenseCRFConfig`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "mode"}


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: list[LossTerm] = field(default_factory=lambda: [LossTerm()])
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    crf: CRFConfig = field(default_factory=CRFConfig)
    run_dir: str | None = None

    def __post_init__(self) -> None:
        if self.schedule.by_time and not self.train.max_minutes:
            raise ConfigError("config key 'schedule.by_time': true needs train.max_minutes (the budget the schedule "
                              "spans)")


@overload
def config_from_dict(values: dict[str, Any] | None) -> Config: ...


@overload
def config_from_dict(values: dict[str, Any] | None, cls: type[C]) -> C: ...


def config_from_dict(values: dict[str, Any] | None, cls: type[Any] = Config) -> Any:
    """Build a config of dataclass ``cls`` (a :class:`Config` by default; the instance task has its own) from
    plain data, defaults filling what is missing, every key and type checked."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping at the top level, got {describe_value(values)}")
    return build(cls, values, "")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# a choice and the options that belong to it: a new choice drops the old one's options
_CHOICE_OPTIONS = (("model.name", "model.options"), ("data.layout", "data.options"))


def apply_overrides(cfg: C, overrides: list[str] | tuple[str, ...]) -> C:
    """Return a new config (of ``cfg``'s class) with every ``a.b=value`` override applied and validated.

    Setting ``model.name`` (``data.layout``) to another model (layout) drops the options of the previous one
    (``model.options``, ``data.options``) before any option override applies, so the new choice gets only the
    options these overrides give it."""
    tree = copy.deepcopy(config_to_dict(cfg))
    parsed = [parse_override(text) for text in overrides]
    for choice, options in _CHOICE_OPTIONS:
        section, name = choice.split(".")
        current = tree.get(section, {}).get(name) if isinstance(tree.get(section), dict) else None
        changed = any(k == choice and v != current for k, v in parsed)
        if changed:
            tree[section][options.split(".")[1]] = {}
    for key, value in parsed:
        set_path(tree, key, value)
    return config_from_dict(tree, type(cfg))


# -------------------------------------------------------------------- files

DEFAULT_CONFIG = "default.yaml"


def default_config_text() -> str:
    """The embedded default config (trains on the synthetic data set)."""
    return resources.files("structseg.engine").joinpath(DEFAULT_CONFIG).read_text(encoding="utf-8")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping, got {describe_value(data)}")
    return data


@overload
def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config: ...


@overload
def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...], cls: type[C]) -> C: ...


@overload
def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), *,
                cls: type[C]) -> C: ...


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                cls: type[Any] = Config) -> Any:
    """Read a YAML config of dataclass ``cls`` and apply overrides; without ``path``, the embedded default
    (for :class:`Config`) or the class's defaults."""
    if path is None:
        data = (yaml.safe_load(default_config_text()) or {}) if cls is Config else {}
        source = "embedded default config" if cls is Config else f"default {cls.__name__}"
    else:
        data = read_yaml(path)
        source = str(path)
    try:
        cfg = config_from_dict(data, cls)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return apply_overrides(cfg, overrides)


def dump_config(cfg: Any) -> str:
    return str(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None))


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (loadable again by :func:`load_config`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_config(cfg), encoding="utf-8")
    return path


def as_pair(size: Size | None, key: str = "size") -> tuple[int, int] | None:
    """An int or ``[h, w]`` config value as ``(h, w)``."""
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    if len(size) == 1:
        return (size[0], size[0])
    if len(size) != 2:
        raise ConfigError(f"config key '{key}' expects an int or [height, width], got {size!r}")
    return (int(size[0]), int(size[1]))
