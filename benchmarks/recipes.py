"""Which MoLE training recipe takes the headroom? Screen and confirm the recipes of `taslora train --recipe`.

Issue 26's protocol on one converged supernet (default: the wide-10k regime's, `benchmarks/reproduction-runs/
wide-10k`), reusing benchmarks/reproduction.py's stages, Store and statistics. Every arm trains with the same
seed, so every arm sees the same data order and the same subnet sequence (a sandwich arm adds the largest, the
smallest and, with --sandwich-random > 1, more subnets to each step). Finished cells are appended to
benchmarks/results/recipes/cells.jsonl (+ arrays/*.npz, per-image results) and skipped on a re-run, so a new
machine continues from the repository; the runs themselves go to <runs>/workspace (not in the repository).

  headroom  the map's panel (the supernet's searched subnet, the smallest, 2 fixed random subnets) fine-tuned alone
            for the 1x budget: per-image results on the test AND the validation split (capture ratios)
  screen    every --arms x --budgets (default: every recipe at 1x and 3x), seed 0, judged on the VALIDATION split
            only: paired top-1 and loss gains over the supernet alone on the panel and on 20 fixed random subnets,
            capture ratios on validation, routing diagnostics, steps and forward/backward passes
  screen-report  benchmarks/results/recipes/screen.{md,json}: per budget, the arms ranked; the best two arms at
            the confirmation budget
  confirm   --arms (default: the screen's best two) and paper x --seeds at --budget on the TEST split: the
            reproduction's ablation cells (each run searched, the searched subnet, the headroom panel and the 20
            fixed subnets evaluated per image, routing and expert diagnostics), then the reproduction's report
            (paired intervals, capture ratios, helped/hurt, routing separation) -> confirm.{md,json}
  ship      the supernet, the best arm's confirmed seed-0 run and its searched subnet -> benchmarks/reproduction-wide/
            with a manifest that `taslora eval` re-checks
  ranking   does MoLE choose better subnets? --random-subnets subnets under --flops fine-tuned alone (the truth),
            Kendall's tau of each estimator (supernet alone, every confirmed arm's seed-0 run) -> ranking.{md,json}

    python benchmarks/recipes.py screen --budgets 1          # the 1x screen (then 3, or both at once)
    python benchmarks/recipes.py screen --budgets 1 --lrs 1e-3 2e-4   # every arm at two lower experts' LRs too
    python benchmarks/recipes.py screen --budgets 3 --best-lr-of 1    # 3x: every arm at its best 1x LR
    python benchmarks/recipes.py screen-report
    python benchmarks/recipes.py confirm --budget 3 --seeds 0 1 2
    python benchmarks/recipes.py ranking --budget 3           # after confirm: its seed-0 runs are the estimators
    python benchmarks/recipes.py screen --supernet benchmarks/reproduction/supernet --epochs 1 --train-subset 500 \\
        --results /tmp/recipes-smoke --runs /tmp/recipes-smoke-runs    # a smoke run on the shipped narrow supernet

The shared MoLE settings default to the ones the wide-10k ablation measured the paper's recipe with (its
validation sweep's choice: LoRA alpha 16, experts' LR 5e-3, router LR 1, 1 warm-up epoch); each arm changes
only what its recipe bundles. The budget unit (1x) is 10% of the supernet's epochs (936 steps on wide-10k).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reproduction as R  # noqa: E402  (the stages, Store and statistics this driver reuses)

from scipy.stats import kendalltau, spearmanr  # noqa: E402

from taslora_core.complexity import flops, format_amount, parse_amount  # noqa: E402
from taslora_core.run_io import load_checkpoint  # noqa: E402
from taslora_core.subnet import sample_distinct  # noqa: E402
from taslora_core.train.recipes import RECIPES  # noqa: E402
from taslora_core.train.run_files import recorded_epochs  # noqa: E402
from taslora_deploy.standalone import materialize  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "recipes"
WIDE_10K = ROOT / "benchmarks" / "reproduction-runs" / "wide-10k"
RUNS = ROOT / "benchmarks" / "reproduction-runs" / "recipes-wide-10k"

ARMS: dict[str, tuple[str, Callable[[argparse.Namespace], list[str]]]] = {
    **{name: (name, lambda a: []) for name in RECIPES},
    # LoRA+ around the tuned LR: D at LR/4 and U at 4 LR (their geometric mean is the LR every other arm uses);
    # the recipe as named puts U at 16 LR, far above the tuned LR (-17 points in the narrow smoke run)
    "lora-plus-centred": ("lora-plus", lambda a: ["--expert-lr", f"{a.expert_lr / 4:g}"]),
    # a factorised (block, layer) adds three parts at weight 1, all trained every step, where a routed mixture adds
    # K experts at weights summing to 1: at the same LR its update is ~3x larger; this arm matches it
    "factorised-slow": ("factorised", lambda a: ["--expert-lr", f"{a.expert_lr / 3:g}"]),
    "mi-strong": ("mi", lambda a: ["--mi-weight", "1.0"]),
    # the sandwich with three random subnets per step (5 passes), for the random panel the 1x sandwich left at ~0
    # (the other combination, sandwich + LoRA+, is a recipe of its own: its first runs used "--recipe sandwich
    # --lora-plus 16", the same settings)
    "sandwich-random3": ("sandwich", lambda a: ["--sandwich-random", "3"]),
    # the winner with three random subnets per step (5 passes): do more random passes per step lift the random panel?
    "sandwich-lora-plus-random3": ("sandwich-lora-plus", lambda a: ["--sandwich-random", "3"]),
    # the winner at half the batch: twice the optimizer steps over the same images (equal compute in images)
    "sandwich-lora-plus-b64": ("sandwich-lora-plus", lambda a: ["--batch-size", str(a.batch_size // 2)]),
}
"""arm -> (recipe, its extra `taslora train` options given the driver's options; they win over the shared
ones). One arm per recipe, plus the variants above; combinations are added here."""
BUDGETS = (1, 3)
SCREEN_RANK_KEY = "panel_mean"  # the screen ranks arms by the mean validation top-1 gain over the whole panel
DIVERGED_EXIT = 3  # `taslora train`'s exit code when the training loss stops being finite


def method_name(variant: str, budget: int) -> str:
    """The reproduction method (and run-name part) of a variant at a budget multiple."""
    return f"{variant}-{budget}x"


def arm_options(arm: str, args: argparse.Namespace) -> list[str]:
    """The `taslora train` options of an arm: its recipe and its own extra options."""
    recipe, extra = ARMS[arm]
    return ["--recipe", recipe, *extra(args)]


def with_lr(args: argparse.Namespace, lr: float) -> argparse.Namespace:
    """The driver's options with the experts' LR set to `lr` (what an arm's own options are derived from)."""
    return argparse.Namespace(**{**vars(args), "expert_lr": lr})


def variant_name(arm: str, lr: float, args: argparse.Namespace) -> str:
    """An arm at an experts' LR: the arm's name at the shared --expert-lr, else '<arm>-lr<lr>'."""
    return arm if lr == args.expert_lr else f"{arm}-lr{lr:g}"


def variants(args: argparse.Namespace, arms: list[str], store: R.Store | None = None) -> dict[str, tuple[str, float]]:
    """variant name -> (arm, experts' LR) for every arm at every --lrs value; with --best-lr-of B (and the
    store), every arm only at the LR of its best screen cell at budget B (arms without one are left out)."""
    if args.best_lr_of is None or store is None:
        return {variant_name(arm, lr, args): (arm, lr) for lr in args.lrs for arm in arms}
    out = {}
    for arm in arms:
        cells = [r for r in ranked(store, args.best_lr_of) if r["arm"] == arm and "gains" in r]
        if cells:
            lr = cells[0].get("expert_lr", cells[0]["hp"]["expert_lr"])
            out[variant_name(arm, lr, args)] = (arm, lr)
    return out


def parse_variant(name: str, args: argparse.Namespace) -> tuple[str, float]:
    """(arm, LR) of a variant name ('group-hard', 'group-hard-lr0.001'); exits with the choices otherwise."""
    if name in ARMS:
        return name, args.expert_lr
    arm, _, lr = name.rpartition("-lr")
    try:
        if arm in ARMS:
            return arm, float(lr)
    except ValueError:
        pass
    raise SystemExit(f"unknown arm '{name}'; use one of {', '.join(ARMS)}, optionally with -lr<LR> (e.g. group-hard-lr0.001)")


def register(chosen: dict[str, tuple[str, float]], budgets: list[int], args: argparse.Namespace) -> None:
    """Make every (variant, budget) a method of benchmarks/reproduction.py (its trainer, ablation and report)."""
    for name, (arm, lr) in chosen.items():
        for b in budgets:
            m = method_name(name, b)
            R.METHODS[m] = ("mole", ["--expert-lr", f"{lr:g}", *arm_options(arm, with_lr(args, lr))])
            R.EPOCH_FACTOR[m] = b
            R.LABELS[m] = f"recipe {arm}" + (f", experts' LR {lr:g}" if lr != args.expert_lr else "") + f" at {b}x"
            R.PAPER[m] = "–"


def shared_hp(args: argparse.Namespace) -> dict[str, Any]:
    """The MoLE settings every arm shares (what `reproduction._train` passes besides the arm's recipe)."""
    return {"alpha": args.alpha, "router_lr": args.router_lr, "warmup": args.warmup_epochs, "expert_lr": args.expert_lr}


# ---------------------------------------------------------------------- the panel
def screen_panel(args: argparse.Namespace, base) -> tuple[list[tuple[str, Any]], list[Any]]:
    """The headroom panel (searched, smallest, random0, random1) and the 20 fixed random subnets (random0 and
    random1 are the first two of them)."""
    targets = R.headroom_targets(args, base)
    fixed = sample_distinct(base.supernet.space, args.random_subnets, R.FIXED_SEED)
    return targets, fixed


def evaluate_panel(loaded, targets, fixed, val: R.Batches) -> dict[str, np.ndarray]:
    """Per-image validation results: correct (targets + fixed subnets) and loss (per target; mean over fixed)."""
    t = [R.per_image(loaded, sn, val) for _, sn in targets]
    f = [R.per_image(loaded, sn, val) for sn in fixed]
    return {"target_correct": np.stack([c for c, _ in t]), "target_loss": np.stack([lo for _, lo in t]).astype(np.float16),
            "random_correct": np.stack([c for c, _ in f]),
            "random_loss": np.mean([lo for _, lo in f], axis=0).astype(np.float16)}


def _ci(diff: np.ndarray, scale: float = 100.0) -> list[float]:
    m, lo, hi = R.bootstrap_ci(diff)
    return [m * scale, lo * scale, hi * scale]


def screen_gains(arm: dict[str, np.ndarray], base: dict[str, np.ndarray], names: list[str],
                 headroom: dict[str, np.ndarray]) -> dict[str, Any]:
    """Paired validation gains of an arm over the supernet alone (top-1 points, loss decrease), per panel target
    and over the fixed subnets; helped/hurt counts; capture ratios where the validation headroom is resolved."""
    out: dict[str, Any] = {"targets": {}}
    for i, name in enumerate(names):
        gain = arm["target_correct"][i].astype(float) - base["target_correct"][i]
        row: dict[str, Any] = {"top1": _ci(gain),
                               "loss": _ci(base["target_loss"][i].astype(float) - arm["target_loss"][i], 1.0)}
        if name in headroom:
            room = headroom[name]
            hr = R.bootstrap_ci(room)
            row["headroom"] = [hr[0] * 100, hr[1] * 100, hr[2] * 100]
            if hr[1] > 0:
                row["capture"] = list(R.ratio_ci(gain, room))
        out["targets"][name] = row
    per_subnet = arm["random_correct"].astype(float) - base["random_correct"]
    out["random_mean"] = {"top1": _ci(per_subnet.mean(0)),
                          "loss": _ci(base["random_loss"].astype(float) - arm["random_loss"], 1.0)}
    cis = [R.bootstrap_ci(d) for d in per_subnet]
    out["helped"] = sum(lo > 0 for _, lo, _ in cis)
    out["hurt"] = sum(hi < 0 for _, _, hi in cis)
    panel = np.concatenate([arm["target_correct"][:2], arm["random_correct"]]).astype(float) - \
        np.concatenate([base["target_correct"][:2], base["random_correct"]])  # searched, smallest, 20 fixed
    out["panel_mean"] = _ci(panel.mean(0))
    return out


def val_headroom(store: R.Store) -> dict[str, np.ndarray]:
    """Per-image validation headroom (fine-tuned alone minus supernet) of each panel target that has it."""
    out = {}
    for h in store.records("headroom"):
        arrays = store.arrays("headroom", h["key"])
        if "val_correct_after" in arrays:
            out[h["key"]] = arrays["val_correct_after"].astype(float) - arrays["val_correct_before"]
    return out


# ---------------------------------------------------------------------- stages
def stage_headroom(args: argparse.Namespace, store: R.Store) -> None:
    """The panel fine-tuned alone for the 1x budget, on test and validation (reproduction's headroom stage)."""
    R.stage_headroom(args, store, val=R.val_batches(args, args.screen_val))


def stage_screen(args: argparse.Namespace, store: R.Store) -> None:
    """Every arm x budget, seed 0, on the validation split (module docstring)."""
    stage_headroom(args, store)
    workdir = args.out / "workspace"
    val = R.val_batches(args, args.screen_val)
    base = load_checkpoint(args.supernet)
    targets, fixed = screen_panel(args, base)
    names = [n for n, _ in targets]
    if not store.find("screen", "supernet"):
        store.add({"stage": "screen", "key": "supernet", "val_images": val.count, "targets": names,
                   "subnets": {n: sn.to_dict() for n, sn in targets}}, evaluate_panel(base, targets, fixed, val))
    base_arrays = store.arrays("screen", "supernet")
    headroom = val_headroom(store)
    compact_stored(store)
    chosen = variants(args, args.arms, store)
    register(chosen, args.budgets, args)
    print(f"[screen] {len(chosen)} arm(s) x budgets {args.budgets}: {', '.join(chosen)}", flush=True)
    for budget in args.budgets:
        for name, (arm, lr) in chosen.items():
            key = method_name(name, budget)
            hp = shared_hp(with_lr(args, lr))
            done = store.find("screen", key)
            if done:
                if done["hp"] != hp or done["epochs"] != args.epochs * budget:
                    raise SystemExit(f"screen cell {key} in {store.log} was trained with {done['hp']} for "
                                     f"{done['epochs']} epochs, not {hp} for {args.epochs * budget}; use another "
                                     "--results folder or remove its line")
                continue
            t0 = time.perf_counter()
            head = {"stage": "screen", "key": key, "variant": name, "arm": arm, "expert_lr": lr,
                    "options": R.METHODS[key][1], "budget": budget, "epochs": args.epochs * budget, "seed": 0, "hp": hp}
            try:
                # named as the confirmation's seed-0 cell names its run, so `confirm` reuses this run
                run = R._train(args, workdir, key, 0, f"abl-{key}-s0", hp)
            except typer.Exit as err:
                if err.exit_code != DIVERGED_EXIT:
                    raise
                store.add({**head, "diverged": True, "seconds": round(time.perf_counter() - t0, 1)})
                print(f"[screen] {key}: training diverged (loss not finite); recorded, next arm", flush=True)
                continue
            loaded = load_checkpoint(run)
            arrays = evaluate_panel(loaded, targets, fixed, val)
            summary = json.loads((run / "summary.json").read_text())
            moved = R.what_moved(loaded, 0, fixed)
            rec = {**head, "run": str(run),
                   "val_images": val.count, "steps": summary["global_steps"],
                   "forward_passes": summary.get("forward_passes"), "backward_passes": summary.get("backward_passes"),
                   "train_seconds": summary.get("train_seconds"), "recipe_settings": summary.get("recipe"),
                   "gains": screen_gains(arrays, base_arrays, names, headroom), "moved": moved,
                   "routing_separation": R.routing_separation([{"moved": moved}], loaded.supernet.space)}
            rec["seconds"] = round(time.perf_counter() - t0, 1)
            store.add(rec, compact(arrays))
            g = rec["gains"]
            print(f"[screen] {key}: panel mean {g['panel_mean'][0]:+.2f} [{g['panel_mean'][1]:+.2f}, "
                  f"{g['panel_mean'][2]:+.2f}], searched {g['targets']['searched']['top1'][0]:+.2f}, smallest "
                  f"{g['targets']['smallest']['top1'][0]:+.2f}, 20 random {g['random_mean']['top1'][0]:+.2f} "
                  f"({rec['forward_passes']} passes, {rec['seconds']:.0f} s)", flush=True)


def compact(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What an arm's screen cell keeps in the repository: the per-image correctness and the mean loss over the fixed
    subnets (~40 KB); its per-target loss gains are in the cell record (the supernet's cell keeps every array,
    the baseline of those gains)."""
    return {k: v for k, v in arrays.items() if k != "target_loss"}


def compact_stored(store: R.Store) -> None:
    """Rewrite arm cells stored before `compact` existed without their per-target losses."""
    for r in store.records("screen"):
        path = store.out / "arrays" / f"screen-{r['key']}.npz"
        if r["key"] != "supernet" and path.exists():
            arrays = store.arrays("screen", r["key"])
            if "target_loss" in arrays:
                np.savez_compressed(path, **compact(arrays))


def _cell(v: list[float], digits: int = 2) -> str:
    return f"{v[0]:+.{digits}f} [{v[1]:+.{digits}f}, {v[2]:+.{digits}f}]"


def ranked(store: R.Store, budget: int) -> list[dict[str, Any]]:
    """The screen cells of a budget, best first by the mean validation gain over the panel (diverged runs last)."""
    rows = [r for r in store.records("screen") if r.get("budget") == budget]
    return sorted(rows, key=lambda r: -r["gains"][SCREEN_RANK_KEY][0] if "gains" in r else float("inf"))


def best_arms(store: R.Store, budget: int, n: int = 2) -> list[str]:
    """The `n` best variants of non-paper arms in the screen at `budget`."""
    arms = [r.get("variant", r["arm"]) for r in ranked(store, budget) if r["arm"] != "paper" and "gains" in r]
    if len(arms) < n:
        raise SystemExit(f"the screen has {len(arms)} non-paper arms at {budget}x; run `recipes.py screen` first")
    return arms[:n]


def stage_screen_report(args: argparse.Namespace, store: R.Store) -> str:
    """screen.md / screen.json: per budget the arms ranked by their validation gain (module docstring)."""
    base = store.find("screen", "supernet")
    if base is None:
        raise SystemExit("no screen cells yet; run `recipes.py screen` first")
    names = base["targets"]
    text = (f"Screen on the validation split ({base['val_images']} images), seed 0; gains = paired top-1 points over the "
            "supernet alone with 95% bootstrap intervals; capture = gain / headroom (validation; only where the "
            "headroom's interval excludes 0); panel = searched + smallest + 20 fixed random subnets.\n")
    summary: dict[str, Any] = {"val_images": base["val_images"], "budgets": {}}
    for budget in sorted({r["budget"] for r in store.records("screen") if "budget" in r}):
        rows = ranked(store, budget)
        text += (f"\n### {budget}x the paper's budget\n\n| arm (-lr: experts' LR) | steps | passes x batch | panel mean | "
                 + " | ".join(f"{n}" for n in names) + f" | {args.random_subnets} random: top-1 | "
                 f"{args.random_subnets} random: loss decrease | helped / hurt | "
                 "own-expert mass | routing TV within / across embed | expert cosine | s |\n|---|"
                 + "---|" * (len(names) + 10) + "\n")
        for r in rows:
            if "gains" not in r:
                text += f"| {r.get('variant', r['arm'])} | diverged: training loss not finite (no model) |\n"
                continue
            g = r["gains"]
            cells = []
            for n in names:
                t = g["targets"][n]
                cells.append(_cell(t["top1"]) + (f" ({t['capture'][0]:.2f})" if "capture" in t else ""))
            own = r["moved"].get("own_expert_share")
            sep = r.get("routing_separation") or {}
            cos = r["moved"].get("expert_cosine")
            tv = (f"{sep['tv_within_embed']:.3f} / {sep['tv_across_embed']:.3f}"
                  if sep.get("tv_within_embed") is not None and sep.get("tv_across_embed") is not None else "–")
            row = [r.get("variant", r["arm"]), str(r["steps"]), _passes(r, args), f"**{_cell(g['panel_mean'])}**", *cells,
                   _cell(g["random_mean"]["top1"]), _cell(g["random_mean"]["loss"], 4), f"{g['helped']} / {g['hurt']}",
                   f"{statistics.fmean(own.values()):.3f}" if own else "–", tv,
                   f"{statistics.fmean(cos.values()):.3f}" if cos else "–", f"{r['seconds']:.0f}"]
            text += "| " + " | ".join(row) + " |\n"
        summary["budgets"][str(budget)] = [{"variant": r.get("variant", r["arm"]), "arm": r["arm"],
                                            "expert_lr": r.get("expert_lr", r["hp"]["expert_lr"]),
                                            "steps": r.get("steps"), "passes": r.get("forward_passes"),
                                            "gains": r.get("gains"), "diverged": bool(r.get("diverged"))}
                                           for r in rows]
    text += budget_curve(store, names, args)
    equal = [r for r in store.records("screen") if r.get("arm") == "sandwich"]
    if equal:
        text += ("\nEqual passes: a sandwich step runs 2 + sandwich_random subnet passes (3 by default), so the sandwich "
                 "arm at 1x costs the passes of a one-subnet arm at 3x; compare those two rows for equal compute.\n")
    budgets = sorted(summary["budgets"], key=int)
    if budgets:
        pick = max(int(b) for b in budgets if int(b) <= args.budget) if any(int(b) <= args.budget for b in budgets) \
            else int(budgets[0])
        try:
            best = best_arms(store, pick)
            text += f"\nBest two arms at {pick}x (by the panel mean): {', '.join(best)}.\n"
            summary["best"] = {"budget": pick, "arms": best}
        except SystemExit:
            pass
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "screen.md").write_text(text)
    (args.results / "screen.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(text)
    return text


def _passes(r: dict[str, Any], args: argparse.Namespace) -> str:
    """A cell's subnet forward/backward passes and their batch ('8424 x 128'): an arm's own --batch-size (the last
    one in its options) changes what a pass costs."""
    options = r.get("options") or []
    sizes = [options[i + 1] for i, o in enumerate(options[:-1]) if o == "--batch-size"]
    return f"{r['forward_passes']} x {sizes[-1] if sizes else args.batch_size}"


def budget_curve(store: R.Store, names: list[str], args: argparse.Namespace) -> str:
    """Markdown: every variant screened at three or more budgets, its validation gains and captures per budget (the
    budget curve of issue 26: is a recipe limited by its budget or by its design?)."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for r in store.records("screen"):
        if "gains" in r:
            by_variant.setdefault(r.get("variant", r["arm"]), []).append(r)
    curves = {v: sorted(rows, key=lambda r: r["budget"]) for v, rows in by_variant.items() if len(rows) >= 3}
    if not curves:
        return ""
    text = ("\n### Budget curve (validation, seed 0)\n\n| arm | budget | steps | passes x batch | panel mean | "
            + " | ".join(f"{n}: gain (capture)" for n in names) + " | 20 random: top-1 | s |\n|---|"
            + "---|" * (len(names) + 6) + "\n")
    for variant, rows in curves.items():
        for r in rows:
            g = r["gains"]
            cells = [_cell(g["targets"][n]["top1"]) + (f" ({g['targets'][n]['capture'][0]:.2f})"
                                                       if "capture" in g["targets"][n] else "") for n in names]
            text += (f"| {variant} | {r['budget']}x | {r['steps']} | {_passes(r, args)} | {_cell(g['panel_mean'])} | "
                     + " | ".join(cells) + f" | {_cell(g['random_mean']['top1'])} | {r['seconds']:.0f} |\n")
    return text


def stage_confirm(args: argparse.Namespace, store: R.Store) -> None:
    """The best two arms and paper x --seeds at --budget on the test split: the reproduction's ablation and report."""
    arms = args.confirm_arms or best_arms(store, args.budget)
    arms = ["paper", *[a for a in arms if a != "paper"]]
    register({a: parse_variant(a, args) for a in arms}, [args.budget], args)
    args.methods = ["supernet", *[method_name(a, args.budget) for a in arms]]
    print(f"[confirm] {', '.join(args.methods)} x seeds {args.seeds} at {args.budget}x on the test split", flush=True)
    R.stage_headroom(args, store, val=R.val_batches(args, args.screen_val))
    R.stage_ablation(args, store)
    report_args = argparse.Namespace(**{**vars(args), "out": args.results})
    R.stage_report(report_args, store)
    for suffix in ("md", "json"):  # the reproduction's report, under the confirmation's name
        (args.results / f"report.{suffix}").replace(args.results / f"confirm.{suffix}")


# ---------------------------------------------------------------------- stage: ranking (issue 26, item 4)
RANKING_SEED = 4321  # the ranking's random subnets (drawn under the search's FLOPs bound; not the fixed panel)


def ranking_subnets(args: argparse.Namespace, space) -> list[Any]:
    """`--random-subnets` distinct random subnets within the searches' FLOPs bound (`--flops`)."""
    bound = parse_amount(args.flops)
    return sample_distinct(space, args.random_subnets, RANKING_SEED, accept=lambda sn: flops(space, sn) <= bound)


def ranking_estimators(args: argparse.Namespace, store: R.Store) -> dict[str, Path]:
    """method -> checkpoint whose validation top-1 estimates a subnet's accuracy: the supernet alone, and the seed-0
    run of every confirmed arm at the confirmation budget (its ablation cell) or `--ranking-runs NAME=RUN`."""
    out = {"supernet": args.supernet}
    for r in store.records("ablation"):
        if r["key"].endswith(f"-{args.budget}x-s0") and r.get("ckpt"):
            out[r["key"][: -len("-s0")]] = Path(r["ckpt"])
    for item in args.ranking_runs or []:
        name, _, run = item.partition("=")
        out[name] = Path(run)
    return out


def kendall(estimate: np.ndarray, truth: np.ndarray, resamples: int = R.BOOTSTRAP, seed: int = 0) -> list[float]:
    """Kendall's tau-b between an estimate and the truth over subnets, with a 95% bootstrap interval over subnets."""
    rng = np.random.default_rng(seed)
    tau = float(kendalltau(estimate, truth).statistic)
    boot = []
    for _ in range(resamples):
        i = rng.integers(0, len(truth), len(truth))
        t = kendalltau(estimate[i], truth[i]).statistic
        if np.isfinite(t):
            boot.append(t)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return [tau, float(lo), float(hi)]


def stage_ranking(args: argparse.Namespace, store: R.Store) -> str:
    """Does MoLE choose better subnets? Each of `--random-subnets` subnets under the search's budget fine-tuned alone
    for the 1x budget (the truth: its test top-1); each estimator's validation top-1 of it; Kendall's tau between
    them -> ranking.{md,json}. Every subnet and estimator is a cell of its own store (<results>/ranking/, so the
    stage can run beside the screen or the confirmation), so it resumes."""
    confirmed, store = store, R.Store(args.results / "ranking")
    base = load_checkpoint(args.supernet)
    space = base.supernet.space
    subnets = ranking_subnets(args, space)
    test, val = R.test_batches(args), R.val_batches(args, args.screen_val)
    for i, sn in enumerate(subnets):
        key = f"r{i}"
        if store.find("ranking", key):
            continue
        t0 = time.perf_counter()
        model = R.finetune_standalone(materialize(base.supernet, sn), args)
        rec = store.add({"stage": "ranking", "key": key, "subnet": sn.to_dict(), "flops": flops(space, sn),
                         "truth_test_top1": float(R.model_per_image(model, test)[0].mean()),
                         "seconds": round(time.perf_counter() - t0, 1)})
        print(f"[ranking] {key} ({format_amount(rec['flops'])} FLOPs): fine-tuned alone {rec['truth_test_top1']:.4f} "
              f"({rec['seconds']:.0f} s)", flush=True)
    for name, run in ranking_estimators(args, confirmed).items():
        if store.find("ranking-estimate", name):
            continue
        loaded = load_checkpoint(run)
        top1 = [float(R.per_image(loaded, sn, val)[0].mean()) for sn in subnets]
        store.add({"stage": "ranking-estimate", "key": name, "run": str(run), "val_images": val.count, "val_top1": top1})
        print(f"[ranking] estimator {name}: mean validation top-1 {statistics.fmean(top1):.4f}", flush=True)
    truth = np.array([store.find("ranking", f"r{i}")["truth_test_top1"] for i in range(len(subnets))])
    rows = []
    for est in store.records("ranking-estimate"):
        estimate = np.asarray(est["val_top1"])
        tau = kendall(estimate, truth)
        best = int(np.argmax(estimate))
        rows.append({"estimator": est["key"], "tau": tau, "spearman": float(spearmanr(estimate, truth).statistic),
                     "regret": float((truth.max() - truth[best]) * 100), "val_images": est["val_images"]})
    text = (f"Ranking: {len(subnets)} random subnets under {args.flops} FLOPs (seed {RANKING_SEED}), each fine-tuned "
            f"alone for the 1x budget ({args.epochs} epochs; truth: its test top-1, {truth.min() * 100:.2f}-"
            f"{truth.max() * 100:.2f}%). Estimate: the subnet's validation top-1 under each checkpoint. tau = Kendall's "
            "tau-b with a 95% bootstrap interval over subnets; regret = truth of the best-estimated subnet below the "
            "best truth (points).\n\n| estimator | Kendall tau | Spearman | regret |\n|---|---|---|---|\n")
    for r in rows:
        text += f"| {r['estimator']} | {_cell(r['tau'])} | {r['spearman']:+.2f} | {r['regret']:.2f} |\n"
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "ranking.md").write_text(text)
    (args.results / "ranking.json").write_text(json.dumps({"subnets": len(subnets), "flops": args.flops,
                                                           "truth": truth.tolist(), "rows": rows}, indent=2) + "\n")
    print(text)
    return text


# ---------------------------------------------------------------------- stage: ship (issue 26, item 5)
SHIP_DIR = ROOT / "benchmarks" / "reproduction-wide"


def stage_ship(args: argparse.Namespace, store: R.Store) -> Path:
    """benchmarks/reproduction-wide/: the supernet, the seed-0 run of `--ship-arm` (default: the screen's best arm)
    at the confirmation budget, its searched subnet and a manifest `taslora eval` re-checks (tests/test_reproduction.py)."""
    arm = args.ship_arm or best_arms(store, args.budget)[0]
    method = method_name(arm, args.budget)
    return R.ship(store, args.supernet, SHIP_DIR, f"{method}-s0", f"{method}-s0", "fmnist")


# ---------------------------------------------------------------------- entry point
STAGES = {"headroom": stage_headroom, "screen": stage_screen, "screen-report": stage_screen_report,
          "confirm": stage_confirm, "ranking": stage_ranking, "ship": stage_ship}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The driver's options; the reproduction's stages read the same namespace."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=list(STAGES))
    p.add_argument("--supernet", type=Path, help="Converged supernet run (default: the wide-10k regime's).")
    p.add_argument("--results", type=Path, default=RESULTS, help="Cells, arrays and reports (kept in the repository).")
    p.add_argument("--runs", type=Path, default=RUNS, help="Run folders and searches (not in the repository).")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), help="Arms of the screen.")
    p.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS), help="Budget multiples of the screen.")
    p.add_argument("--budget", type=int, default=3, help="Budget multiple of the confirmation.")
    p.add_argument("--confirm-arms", nargs="+",
                   help="Arms to confirm besides paper, e.g. group-hard or group-hard-lr0.001 (an arm at another "
                        "experts' LR); default: the screen's best two at --budget.")
    p.add_argument("--best-lr-of", type=int, default=None, metavar="BUDGET",
                   help="Screen every arm only at the experts' LR of its best screen cell at this budget (e.g. 1).")
    p.add_argument("--lrs", type=float, nargs="+", default=None,
                   help="Experts' LRs at which the screen runs every arm (default: --expert-lr only); a variant at "
                        "another LR is named <arm>-lr<LR>.")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Seeds of the confirmation.")
    p.add_argument("--ship-arm", help="Arm whose confirmed seed-0 run `ship` copies (default: the screen's best).")
    p.add_argument("--ranking-runs", nargs="+", metavar="NAME=RUN",
                   help="More estimators of the ranking stage (default: the supernet and the confirmed seed-0 runs).")
    p.add_argument("--epochs", type=int, help="1x budget in epochs (default: 10%% of the supernet's epochs).")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha of every arm (the wide-10k sweep's choice).")
    p.add_argument("--expert-lr", type=float, default=5e-3, help="Experts' AdamW LR of every arm (sweep's choice).")
    p.add_argument("--router-lr", type=float, default=1.0, help="Router SGD LR of the learned-router arms (sweep's).")
    p.add_argument("--warmup-epochs", type=int, default=1, help="Warm-up epochs (router frozen) of every arm.")
    p.add_argument("--finetune-lr", type=float, default=5e-4, help="LR of the headroom's fine-tuning alone (AdamW).")
    p.add_argument("--screen-val", type=int, default=None, help="Validation images of the screen (default: all).")
    p.add_argument("--random-subnets", type=int, default=20)
    p.add_argument("--flops", default="6M", help="FLOPs bound of the searches (the map's).")
    p.add_argument("--population", type=int, default=12)
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--val-subset", type=int, default=2000, help="Validation images of the search fitness.")
    p.add_argument("--train-subset", type=int, default=None,
                   help="Training images (default: what the supernet run recorded in its split).")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads.")
    p.add_argument("--data", default=None)
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args(argv)
    args.out = args.runs  # the reproduction's stages keep runs and searches under args.out
    args.no_sweep_choice = True  # no validation sweep here: every arm takes the shared settings above
    args.confirm_arms = args.confirm_arms or None
    args.lrs = args.lrs or [args.expert_lr]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.supernet is None:
        run, finished = R.find_supernet(WIDE_10K / "workspace")
        if run is None or not finished:
            raise SystemExit(f"no finished wide-10k supernet in {WIDE_10K / 'workspace'}; pass --supernet")
        args.supernet = run
    args.supernet = args.supernet.resolve()
    if args.train_subset is None:
        args.train_subset = _recorded_train_subset(args.supernet)
    if args.epochs is None:
        args.epochs = max(1, round(recorded_epochs(args.supernet) / 10))
    args.runs.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)
    register(variants(args, list(ARMS)), sorted({*args.budgets, args.budget}), args)
    store = R.Store(args.results)
    started = time.perf_counter()
    STAGES[args.stage](args, store)
    print(f"[recipes] {args.stage} done in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


def _recorded_train_subset(supernet: Path) -> int | None:
    """The --train-subset the supernet run trained with (its train_config.json), so the arms train on its images."""
    path = supernet / "train_config.json"
    if not path.exists():
        return None
    return json.loads(path.read_text()).get("config", {}).get("train_subset")


if __name__ == "__main__":
    sys.exit(main())
