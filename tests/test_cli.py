import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from napari_hematology import __version__
from napari_hematology.cli import build_parser, main


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "demo" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert __version__ in capsys.readouterr().out


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    listing = capsys.readouterr().out
    for command in ("segment", "analyze", "classify", "demo", "expression", "mil", "predict-slide"):
        assert f"\n    {command} " in listing, command


def subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """Yield ``(command words, help line, parser)`` for every subcommand, nested ones included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, subparser in action.choices.items():
                yield (*prefix, name), helps[name], subparser
                yield from subcommands(subparser, (*prefix, name))


def test_every_subcommand_is_described_and_runs_something():
    found = list(subcommands(build_parser()))
    assert {words for words, _, _ in found} >= {("segment",), ("mil", "train"), ("expression", "fit")}
    for words, help_line, subparser in found:
        assert help_line and help_line.strip(), words
        has_children = any(isinstance(a, argparse._SubParsersAction) for a in subparser._actions)
        assert has_children or callable(subparser.get_default("func")), words


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        (["segment"], ["images", "--out", "--model", "--scale"]),
        (["analyze"], ["images", "--out", "--scheduler"]),
        (["classify"], ["IMAGE", "--out", "--model"]),
        (["demo"], ["--out", "--headless"]),
        (["predict-slide"], ["image", "--model", "--out"]),
        (["mil", "train"], ["--bags", "--out", "--encoder", "--blasts-only", "--min-cells", "--cache"]),
        (["mil", "predict"], ["--model", "--bags", "--out", "--classes"]),
        (["expression", "fit"], ["--data", "--label-key", "--encoder", "--head", "--select-genes"]),
        (["cytometry", "cluster"], ["FCS", "--clusters", "--method", "--channels", "--transform"]),
        (["labels", "import"], ["--project", "--csv", "--annotator"]),
        (["label-issues"], ["--cells", "--folds", "--loss"]),
    ],
    ids=" ".join,
)
def test_subcommand_help_lists_its_flags(capsys, command, flags):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith(f"usage: napari-hematology {' '.join(command)} ")
    for flag in flags:
        assert re.search(rf"(^|\s|\[){re.escape(flag)}(\s|\]|$)", help_text), flag


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["segmnet", "a.jpg"], "napari-hematology: error: argument COMMAND: invalid choice: 'segmnet'"),
        (["segment", "a.jpg", "--out", "o", "--bogus"],
         "napari-hematology: error: unrecognized arguments: --bogus"),
        (["predict-slide", "a.jpg"],
         "napari-hematology predict-slide: error: the following arguments are required: --model, --out"),
        (["mil"], "napari-hematology mil: error: the following arguments are required: SUBCOMMAND"),
        (["mil", "train", "--bags", "b.csv", "--out", "m", "--epochs", "ten"],
         "napari-hematology mil train: error: argument --epochs: invalid int value: 'ten'"),
    ],
)
def test_bad_arguments_exit_2_with_usage_and_a_one_line_error(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("usage: napari-hematology")
    assert lines[-1].startswith(message)
    assert sum(": error:" in line for line in lines) == 1


def test_console_script_runs_as_module():
    result = subprocess.run(
        [sys.executable, "-m", "napari_hematology", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert __version__ in result.stdout


@pytest.mark.slow
def test_demo_outputs_agree_with_each_other_and_with_what_it_prints(tmp_path, capsys):
    """Each field's label image, cell table and counts describe the same cells; the totals add up."""
    import json

    import numpy as np
    import pandas as pd

    from napari_hematology.core.cells.batch import wilson_interval
    from napari_hematology.core.cells.samples import sample_fields
    from napari_hematology.core.io import read_labels

    out = tmp_path / "results"
    assert main(["demo", "--headless", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    images, total = summary["images"], summary["total"]
    assert sorted(Path(image["image"]).name for image in images) == sorted(p.name for p in sample_fields())
    for image in images:
        cells = pd.read_csv(out / image["cells_table"])
        labels = read_labels(out / image["labels"])
        assert set(np.unique(labels)) - {0} == set(cells["cell_id"])  # every outline has its row
        for cell in cells.itertuples():
            rows, columns = np.nonzero(labels == cell.cell_id)
            assert (rows.mean(), columns.mean()) == pytest.approx((cell.centroid_y, cell.centroid_x), abs=0.5)
            assert [rows.min(), columns.min(), rows.max() + 1, columns.max() + 1] == [
                cell.bbox_y0, cell.bbox_x0, cell.bbox_y1, cell.bbox_x1]
        counted = cells[cells["quality"] == "ok"] if "quality" in cells else cells
        assert image["counts"] == {name: int((counted["label"] == name).sum()) for name in image["counts"]}
        assert image["cells"] + image["not_in_differential"] == len(counted)
    assert total["cells"] == sum(image["cells"] for image in images) > 0
    for name, count in total["counts"].items():
        assert count == sum(image["counts"].get(name, 0) for image in images), name
    low, high = wilson_interval(total["counts"]["blast"], total["cells"])
    assert total["blast_ci95_percent"] == [round(100 * low, 1), round(100 * high, 1)]
    assert f"Total: {total['cells']} white cell" in printed
    assert "95% CI {:.1f}-{:.1f}%".format(*total["blast_ci95_percent"]) in printed
    report = (out / "report.html").read_text()
    assert all(Path(image["image"]).name in report for image in images)


@pytest.mark.parametrize("content", [b"", b"\xff\xd8\xff\xe0 truncated jpeg"])
def test_corrupt_image_is_one_line_error_with_exit_code_2(tmp_path, capsys, content):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(content)
    assert main(["segment", str(broken), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("napari-hematology: error:") and "broken.jpg" in error
    assert "\n" not in error
