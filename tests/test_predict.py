"""What an export records about feeding it (timm's pretrained_cfg in config.json and model.onnx), and
`taslora predict`: the recorded preprocessing gives the evaluation loaders' tensors and their top-1, on real
Fashion-MNIST images and on scikit-image's sample photos through a small 224 RGB export."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import run_cli
from taslora_core import data as D
from taslora_core.checkpoint import file_sha256, save_supernet
from taslora_core.evaluate import evaluate, per_image
from taslora_core.run_io import load_checkpoint
from taslora_core.space import SearchSpace
from taslora_core.subnet import sample_subnet
from taslora_core.supernet import Supernet
from taslora_core.testing import random_mole, save_mole_workspace
from taslora_core.workspace import new_run
from taslora_deploy import load_standalone
from taslora_deploy.onnx_graph import onnx_metadata
from taslora_deploy.pipeline import ExportOptions, export
from taslora_deploy.predict import PredictError, predict
from taslora_deploy.preprocessing import Preprocessing, preprocessing_of

N_IMAGES = 48  # Fashion-MNIST test images written as PNG files
PHOTOS = ("astronaut", "chelsea", "coffee")  # scikit-image's sample photos, one class each
FAST = ExportOptions(onnx=True, latency_mode="off")  # structure and parity are still certified


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def fmnist_pngs(tmp_path_factory) -> dict:
    """The first N_IMAGES Fashion-MNIST test images as PNG files (and their labels)."""
    if not all((D.fmnist_root() / f"{p}-images-idx3-ubyte.gz").is_file() for p in ("train", "t10k")):
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    folder = tmp_path_factory.mktemp("fmnist-png")
    images, labels = D.load_fmnist("test")
    for i in range(N_IMAGES):
        Image.fromarray(images[i].numpy()).save(folder / f"test-{i:05d}.png")
    return {"dir": folder, "labels": labels[:N_IMAGES]}


@pytest.fixture(scope="module")
def fmnist_export(tmp_path_factory) -> dict:
    """An ONNX export of a random subnet of a MoLE model (random experts) trained, as recorded, on Fashion-MNIST."""
    root = tmp_path_factory.mktemp("fmnist-ws")
    ws = save_mole_workspace(root, random_mole("fmnist", seed=3, head_std=0.5), name="mole")
    subnet = sample_subnet(SearchSpace.preset("fmnist"), random.Random(2))
    subnet.to_json(root / "sub.json")
    result = export(root / "sub.json", ws.mole_dir, workdir=root, out=root / "exp", options=FAST, log=_quiet)
    assert result.ok, result.failures
    return {"out": root / "exp", "mole": ws.mole_dir, "subnet": subnet}


def _photos(root: Path) -> Path:
    """An ImageNet-style folder of scikit-image's sample photos: val/ holds one photo per class, train/ the photo and
    three crops of it (enough for the loaders to carve a held-out split)."""
    skdata = pytest.importorskip("skimage.data")
    for name in PHOTOS:
        photo = Image.fromarray(getattr(skdata, name)())
        for split in ("train", "val"):
            (root / split / name).mkdir(parents=True)
            photo.save(root / split / name / f"{name}.png")
        w, h = photo.size
        for i in range(3):
            photo.crop((i * w // 8, i * h // 8, w - i * w // 16, h - i * h // 16)).save(root / "train" / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def rgb_export(tmp_path_factory) -> dict:
    """A small random 224x224 RGB ViT (AutoFormer's patch and head sizes, 2 blocks) whose run records AutoFormer's
    ImageNet recipe on the photo folder, exported to ONNX."""
    root = tmp_path_factory.mktemp("rgb-ws")
    photos = _photos(root / "photos")
    space = SearchSpace(name="tiny-224", img_size=224, patch_size=16, in_chans=3, num_classes=len(PHOTOS),
                        head_dim=64, max_relative_position=14, super_embed_dim=128, super_depth=2, super_num_heads=2,
                        super_mlp_ratio=2.0, embed_dims=(128,), depths=(2,), num_heads=(2,), mlp_ratios=(2.0,))
    torch.manual_seed(0)
    supernet = Supernet(space)
    with torch.no_grad():
        supernet.head.weight.normal_(0, 0.5)
    run = new_run(root, "supernets", "photos")
    save_supernet(run, supernet, {"data": D.DataConfig.autoformer(str(photos.resolve())).to_dict()})
    subnet = sample_subnet(space, random.Random(0))
    subnet.to_json(root / "sub.json")
    result = export(root / "sub.json", run, workdir=root, out=root / "exp", options=FAST, log=_quiet)
    assert result.ok, result.failures
    return {"out": root / "exp", "photos": photos, "run": run}


# ------------------------------------------------------------------------------------------------- the record


def test_fmnist_export_records_its_preprocessing(fmnist_export):
    out = fmnist_export["out"]
    config = json.loads((out / "config.json").read_text())
    assert config["pretrained_cfg"] == {
        "input_size": [1, 28, 28], "mean": [0.286], "std": [0.353], "interpolation": "bilinear", "crop_pct": 1.0,
        "crop_mode": "center", "num_classes": 10, "pipeline": "tensor",
        "label_names": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                        "Ankle boot"]}
    meta = onnx_metadata(out / "model.onnx")
    assert json.loads(meta["pretrained_cfg.input_size"]) == [1, 28, 28]
    assert Preprocessing.from_metadata_props(meta) == Preprocessing.from_dict(config["pretrained_cfg"])
    assert meta["taslora.certificate.verdict"]  # the certificate's stamp sits beside the record
    report = json.loads((out / "report.json").read_text())
    assert report["preprocessing"]["ok"] is True
    # the hash the export recorded is that of the final file (stamped twice: the record, then the certificate)
    assert report["hashes"]["model.onnx"] == file_sha256(out / "model.onnx")
    assert load_standalone(out).input_shape == (1, 28, 28)


def test_verify_passes_on_an_export_with_the_record(fmnist_export):
    from taslora_deploy.verify import verify

    result = verify(fmnist_export["out"], seed=0, log=_quiet)
    assert result.ok, [(c.name, c.detail) for c in result.failures]
    assert any(c.name.startswith("certificate ") and c.status == "pass" for c in result.checks)


@pytest.mark.parametrize("overrides", [{}, {"img_size": 32, "in_chans": 3}, {"img_size": 21}],
                         ids=["28", "32-rgb", "21"])
def test_recorded_preprocessing_gives_the_fmnist_loader_tensors(fmnist_pngs, overrides):
    """The loader resizes its 28x28 images with torch's bilinear when the model's input differs; so does the record."""
    config = D.DataConfig.fmnist(**overrides)
    record = preprocessing_of(config, 10, D.FMNIST_CLASSES)
    assert Preprocessing.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    transform = record.transform()
    files = sorted(fmnist_pngs["dir"].glob("*.png"))
    ours = torch.stack([transform(Image.open(f)) for f in files])
    loader = D.load_test_batches(config, batch_size=N_IMAGES, limit=N_IMAGES)[0][0]
    assert ours.shape == loader.shape
    assert torch.equal(ours, loader)


def test_a_photo_through_the_fmnist_record_is_grayscale_28(fmnist_pngs):
    skdata = pytest.importorskip("skimage.data")
    record = preprocessing_of(D.DataConfig.fmnist(), 10, D.FMNIST_CLASSES)
    x = record.transform()(Image.fromarray(skdata.chelsea()))  # 300x451 RGB -> centre square, shrunk, gray
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert -0.9 < float(x.min()) and float(x.max()) < 2.1  # (0 - 0.286) / 0.353 .. (1 - 0.286) / 0.353


def test_record_rejects_bad_values():
    good = preprocessing_of(D.DataConfig.fmnist(), 10, D.FMNIST_CLASSES).to_dict()
    for change, words in (({"mean": [0.1, 0.2]}, "mean/std need 1"), ({"crop_pct": 0}, "crop_pct"),
                          ({"label_names": ["a"]}, "1 label_names"), ({"pipeline": "magic"}, "pipeline"),
                          ({"input_size": [2, 28, 28]}, "input_size")):
        with pytest.raises(ValueError, match=words):
            Preprocessing.from_dict({**good, **change})
    with pytest.raises(ValueError, match="lacks mean"):
        Preprocessing.from_dict({k: v for k, v in good.items() if k != "mean"})


# ------------------------------------------------------------------------------------------------- predict


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_predict_top1_matches_the_project_evaluation(fmnist_export, fmnist_pngs, runtime):
    """predict on PNG files of real test images = the project's own evaluation of those images (same logits, same
    top-1 per image, same top-1 accuracy)."""
    result = predict(fmnist_export["out"], [fmnist_pngs["dir"]], runtime=runtime, top_k=3)
    assert [p.path.name for p in result.predictions] == [f"test-{i:05d}.png" for i in range(N_IMAGES)]
    top1 = torch.tensor([p.top1.index for p in result.predictions])
    labels = fmnist_pngs["labels"]

    ckpt = load_checkpoint(fmnist_export["mole"])
    cfg = D.DataConfig(**ckpt.data)
    batches = D.load_test_batches(cfg, batch_size=16, limit=N_IMAGES)
    correct, _ = per_image(ckpt.supernet, fmnist_export["subnet"], batches, ckpt.mole)
    figure = evaluate(ckpt.supernet, fmnist_export["subnet"], batches, ckpt.mole)
    assert torch.equal(top1 == labels, correct)
    assert figure.count == N_IMAGES and int((top1 == labels).sum()) == round(figure.top1 * N_IMAGES)

    images = torch.cat([x for x, _ in batches])
    with torch.no_grad():
        reference = load_standalone(fmnist_export["out"])(images).double()
    logits = torch.tensor([p.logits for p in result.predictions], dtype=torch.float64)
    assert (logits - reference).abs().max() < 1e-4
    assert torch.equal(top1, reference.argmax(1))
    assert len(set(top1.tolist())) > 1  # the model tells these images apart: the comparison can fail
    first = result.predictions[0]
    assert first.top1.name == D.FMNIST_CLASSES[first.top1.index] and len(first.top) == 3
    assert first.top[0].probability >= first.top[1].probability >= first.top[2].probability


def test_rgb_224_record_and_predict_on_scikit_image_photos(rgb_export):
    out, photos = rgb_export["out"], rgb_export["photos"]
    config = json.loads((out / "config.json").read_text())
    assert config["pretrained_cfg"] == {
        "input_size": [3, 224, 224], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center", "num_classes": 3, "pipeline": "timm",
        "label_names": list(PHOTOS)}
    record = Preprocessing.from_metadata_props(onnx_metadata(out / "model.onnx"))
    assert record == Preprocessing.from_dict(config["pretrained_cfg"])

    # the record's transform = the folder loader's eval batch (timm: resize 256 bicubic, crop 224, normalise)
    cfg = D.DataConfig(**load_checkpoint(rgb_export["run"]).data)
    bundle = D.build_data(cfg, val_size=3)
    loader_images, loader_labels = next(iter(D.make_loaders(bundle, cfg, batch_size=8, num_workers=0).test))
    files = [Path(path) for path, _ in bundle.test.samples]
    assert [f.parent.name for f in files] == list(PHOTOS) and loader_labels.tolist() == [0, 1, 2]
    ours = torch.stack([record.transform()(Image.open(f)) for f in files])
    assert ours.shape == (3, 3, 224, 224) and torch.equal(ours, loader_images)

    with torch.no_grad():
        reference = load_standalone(out)(loader_images).double()
    for runtime in ("onnx", "torch"):
        result = predict(out, [photos / "val"], runtime=runtime, top_k=2)
        assert [p.path for p in result.predictions] == files
        logits = torch.tensor([p.logits for p in result.predictions], dtype=torch.float64)
        assert (logits - reference).abs().max() < 1e-4, runtime
        assert [p.top1.index for p in result.predictions] == reference.argmax(1).tolist()
        assert all(p.top1.name == PHOTOS[p.top1.index] for p in result.predictions)

    res = run_cli(["predict", out, photos / "val" / "chelsea" / "chelsea.png", photos / "val" / "coffee",
                   "--top-k", "2"])
    assert res.exit_code == 0, res.output
    assert "preprocessing from" in res.stdout and "3x224x224 RGB, bicubic" in res.stdout
    assert "chelsea.png" in res.stdout and "#2" in res.stdout and "#3" not in res.stdout
    res = run_cli(["predict", out, photos / "val", "--json", "--runtime", "torch", "--top-k", "9"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["runtime"] == "torch" and doc["top_k"] == 3 and len(doc["predictions"]) == 3
    assert {s["name"] for s in doc["predictions"][0]["top"]} == set(PHOTOS)
    assert sum(s["probability"] for s in doc["predictions"][0]["top"]) == pytest.approx(1.0)


def _one_line_error(args: list, words: str) -> None:
    res = run_cli(["predict", *args])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], res.stderr


def test_bad_inputs_exit_2_with_one_line(fmnist_export, fmnist_pngs, tmp_path):
    out, png = fmnist_export["out"], next(fmnist_pngs["dir"].glob("*.png"))
    _one_line_error([out, tmp_path / "nope.png"], "does not exist")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    _one_line_error([out, text], "is not an image PIL can read")
    (tmp_path / "empty").mkdir()
    _one_line_error([out, tmp_path / "empty"], "holds no image files")
    no_onnx = tmp_path / "no-onnx"
    no_onnx.mkdir()
    for name in ("model.safetensors", "config.json"):
        shutil.copy(out / name, no_onnx / name)
    _one_line_error([no_onnx, png], "has no model.onnx")
    _one_line_error([out, png, "--runtime", "tensorrt"], "--runtime must be one of onnx, torch")
    _one_line_error([out / "model.onnx", png, "--runtime", "torch"], "is a file")
    _one_line_error([tmp_path / "no-export", png], "export")
    _one_line_error([out, png, "--top-k", "0"], "--top-k")
    assert predict(no_onnx, [png], runtime="torch").predictions[0].top1.name in D.FMNIST_CLASSES


def test_old_export_without_the_record_loads_and_predict_says_reexport(fmnist_export, fmnist_pngs, tmp_path):
    """An export written before the record: config.json without pretrained_cfg, model.onnx without its entries."""
    import onnx

    out, old = fmnist_export["out"], tmp_path / "old"
    old.mkdir()
    shutil.copy(out / "model.safetensors", old / "model.safetensors")
    config = json.loads((out / "config.json").read_text())
    del config["pretrained_cfg"]
    (old / "config.json").write_text(json.dumps(config))
    model = onnx.load(str(out / "model.onnx"))
    kept = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith("pretrained_cfg.")]
    del model.metadata_props[:]
    for key, value in kept:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(old / "model.onnx"))

    assert load_standalone(old).input_shape == (1, 28, 28)
    png = next(fmnist_pngs["dir"].glob("*.png"))
    for runtime in ("onnx", "torch"):
        _one_line_error([old, png, "--runtime", runtime], "records no preprocessing")
        with pytest.raises(PredictError, match="re-export it with `taslora export --onnx`"):
            predict(old, [png], runtime=runtime)
    # a damaged record is named, not guessed around
    (old / "config.json").write_text(json.dumps({**config, "pretrained_cfg": {"input_size": [1, 28, 28]}}))
    _one_line_error([old, png, "--runtime", "torch"], "lacks mean")
