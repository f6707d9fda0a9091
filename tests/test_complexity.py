"""Params and FLOPs against AutoFormer's published counts and torch's FlopCounterMode."""

from __future__ import annotations

import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from taslora_core import SearchSpace, Supernet, flops, params, rel_pos_attention
from taslora_core.complexity import format_amount, parse_amount
from taslora_core.subnet import AUTOFORMER_SUBNETS, largest_subnet, sample_subnet, smallest_subnet
from taslora_deploy import materialize
from test_attention_fast import reference_attention


@pytest.mark.parametrize(
    "name, n_params, gflops",
    [("autoformer-t", 5_867_944, 1.344), ("autoformer-s", 22_891_432, 4.892), ("autoformer-b", 53_691_688, 11.237)],
)
def test_official_subnets_params_and_autoformer_flops(name, n_params, gflops):
    space, sub = SearchSpace.preset(name), AUTOFORMER_SUBNETS[name]
    assert params(space, sub) == n_params
    assert round(flops(space, sub, "autoformer") / 1e9, 3) == gflops


def test_autoformer_t_flops_breakdown_terms():
    # get_complexity(196) for T without the rel-pos term is 1.329G (autoformer.md 4.2)
    space, sub = SearchSpace.preset("autoformer-t"), AUTOFORMER_SUBNETS["autoformer-t"]
    from dataclasses import replace

    no_rel = replace(space, relative_position=False)
    assert round(flops(no_rel, sub, "autoformer") / 1e9, 3) == 1.329


@pytest.mark.parametrize("name", ["fmnist", "autoformer-t"])
def test_macs_equal_flop_counter_on_standalone(name, monkeypatch):
    # 'macs' counts the architecture as AutoFormer computes it: count the reference attention (N x N x d tables)
    monkeypatch.setattr(rel_pos_attention, "attention", reference_attention)
    space = SearchSpace.preset(name)
    with torch.no_grad():
        sup = Supernet(space)
    subs = [sample_subnet(space, random.Random(s)) for s in range(2 if name == "fmnist" else 1)]
    subs.append(AUTOFORMER_SUBNETS.get(name, largest_subnet(space)))
    for sub in subs:
        model = materialize(sup, sub)
        x = torch.randn(1, space.in_chans, space.img_size, space.img_size)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(x)
        assert counter.get_total_flops() == 2 * flops(space, sub, "macs")


def test_params_equal_standalone_parameter_count():
    space = SearchSpace.preset("fmnist")
    sup = Supernet(space)
    for seed in range(5):
        sub = sample_subnet(space, random.Random(seed))
        assert sum(p.numel() for p in materialize(sup, sub).parameters()) == params(space, sub)


def test_counts_are_monotone_over_the_space():
    space = SearchSpace.preset("autoformer-s")
    lo, hi = smallest_subnet(space), largest_subnet(space)
    for counter in ("autoformer", "macs"):
        for s in range(20):
            sub = sample_subnet(space, random.Random(s))
            assert flops(space, lo, counter) <= flops(space, sub, counter) <= flops(space, hi, counter)
    with pytest.raises(ValueError, match="unknown FLOPs counter"):
        flops(space, lo, "fvcore")


def test_amount_parsing():
    assert parse_amount("1.3G") == 1.3e9 and parse_amount("6M") == 6e6 and parse_amount("500k") == 5e5
    assert parse_amount("2e9") == 2e9
    with pytest.raises(ValueError, match="K/M/G"):
        parse_amount("lots")
    assert format_amount(1.344e9) == "1.344G"


def test_space_and_flops_commands(tmp_path):
    from typer.testing import CliRunner

    from taslora_cli.main import app

    runner = CliRunner()
    res = runner.invoke(app, ["space", "autoformer-t"])
    assert res.exit_code == 0 and "12" in res.output and "5.366M .. 10.517M" in res.output
    AUTOFORMER_SUBNETS["autoformer-t"].to_json(tmp_path / "t.json")
    res = runner.invoke(app, ["flops", str(tmp_path / "t.json"), "--space", "autoformer-t"])
    assert res.exit_code == 0
    assert "1.344G" in res.output and "1.482G" in res.output and "5,867,944" in res.output
    assert "fits the supernet" in res.output  # ratio 3.0 is outside T's search space
    res = runner.invoke(app, ["flops", str(tmp_path / "t.json")])
    assert res.exit_code == 2 and "pass --space" in res.stderr
    res = runner.invoke(app, ["space", "nope"])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
