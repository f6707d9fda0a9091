"""`taslora analyze collapse` / `routing` on the shared trained workspace, and the analysis functions."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import requires_fmnist, run_cli
from taslora_core import SearchSpace, Supernet
from taslora_core.analysis import cosine_matrix, mean_off_diagonal, routing_stats, sample_distinct
from taslora_core.mole import MoLEModel


def test_cosine_matrix_on_known_features():
    a = torch.tensor([[1.0, 0.0, 5.0], [0.0, 1.0, 5.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, -1.0]])  # compared on the first 2 channels only
    m = cosine_matrix([a, b, a.clone()])
    assert torch.allclose(m.diagonal(), torch.ones(3))
    assert m[0, 1].item() == pytest.approx(0.0) and m[0, 2].item() == pytest.approx(1.0)
    assert mean_off_diagonal(m) == pytest.approx((0 + 1 + 0) * 2 / 6)


def test_routing_stats_of_fresh_groupwise_router():
    mole = MoLEModel(Supernet(SearchSpace.preset("fmnist")))
    stats = routing_stats(mole, n_subnets=40, seed=0)
    k = mole.num_experts
    expected = math.e**3 / (math.e**3 + k - 1)
    seen = stats.counts > 0
    assert seen.sum() >= 10
    assert torch.allclose(stats.own_expert_share()[seen], torch.full_like(stats.own_expert_share()[seen], expected), atol=3e-3)
    assert torch.allclose(stats.mean_probs[seen].sum(-1), torch.ones(int(seen.sum()), 4), atol=1e-5)
    assert len({s.key() for s in sample_distinct(mole.space, 30, 1)}) == 30


@requires_fmnist
def test_analyze_commands_write_tables_and_heatmaps(trained_workspace, tmp_path):
    ws = trained_workspace
    res = run_cli(["analyze", "collapse", "--ckpt", ws["mole_dir"], "--num-subnets", "4", "--val-subset", "300",
                   "--out", tmp_path])
    assert res.exit_code == 0, res.output
    col = json.loads((tmp_path / "collapse.json").read_text())
    for key in ("cos_supernet", "cos_mole"):
        m = torch.tensor(col[key])
        assert m.shape == (4, 4) and torch.allclose(m.diagonal(), torch.ones(4), atol=1e-5)
        assert (m.abs() <= 1 + 1e-5).all()
    assert col["cos_supernet"] != col["cos_mole"]  # the trained experts change the features
    assert (tmp_path / "collapse.png").read_bytes()[:4] == b"\x89PNG"
    assert "supernet alone" in res.output and "with MoLE experts" in res.output
    res = run_cli(["analyze", "routing", "--ckpt", ws["mole_dir"], "--num-subnets", "30", "--out", tmp_path])
    assert res.exit_code == 0, res.output
    rt = json.loads((tmp_path / "routing.json").read_text())
    probs = torch.tensor(rt["mean_probs"])
    seen = torch.tensor(rt["blocks_per_group"]) > 0
    assert torch.allclose(probs[seen].sum(-1), torch.ones(int(seen.sum()), 4), atol=1e-5)
    assert all(0 <= e <= rt["max_entropy"] + 1e-6 for row in rt["entropy"] for e in row)
    assert (tmp_path / "routing.png").read_bytes()[:4] == b"\x89PNG"


def test_analyze_routing_refuses_plain_supernet(tmp_path):
    from taslora_core.checkpoint import save_supernet

    save_supernet(tmp_path / "sup", Supernet(SearchSpace.preset("fmnist")))
    res = run_cli(["analyze", "routing", "--ckpt", tmp_path / "sup"])
    assert res.exit_code == 2 and "plain supernet" in res.stderr


def test_paired_bootstrap_interval_covers_the_true_difference_and_tells_signs() -> None:
    import torch

    from taslora_core.analysis import paired_bootstrap

    none = paired_bootstrap(torch.zeros(5000))
    assert none.mean == none.low == none.high == 0.0 and not none.excludes_zero()
    # B right on 150 more of 10,000 images than A, wrong on 50 more: +1.0 point, clearly above 0
    diff = torch.zeros(10000)
    diff[:150], diff[150:200] = 1.0, -1.0
    d = paired_bootstrap(diff, seed=3)
    assert d.mean == pytest.approx(0.01) and d.count == 10000
    assert d.low < 0.01 < d.high and d.excludes_zero() and d.low > 0.004 and d.high < 0.016
    flipped = paired_bootstrap(-diff, seed=3)
    assert flipped.high < 0 and flipped.excludes_zero()
    assert paired_bootstrap(diff, seed=3) == d  # deterministic for a seed
    with pytest.raises(ValueError, match="at least one"):
        paired_bootstrap(torch.zeros(0))
