"""The words of a blast count, the same in every dock and in the CLI report.

Each dock that shows a blast percentage shows it through :func:`summary_lines`, with the 95% interval and
the small-count warning of :func:`~napari_hematology.core.cells.batch.blast_uncertainty` (the function the
CLI's ``summary.json`` and report use), and the cells the front-end quality check left out of the counts.
"""

from __future__ import annotations

from typing import Any

from napari_hematology.core.cells.classes import BLAST


def prepare() -> None:
    """Import what :func:`summary_lines` needs (SciPy's statistics: seconds to import).

    Call it in a worker thread before results come, so that showing them never imports it in napari's GUI
    thread.
    """
    from napari_hematology.core.cells.batch import blast_uncertainty

    blast_uncertainty(1, 2)


def summary_lines(summary: dict[str, Any], status: str = "") -> list[str]:
    """Lines for a ``summarize`` result: counts, blast percentage with its 95% interval, warnings, left out.

    Args:
        summary: ``{"cells", "counts", "blast_percent", "left_out"?, "not_in_differential"?}`` as
            :func:`~napari_hematology.core.cells.analysis.summarize` returns it.
        status: Appended to the first line, e.g. how far a run has come.

    Returns:
        The lines to show, first the counts.

    """
    from napari_hematology.core.cells.batch import blast_uncertainty

    cells = summary["cells"]
    found = ", ".join(f"{name} {count}" for name, count in summary["counts"].items() if count)
    suffix = f" ({status})" if status else ""
    uncertainty = blast_uncertainty(summary["counts"].get(BLAST, 0), cells)
    if not cells:
        lines = [f"No white cells found{suffix}." + (f" Counted: {found}." if found else "")]
    else:
        noun = "white cell" if cells == 1 else "white cells"
        low, high = uncertainty["blast_ci95_percent"]
        lines = [
            f"{cells} {noun}{suffix}: {found}.",
            f"Blasts: {summary['blast_percent']:.1f}% (95% CI {low:.1f}-{high:.1f}%)",
        ]
        lines += uncertainty["warnings"]
    left_out = summary.get("left_out") or {}
    if left_out:
        total = sum(left_out.values())
        reasons = "; ".join(f"{reason}: {count}" for reason, count in left_out.items())
        lines.append(f"Left out of the counts: {total} cell{'' if total == 1 else 's'} ({reasons}).")
    return lines
