"""What `facetrain demo` prints at the end: one table, the run id, and how to look at it."""

from __future__ import annotations

from facetrain.jobs.demo.run import DemoResult
from rich.console import Console
from rich.table import Table


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def summary_table(result: DemoResult) -> Table:
    table = Table(title="facetrain demo", show_header=True, header_style="bold")
    table.add_column("", style="bold")
    table.add_column("value")
    dataset = result.dataset
    if dataset.get("source") == "synthetic":
        table.add_row(
            "data", f"synthetic: {dataset['identities']} identities, {dataset['images']} images"
        )
    else:
        table.add_row("data", str(dataset.get("source")))
    for split, counts in result.splits.items():
        table.add_row(
            f"  {split} split",
            f"{counts.get('identities')} identities, {counts.get('images')} images",
        )
    for name, value in result.training.items():
        table.add_row(f"train: {name}", f"{value:.4g}")
    heldout, baseline = result.heldout, result.baseline
    table.add_section()
    table.add_row(
        "held-out accuracy",
        f"[bold green]{_percent(heldout.get('accuracy'))}[/] ± {_percent(heldout.get('accuracy_std'))}"
        f"  ({heldout.get('protocol', 'k-fold')}, {heldout.get('pairs')} pairs)",
    )
    table.add_row(
        "  raw-pixel baseline", f"{_percent(baseline.get('accuracy'))} (same pairs, no learning)"
    )
    table.add_row("held-out AUC", f"{heldout.get('auc', float('nan')):.4f}")
    table.add_row("held-out EER", _percent(heldout.get("eer")))
    negatives = heldout.get("different_pairs") or 0
    for far, tar in (heldout.get("tar_at_far") or {}).items():
        # A FAR below one false accept in the negatives is not measured by these pairs.
        if negatives and float(far) * negatives >= 1:
            table.add_row(f"TAR @ FAR={far}", _percent(tar))
    if heldout.get("skipped_pairs"):
        table.add_row("skipped pairs", str(heldout["skipped_pairs"]))
    table.add_section()
    table.add_row(
        "time", ", ".join(f"{name} {seconds:.0f}s" for name, seconds in result.seconds.items())
    )
    table.add_row("ROC", result.files.get("roc", "-"))
    table.add_row("summary", result.files.get("summary", "-"))
    return table


def print_report(result: DemoResult, console: Console | None = None) -> None:
    console = console or Console()
    console.print(summary_table(result))
    # Plain lines (not table cells) so scripts can grep them and terminals do not wrap them.
    console.print(f"MLflow run: {result.run_id}", highlight=False, soft_wrap=True)
    console.print(
        f"Held-out verification: accuracy {_percent(result.heldout.get('accuracy'))}, "
        f"AUC {result.heldout.get('auc', float('nan')):.4f} "
        f"(raw pixels: {_percent(result.baseline.get('accuracy'))})",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        f"Open it in the MLflow UI:\n  {result.ui_command}\n  then {result.run_url}",
        highlight=False,
        soft_wrap=True,
    )
