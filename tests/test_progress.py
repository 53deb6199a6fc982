"""The command line's progress bar: one tqdm bar per phase on a terminal, nothing written elsewhere."""

from __future__ import annotations

import io
import sys

import pytest
from conftest import run_fresh_python

from napari_hematology.core.progress import TextProgress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _final_states(text: str) -> list[str]:
    """What a terminal shows last of each bar: the text before each newline, after its last redraw."""
    return [line.rsplit("\r", 1)[-1] for line in text.split("\n")[:-1]]


def test_a_terminal_gets_one_finished_bar_per_phase():
    terminal = Terminal()
    progress = TextProgress(terminal)
    for done in range(5):
        progress(done, 4, "reading crops")
    for done in range(3):
        progress(done, 2, "classifying")
    first, second = _final_states(terminal.getvalue())
    assert first.startswith("reading crops: 100%") and "4/4" in first
    assert second.startswith("classifying: 100%") and "2/2" in second


def test_a_count_that_goes_back_starts_a_new_bar():
    terminal = Terminal()
    progress = TextProgress(terminal)
    progress(0, 3, "epochs")
    progress(2, 3, "epochs")
    progress(1, 3, "epochs")  # a second run with the same total
    progress(3, 3, "epochs")
    first, second = _final_states(terminal.getvalue())
    assert "2/3" in first and "3/3" in second


def test_nothing_is_written_when_the_stream_is_not_a_terminal():
    log = io.StringIO()
    progress = TextProgress(log)
    for done in range(4):
        progress(done, 3, "tiles")
    assert log.getvalue() == ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="loaded ahead on Linux only")
def test_torch_libraries_load_ahead_of_the_import_without_the_interpreter_lock():
    script = (
        "import sys\n"
        "from napari_hematology.core.torch_loading import load_torch_libraries_unlocked\n"
        "load_torch_libraries_unlocked()\n"
        "maps = open('/proc/self/maps').read()\n"
        "assert 'torch' not in sys.modules and 'libtorch_cpu.so' in maps, 'not loaded ahead'\n"
        "import torch\n"
        "assert float(torch.nn.Linear(2, 1)(torch.ones(1, 2)).detach().shape[0]) == 1.0\n"
    )
    run_fresh_python(script)
