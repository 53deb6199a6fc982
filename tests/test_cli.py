import argparse
import re
import subprocess
import sys

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
def test_demo_runs_headless_on_the_bundled_sample(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["demo", "--headless", "--out", str(out)]) == 0
    assert "white cells" in capsys.readouterr().out
    for name in ("summary.json", "report.html", "BloodImage_00000_labels.tif", "BloodImage_00000_cells.csv"):
        assert (out / name).is_file(), name


@pytest.mark.parametrize("content", [b"", b"\xff\xd8\xff\xe0 truncated jpeg"])
def test_corrupt_image_is_one_line_error_with_exit_code_2(tmp_path, capsys, content):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(content)
    assert main(["segment", str(broken), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("napari-hematology: error:") and "broken.jpg" in error
    assert "\n" not in error
