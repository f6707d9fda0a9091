"""Where can MoLE pay off? The headroom map: one converged supernet per regime, then how much a subnet gains when
fine-tuned ALONE for the MoLE budget (the ceiling of any subnet-specific correction), measured before any method
is compared.

Per regime, each step is a stage of `benchmarks/reproduction.py` run in its own process (so every step resumes:
finished cells are skipped, a killed supernet continues from its checkpoint) with `--out
benchmarks/reproduction-runs/<regime>`:

  supernet   train the regime's supernet (or take the shipped one), AutoFormer's recipe
  headroom   searched, smallest and 2 fixed random subnets fine-tuned alone for 10% of the supernet's epochs
  ablation   (a) supernet alone and (b) full supernet fine-tuning, seed 0: the convergence gate
  report     that regime's report.json

then `map` writes benchmarks/results/headroom/map.{json,md}: per regime its headroom with a paired 95% interval,
the per-subnet gains, the convergence gate and the cost; `ablation` runs the whole ablation (validation sweep of
the MoLE settings, (a)-(f) x 3 seeds, capture ratios) in the regime with the largest headroom.

    python benchmarks/headroom_map.py                 # every regime, the map, then the ablation where it is largest
    python benchmarks/headroom_map.py map --regimes wide-10k narrow-10k
    python benchmarks/headroom_map.py regimes --regimes wide   # add one regime to the map, no ablation
    python benchmarks/headroom_map.py ablation        # only the ablation (the regime with the largest headroom)
    python benchmarks/headroom_map.py diagnose        # per-position heads, rank 32, 3x budget in that regime
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REPRODUCTION = ROOT / "benchmarks" / "reproduction.py"
RUNS = ROOT / "benchmarks" / "reproduction-runs"
RESULTS = ROOT / "benchmarks" / "results" / "headroom"


@dataclass(frozen=True)
class Regime:
    """One way of training the supernet: its search space, how many training images, how many epochs."""

    name: str
    space: str
    train_subset: int | None
    supernet_epochs: int
    why: str
    supernet: Path | None = None  # an already converged supernet to use instead of training one

    @property
    def out(self) -> Path:
        return RUNS / self.name

    def argv(self) -> list[str]:
        """The reproduction options every stage of this regime takes."""
        out = ["--out", str(self.out), "--space", self.space, "--supernet-epochs", str(self.supernet_epochs)]
        if self.train_subset:
            out += ["--train-subset", str(self.train_subset)]
        if self.supernet is not None:
            out += ["--supernet", str(self.supernet)]
        return out


REGIMES: dict[str, Regime] = {r.name: r for r in [
    Regime("narrow", "fmnist", None, 60, "today's space and data (the shipped converged supernet)",
           supernet=ROOT / "benchmarks" / "reproduction" / "supernet"),
    Regime("wide", "fmnist-wide", None, 60,
           "fmnist widened downwards (embed 32-96, depth 2-6, heads 1-3, MLP 1-3; 27 groups), largest unchanged"),
    Regime("narrow-10k", "fmnist", 10000, 120, "today's space on 10,000 training images (same steps x 2.4 fewer)"),
    Regime("wide-10k", "fmnist-wide", 10000, 120, "the wide space on 10,000 training images"),
]}
ORDER = ["wide-10k", "wide", "narrow-10k", "narrow"]  # most promising first; narrow was measured before (+0.21)


def run_stage(regime: Regime, stage: str, *extra: str) -> None:
    """One reproduction stage of a regime in a child process (its output goes to <out>/log.txt too)."""
    cmd = [sys.executable, str(REPRODUCTION), stage, *regime.argv(), *extra]
    regime.out.mkdir(parents=True, exist_ok=True)
    print(f"[headroom-map] {regime.name}: {stage} {' '.join(extra)}", flush=True)
    with (regime.out / "log.txt").open("a") as log:
        log.write(f"\n$ {' '.join(cmd)}  # {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        log.flush()
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def run_regime(regime: Regime) -> None:
    """Supernet, headroom, the convergence gate cells and the report of one regime (each resumable)."""
    if regime.supernet is None:
        run_stage(regime, "supernet")
    run_stage(regime, "headroom")
    run_stage(regime, "ablation", "--methods", "supernet", "finetune", "--seeds", "0")
    run_stage(regime, "report")


def regime_row(regime: Regime) -> dict[str, Any] | None:
    """The map's row of a regime from its report.json (None until its headroom and gate exist)."""
    path = regime.out / "report.json"
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    head = report.get("headroom_summary")
    if not head:
        return None
    return {"regime": regime.name, "space": regime.space, "train_images": regime.train_subset or 50000,
            "supernet_epochs": regime.supernet_epochs, "why": regime.why, "headroom": head,
            "convergence_gate": report.get("convergence_gate"), "cost": report.get("cost")}


def write_map(regimes: list[Regime]) -> list[dict[str, Any]]:
    """benchmarks/results/headroom/map.json and map.md from the regimes that have finished. A regime whose runs
    are not on this machine (benchmarks/reproduction-runs/ is not in the repository) keeps its stored row, so a
    new machine adds regimes to the map instead of erasing the ones measured elsewhere."""
    stored_path = RESULTS / "map.json"
    stored = {r["regime"]: r for r in json.loads(stored_path.read_text())} if stored_path.exists() else {}
    rows = [row for row in (regime_row(r) or stored.get(r.name) for r in regimes) if row is not None]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "map.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| regime | space, training images, supernet epochs | headroom: top-1 gain of 4 subnets fine-tuned alone "
             "(paired 95% CI) | per subnet: searched / smallest / random / random | convergence gate: supernet "
             "fine-tuned for the budget, 20 fixed subnets (<= +0.1) | cost (CPU min: supernet / headroom / gate) |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        h, gate, cost = row["headroom"], row["convergence_gate"] or {}, row["cost"] or {}
        per = " / ".join(f"{s['gain_points']:+.2f}" for s in h["subnets"])
        gate_text = (f"{gate['finetune_gain_points']:+.2f} [{gate['ci'][0]:+.2f}, {gate['ci'][1]:+.2f}] "
                     f"({'met' if gate['finetune_gain_points'] <= 0.1 else 'NOT met'})") if gate else "–"
        cost_text = " / ".join(f"{cost[k] / 60:.0f}" if cost.get(k) else "–" for k in ("supernet", "headroom", "gate"))
        lines.append(f"| {row['regime']} | {row['space']}, {row['train_images']:,}, {row['supernet_epochs']} | "
                     f"**{h['gain_points']:+.2f}** [{h['ci'][0]:+.2f}, {h['ci'][1]:+.2f}] | {per} | {gate_text} | "
                     f"{cost_text} |")
    (RESULTS / "map.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return rows


def best_regime(rows: list[dict[str, Any]]) -> Regime:
    """The regime with the largest pooled headroom among those whose supernet met the convergence gate (all
    regimes when none did)."""
    if not rows:
        raise SystemExit("no regime has a measured headroom yet; run the map first")
    gated = [r for r in rows if r["convergence_gate"] and r["convergence_gate"]["finetune_gain_points"] <= 0.1]
    return REGIMES[max(gated or rows, key=lambda r: r["headroom"]["gain_points"])["regime"]]


def run_ablation(regime: Regime) -> None:
    """The validation sweep, (a)-(f) x 3 seeds and the report (with capture ratios) in one regime."""
    run_stage(regime, "sweep")
    run_stage(regime, "ablation")
    run_stage(regime, "report")


DIAGNOSTICS = ["tas-lora-pos", "tas-lora-r32", "tas-lora-3x"]


def run_diagnostics(regime: Regime, methods: list[str], seeds: list[str]) -> None:
    """Why the experts do or do not capture the headroom: how much of it fine-tuning only the four linear weights per
    block reaches, then per-position router heads, rank 32 and 3x the budget (by default 3 seeds each, the first
    seed of every method before the others), with the settings the sweep chose; then the report (per-subnet gains,
    routing separation)."""
    run_stage(regime, "headroom-linear")
    run_stage(regime, "ablation", "--methods", *methods, "--seeds", seeds[0])
    if seeds[1:]:
        run_stage(regime, "ablation", "--methods", *methods, "--seeds", *seeds[1:])
    run_stage(regime, "report")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", nargs="?", default="all", choices=["all", "regimes", "map", "ablation", "diagnose"],
                        help="regimes: only the --regimes' supernets, headroom and gates, then the map (no ablation)")
    parser.add_argument("--regimes", nargs="+", default=ORDER, choices=list(REGIMES))
    parser.add_argument("--diagnostics", nargs="+", default=DIAGNOSTICS, choices=DIAGNOSTICS,
                        help="diagnose: which diagnostic methods")
    parser.add_argument("--seeds", nargs="+", default=["0", "1", "2"], help="diagnose: which seeds")
    args = parser.parse_args(argv)
    chosen = [REGIMES[name] for name in args.regimes]
    if args.step in ("all", "regimes"):
        for regime in chosen:
            run_regime(regime)
            write_map([REGIMES[name] for name in ORDER])
    rows = write_map([REGIMES[name] for name in ORDER])
    if args.step in ("all", "ablation", "diagnose"):
        best = best_regime(rows)
        print(f"[headroom-map] {args.step} in regime {best.name} (largest headroom)", flush=True)
        if args.step == "diagnose":
            run_diagnostics(best, args.diagnostics, args.seeds)
        else:
            run_ablation(best)
    return 0


if __name__ == "__main__":
    sys.exit(main())
