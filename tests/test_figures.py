"""Every figure quoted in the README's status section, the docs' figure sections and the model cards is
present in a results file under ``benchmarks/results/``.

Fast and data-free: it reads markdown and JSON only.

What counts as a quoted figure: a number with a decimal point (``0.965``, ``1,108.3``), a percentage
(``73%``), or an integer with a unit of time, size or throughput (``529 crops/s``, ``48 s``, ``1.55 GB``).
The first number of a range inherits the unit of the second (``504-529 crops/s``). Not figures: numbers in
code spans and code blocks (commands, options, file names), numbers attached to a word (``GPL-3.0``),
and targets, written after a comparison or the word goal/target (``>= 0.85``, ``goal 0.99``).

Where it looks:
- README.md: the "Status of the figures" section, one bullet at a time;
- docs/*.md: every section whose heading says "Measured" or "Figures" (with its subsections), and the
  sections in ``EXTRA_SECTIONS`` that hold figures under another heading; a subsection whose heading
  says "not recorded" (development runs that no results file holds, labelled so for the reader) is left
  out;
- every model card under ``src/napari_hematology/weights/``, whole.

A block (paragraph, bullet or table row) that says it reports an "outside evaluation" and gives a date
(``2026-11-22``) is left out: its figures come from data and scripts outside the repository. It should
also name the weights it describes.

What it matches against: the results files the item names (``benchmarks/results/X.json``, ``X.json`` or
``bench_X.py``) in the bullet (README) or the section (docs, model cards), otherwise every results file;
every number there (values, and numbers inside keys and strings), rounded to the precision quoted. A
percentage matches a fraction, as results files hold shares (73% and 0.733). Signs are ignored (``-27%``
and ``-0.2727``).

Numbers that are not figures and are not caught by the rules above (settings of a recipe, file sizes of
the shipped weights, a version) go in ``tests/figures_allowlist.txt``, one per line with its file and a
reason; an entry nothing uses any more fails too, so the list stays small.
"""

from __future__ import annotations

import bisect
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
ALLOW_LIST = Path(__file__).with_name("figures_allowlist.txt")

README_SECTION = "Status of the figures"
FIGURE_HEADING = re.compile(r"measured|figures", re.IGNORECASE)
# a subsection that says so in its heading holds development runs no results file records
NOT_RECORDED = re.compile(r"not recorded", re.IGNORECASE)
# a block that says it reports an outside evaluation, and when, quotes figures no script here produces
OUTSIDE_EVALUATION = re.compile(r"outside evaluation", re.IGNORECASE)
OUTSIDE_DATE = re.compile(r"\b20\d\d-\d\d(?:-\d\d)?\b")
# doc -> headings of sections that hold measured figures without saying so in their heading
EXTRA_SECTIONS = {
    "docs/cell_classifier.md": ["Any lab: leave-one-source-out"],
    "docs/label_review.md": ["Adaptation curve"],
}

UNITS = ("crops/s", "cells/s", "actions/s", "megapixels/s", "ms", "s", "GB", "MB")
NUMBER = re.compile(
    r"(?<![\w.])(?<![A-Za-z]-)"
    r"(?P<number>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d+|\d+)"
    r"(?P<unit>\s?%|\s?(?:" + "|".join(re.escape(unit) for unit in UNITS) + r")(?![\w/]))?"
)
TARGET_BEFORE = re.compile(r"(?:>=|<=|≥|≤|>|<|\bgoal|\btargets?:?)\s*$", re.IGNORECASE)
RANGE_BETWEEN = re.compile(r"^\s?[-–]\s?$")
RESULT_NAME = re.compile(r"(?:\bbench_(?P<bench>\w+)\.py|(?P<json>[\w-]+)\.json)")
CODE_SPAN = re.compile(r"`[^`]*`")
LINK_TARGET = re.compile(r"\]\([^)]*\)")


@dataclass(frozen=True)
class Quoted:
    """One number quoted in a document."""

    path: str
    line: int
    text: str  # as written, with its unit
    value: float
    decimals: int
    percent: bool


@dataclass
class Item:
    """A stretch of a document checked against the same results files."""

    path: str
    first_line: int
    lines: list[str]
    scope_text: str  # the text whose results-file names choose what the numbers are matched against


def markdown_sections(lines: list[str]) -> list[tuple[int, int, str, int]]:
    """(start, end, heading, level) of every heading's section, end exclusive, code blocks skipped."""
    headings = []
    fenced = False
    for index, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = re.match(r"(#{1,6})\s+(.*)", line)
        if match and not fenced:
            headings.append((index, len(match.group(1)), match.group(2).strip()))
    sections = []
    for position, (start, level, title) in enumerate(headings):
        end = next((later for later, later_level, _ in headings[position + 1:] if later_level <= level),
                   len(lines))
        sections.append((start, end, title, level))
    return sections


def bullets(lines: list[str], start: int, end: int) -> list[tuple[int, int]]:
    """(start, end) of each bullet (first or second level) with its continuation lines."""
    tops = sorted(index for index in range(start, end) if re.match(r"\s{0,2}- ", lines[index]))
    return [(first, tops[position + 1] if position + 1 < len(tops) else end)
            for position, first in enumerate(tops)]


def document_items() -> list[Item]:
    """Every stretch of README, docs and model cards whose numbers are figures."""
    items: list[Item] = []
    readme = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    for start, end, title, _ in markdown_sections(readme):
        if title == README_SECTION:
            for first, last in bullets(readme, start + 1, end):
                text = readme[first:last]
                items.append(Item("README.md", first + 1, text, "\n".join(text)))
    for doc in sorted((REPO / "docs").glob("*.md")):
        relative = doc.relative_to(REPO).as_posix()
        lines = doc.read_text(encoding="utf-8").splitlines()
        wanted = EXTRA_SECTIONS.get(relative, [])
        sections = markdown_sections(lines)
        unrecorded_lines = {index for start, end, title, _ in sections if NOT_RECORDED.search(title)
                            for index in range(start, end)}
        covered: set[int] = set()
        for start, end, title, _ in sections:
            if (FIGURE_HEADING.search(title) or title in wanted) and start not in covered:
                covered.update(range(start, end))
                section = ["" if index in unrecorded_lines else lines[index] for index in range(start, end)]
                items.append(Item(relative, start + 1, section, "\n".join(section)))
    for card in sorted((REPO / "src" / "napari_hematology" / "weights").glob("*/MODEL_CARD.md")):
        lines = card.read_text(encoding="utf-8").splitlines()
        items.append(Item(card.relative_to(REPO).as_posix(), 1, lines, "\n".join(lines)))
    return items


def outside_evaluation_lines(lines: list[str]) -> set[int]:
    """Lines of the blocks (paragraph, bullet or table row) marked as an outside evaluation with a date."""
    blocks: list[list[int]] = []
    for index, line in enumerate(lines):
        starts_block = not line.strip() or re.match(r"\s*(?:- |\d+\. |\|)", line) or not blocks
        if starts_block:
            blocks.append([])
        if line.strip():
            blocks[-1].append(index)
    marked: set[int] = set()
    for block in blocks:
        text = " ".join(lines[index] for index in block)
        if OUTSIDE_EVALUATION.search(text) and OUTSIDE_DATE.search(text):
            marked.update(block)
    return marked


def quoted_numbers(item: Item) -> list[Quoted]:
    """The figures quoted in an item (see the module docstring for what counts)."""
    found: list[Quoted] = []
    fenced = False
    outside = outside_evaluation_lines(item.lines)
    for offset, raw in enumerate(item.lines):
        if raw.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or raw.lstrip().startswith("#") or offset in outside:
            continue
        line = LINK_TARGET.sub("]", CODE_SPAN.sub(" ", raw))
        matches = list(NUMBER.finditer(line))
        units = [match.group("unit") for match in matches]
        for position in range(len(matches) - 2, -1, -1):  # a range's first number takes the second's unit
            between = line[matches[position].end():matches[position + 1].start()]
            if not units[position] and units[position + 1] and RANGE_BETWEEN.match(between):
                units[position] = units[position + 1]
        for match, unit in zip(matches, units, strict=True):
            number = match.group("number")
            if not ("." in number or unit):
                continue
            if TARGET_BEFORE.search(line[max(0, match.start() - 12):match.start()]):
                continue
            unit = (unit or "").strip()
            decimals = len(number.split(".")[1]) if "." in number else 0
            found.append(Quoted(item.path, item.first_line + offset, number + (
                "%" if unit == "%" else f" {unit}" if unit else ""), float(number.replace(",", "")),
                decimals, unit == "%"))
    return found


def numbers_in(value: object) -> list[float]:
    """Every number in a JSON value: numeric values, and numbers written in its keys and strings."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [abs(float(value))]
    if isinstance(value, str):  # "10% of genes" holds 0.1
        return [float(number) / (100.0 if percent else 1.0)
                for number, percent in re.findall(r"(\d+(?:\.\d+)?)(\s?%)?", value.replace(",", ""))]
    if isinstance(value, dict):
        return [number for key, inner in value.items() for number in numbers_in(str(key)) + numbers_in(inner)]
    if isinstance(value, list):
        return [number for inner in value for number in numbers_in(inner)]
    return []


_RESULT_NUMBERS: dict[str, list[float]] = {}


def result_numbers(names: frozenset[str]) -> list[float]:
    """Sorted numbers of the named results files (stems), or of every results file if none is named."""
    stems = sorted(names) or sorted(path.stem for path in RESULTS.glob("*.json"))
    numbers: list[float] = []
    for stem in stems:
        if stem not in _RESULT_NUMBERS:
            _RESULT_NUMBERS[stem] = numbers_in(json.loads((RESULTS / f"{stem}.json").read_text()))
        numbers += _RESULT_NUMBERS[stem]
    return sorted(numbers)


def named_results(text: str) -> frozenset[str]:
    """Stems of the results files a text names, directly or through its benchmark script."""
    available = {path.stem for path in RESULTS.glob("*.json")}
    names = set()
    for match in RESULT_NAME.finditer(text):
        if match.group("json") in available:
            names.add(match.group("json"))
        elif match.group("bench"):
            names.update(stem for stem in available if stem.startswith(match.group("bench")))
    return frozenset(names)


def is_recorded(quoted: Quoted, numbers: list[float]) -> bool:
    """Whether some recorded number rounds to the quoted one at the precision it is quoted with."""
    scale = 100.0 if quoted.percent else 1.0  # results files hold shares as fractions
    target = quoted.value / scale
    tolerance = (0.5 * 10.0 ** -quoted.decimals + 1e-9) / scale
    low = bisect.bisect_left(numbers, target - tolerance)
    return low < len(numbers) and numbers[low] <= target + tolerance


def allow_list() -> dict[tuple[str, str], str]:
    """(path, number as written) -> why it is not a figure."""
    entries = {}
    for number, line in enumerate(ALLOW_LIST.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = [part.strip() for part in line.split("|")]
        assert len(parts) == 3 and all(parts), f"{ALLOW_LIST.name}:{number}: want 'path | number | reason'"
        entries[(parts[0], parts[1])] = parts[2]
    return entries


@functools.cache
def unrecorded() -> tuple[list[Quoted], set[tuple[str, str]]]:
    """Quoted numbers found in no results file and not allowed, and the allow-list entries used."""
    allowed = allow_list()
    missing: list[Quoted] = []
    used: set[tuple[str, str]] = set()
    for item in document_items():
        numbers = result_numbers(named_results(item.scope_text))
        for quoted in quoted_numbers(item):
            key = (quoted.path, quoted.text)
            if key in allowed:
                used.add(key)
            elif not is_recorded(quoted, numbers):
                missing.append(quoted)
    return missing, used


DOCUMENTS = sorted({item.path for item in document_items()})


@pytest.mark.parametrize("path", DOCUMENTS)
def test_every_quoted_figure_is_in_a_results_file(path):
    missing = [quoted for quoted in unrecorded()[0] if quoted.path == path]
    assert not missing, (
        f"{len(missing)} figure(s) in {path} are in no results file it names (or, naming none, in any; "
        "re-run the benchmark, quote the recorded value, or list a non-figure in figures_allowlist.txt):\n"
        + "\n".join(f"  line {quoted.line}: {quoted.text}" for quoted in missing)
    )


def test_every_readme_status_bullet_names_its_results_file():
    bare = [item for item in document_items() if item.path == "README.md"
            and quoted_numbers(item) and not named_results(item.scope_text)]
    assert not bare, (
        "README status bullets that quote figures but name no results file (write `X.json` next to the "
        "figures, or mark an outside evaluation with its date and weights):\n"
        + "\n".join(f"  line {item.first_line}: {item.lines[0].strip()[:90]}" for item in bare)
    )


def test_allow_list_entries_are_used_and_give_a_reason():
    used = unrecorded()[1]
    unused = sorted(set(allow_list()) - used)
    assert not unused, f"allow-list entries no document quotes any more: {unused}"


def test_the_check_finds_what_it_should():
    item = Item("example.md", 1, [
        "- accuracy 0.965 (AUROC 0.988, goal 0.99), 6% of cells, 504-529 crops/s over 27,804 files,",
        "  target >= 0.85; `--scale 0.45`; GPL-3.0; first cells 7.1 s (benchmarks/results/x.json)",
    ], "")
    assert [quoted.text for quoted in quoted_numbers(item)] == [
        "0.965", "0.988", "6%", "504 crops/s", "529 crops/s", "7.1 s"]
    outside = Item("example.md", 1, [
        "- other labs (outside evaluation of the weights of 2026-11-22): balanced accuracy",
        "  0.26 and blast AUROC 0.57;", "- accuracy 0.965"], "")
    assert [quoted.text for quoted in quoted_numbers(outside)] == ["0.965"]
    numbers = sorted([0.9651, 0.0612, 528.6, 7.14])
    checks = {quoted.text: is_recorded(quoted, numbers) for quoted in quoted_numbers(item)}
    assert checks == {"0.965": True, "0.988": False, "6%": True, "504 crops/s": False,
                      "529 crops/s": True, "7.1 s": True}
