"""Rich tables of the zero-overhead certificate: the export report's latency/certificate rows and the side-by-side
latency verdicts (at export vs here) that `taslora verify --latency` and `taslora check-overhead` print."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

VERDICT_STYLE = {"equivalent": "green", "certified": "green", "inconclusive": "yellow", "different": "bold red",
                 "failed": "bold red"}


def styled(verdict: str) -> str:
    """A verdict in its colour (structure-certified ones in yellow)."""
    style = VERDICT_STYLE.get(verdict, "yellow" if verdict.startswith("structure-certified") else "")
    return f"[{style}]{escape(verdict)}[/]" if style else escape(verdict)


def parse_batches(text: str, option: str) -> tuple[int, ...]:
    """'1,8' -> (1, 8); ValueError naming the option otherwise."""
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"{option} must be comma-separated integers, not '{text}'") from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"{option} must list batch sizes >= 1, not '{text}'")
    return sizes


def latency_cell(res: dict[str, Any]) -> str:
    """One batch size's result: verdict, B/A with its two-sided interval, the one-sided bound that decided, pairs,
    the medians (and "faster, not overhead" when B was faster beyond the margin)."""
    lo, hi = res["ratio_ci"]
    d = res.get("decision") or {}
    bound = (f"{d['bound']} bound {d['value']:.4f} {'<' if d['bound'] == 'upper' else '>'} {d['limit']:g}; "
             if d.get("bound") else "")
    faster = "; faster, not overhead" if res.get("direction") == "faster" else ""
    return (f"{styled(res['verdict'])}: B/A {res['ratio']:.4f} ({100 * res.get('confidence', 0.9):.0f}% CI "
            f"{lo:.4f}..{hi:.4f}; {bound}{res['pairs']} pairs; {res['median_a_ms']:.3f} vs {res['median_b_ms']:.3f} ms"
            f"{faster})")


def latency_text(latency: dict[str, Any]) -> str:
    """Every batch size of a latency record, one per line."""
    return "\n".join(f"batch {b}: {latency_cell(r)}" for b, r in latency.get("batches", {}).items())


def side_by_side_table(rows: list[tuple[str, str, str]], title: str) -> Table:
    """(batch, at export, here) rows (taslora_deploy.certificate.check.latency_side_by_side) as a table."""
    table = Table(title=title)
    for col in ("batch", "at export (certificate)", "here"):
        table.add_column(col, overflow="fold")
    for batch, before, here in rows:
        table.add_row(batch, _styled_cell(before), _styled_cell(here))
    return table


def _styled_cell(cell: str) -> str:
    head, sep, rest = cell.partition(":")
    return styled(head) + escape(sep + rest) if head in VERDICT_STYLE else escape(cell)
