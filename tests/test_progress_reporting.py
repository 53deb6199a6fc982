"""Long tasks say how far they are: one bar over a retrain's trainings, and the time left on every bar."""

from __future__ import annotations

import pytest

from napari_hematology.core.labels.review import _OverallProgress


def test_two_trainings_make_one_bar_that_names_each():
    reports = []
    overall = _OverallProgress(lambda *report: reports.append(report), trainings=2)
    for _training in range(2):  # the comparison model, then the lab model: each counts from the start
        for step in range(1, 11):
            overall(step, 10, f"epoch {step}/10")
    done = [report[0] for report in reports]
    assert done == sorted(done) and done[-1] == 20 and {report[1] for report in reports} == {20}
    assert reports[0][2] == "training a model for the comparison (1/2), epoch 1/10"
    assert reports[-1][2] == "training the lab model (2/2), epoch 10/10"


def test_one_training_names_the_lab_model():
    reports = []
    overall = _OverallProgress(lambda *report: reports.append(report), trainings=1)
    overall(3, 10, "epoch 3/10")
    assert reports == [(3, 10, "training the lab model, epoch 3/10")]


@pytest.mark.gui
def test_the_runner_shows_the_time_left_from_the_pace(qtbot, monkeypatch):
    import napari_hematology.widgets._runner as runner_module

    clock = [100.0]
    monkeypatch.setattr(runner_module.time, "monotonic", lambda: clock[0])
    runner = runner_module.TaskRunner(uses_torch=False)
    qtbot.addWidget(runner)
    runner._on_progress(0, 0, "Loading torch…")
    assert runner.status.text() == "Loading torch…" and runner.bar.maximum() == 0  # busy, no amount
    runner._on_progress(10, 100, "epoch 1/10")
    assert "left" not in runner.status.text()
    clock[0] += 30.0  # 20 steps in 30 s: 70 to go, about 105 s
    runner._on_progress(30, 100, "epoch 3/10")
    assert runner.status.text() == "epoch 3/10 30/100, about 2 min left"
