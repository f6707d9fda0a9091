"""Search spaces, subnets, YAML/JSON I/O, validation and sampling."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from taslora_core import SearchSpace, Subnet
from taslora_core.space import SpaceError
from taslora_core.subnet import (
    AUTOFORMER_SUBNETS,
    SubnetDoesNotFitSupernet,
    SubnetError,
    SubnetOutsideSearchSpace,
    largest_subnet,
    sample_subnet,
    smallest_subnet,
)

SUPERNET_T_YAML = """\
SUPERNET:
  MLP_RATIO: 4.0
  NUM_HEADS: 4
  EMBED_DIM: 256
  DEPTH: 14
SEARCH_SPACE:
  MLP_RATIO:
    - 3.5
    - 4
  NUM_HEADS:
    - 3
    - 4
  DEPTH:
    - 12
    - 13
    - 14
  EMBED_DIM:
    - 192
    - 216
    - 240
"""

SUBNET_T_YAML = SUPERNET_T_YAML + """\
RETRAIN:
  MLP_RATIO:
    - 3.5
    - 3.5
    - 3.0
    - 3.5
    - 3.0
    - 3.0
    - 4.0
    - 4.0
    - 3.5
    - 4.0
    - 3.5
    - 4.0
    - 3.5
  NUM_HEADS: [3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 4, 3, 3]
  DEPTH: 13
  EMBED_DIM: 192
"""


@pytest.mark.parametrize(
    "name, alloc, groups",
    [("autoformer-t", (256, 14, 4, 4.0), 12), ("autoformer-s", (448, 14, 7, 4.0), 27),
     ("autoformer-b", (640, 16, 10, 4.0), 18), ("fmnist", (96, 6, 3, 3.0), 12)],
)
def test_presets_allocations_and_groups(name, alloc, groups):
    s = SearchSpace.preset(name)
    assert (s.super_embed_dim, s.super_depth, s.super_num_heads, s.super_mlp_ratio) == alloc
    assert len(s.groups()) == groups
    assert len(set(s.groups())) == groups
    assert len(s.groups(include_depth=True)) == groups * len(s.depths)


def test_autoformer_preset_choices_are_exact():
    t, s, b = (SearchSpace.preset(n) for n in ("autoformer-t", "autoformer-s", "autoformer-b"))
    assert (t.embed_dims, t.depths, t.num_heads, t.mlp_ratios) == ((192, 216, 240), (12, 13, 14), (3, 4), (3.5, 4.0))
    assert (s.embed_dims, s.num_heads, s.mlp_ratios) == ((320, 384, 448), (5, 6, 7), (3.0, 3.5, 4.0))
    assert (b.embed_dims, b.depths, b.num_heads) == ((528, 576, 624), (14, 15, 16), (9, 10))
    for sp in (t, s, b):
        assert (sp.img_size, sp.patch_size, sp.in_chans, sp.num_classes, sp.head_dim, sp.max_relative_position) == (
            224, 16, 3, 1000, 64, 14)
        assert sp.rel_table_rows == 30 and sp.rel_table_cols == 64


def test_autoformer_yaml_reads_supernet_and_search_space(tmp_path):
    path = tmp_path / "supernet-T.yaml"
    path.write_text(SUPERNET_T_YAML)
    space = SearchSpace.from_yaml(path)
    ref = SearchSpace.preset("autoformer-t")
    for field in ("super_embed_dim", "super_depth", "super_num_heads", "super_mlp_ratio", "embed_dims", "depths",
                  "num_heads", "mlp_ratios", "img_size", "patch_size", "head_dim", "max_relative_position"):
        assert getattr(space, field) == getattr(ref, field), field


def test_own_yaml_and_json_round_trip(tmp_path):
    space = SearchSpace.preset("fmnist")
    space.to_yaml(tmp_path / "s.yaml")
    assert SearchSpace.from_yaml(tmp_path / "s.yaml") == space
    assert SearchSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space
    assert SearchSpace.resolve(tmp_path / "s.yaml") == space


def test_bad_space_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(SpaceError, match="neither a preset"):
        SearchSpace.resolve("no-such-space")
    bad = tmp_path / "bad.yaml"
    bad.write_text("SUPERNET: {EMBED_DIM: 256}\n")
    with pytest.raises(SpaceError, match="lacks key"):
        SearchSpace.from_yaml(bad)
    doc = SearchSpace.preset("fmnist").to_dict()
    doc["embed_dims"] = [64, 128]
    with pytest.raises(SpaceError, match="exceed the supernet"):
        SearchSpace.from_dict(doc)
    doc = SearchSpace.preset("fmnist").to_dict() | {"bogus": 1}
    with pytest.raises(SpaceError, match="bogus"):
        SearchSpace.from_dict(doc)


def test_subnet_json_round_trip_and_retrain_block(tmp_path):
    sub = sample_subnet(SearchSpace.preset("autoformer-s"), random.Random(3))
    sub.to_json(tmp_path / "s.json")
    assert Subnet.load(tmp_path / "s.json") == sub
    (tmp_path / "AutoFormer-T.yaml").write_text(SUBNET_T_YAML)
    assert Subnet.load(tmp_path / "AutoFormer-T.yaml") == AUTOFORMER_SUBNETS["autoformer-t"]


def test_subnet_json_key_is_mlp_ratios_and_older_files_still_read(tmp_path):
    sub = Subnet(embed_dim=80, depth=4, mlp_ratios=(3.0, 3.0, 3.0, 2.0), num_heads=(2, 3, 3, 2))
    assert sub.to_dict() == {"embed_dim": 80, "depth": 4, "mlp_ratios": [3.0, 3.0, 3.0, 2.0], "num_heads": [2, 3, 3, 2]}
    old = {"embed_dim": 80, "depth": 4, "mlp_ratio": [3.0, 3.0, 3.0, 2.0], "num_heads": [2, 3, 3, 2]}
    assert Subnet.from_dict(old) == sub  # files written before the rename (e.g. benchmarks/reproduction/subnet.json)
    assert Subnet.load(Path(__file__).resolve().parent.parent / "benchmarks" / "reproduction" / "subnet.json") == sub
    assert Subnet.from_dict({"subnet": sub.to_dict()}) == sub  # best.json wraps it
    same = Subnet.from_dict({"EMBED_DIM": [80], "DEPTH": 4, "MLP_RATIO": 3.0, "NUM_HEADS": [2, 3, 3, 2]})
    assert same.mlp_ratios == (3.0,) * 4  # one AutoFormer ratio for every block
    assert Subnet.from_dict({**old, "mlp_ratios": [3, 3, 3, 2]}) == sub  # both keys, same ratios
    with pytest.raises(SubnetError, match="differ"):
        Subnet.from_dict({**old, "mlp_ratios": [2.0] * 4})
    with pytest.raises(SubnetError, match="lacks 'mlp_ratios'"):
        Subnet.from_dict({"embed_dim": 80, "depth": 4, "num_heads": [2] * 4})


def test_official_t_subnet_fits_supernet_but_not_search_space():
    space, sub = SearchSpace.preset("autoformer-t"), AUTOFORMER_SUBNETS["autoformer-t"]
    sub.check_fits(space)
    with pytest.raises(SubnetOutsideSearchSpace, match=r"MLP ratios \[3.0\]"):
        sub.check_in_space(space)
    assert not sub.in_space(space)
    for name in ("autoformer-s", "autoformer-b"):
        assert AUTOFORMER_SUBNETS[name].in_space(SearchSpace.preset(name))


def test_fit_and_space_errors_are_distinct():
    space = SearchSpace.preset("autoformer-t")
    too_wide = Subnet(embed_dim=300, depth=12, mlp_ratios=(4.0,) * 12, num_heads=(3,) * 12)
    with pytest.raises(SubnetDoesNotFitSupernet, match="embed_dim 300"):
        too_wide.check_fits(space)
    too_many_heads = Subnet(embed_dim=192, depth=12, mlp_ratios=(4.0,) * 12, num_heads=(5,) + (3,) * 11)
    with pytest.raises(SubnetDoesNotFitSupernet, match="block 0"):
        too_many_heads.check_in_space(space)
    assert not issubclass(SubnetDoesNotFitSupernet, SubnetOutsideSearchSpace)
    with pytest.raises(ValueError, match="one of each per block"):
        Subnet(embed_dim=192, depth=3, mlp_ratios=(4.0,), num_heads=(3, 3, 3))


def test_sampling_is_seeded_in_space_and_uniform():
    space = SearchSpace.preset("autoformer-s")
    a = [sample_subnet(space, random.Random(7)) for _ in range(2)]
    assert a[0] == a[1]
    rng = random.Random(0)
    subs = [sample_subnet(space, rng) for _ in range(3000)]
    assert all(s.in_space(space) for s in subs)
    depths = Counter(s.depth for s in subs)
    embeds = Counter(s.embed_dim for s in subs)
    ratios = Counter(r for s in subs for r in s.mlp_ratios)
    for counter, k in ((depths, 3), (embeds, 3), (ratios, 3)):
        assert len(counter) == k
        assert max(counter.values()) / min(counter.values()) < 1.2
    assert smallest_subnet(space).in_space(space) and largest_subnet(space).in_space(space)


def test_group_index_matches_groups_order():
    space = SearchSpace.preset("autoformer-t")
    for g, grp in enumerate(space.groups()):
        assert space.group_index(grp.num_heads, grp.mlp_ratio, grp.embed_dim) == g
    with pytest.raises(SpaceError, match="not in search space"):
        space.group_index(3, 3.0, 192)
