"""How to feed an exported model: the preprocessing of the data its run used, in timm's `pretrained_cfg` words.

An export records it twice, from the same :class:`Preprocessing`: under ``"pretrained_cfg"`` in config.json
(:func:`~taslora_deploy.standalone.io.save_standalone`) and in model.onnx's ``metadata_props`` as
``pretrained_cfg.<key>`` entries whose values are JSON (:func:`stamp_onnx`; the certificate's own ``taslora.``
entries are stamped beside them and leave them alone). The keys are timm's: ``input_size`` (C, H, W), ``mean``,
``std`` (C values each), ``interpolation``, ``crop_pct``, ``crop_mode``, ``num_classes`` and ``label_names`` (the
class of each logit, when the data names them), plus ``pipeline``, which says which of the project's two
evaluation paths the numbers feed:

- ``"timm"`` (image folders): the image read as RGB (ImageFolder's loader), then timm's eval transform: resize the
  shorter side to ``floor(H / crop_pct)`` with ``interpolation``, centre crop (H, W), scale to [0, 1], normalise;
- ``"tensor"`` (Fashion-MNIST, kept in memory as uint8): the image read as grayscale, centre square crop
  (``crop_pct`` of the shorter side), shrunk to 28 x 28 (anti-aliased, uint8) when larger, as the dataset's own
  images were, then the in-memory loader's arithmetic (``data.batch.normalize_batch``): scale to [0, 1], bilinear
  resize (torch) to (H, W), repeat to C channels, normalise.

:meth:`Preprocessing.transform` applies it (PIL image -> float32 (C, H, W)), giving exactly the tensors of the
project's own evaluation loaders; :func:`checkpoint_preprocessing` derives it from what a checkpoint recorded.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from PIL import Image

    from taslora_core.data import DataConfig
    from taslora_core.run_io import LoadedCheckpoint

__all__ = ["CONFIG_KEY", "METADATA_PREFIX", "PIPELINES", "Preprocessing", "preprocessing_of",
           "checkpoint_preprocessing", "stamp_onnx"]

CONFIG_KEY = "pretrained_cfg"  # config.json: the record's key
METADATA_PREFIX = "pretrained_cfg."  # model.onnx metadata_props: one entry per key, its value as JSON
PIPELINES = ("timm", "tensor")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
FMNIST_STORED_SIZE = 28  # the side of Fashion-MNIST's stored images, which its loader resizes to the model's input
_FIELDS = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode", "num_classes", "label_names",
           "pipeline")


@dataclass(frozen=True)
class Preprocessing:
    """What an exported model expects, in timm's ``pretrained_cfg`` vocabulary (see the module docstring)."""

    input_size: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]  # one per channel
    std: tuple[float, ...]
    interpolation: str
    crop_pct: float
    num_classes: int
    label_names: tuple[str, ...] | None = None  # the class of logit i; None when the data names none
    crop_mode: str = "center"
    pipeline: str = "timm"

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.label_names is not None:
            object.__setattr__(self, "label_names", tuple(str(v) for v in self.label_names))
        problem = self._problem()
        if problem:
            raise ValueError(f"invalid preprocessing record: {problem}")

    def _problem(self) -> str | None:
        if len(self.input_size) != 3 or min(self.input_size) < 1 or self.input_size[0] not in (1, 3):
            return f"input_size must be (C, H, W) with C 1 or 3, got {list(self.input_size)}"
        channels = self.input_size[0]
        if len(self.mean) != channels or len(self.std) != channels or min(self.std) <= 0:
            return f"mean/std need {channels} values (std > 0), got {list(self.mean)} / {list(self.std)}"
        if self.interpolation not in INTERPOLATIONS:
            return f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}"
        if not 0.0 < self.crop_pct <= 1.0 or self.crop_mode != "center":
            return f"crop_pct must be in (0, 1] with crop_mode 'center', got {self.crop_pct} / {self.crop_mode!r}"
        if int(self.num_classes) < 1:
            return f"num_classes must be >= 1, got {self.num_classes}"
        if self.label_names is not None and len(self.label_names) != self.num_classes:
            return f"{len(self.label_names)} label_names for num_classes {self.num_classes}"
        if self.pipeline not in PIPELINES:
            return f"pipeline must be one of {', '.join(PIPELINES)}, got {self.pipeline!r}"
        return None

    @property
    def channels(self) -> int:
        """C of input_size."""
        return self.input_size[0]

    @property
    def image_mode(self) -> str:
        """The PIL mode images are read in: 'L' (grayscale) for the tensor pipeline, 'RGB' for timm's."""
        return "L" if self.pipeline == "tensor" else "RGB"

    def to_dict(self) -> dict[str, Any]:
        """JSON form (timm's keys; ``label_names`` only when known)."""
        out: dict[str, Any] = {
            "input_size": list(self.input_size), "mean": list(self.mean), "std": list(self.std),
            "interpolation": self.interpolation, "crop_pct": self.crop_pct, "crop_mode": self.crop_mode,
            "num_classes": int(self.num_classes), "pipeline": self.pipeline,
        }
        if self.label_names is not None:
            out["label_names"] = list(self.label_names)
        return out

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Preprocessing:
        """From :meth:`to_dict` (other timm keys are ignored); ValueError (one line) when a value is missing or bad."""
        if not isinstance(doc, Mapping):
            raise ValueError(f"invalid preprocessing record: a JSON object is needed, got {type(doc).__name__}")
        missing = [k for k in ("input_size", "mean", "std", "interpolation", "crop_pct", "num_classes") if k not in doc]
        if missing:
            raise ValueError(f"invalid preprocessing record: it lacks {', '.join(missing)}")
        try:
            return cls(**{k: doc[k] for k in _FIELDS if k in doc and doc[k] is not None})
        except (TypeError, ValueError) as err:
            raise ValueError(" ".join(str(err).split())) from None

    def metadata_props(self) -> dict[str, str]:
        """The ONNX ``metadata_props`` entries: ``pretrained_cfg.<key>`` -> JSON of the value."""
        return {f"{METADATA_PREFIX}{key}": json.dumps(value) for key, value in self.to_dict().items()}

    @classmethod
    def from_metadata_props(cls, props: Mapping[str, str]) -> Preprocessing | None:
        """From an ONNX file's metadata_props (:meth:`metadata_props`); None when it carries no record."""
        entries = {key[len(METADATA_PREFIX):]: value for key, value in props.items() if key.startswith(METADATA_PREFIX)}
        if not entries:
            return None
        try:
            doc = {key: json.loads(value) for key, value in entries.items()}
        except json.JSONDecodeError as err:
            raise ValueError(f"invalid preprocessing record: a {METADATA_PREFIX}* value is not JSON ({err.msg})") from None
        return cls.from_dict(doc)

    def describe(self) -> str:
        """One line, e.g. '1x28x28 grayscale, bilinear, crop_pct 1, mean [0.286] std [0.353], 10 classes (named)'."""
        c, h, w = self.input_size
        colour = "grayscale" if self.image_mode == "L" else "RGB"
        named = "named" if self.label_names is not None else "unnamed"
        return (f"{c}x{h}x{w} {colour}, {self.interpolation} resize, crop_pct {self.crop_pct:g}, "
                f"mean {[round(v, 4) for v in self.mean]} std {[round(v, 4) for v in self.std]}, "
                f"{self.num_classes} classes ({named})")

    def data_config(self) -> DataConfig:
        """The evaluation settings of a DataConfig that produce this preprocessing (augmentation fields unused)."""
        from taslora_core.data import DataConfig

        c, h, _ = self.input_size
        data = "fmnist" if self.pipeline == "tensor" else "image-folder"
        return DataConfig(data=data, img_size=h, in_chans=c, num_classes=self.num_classes, mean=self.mean,
                          std=self.std, interpolation=self.interpolation, crop_pct=self.crop_pct)

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """PIL image (any mode) -> float32 (C, H, W), exactly as the project's evaluation loaders make it."""
        if self.input_size[1] != self.input_size[2]:
            raise ValueError(f"only square inputs are supported, got input_size {list(self.input_size)}")
        config = self.data_config()
        if self.pipeline == "timm":
            from taslora_core.data import make_transforms

            eval_transform = make_transforms(config)[1]  # THE eval transform of folder data
            return lambda image: eval_transform(image.convert("RGB"))
        return lambda image: _tensor_pipeline(image, config, self.crop_pct)


def _tensor_pipeline(image: Image.Image, config: DataConfig, crop_pct: float) -> torch.Tensor:
    """The Fashion-MNIST loader's arithmetic on one image (see the module docstring)."""
    import numpy as np
    from PIL import Image

    from taslora_core.data.batch import normalize_batch

    gray = image.convert("L")
    w, h = gray.size
    side = max(1, int(min(h, w) * crop_pct))
    left, top = int(round((w - side) / 2.0)), int(round((h - side) / 2.0))
    square = gray.crop((left, top, left + side, top + side))
    if side > FMNIST_STORED_SIZE:  # a photo: shrunk (anti-aliased, uint8) as the dataset's own images were
        square = square.resize((FMNIST_STORED_SIZE, FMNIST_STORED_SIZE), Image.BILINEAR)
    return normalize_batch(torch.from_numpy(np.array(square, dtype=np.uint8))[None, None], config)[0]


def _per_channel(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    return tuple(values) * channels if len(values) == 1 else tuple(values)


def preprocessing_of(config: DataConfig, num_classes: int, label_names: list[str] | tuple[str, ...] | None = None
                     ) -> Preprocessing:
    """The preprocessing of the evaluation loaders of ``config`` for a model with ``num_classes`` logits.

    Fashion-MNIST's loader resizes with torch's bilinear whatever ``config.interpolation`` says, so that is what
    its record says."""
    c = config.in_chans
    tensor = config.is_fmnist
    return Preprocessing(
        input_size=(c, config.img_size, config.img_size), mean=_per_channel(config.mean, c),
        std=_per_channel(config.std, c), interpolation="bilinear" if tensor else config.interpolation,
        crop_pct=1.0 if tensor else config.crop_pct, num_classes=num_classes,
        label_names=tuple(label_names) if label_names is not None else None,
        pipeline="tensor" if tensor else "timm")


def _label_names(config: DataConfig, num_classes: int, log: Callable[[str], None]) -> tuple[str, ...] | None:
    """Fashion-MNIST's class names, or the class folders of an image folder's train/ (ImageFolder's order)."""
    from taslora_core.data import FMNIST_CLASSES

    if config.is_fmnist:
        names: tuple[str, ...] = tuple(FMNIST_CLASSES)
    else:
        from torchvision.datasets.folder import find_classes

        root = Path(config.data) / "train"
        try:
            names = tuple(find_classes(str(root))[0])
        except OSError as err:  # none there, or no class folders
            log(f"note: class names not recorded ({root} cannot be listed: {' '.join(str(err).split())})")
            return None
    if len(names) != num_classes:
        log(f"note: class names not recorded ({len(names)} classes in {config.data}, but the model has "
            f"{num_classes} outputs)")
        return None
    return names


def checkpoint_preprocessing(ckpt: LoadedCheckpoint, log: Callable[[str], None] = print) -> Preprocessing | None:
    """The preprocessing of the data a checkpoint's run recorded, sized for its model (the resolver every
    evaluation uses); None, with a note, when the run records no data (an imported AutoFormer supernet)."""
    from taslora_core.data import DataUnavailable
    from taslora_core.run_data import RecordedData, resolve_run_data

    space = ckpt.supernet.space
    try:
        config = resolve_run_data(space, RecordedData.of_checkpoint(ckpt), fit_space=True, reuse_split="never").config
    except (DataUnavailable, ValueError, TypeError) as err:
        log(f"note: no preprocessing recorded in the export ({' '.join(str(err).split())})")
        return None
    return preprocessing_of(config, space.num_classes, _label_names(config, space.num_classes, log))


def stamp_onnx(path: str | Path, preprocessing: Preprocessing) -> dict[str, Any]:
    """Write the record into the ONNX file's metadata_props (atomically; the graph and other entries untouched);
    returns what the export's report records."""
    from taslora_deploy.onnx_export import stamp_metadata

    props = preprocessing.metadata_props()
    stamp_metadata(path, props, prefix=METADATA_PREFIX)
    return {"file": Path(path).name, CONFIG_KEY: preprocessing.to_dict(), "metadata_props": sorted(props), "ok": True}

