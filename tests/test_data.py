"""Tests for taslora_core.data on real Fashion-MNIST (Debian package) and a tiny ImageFolder tree."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from taslora_core import data as D

FMNIST_FILES = [
    Path(D.FMNIST_ROOT) / f"{p}-{k}-ubyte.gz" for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1")
]
needs_fmnist = pytest.mark.skipif(
    not all(f.is_file() for f in FMNIST_FILES),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)


@pytest.fixture(autouse=True)
def _default_fmnist_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(D.FMNIST_ENV, raising=False)


@pytest.fixture(scope="module")
def fmnist_bundle() -> D.DataBundle:
    if not all(f.is_file() for f in FMNIST_FILES):
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return D.build_data(D.DataConfig.fmnist(), seed=0)


# ---------------------------------------------------------------------------------------------- real data


@needs_fmnist
def test_real_fmnist_shapes_dtypes_and_labels() -> None:
    x, y = D.load_fmnist("train")
    assert x.shape == (60000, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (60000,) and y.dtype == torch.int64
    assert int(y.min()) == 0 and int(y.max()) == 9
    assert int(x.max()) == 255 and 0.25 < x.float().mean().item() / 255 < 0.32  # mean ~0.286
    assert torch.bincount(y, minlength=10).tolist() == [6000] * 10
    assert len(D.FMNIST_CLASSES) == 10 and D.FMNIST_CLASSES[9] == "Ankle boot"


@needs_fmnist
def test_t10k_is_balanced_1000_per_class() -> None:
    x, y = D.load_fmnist("test")
    assert x.shape == (10000, 28, 28)
    assert torch.bincount(y, minlength=10).tolist() == [1000] * 10


def test_bundle_sizes_and_sources(fmnist_bundle: D.DataBundle) -> None:
    b = fmnist_bundle
    assert (len(b.train), len(b.val), len(b.test)) == (50000, 10000, 10000)
    assert b.num_classes == 10 and b.classes == list(D.FMNIST_CLASSES)
    assert b.train.images.shape == (50000, 1, 28, 28) and b.train.images.dtype == torch.uint8
    x, y = D.load_fmnist("train")
    idx = b.val.indices[:50]
    assert torch.equal(b.val.images[:50, 0], x[idx]) and torch.equal(b.val.labels[:50], y[idx])
    assert b.split["train_count"] == 50000 and len(b.split["val_indices"]) == 10000


# ---------------------------------------------------------------------------------------------- split


def test_split_deterministic_disjoint_and_seed_dependent(fmnist_bundle: D.DataBundle) -> None:
    again = D.build_data(D.DataConfig.fmnist(), seed=0)
    other = D.build_data(D.DataConfig.fmnist(), seed=1)
    assert again.split["val_indices"] == fmnist_bundle.split["val_indices"]
    assert torch.equal(again.train.indices, fmnist_bundle.train.indices)
    assert other.split["val_indices"] != fmnist_bundle.split["val_indices"]
    val = set(fmnist_bundle.val.indices.tolist())
    train = set(fmnist_bundle.train.indices.tolist())
    assert not (val & train)
    assert len(val | train) == 60000


def test_split_save_load_roundtrip_and_reuse(tmp_path: Path, fmnist_bundle: D.DataBundle) -> None:
    path = tmp_path / "run" / "split.json"
    D.save_split(path, fmnist_bundle.split)
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no temp file left behind
    loaded = D.load_split(path)
    assert loaded == fmnist_bundle.split
    reused = D.build_data(D.DataConfig.fmnist(), seed=123, val_size=5, split=loaded)
    assert torch.equal(reused.val.indices, fmnist_bundle.val.indices)
    assert torch.equal(reused.train.indices, fmnist_bundle.train.indices)
    bad = dict(loaded, num_total=59999, val_indices=loaded["val_indices"][:10])
    with pytest.raises(ValueError, match="59999"):
        D.build_data(D.DataConfig.fmnist(), split=bad)


def test_train_and_val_subset(fmnist_bundle: D.DataBundle) -> None:
    sub = D.build_data(D.DataConfig.fmnist(), seed=0, train_subset=1000, val_subset=300)
    assert len(sub.train) == 1000 and len(sub.val) == 300
    assert torch.equal(sub.train.indices, fmnist_bundle.train.indices[:1000])
    assert torch.equal(sub.val.indices, fmnist_bundle.val.indices[:300])
    assert sub.split["val_indices"] == fmnist_bundle.split["val_indices"]  # subsets never move data
    assert sub.split["train_count"] == 1000


def test_val_size_capped_at_20_percent() -> None:
    split = D.make_split(100, val_size=10000, seed=3)
    train, val = D.split_indices(split)
    assert len(val) == 20 and len(train) == 80
    assert sorted(train.tolist() + val.tolist()) == list(range(100))
    assert len(D.make_split(100, val_size=7, seed=3)["val_indices"]) == 7


# ---------------------------------------------------------------------------------------------- augmentation


def _matches_some_shift_or_flip(aug: torch.Tensor, orig: torch.Tensor, pad: int) -> tuple[int, int, bool] | None:
    padded = torch.nn.functional.pad(orig, (pad, pad, pad, pad))
    h, w = orig.shape[-2:]
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[..., dy:dy + h, dx:dx + w]
            for flip in (False, True):
                if torch.equal(aug, crop.flip(-1) if flip else crop):
                    return dy, dx, flip
    return None


def test_augment_batch_is_shift_plus_flip(fmnist_bundle: D.DataBundle) -> None:
    imgs = fmnist_bundle.train.images[:32]
    gen = torch.Generator().manual_seed(0)
    aug = D.augment_batch(imgs, gen, pad=2, hflip=0.5)
    assert aug.shape == imgs.shape and aug.dtype == torch.uint8
    assert not torch.equal(aug, imgs)
    found = [_matches_some_shift_or_flip(aug[i], imgs[i], 2) for i in range(len(imgs))]
    assert all(f is not None for f in found)
    assert len({f for f in found}) > 3  # different images get different shifts/flips
    assert any(f[2] for f in found) and not all(f[2] for f in found)


def test_fmnist_loaders_shapes_normalisation_and_drop_last(fmnist_bundle: D.DataBundle) -> None:
    cfg = D.DataConfig.fmnist()
    small = D.build_data(cfg, seed=0, train_subset=1000, val_subset=300)
    loaders = D.make_loaders(small, cfg, batch_size=128)
    train_batches = list(loaders.train)
    assert len(train_batches) == len(loaders.train) == 1000 // 128
    x, y = train_batches[0]
    assert x.shape == (128, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert int(y.min()) >= 0 and int(y.max()) <= 9
    val_batches = list(loaders.val)
    assert [len(b[1]) for b in val_batches] == [128, 128, 44]
    vx, vy = val_batches[0]
    expected = (small.val.images[:128].float() / 255 - 0.2860) / 0.3530
    assert torch.allclose(vx, expected) and torch.equal(vy, small.val.labels[:128])
    assert abs(torch.cat([b[0] for b in val_batches]).mean().item()) < 0.2
    assert loaders.train.epoch == 1  # a finished epoch moves the order on


# ---------------------------------------------------------------------------------------------- sharding


def test_sharded_order_two_ranks_cover_epoch_without_overlap() -> None:
    r0 = D.shard_indices(1000, epoch=4, seed=7, rank=0, world_size=2)
    r1 = D.shard_indices(1000, epoch=4, seed=7, rank=1, world_size=2)
    assert len(r0) == len(r1) == 500
    assert not (set(r0.tolist()) & set(r1.tolist()))
    assert sorted(r0.tolist() + r1.tolist()) == list(range(1000))
    assert not torch.equal(r0, D.shard_indices(1000, epoch=5, seed=7, rank=0, world_size=2))
    p0 = D.shard_indices(1001, epoch=0, seed=7, rank=0, world_size=2)
    p1 = D.shard_indices(1001, epoch=0, seed=7, rank=1, world_size=2)
    assert len(p0) == len(p1) == 501 and set(p0.tolist()) | set(p1.tolist()) == set(range(1001))


def test_eval_shards_are_disjoint_and_unpadded() -> None:
    shards = [D.ShardedOrder(1001, rank=r, world_size=2, shuffle=False, pad=False) for r in (0, 1)]
    lists = [list(s) for s in shards]
    assert [len(lst) for lst in lists] == [501, 500]
    assert sorted(lists[0] + lists[1]) == list(range(1001)) and lists[0][:3] == [0, 2, 4]


def test_sharded_order_resumes_mid_epoch() -> None:
    full = D.ShardedOrder(1000, seed=3, rank=1, world_size=2)
    full.set_epoch(2)
    expected = full.indices()
    part = D.ShardedOrder(1000, seed=3, rank=1, world_size=2)
    part.set_epoch(2)
    part.advance(3 * 64)
    state = part.state_dict()
    resumed = D.ShardedOrder(1000, seed=3, rank=1, world_size=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # same epoch: keeps the position
    assert torch.equal(resumed.indices(), expected[3 * 64:])
    resumed.set_epoch(3)
    assert resumed.position == 0
    with pytest.raises(ValueError, match="world_size"):
        D.ShardedOrder(1000, world_size=4).load_state_dict(state)


def test_train_loader_resume_gives_identical_batches(fmnist_bundle: D.DataBundle) -> None:
    cfg = D.DataConfig.fmnist()
    small = D.build_data(cfg, seed=0, train_subset=640)

    def loader() -> D.TensorLoader:
        return D.make_loaders(small, cfg, batch_size=64, rank=1, world_size=2, seed=5).train

    reference = list(loader())
    interrupted = loader()
    it = iter(interrupted)
    for _ in range(2):
        next(it)
    state = interrupted.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(reference) - 2
    for (xa, ya), (xb, yb) in zip(rest, reference[2:]):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    fresh = next(iter(loader()))
    assert torch.equal(fresh[0], reference[0][0])  # same seed and epoch -> same augmented batch
    other_epoch = loader()
    other_epoch.set_epoch(1)
    assert not torch.equal(next(iter(other_epoch))[1], reference[0][1])


# ---------------------------------------------------------------------------------------------- errors


def test_missing_root_message_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere"
    monkeypatch.setenv(D.FMNIST_ENV, str(missing))
    assert D.fmnist_root() == missing
    with pytest.raises(D.DataUnavailable) as err:
        D.build_data(D.DataConfig.fmnist())
    msg = str(err.value)
    assert "\n" not in msg
    assert "dataset-fashion-mnist" in msg and str(missing) in msg and "--data" in msg
    assert isinstance(err.value, RuntimeError)


def _write_gz(path: Path, payload: bytes) -> None:
    with gzip.open(path, "wb") as fh:
        fh.write(payload)


def test_corrupt_files_raise_data_unavailable(tmp_path: Path) -> None:
    images = struct.pack(">iiii", 2051, 2, 28, 28) + bytes(2 * 784)
    _write_gz(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_gz(tmp_path / "t10k-labels-idx1-ubyte.gz", struct.pack(">ii", 2051, 2) + bytes([1, 2]))
    with pytest.raises(D.DataUnavailable, match="magic"):
        D.load_fmnist("test", root=tmp_path)
    _write_gz(tmp_path / "t10k-labels-idx1-ubyte.gz", struct.pack(">ii", 2049, 2) + bytes([1]))
    with pytest.raises(D.DataUnavailable, match="1 label bytes for 2 labels"):
        D.load_fmnist("test", root=tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(D.DataUnavailable, match="corrupt"):
        D.load_fmnist("test", root=tmp_path)
    _write_gz(tmp_path / "t10k-labels-idx1-ubyte.gz", struct.pack(">ii", 2049, 2) + bytes([1, 2]))
    x, y = D.load_fmnist("test", root=tmp_path)
    assert x.shape == (2, 28, 28) and y.tolist() == [1, 2]


# ---------------------------------------------------------------------------------------------- folders

COLORS = {"cat": (200, 30, 30), "dog": (20, 40, 220)}


def _make_tree(root: Path, n_train: int = 5, n_val: int = 2, val_classes: tuple[str, ...] = ("cat", "dog")) -> None:
    from PIL import Image

    for split, n, classes in (("train", n_train, ("cat", "dog")), ("val", n_val, val_classes)):
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (40 + i, 36), COLORS[cls]).save(root / split / cls / f"{i}.png")


def test_image_folder_with_autoformer_recipe(tmp_path: Path) -> None:
    _make_tree(tmp_path)
    cfg = D.DataConfig.for_data(str(tmp_path), img_size=32)
    assert cfg.auto_augment == "rand-m9-mstd0.5-inc1" and cfg.interpolation == "bicubic"
    bundle = D.build_data(cfg, seed=0)
    assert bundle.kind == "folder" and bundle.classes == ["cat", "dog"] and bundle.num_classes == 2
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (8, 2, 4)  # val capped at 20% of 10
    loaders = D.make_loaders(bundle, cfg, batch_size=4, num_workers=0)
    x, y = next(iter(loaders.train))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()
    tx, ty = torch.cat([b[0] for b in loaders.test]), torch.cat([b[1] for b in loaders.test])
    assert tx.shape == (4, 3, 32, 32) and ty.tolist() == [0, 0, 1, 1]
    mean, std = torch.tensor(D.IMAGENET_MEAN), torch.tensor(D.IMAGENET_STD)
    for img, label in zip(tx, ty):
        rgb = torch.tensor(COLORS[bundle.classes[label]]) / 255.0
        expected = ((rgb - mean) / std).view(3, 1, 1).expand(3, 32, 32)
        assert torch.allclose(img, expected, atol=1e-2)


def test_autoformer_recipe_transforms_and_mixup() -> None:
    cfg = D.DataConfig.autoformer("/some/imagenet", num_classes=1000)
    train_tf, eval_tf = D.make_transforms(cfg)
    eval_names = [type(t).__name__ for t in eval_tf.transforms]
    assert eval_names[:2] == ["Resize", "CenterCrop"]
    assert eval_tf.transforms[0].size == 256 and tuple(eval_tf.transforms[1].size) == (224, 224)
    train_names = [type(t).__name__ for t in train_tf.transforms]
    assert "RandAugment" in train_names and "RandomErasing" in train_names
    mix = D.make_mixup(cfg)
    assert (mix.mixup_alpha, mix.cutmix_alpha, mix.mix_prob, mix.switch_prob) == (0.8, 1.0, 1.0, 0.5)
    assert mix.label_smoothing == 0.1 and type(D.make_train_loss(cfg)).__name__ == "SoftTargetCrossEntropy"


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(D.DataUnavailable, match=r"train/<class>") as err:
        D.build_data(D.DataConfig.for_data(str(tmp_path / "empty")))
    assert "\n" not in str(err.value)
    _make_tree(tmp_path / "mismatch", val_classes=("cat",))
    with pytest.raises(D.DataUnavailable, match="different classes"):
        D.build_data(D.DataConfig.for_data(str(tmp_path / "mismatch")))


# ---------------------------------------------------------------------------------------------- mixup / loss


def test_mixup_batch_gives_soft_targets(fmnist_bundle: D.DataBundle) -> None:
    plain = D.DataConfig.fmnist()
    assert D.make_mixup(plain) is None
    assert type(D.make_train_loss(plain)).__name__ == "LabelSmoothingCrossEntropy"
    assert isinstance(D.make_train_loss(D.DataConfig.fmnist(smoothing=0.0)), torch.nn.CrossEntropyLoss)
    cfg = D.DataConfig.fmnist(mixup=0.8, cutmix=1.0)
    small = D.build_data(cfg, seed=0, train_subset=256)
    x, y = next(iter(D.make_loaders(small, cfg, batch_size=64).train))
    np.random.seed(0)
    mixed, soft = D.make_mixup(cfg)(x.clone(), y)
    assert soft.shape == (64, 10) and soft.dtype == torch.float32
    assert torch.allclose(soft.sum(1), torch.ones(64))
    assert float(soft.max()) < 0.95  # not one-hot: smoothing and mixing spread the mass
    assert ((soft > 0.05).sum(1) >= 2).any()  # some rows mix two classes
    assert not torch.equal(mixed, x)
    loss = D.make_train_loss(cfg)(torch.zeros(64, 10), soft)
    assert torch.isfinite(loss) and abs(loss.item() - np.log(10)) < 1e-4


@needs_fmnist
def test_load_test_batches_is_the_whole_test_set_in_file_order() -> None:
    cfg = D.DataConfig.fmnist()
    batches = D.load_test_batches(cfg, batch_size=4000)
    assert [len(y) for _, y in batches] == [4000, 4000, 2000]
    images, labels = D.load_fmnist("test")
    assert torch.equal(torch.cat([y for _, y in batches]), labels)
    first = batches[0][0][:3]
    assert first.shape == (3, 1, 28, 28) and first.dtype == torch.float32
    assert torch.allclose(first, D.normalize_batch(images[:3].reshape(3, 1, 28, 28), cfg))  # normalised, not augmented
