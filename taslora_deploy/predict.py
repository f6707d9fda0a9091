"""The `predict` verb: run an export on image files with exactly the preprocessing it records, top-k with class names.

:func:`predict` takes an export folder (or one of its ``.onnx`` files) and image files or folders of them. The
ONNX model runs on onnxruntime CPU and reads its preprocessing from its own ``metadata_props`` (what a deployment
engineer holding only model.onnx has); ``runtime="torch"`` runs the standalone model.safetensors with the record
in config.json. Each image is opened with PIL and fed through :meth:`Preprocessing.transform` (grayscale for the
Fashion-MNIST pipeline, RGB for timm's), then batched. Bad input raises :class:`PredictError` (a ValueError, one
line naming the problem and the fix): a missing path, a file PIL cannot read, an export without the artifact the
runtime needs, an unknown runtime, or an export that records no preprocessing (exported before taslora recorded
it: re-export it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from taslora_deploy.artifacts import MODEL_CONFIG, MODEL_ONNX, MODEL_WEIGHTS
from taslora_deploy.preprocessing import CONFIG_KEY, Preprocessing

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["RUNTIMES", "IMAGE_SUFFIXES", "PredictError", "ClassScore", "ImagePrediction", "PredictResult",
           "image_files", "open_image", "recorded_preprocessing", "predict"]

RUNTIMES = ("onnx", "torch")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
"""What a folder argument contributes (case-insensitive); a file named explicitly is tried whatever its suffix."""
_REEXPORT = "re-export it with `taslora export --onnx`, which records it"


class PredictError(ValueError):
    """Bad input to `predict`: one line naming the path, the problem and the fix."""


@dataclass(frozen=True)
class ClassScore:
    """One of an image's top-k classes."""

    index: int
    name: str | None  # the recorded label name, None when the data names no classes
    probability: float  # softmax of the logits

    @property
    def label(self) -> str:
        """The class name, or 'class <index>' without one."""
        return self.name if self.name is not None else f"class {self.index}"


@dataclass(frozen=True)
class ImagePrediction:
    """The top-k classes of one image, and its logits."""

    path: Path
    top: tuple[ClassScore, ...]
    logits: tuple[float, ...]

    @property
    def top1(self) -> ClassScore:
        """The most likely class."""
        return self.top[0]


@dataclass
class PredictResult:
    """What `predict` ran, with what preprocessing, and its answer per image (in input order)."""

    artifact: Path  # the model file run
    runtime: str  # "onnx" or "torch"
    preprocessing: Preprocessing
    record: str  # where the preprocessing was read: "<file> metadata_props" or "<file> pretrained_cfg"
    top_k: int
    predictions: list[ImagePrediction] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: the artifact, runtime, preprocessing and per image its top-k (index, name, probability)."""
        return {
            "artifact": str(self.artifact), "runtime": self.runtime, "record": self.record,
            CONFIG_KEY: self.preprocessing.to_dict(), "top_k": self.top_k,
            "predictions": [{"image": str(p.path), "top": [
                {"index": s.index, "name": s.name, "probability": s.probability} for s in p.top]}
                for p in self.predictions],
        }


def image_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The images named: files as given, folders expanded to their image files (IMAGE_SUFFIXES, recursively,
    sorted); PredictError for a missing path or a folder without images."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                            and not p.name.startswith("."))
            if not inside:
                raise PredictError(f"folder {path} holds no image files ({', '.join(IMAGE_SUFFIXES)}); "
                                   "pass image files or a folder of them")
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        else:
            raise PredictError(f"image {path} does not exist; pass image files or a folder of them")
    if not found:
        raise PredictError("no images given; pass image files or a folder of them")
    return found


def open_image(path: Path, decode: bool = True) -> Image.Image:
    """The image at `path`, decoded (or, with `decode=False`, only identified from its header); PredictError when
    PIL cannot read it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if decode:
                img.load()
            return img
    except (UnidentifiedImageError, OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise PredictError(f"{path} is not an image PIL can read ({reason}); pass PNG, JPEG or other image "
                           "files") from None


def _artifact(export: Path, runtime: str) -> Path:
    """The model file `runtime` runs: model.onnx (or the .onnx file given) or the folder's model.safetensors."""
    if runtime not in RUNTIMES:
        raise PredictError(f"--runtime must be one of {', '.join(RUNTIMES)}, not '{runtime}'")
    if not export.exists():
        raise PredictError(f"export {export} does not exist; pass a folder written by `taslora export` (or its "
                           "model.onnx)")
    if export.is_file():
        if runtime != "onnx" or export.suffix.lower() != ".onnx":
            raise PredictError(f"{export} is a file: --runtime onnx takes an .onnx file or an export folder, "
                               "--runtime torch an export folder (model.safetensors + config.json)")
        return export
    if runtime == "onnx":
        if not (export / MODEL_ONNX).is_file():
            raise PredictError(f"export folder {export} has no {MODEL_ONNX} (exported without --onnx?); re-export "
                               "with `taslora export --onnx`, or run model.safetensors with --runtime torch")
        return export / MODEL_ONNX
    missing = [name for name in (MODEL_WEIGHTS, MODEL_CONFIG) if not (export / name).is_file()]
    if missing:
        raise PredictError(f"export folder {export} has no {' or '.join(missing)}; pass a folder written by "
                           "`taslora export`")
    return export / MODEL_WEIGHTS


def recorded_preprocessing(artifact: Path) -> tuple[Preprocessing, str]:
    """(the preprocessing an artifact's export recorded, where it was read): an ONNX file's metadata_props, or the
    config.json beside model.safetensors; PredictError when none is recorded or the record is invalid."""
    onnx = artifact.suffix.lower() == ".onnx"
    if onnx:
        from taslora_deploy.onnx_graph import onnx_metadata

        source, record = artifact, onnx_metadata(artifact)  # the checked reader: hash, damage
    else:
        from taslora_core.artifact_read import read_json_artifact

        source = artifact.with_name(MODEL_CONFIG)
        record = read_json_artifact(source, "model config", _REEXPORT).get(CONFIG_KEY)
    try:
        found = Preprocessing.from_metadata_props(record) if onnx else \
            Preprocessing.from_dict(record) if record is not None else None
    except ValueError as err:
        raise PredictError(f"{source}: {' '.join(str(err).split())}; {_REEXPORT}") from None
    if found is None:
        raise PredictError(f"{source} records no preprocessing (exported before taslora recorded it); {_REEXPORT}")
    return found, f"{source} {'metadata_props' if onnx else CONFIG_KEY}"


def _onnx_runner(path: Path, threads: int | None) -> tuple[Callable[[np.ndarray], np.ndarray], tuple]:
    from taslora_deploy.ort_parity import ort_session

    sess = ort_session(path, threads=threads)
    name = sess.get_inputs()[0].name
    return (lambda x: sess.run(None, {name: x})[0].astype(np.float64)), tuple(sess.get_inputs()[0].shape[1:])


def _torch_runner(folder: Path) -> tuple[Callable[[np.ndarray], np.ndarray], tuple]:
    from taslora_deploy.standalone.io import load_standalone

    model = load_standalone(folder)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).double().numpy()

    return run, tuple(model.input_shape)


def _top(logits: np.ndarray, names: Sequence[str] | None, k: int) -> tuple[ClassScore, ...]:
    probs = torch.softmax(torch.from_numpy(logits), dim=0).numpy()
    order = np.argsort(-logits, kind="stable")[:k]
    return tuple(ClassScore(int(i), names[int(i)] if names is not None else None, float(probs[i])) for i in order)


def predict(
    export: str | os.PathLike,
    images: Sequence[str | os.PathLike],
    *,
    runtime: str = "onnx",
    top_k: int = 5,
    batch_size: int = 32,
    threads: int | None = None,
) -> PredictResult:
    """Classify `images` (files, or folders of image files) with an export, applying its recorded preprocessing.

    `export`: an export folder (or, with the onnx runtime, an .onnx file carrying the record). `runtime`: "onnx"
    (onnxruntime CPU, `threads` intra-op threads) or "torch" (the standalone model.safetensors). `top_k` is capped
    at the number of classes. Raises PredictError (one line) on bad input before any model runs."""
    if top_k < 1 or batch_size < 1:
        raise PredictError(f"--top-k and the batch size must be >= 1, got {top_k} and {batch_size}")
    artifact = _artifact(Path(export), runtime)
    files = image_files(images)
    for path in files:  # every file is an image before anything runs (headers only)
        open_image(path, decode=False)
    preprocessing, where = recorded_preprocessing(artifact)
    run, shape = _onnx_runner(artifact, threads) if runtime == "onnx" else _torch_runner(artifact.parent)
    if tuple(shape) != tuple(preprocessing.input_size):
        raise PredictError(f"{where} says input_size {list(preprocessing.input_size)} but {artifact} takes "
                           f"{list(shape)}; {_REEXPORT}")
    transform = preprocessing.transform()
    k = min(top_k, preprocessing.num_classes)
    result = PredictResult(artifact, runtime, preprocessing, where, k)
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        batch = torch.stack([transform(open_image(path)) for path in chunk]).numpy()
        for path, logits in zip(chunk, run(batch)):
            result.predictions.append(ImagePrediction(path, _top(logits, preprocessing.label_names, k),
                                                      tuple(float(v) for v in logits)))
    return result
