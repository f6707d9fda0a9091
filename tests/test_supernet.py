"""The supernet against an independent, loop-based reading of AutoFormer's forward and slicing rules."""

from __future__ import annotations

import argparse
import math
import random

import pytest
import torch

from taslora_core import SearchSpace, Subnet, Supernet
from taslora_core.checkpoint import CheckpointError, load_autoformer_supernet, load_supernet, save_supernet
from taslora_core.subnet import sample_subnet
from taslora_core.vit_ops import rel_pos_index

AUTOFORMER_T_KEYS_BLOCK = [
    "attn.qkv.weight", "attn.qkv.bias",
    "attn.rel_pos_embed_k.embeddings_table_v", "attn.rel_pos_embed_k.embeddings_table_h",
    "attn.rel_pos_embed_v.embeddings_table_v", "attn.rel_pos_embed_v.embeddings_table_h",
    "attn.proj.weight", "attn.proj.bias",
    "attn_layer_norm.weight", "attn_layer_norm.bias", "ffn_layer_norm.weight", "ffn_layer_norm.bias",
    "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
]


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def reference_forward(model: Supernet, x: torch.Tensor, sub: Subnet) -> torch.Tensor:
    """Loop-based AutoFormer forward written from the reference notes, independent of the library code."""
    space, sd = model.space, {k: v.detach() for k, v in model.state_dict().items()}
    e, p = sub.embed_dim, space.patch_size
    hd = space.head_dim
    tokens = torch.nn.functional.conv2d(x, sd["patch_embed_super.proj.weight"][:e], sd["patch_embed_super.proj.bias"][:e], stride=p)
    tokens = tokens.flatten(2).transpose(1, 2)
    h = torch.cat([sd["cls_token"][..., :e].expand(x.shape[0], 1, e), tokens], 1) + sd["pos_embed"][..., :e]
    n = h.shape[1]
    s = int(math.sqrt(n - 1))
    m = space.max_relative_position

    def rel_idx(i: int, j: int, axis: str) -> int:
        if i == 0 or j == 0:
            return 0
        qi, ki = i - 1, j - 1
        d = (ki // s - qi // s) if axis == "v" else (ki % s - qi % s)
        return max(-m, min(m, d)) + m + 1

    for b in range(sub.depth):
        pre = f"blocks.{b}."
        heads = sub.num_heads[b]
        qk = heads * hd
        hid = int(e * sub.mlp_ratios[b])
        y = torch.nn.functional.layer_norm(h, (e,), sd[pre + "attn_layer_norm.weight"][:e], sd[pre + "attn_layer_norm.bias"][:e], 1e-5)
        w, bias = sd[pre + "attn.qkv.weight"], sd[pre + "attn.qkv.bias"]
        # q channel j: weight row 3j, bias j; k: row 3j+1, bias qk+j; v: row 3j+2, bias 2qk+j.
        q = torch.stack([y @ w[3 * j, :e] + bias[j] for j in range(qk)], -1)
        k = torch.stack([y @ w[3 * j + 1, :e] + bias[qk + j] for j in range(qk)], -1)
        v = torch.stack([y @ w[3 * j + 2, :e] + bias[2 * qk + j] for j in range(qk)], -1)
        tk = {a: sd[pre + f"attn.rel_pos_embed_k.embeddings_table_{a}"][:, :hd] for a in "vh"}
        tv = {a: sd[pre + f"attn.rel_pos_embed_v.embeddings_table_{a}"][:, :hd] for a in "vh"}
        rk = torch.stack([torch.stack([tk["v"][rel_idx(i, j, "v")] + tk["h"][rel_idx(i, j, "h")] for j in range(n)]) for i in range(n)])
        rv = torch.stack([torch.stack([tv["v"][rel_idx(i, j, "v")] + tv["h"][rel_idx(i, j, "h")] for j in range(n)]) for i in range(n)])
        outs = []
        for hh in range(heads):
            sl = slice(hh * hd, (hh + 1) * hd)
            qh, kh, vh = q[..., sl], k[..., sl], v[..., sl]
            logits = (qh @ kh.transpose(1, 2) + torch.einsum("bid,ijd->bij", qh, rk)) * hd**-0.5
            a = logits.softmax(-1)
            outs.append(a @ vh + torch.einsum("bij,ijd->bid", a, rv))
        att = torch.cat(outs, -1)
        h = h + att @ sd[pre + "attn.proj.weight"][:e, :qk].T + sd[pre + "attn.proj.bias"][:e]
        y = torch.nn.functional.layer_norm(h, (e,), sd[pre + "ffn_layer_norm.weight"][:e], sd[pre + "ffn_layer_norm.bias"][:e], 1e-5)
        y = torch.nn.functional.gelu(y @ sd[pre + "fc1.weight"][:hid, :e].T + sd[pre + "fc1.bias"][:hid])
        h = h + y @ sd[pre + "fc2.weight"][:e, :hid].T + sd[pre + "fc2.bias"][:e]
    h = torch.nn.functional.layer_norm(h, (e,), sd["norm.weight"][:e], sd["norm.bias"][:e], 1e-5)
    return h[:, 1:].mean(1) @ sd["head.weight"][:, :e].T + sd["head.bias"]


@pytest.fixture(scope="module")
def fmnist_model():
    torch.manual_seed(0)
    return _randomize(Supernet(SearchSpace.preset("fmnist")).eval())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_supernet_matches_loop_reference(fmnist_model, seed):
    space = fmnist_model.space
    sub = sample_subnet(space, random.Random(seed))
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        got, want = fmnist_model(x, sub), reference_forward(fmnist_model, x, sub)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_autoformer_t_state_dict_layout():
    model = Supernet(SearchSpace.preset("autoformer-t"))
    sd = model.state_dict()
    keys = list(sd)
    assert keys[:4] == ["pos_embed", "cls_token", "patch_embed_super.proj.weight", "patch_embed_super.proj.bias"]
    assert keys[4:20] == [f"blocks.0.{k}" for k in AUTOFORMER_T_KEYS_BLOCK]
    assert keys[-4:] == ["norm.weight", "norm.bias", "head.weight", "head.bias"]
    assert len(keys) == 232
    assert sum(v.numel() for v in sd.values()) == 11_669_224
    assert tuple(sd["blocks.3.attn.qkv.weight"].shape) == (768, 256)
    assert tuple(sd["blocks.3.attn.rel_pos_embed_v.embeddings_table_h"].shape) == (30, 64)
    assert tuple(sd["pos_embed"].shape) == (1, 197, 256)
    assert tuple(sd["blocks.13.fc1.weight"].shape) == (1024, 256)


@pytest.mark.parametrize("name, tensors, total", [("autoformer-s", 232, 34_790_440), ("autoformer-b", 264, 80_160_360)])
def test_s_and_b_supernet_sizes(name, tensors, total):
    with torch.device("meta"):
        model = Supernet(SearchSpace.preset(name))
    sd = model.state_dict()
    assert len(sd) == tensors and sum(v.numel() for v in sd.values()) == total


def test_rel_pos_index_rules():
    iv, ih = rel_pos_index(14, 14)
    assert iv.shape == (197, 197)
    assert (iv[0] == 0).all() and (iv[:, 0] == 0).all() and (ih[0] == 0).all()
    # patch 0 (row 0, col 0) to patch 15 (row 1, col 1): distance (1, 1) -> index 16
    assert iv[1, 16] == 16 and ih[1, 16] == 16
    used = set(iv[1:, 1:].unique().tolist())
    assert used == set(range(2, 29))  # rows 1 and 29 (distance +-14) never used at 224/16
    sv, _ = rel_pos_index(3, 1)  # clamping at max_rel 1
    assert sv[1:, 1:].max() == 3 and sv[1:, 1:].min() == 1


def test_blocks_past_depth_are_identity(fmnist_model):
    sub = Subnet(64, 4, (2.0, 3.0, 2.0, 3.0), (2, 3, 2, 3))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        before = fmnist_model(x, sub)
        fmnist_model.blocks[5].fc1.weight.add_(1.0)
        after = fmnist_model(x, sub)
        fmnist_model.blocks[5].fc1.weight.sub_(1.0)
    assert torch.equal(before, after)


def test_any_batch_size_gives_per_sample_results(fmnist_model):
    sub = sample_subnet(fmnist_model.space, random.Random(5))
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        full = fmnist_model(x, sub)
        single = torch.cat([fmnist_model(x[i : i + 1], sub) for i in range(5)])
    assert torch.allclose(full, single, atol=1e-5)
    with pytest.raises(ValueError, match="expects 28x28"):
        fmnist_model(torch.randn(1, 1, 32, 32), sub)


def _autoformer_ckpt(model: Supernet, path, prefix: str = "") -> None:
    state = {prefix + k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"model": state, "epoch": 3, "args": argparse.Namespace(gp=True, relative_position=True, change_qkv=True)}, path)


def test_autoformer_checkpoint_loads_with_weights_only(fmnist_model, tmp_path):
    path = tmp_path / "supernet.pth"
    _autoformer_ckpt(fmnist_model, path)
    loaded = load_autoformer_supernet(path, fmnist_model.space).eval()
    sub = sample_subnet(fmnist_model.space, random.Random(1))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x, sub), fmnist_model(x, sub))
    _autoformer_ckpt(fmnist_model, tmp_path / "ddp.pth", prefix="module.")
    load_autoformer_supernet(tmp_path / "ddp.pth", "fmnist")


def test_autoformer_checkpoint_errors_name_keys(fmnist_model, tmp_path):
    state = {k: v.clone() for k, v in fmnist_model.state_dict().items()}
    del state["blocks.2.fc1.bias"]
    state["blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    state["extra.thing"] = torch.zeros(1)
    torch.save({"model": state}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        load_autoformer_supernet(tmp_path / "bad.pth", fmnist_model.space)
    msg = str(err.value)
    assert "blocks.2.fc1.bias" in msg and "extra.thing" in msg and "blocks.0.attn.qkv.weight (3, 3)" in msg
    torch.save({"weights": state}, tmp_path / "nomodel.pth")
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        load_autoformer_supernet(tmp_path / "nomodel.pth", fmnist_model.space)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_autoformer_supernet(tmp_path / "missing.pth", fmnist_model.space)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_untrusted_pickle_is_refused(tmp_path):
    torch.save({"model": {}, "payload": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_autoformer_supernet(tmp_path / "evil.pth", "fmnist")


def test_safetensors_round_trip(fmnist_model, tmp_path):
    save_supernet(tmp_path / "run", fmnist_model)
    loaded = load_supernet(tmp_path / "run").eval()
    assert loaded.space == fmnist_model.space
    for (k, a), (_, b) in zip(fmnist_model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(CheckpointError, match="is not a taslora supernet"):
        load_supernet(tmp_path / "nothing")


@pytest.mark.gpu
def test_supernet_runs_on_cuda(fmnist_model):
    model = Supernet(fmnist_model.space).cuda().eval()
    model.load_state_dict(fmnist_model.state_dict())
    sub = sample_subnet(model.space, random.Random(0))
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(x.cuda(), sub).cpu(), fmnist_model(x, sub), atol=1e-4)
