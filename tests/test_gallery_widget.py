"""The Gallery widget: cells by class in the canvas, keys on the gallery layer, undo, sign-off, speed."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from napari_hematology.core.labels.exchange import send_to_review
from napari_hematology.core.labels.gallery import grid_layout
from napari_hematology.core.labels.store import AnnotationStore

CLASSES = ["neutrophil", "lymphocyte", "blast"]


def _project(tmp_path, count: int):
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(len(CLASSES)), count)
    cells = pd.DataFrame(
        {
            "cell_id": np.arange(1, count + 1),
            "centroid_x": rng.uniform(0, 500, count),
            "centroid_y": rng.uniform(0, 500, count),
            "label": np.asarray(CLASSES)[probabilities.argmax(axis=1)],
            "atypical_score": rng.uniform(0, 1, count),
            **{f"prob_{name}": probabilities[:, i] for i, name in enumerate(CLASSES)},
        }
    )
    crop = np.full((30, 30, 3), 220, dtype=np.uint8)
    crop[8:22, 8:22] = (120, 50, 160)
    project = tmp_path / "review.sqlite"
    send_to_review(project, "slide", cells, [crop] * count, CLASSES)
    return project, cells


def test_grid_layout_groups_by_class_least_sure_first():
    cells = pd.DataFrame(
        {
            "label": ["b", "a", "a", "a"],
            "probability": [0.5, 0.9, 0.2, 0.6],
            "atypical_score": [0, 0.1, 0.9, 0.5],
        }
    )
    placed, headers = grid_layout(cells, ["a", "b"], columns=2)
    assert headers.values.tolist() == [["a", 0, 3], ["b", 3, 1]]
    assert placed["probability"].tolist() == [0.2, 0.6, 0.9, 0.5]
    assert placed[["row", "col"]].values.tolist() == [[1, 0], [1, 1], [2, 0], [4, 0]]
    by_atypical, _ = grid_layout(cells, ["a", "b"], columns=2, order="atypical_score")
    assert by_atypical["atypical_score"].tolist()[:3] == [0.9, 0.5, 0.1]


@pytest.fixture
def gallery(make_napari_viewer, qtbot):
    from napari_hematology.widgets.gallery import GalleryWidget

    widget = GalleryWidget(make_napari_viewer())
    qtbot.addWidget(widget)
    widget.annotator.setText("dr_a")
    return widget


def _press(layer, key: str) -> None:
    from napari.utils.key_bindings import coerce_keybinding

    layer.keymap[coerce_keybinding(key)](layer)


@pytest.mark.gui
def test_keys_move_selection_undo_and_sign_off_are_recorded(gallery, tmp_path):
    from napari_hematology.widgets.gallery import CELLS_LAYER

    project, cells = _project(tmp_path, 30)
    gallery.open_project(project)
    gallery.next_page()
    layer = gallery.viewer.layers[CELLS_LAYER]
    assert len(layer.data) == 30 and set(layer.features) >= {"label", "probability", "atypical_score"}
    assert gallery.viewer.layers.selection.active is layer
    layer.selected_data = {0, 1, 2}
    _press(layer, "3")
    moved = set(layer.features["cell"].iloc[:3])
    with AnnotationStore(project) as store:
        mine = store.current_labels(["dr_a"])
    assert set(mine["cell"]) == moved and set(mine["label"]) == {"blast"} and set(mine["source"]) == {"human"}
    assert (layer.features["label"].iloc[:3] == "blast").all()
    _press(layer, "Control-z")
    with AnnotationStore(project) as store:
        assert store.current_labels(["dr_a"]).empty
    _press(layer, "Enter")
    with AnnotationStore(project) as store:
        signed = store.current_labels(["dr_a"]).set_index("cell")["label"]
    assert len(signed) == 30
    assert (signed.sort_index() == cells.set_index(cells["cell_id"].map(lambda i: f"slide#{i}"))["label"]
            .sort_index()).all()
    assert gallery.page == []


@pytest.mark.gui
def test_jump_to_the_cell_in_its_slide_and_back(gallery, tmp_path):
    from napari_hematology.widgets.gallery import CELLS_LAYER, IMAGE_LAYER

    project, cells = _project(tmp_path, 5)
    slide = gallery.viewer.add_image(np.zeros((600, 600, 3), dtype=np.uint8), name="slide", rgb=True)
    gallery.open_project(project)
    gallery.next_page()
    layer = gallery.viewer.layers[CELLS_LAYER]
    layer.selected_data = {0}
    zoom = gallery.viewer.scene.camera.zoom
    _press(layer, "j")
    cell = cells.set_index(cells["cell_id"].map(lambda i: f"slide#{i}")).loc[layer.features["cell"][0]]
    assert np.allclose(gallery.viewer.scene.camera.center[-2:], (cell["centroid_y"], cell["centroid_x"]))
    assert not gallery.viewer.layers[IMAGE_LAYER].visible and slide.visible
    _press(layer, "j")
    assert gallery.viewer.layers[IMAGE_LAYER].visible
    assert gallery.viewer.scene.camera.zoom == pytest.approx(zoom)


@pytest.mark.gui
@pytest.mark.slow
def test_two_thousand_cells_build_and_move_quickly(gallery, tmp_path):
    from napari_hematology.widgets.gallery import CELLS_LAYER

    project, _ = _project(tmp_path, 2000)
    gallery.open_project(project)
    started = time.perf_counter()
    gallery.next_page()
    built = time.perf_counter() - started
    layer = gallery.viewer.layers[CELLS_LAYER]
    assert len(layer.data) == 2000
    layer.selected_data = set(range(0, 2000, 4))
    started = time.perf_counter()
    _press(layer, "2")
    moved = time.perf_counter() - started
    assert (layer.features["label"].iloc[::4] == "lymphocyte").all()
    assert built < 20.0, f"building the gallery took {built:.1f} s"
    assert moved < 2.0, f"moving 500 cells took {moved:.1f} s"


@pytest.mark.gui
def test_retrain_without_reviewed_cells_says_so(gallery, tmp_path, qtbot, monkeypatch):
    import napari_hematology.widgets._runner as runner

    messages = []
    monkeypatch.setattr("napari.utils.notifications.show_error", messages.append)
    project, _ = _project(tmp_path, 3)
    gallery.open_project(project)
    gallery.retrain()
    qtbot.waitUntil(lambda: not gallery.runner.busy, timeout=60_000)
    assert runner and any("no reviewed cells" in message for message in messages)
    assert not gallery.use_model_button.isEnabled()
