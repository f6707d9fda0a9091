"""Materialised standalone ViTs: exact shapes, strict loading, parity with the supernet."""

from __future__ import annotations

import random

import pytest
import torch

from taslora_core import SearchSpace, Supernet
from taslora_core.checkpoint import CheckpointError
from taslora_core.subnet import AUTOFORMER_SUBNETS, sample_subnet
from taslora_deploy import StandaloneViT, load_standalone, materialize, save_standalone


def _random_supernet(name: str, seed: int = 0) -> Supernet:
    torch.manual_seed(seed)
    model = Supernet(SearchSpace.preset(name)).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases, so slicing mistakes cannot hide
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("name", ["autoformer-t", "autoformer-s", "autoformer-b"])
def test_official_subnets_match_supernet(name):
    sup = _random_supernet(name)
    sub = AUTOFORMER_SUBNETS[name]
    model = materialize(sup, sub)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff = (model(x) - sup(x, sub)).abs().max().item()
    assert diff <= 1e-5


@pytest.mark.parametrize("seed", range(4))
def test_random_subnets_match_supernet(seed):
    name = "fmnist" if seed < 3 else "autoformer-t"
    sup = _random_supernet(name, seed)
    sub = sample_subnet(sup.space, random.Random(seed))
    model = materialize(sup, sub)
    x = torch.randn(3, sup.space.in_chans, sup.space.img_size, sup.space.img_size)
    with torch.no_grad():
        assert (model(x) - sup(x, sub)).abs().max().item() <= 1e-5


def test_layers_have_exact_subnet_shapes_and_load_strictly():
    sup = _random_supernet("autoformer-t")
    sub = AUTOFORMER_SUBNETS["autoformer-t"]
    model = materialize(sup, sub)
    assert len(model.blocks) == 13
    blk = model.blocks[10]  # 4 heads: qk 256 > embed 192
    assert tuple(blk.attn.qkv.weight.shape) == (768, 192)
    assert tuple(blk.attn.proj.weight.shape) == (192, 256)
    assert tuple(model.blocks[2].fc1.weight.shape) == (576, 192)  # ratio 3.0
    assert model.rel_one_hot.shape[0] == 197 and "rel_key_index" in dict(model.named_buffers())
    fresh = StandaloneViT(sup.space, sub)
    fresh.load_state_dict(model.state_dict(), strict=True)
    bad = dict(model.state_dict())
    bad.pop("head.bias")
    with pytest.raises(RuntimeError):
        fresh.load_state_dict(bad, strict=True)


def test_save_and_load_standalone(tmp_path):
    sup = _random_supernet("fmnist")
    sub = sample_subnet(sup.space, random.Random(9))
    model = materialize(sup, sub)
    save_standalone(tmp_path / "m", model, extra={"note": "x"})
    loaded = load_standalone(tmp_path / "m")
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.subnet == sub
    with pytest.raises(CheckpointError, match="holds no standalone model"):
        load_standalone(tmp_path / "empty")
