"""`--gate-images N` reads only the first N test images of an image folder (it used to load all of val/ first)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from taslora_core import data as D
from taslora_deploy.precision import data as gate_data


def _tree(root: Path, per_class: int = 12) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        for c, colour in (("cat", (200, 30, 30)), ("dog", (20, 40, 220))):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("RGB", (20 + i, 18), colour).save(root / split / c / f"{i}.png")
    return root


@pytest.fixture
def counted(monkeypatch):
    """Count the image files decoded (the folder loader reads each one through torchvision's default_loader)."""
    import torchvision.datasets.folder as folder

    reads: list[str] = []
    real = folder.default_loader

    def counting(path: str):
        reads.append(path)
        return real(path)

    monkeypatch.setattr(folder, "default_loader", counting)
    return reads


def test_first_n_test_images_read_only_n(tmp_path, counted):
    cfg = D.DataConfig.for_data(str(_tree(tmp_path)), img_size=16)
    everything = D.load_test_batches(cfg, batch_size=500)
    assert len(counted) == 24
    counted.clear()
    first = D.load_test_batches(cfg, batch_size=500, limit=5)
    assert len(counted) == 5
    x = torch.cat([b[0] for b in first])
    y = torch.cat([b[1] for b in first])
    assert x.shape[0] == 5 and torch.equal(x, everything[0][0][:5]) and torch.equal(y, everything[0][1][:5])
    counted.clear()
    chunks = D.load_test_batches(cfg, batch_size=4, limit=10)
    assert [len(b[1]) for b in chunks] == [4, 4, 2] and len(counted) == 10
    with pytest.raises(ValueError, match=">= 1"):
        D.load_test_batches(cfg, limit=0)


def test_gate_batches_reads_only_the_gate_images(tmp_path, counted, monkeypatch):
    cfg = D.DataConfig.for_data(str(_tree(tmp_path)), img_size=16)
    monkeypatch.setattr(gate_data, "_run_config", lambda ckpt: (cfg, None))
    batches = gate_data.gate_batches(object(), n=3)
    assert sum(len(y) for _, y in batches) == 3 and len(counted) == 3
    counted.clear()
    assert sum(len(y) for _, y in gate_data.gate_batches(object())) == 24 and len(counted) == 24
    with pytest.raises(ValueError, match="--gate-images must be >= 1"):
        gate_data.gate_batches(object(), n=0)
