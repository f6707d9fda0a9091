"""The relative-position attention of this checkout against an earlier one, in the same process (ratio new / old).

The earlier `taslora_core/rel_pos_attention.py` is read from git (`--old-rev`, default 217d149: the windows form
that issue 28's first change shipped) and loaded beside the current module; its grid buffers are built by its own
`rel_pos_buffers`. One standalone model (the largest subnet of `--space`) runs with either attention, switched per
call, so the weights, the rest of the forward and the machine are shared; rows (ratio = median of interleaved
per-pair ratios, `taslora_deploy.timing.interleaved_latency`): eager inference at batch 1 and 8, a training step
(forward + cross-entropy + backward) at batch 8, and onnxruntime CPU at batch 1 and 8 on each form's export.
Also prints the max |difference| of the two forms' logits.

    python benchmarks/bench_attention_ab.py --threads 1
    python benchmarks/bench_attention_ab.py --threads 2 --no-torch      # onnxruntime rows only
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from taslora_core import rel_pos_attention, vit
from taslora_core.space import SearchSpace
from taslora_core.subnet import largest_subnet
from taslora_core.supernet import Supernet
from taslora_deploy.onnx_export import export_onnx
from taslora_deploy.ort_parity import ort_session
from taslora_deploy.standalone.model import materialize
from taslora_deploy.timing import interleaved_latency, torch_threads

ROOT = Path(__file__).resolve().parents[1]


def old_module(rev: str, work: Path):
    """The attention module of git revision `rev`, loaded under another name."""
    shown = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:taslora_core/rel_pos_attention.py"],
                           capture_output=True, text=True)
    if shown.returncode != 0:  # bad input: one line on stderr, exit 2 (as argparse does for bad options)
        why = shown.stderr.strip().splitlines()[-1] if shown.stderr.strip() else "git failed"
        print(f"--old-rev {rev}: git has no taslora_core/rel_pos_attention.py at that revision ({why}); give a commit "
              "of this repository that has the file (default 217d149)", file=sys.stderr)
        raise SystemExit(2)
    source = shown.stdout
    path = work / f"rel_pos_attention_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"rel_pos_attention_{rev}", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


class Switch:
    """Stands in for `rel_pos_attention` inside `taslora_core.vit`: the old or the current attention."""

    def __init__(self, old, grid: int, max_rel: int, head_dim: int) -> None:
        self.old, self.use_old = old, False
        self.old_buffers = old.rel_pos_buffers(grid, max_rel, head_dim)

    def __getattr__(self, name: str) -> Any:
        return getattr(rel_pos_attention, name)

    def attention(self, qkv, heads, head_dim, tables, buffers):
        if self.use_old and tables is not None:
            return self.old.attention(qkv, heads, head_dim, tables, self.old_buffers)
        return rel_pos_attention.attention(qkv, heads, head_dim, tables, buffers)


def row(label: str, a, b, iters: int) -> dict[str, Any]:
    st = interleaved_latency(a, b, warmup_s=1.0, iters=iters)
    print(f"{label:26s} new / old {st['ratio_median']:.3f} ({st['ratio_p10']:.3f}-{st['ratio_p90']:.3f})  "
          f"old {st['median_a_ms']:.1f} ms  new {st['median_b_ms']:.1f} ms", flush=True)
    return {"row": label, **{k: st[k] for k in ("ratio_median", "ratio_p10", "ratio_p90", "median_a_ms", "median_b_ms")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="autoformer-t")
    parser.add_argument("--old-rev", default="217d149")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-onnx", action="store_true")
    args = parser.parse_args()
    space = SearchSpace.preset(args.space)
    subnet = largest_subnet(space)
    torch.manual_seed(0)
    supernet = Supernet(space, drop_path_rate=0.0)
    model = materialize(supernet, subnet).eval()
    shape = (space.in_chans, space.img_size, space.img_size)
    x = {b: torch.randn(b, *shape) for b in (1, 8)}
    labels = torch.randint(0, space.num_classes, (8,))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        switch = Switch(old_module(args.old_rev, work), space.img_size // space.patch_size,
                        space.max_relative_position, space.head_dim)
        vit.rel_pos_attention = switch  # type: ignore[assignment]

        def forward(use_old: bool, batch: int):
            def run() -> None:
                switch.use_old = use_old
                with torch.inference_mode():
                    model(x[batch])
            return run

        def step(use_old: bool):
            def run() -> None:
                switch.use_old = use_old
                model.zero_grad(set_to_none=True)
                F.cross_entropy(model(x[8]), labels).backward()
            return run

        with torch_threads(args.threads), torch.no_grad():
            switch.use_old = True
            old_logits = model(x[8])
            switch.use_old = False
            print(f"{args.space}, {args.threads} thread(s), old = {args.old_rev}: max |logits difference| "
                  f"{(old_logits - model(x[8])).abs().max().item():.2e}", flush=True)
        with torch_threads(args.threads):
            if not args.no_torch:
                for batch in (1, 8):
                    row(f"eager inference, batch {batch}", forward(True, batch), forward(False, batch), 150 // batch)
                model.train()
                row("train step, batch 8", step(True), step(False), 30)
                model.eval()
            if not args.no_onnx:
                files = {}
                for use_old in (True, False):
                    switch.use_old = use_old
                    files[use_old] = export_onnx(model, work / f"{'old' if use_old else 'new'}.onnx",
                                                 input_shape=model.input_shape)
                sessions = {k: ort_session(v, threads=args.threads, allow_spinning=False) for k, v in files.items()}
                for batch in (1, 8):
                    feed = {"images": x[batch].numpy()}
                    row(f"onnxruntime CPU, batch {batch}", lambda: sessions[True].run(None, feed),
                        lambda: sessions[False].run(None, feed), 150 // batch)
                    assert np.abs(sessions[True].run(None, feed)[0] - sessions[False].run(None, feed)[0]).max() < 1e-4


if __name__ == "__main__":
    main()
