"""What a specialize run starts from: the subnet (a search's best.json, a subnet file or inline JSON, or one member
of a Pareto front) and the checkpoint (a MoLE run, or a supernet alone), checked against each other.

Bad input is one line (a ValueError or CheckpointError, exit 2 at the CLI): a subnet outside the checkpoint's
search space, a subnet file or front searched in another space, a damaged or modified run (refused by the
checked readers unless --allow-modified), --supernet naming a MoLE run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taslora_core.artifact_read import read_json_artifact
from taslora_core.checkpoint import SUPERNET_WEIGHTS, CheckpointError, file_sha256
from taslora_core.mole_io import MOLE_WEIGHTS
from taslora_core.run_io import LoadedCheckpoint, is_mole_dir, load_checkpoint, resolve_mole, supernet_dir_of
from taslora_core.space import SearchSpace
from taslora_core.subnet import Subnet, SubnetError
from taslora_core.workspace import BEST_JSON, latest

__all__ = ["SubnetChoice", "check_subnet", "checkpoint_hashes", "open_checkpoint", "resolve_subnet_choice", "source_record"]

SUBNET_FIX = "pass a JSON written by `taslora search` (--subnet FILE) or inline JSON '{\"embed_dim\": ...}'"


@dataclass(frozen=True)
class SubnetChoice:
    """The subnet to specialise, where it came from, and what its file recorded (checkpoint, space)."""

    subnet: Subnet
    source: str  # e.g. "best.json of search <run>", "--subnet <file>", "member 2 of <pareto.json>"
    ckpt: str | None  # the checkpoint its search ran on, when recorded
    space: SearchSpace | None  # the space its search ran in, when recorded


def _space_of(doc: dict[str, Any]) -> SearchSpace | None:
    return SearchSpace.from_dict(doc["space"]) if isinstance(doc.get("space"), dict) else None


def _from_file(path: Path, source: str) -> SubnetChoice:
    if not path.exists():
        raise SubnetError(f"subnet file {path} does not exist; {SUBNET_FIX}")
    if path.suffix != ".json":
        return SubnetChoice(Subnet.load(path), source, None, None)  # an AutoFormer subnet YAML
    doc = read_json_artifact(path, "subnet file", SUBNET_FIX)  # best.json: checked against its search's record
    return SubnetChoice(Subnet.from_dict(doc), source, doc.get("ckpt") or None, _space_of(doc))


def resolve_subnet_choice(subnet: str | None, pareto: str | None, member: int | None,
                          workdir: str | Path) -> SubnetChoice:
    """--subnet (a file or inline JSON), --pareto + --member, else best.json of the workspace's latest search."""
    if pareto is not None:
        from taslora_core.search.pareto_file import read_pareto

        front = read_pareto(pareto)
        if member is None or not 0 <= member < len(front.members):
            raise ValueError(f"--member must be in 0..{len(front.members) - 1} (the front {front.path} has "
                             f"{len(front.members)} members, cheapest first), got {member}")
        return SubnetChoice(front.members[member].subnet, f"member {member} of {front.path}", front.ckpt or None,
                            front.space)
    if subnet is not None:
        text = str(subnet).strip()
        if text.startswith("{"):
            try:
                doc = json.loads(text)
            except ValueError as err:
                raise SubnetError(f"--subnet is neither a file nor valid JSON ({err}); {SUBNET_FIX}") from None
            if not isinstance(doc, dict):
                raise SubnetError(f"--subnet JSON must be an object describing one subnet; {SUBNET_FIX}")
            return SubnetChoice(Subnet.from_dict(doc), "--subnet (inline JSON)", doc.get("ckpt") or None, _space_of(doc))
        return _from_file(Path(text), f"--subnet {text}")
    run = latest(workdir, "searches", "run `taslora search --flops ...` first or pass --subnet FILE / --pareto FILE --member I")
    return _from_file(run / BEST_JSON, f"best.json of search {run}")


def open_checkpoint(ckpt: str | Path | None, supernet: str | Path | None, recorded: str | None,
                    workdir: str | Path) -> tuple[LoadedCheckpoint, str]:
    """The checkpoint to start from and where it came from: --supernet (alone), --ckpt, the checkpoint the subnet's
    search recorded, else the latest MoLE run. Hashes are checked on load (a modified run is refused)."""
    if supernet is not None:
        path = Path(supernet)
        if is_mole_dir(path if path.is_dir() else path.parent):
            raise CheckpointError(f"--supernet {path} is a MoLE run; pass it with --ckpt to start from its routed "
                                  "mixture, or pass its supernet run folder to --supernet")
        loaded = load_checkpoint(path)
        return loaded, "--supernet (no experts: the LoRA starts from zero)"
    if ckpt is not None:
        return load_checkpoint(ckpt), "--ckpt"
    if recorded:
        return load_checkpoint(recorded), "recorded by the subnet's search"
    return load_checkpoint(resolve_mole(workdir, None)), f"latest MoLE run in workspace {workdir}"


def check_subnet(choice: SubnetChoice, loaded: LoadedCheckpoint) -> Subnet:
    """The subnet, checked to lie in the checkpoint's search space (and its file's space to be that space)."""
    space = loaded.supernet.space
    if choice.space is not None and choice.space != space:
        raise ValueError(f"the subnet ({choice.source}) was searched in space '{choice.space.name}', not in space "
                         f"'{space.name}' of checkpoint {loaded.path}; pass the checkpoint its search ran on (--ckpt) "
                         "or a subnet of this space")
    return choice.subnet.check_in_space(space)


def checkpoint_hashes(loaded: LoadedCheckpoint) -> dict[str, str]:
    """SHA-256 of the checkpoint files a model comes from (the MoLE weights and its supernet's, or the supernet's):
    what identifies "the same MoLE run / supernet" between a specialize run and an export."""
    if loaded.kind == "mole":
        return {MOLE_WEIGHTS: file_sha256(loaded.path / MOLE_WEIGHTS),
                SUPERNET_WEIGHTS: file_sha256(supernet_dir_of(loaded.path, loaded.meta) / SUPERNET_WEIGHTS)}
    return {SUPERNET_WEIGHTS: file_sha256(loaded.path / SUPERNET_WEIGHTS)}


def source_record(loaded: LoadedCheckpoint) -> dict[str, Any]:
    """What a specialize run records about its checkpoint: kind, absolute path, sha256 of its files."""
    return {"kind": loaded.kind, "path": str(Path(loaded.path).resolve()), "sha256": checkpoint_hashes(loaded)}
