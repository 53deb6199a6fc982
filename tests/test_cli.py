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
    assert "usage" in capsys.readouterr().out


def test_every_subcommand_has_help():
    parser = build_parser()
    subcommands = parser._subparsers._group_actions[0].choices
    assert "demo" in subcommands
    for name, subparser in subcommands.items():
        assert subparser.format_help().startswith("usage"), name


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
