"""The SQLite annotation store: history, undo, agreement, CSV, concurrency and bad files."""

from __future__ import annotations

import hashlib
import multiprocessing
import sqlite3
import subprocess
import sys

import pandas as pd
import pytest

from napari_hematology.core.errors import InputError
from napari_hematology.core.labels.agreement import agreement, consensus
from napari_hematology.core.labels.exchange import export_labels, import_labels
from napari_hematology.core.labels.store import AnnotationStore


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def store(tmp_path):
    with AnnotationStore(tmp_path / "project.sqlite") as opened:
        opened.add_classes(["blast", "lymphocyte", "monocyte"])
        opened.add_cells([{"name": f"c{i}", "image": "slide.tif", "x": 10.0 * i, "y": 5.0} for i in range(4)])
        yield opened


def test_history_keeps_every_label_with_previous_source_and_time(store):
    store.set_label("c0", "blast", "anna", source="model", score=0.9)
    store.set_label("c0", "lymphocyte", "anna")
    history = store.history()
    assert list(history["label"]) == ["blast", "lymphocyte"]
    assert list(history["previous"].fillna("-")) == ["-", "blast"]
    assert list(history["source"]) == ["model", "human"]
    assert history["created"].is_monotonic_increasing
    assert store.current_labels()["label"].tolist() == ["lymphocyte"]


def test_undo_appends_and_walks_back(store):
    store.set_label("c0", "blast", "anna")
    store.set_label("c0", "monocyte", "anna")
    store.set_label("c1", "blast", "ben")
    assert store.undo("anna") == "c0"
    assert store.current_labels(["anna"])["label"].tolist() == ["blast"]
    assert store.undo("anna") == "c0"
    assert store.current_labels(["anna"]).empty
    assert store.undo("anna") is None
    assert store.current_labels(["ben"])["label"].tolist() == ["blast"]
    assert store.event_count() == 5  # nothing deleted: 3 labels + 2 undo events


def test_consensus_and_kappa(store):
    for cell, (a, b, c) in {"c0": "bbb", "c1": "bll", "c2": "blm", "c3": "lll"}.items():
        for who, short in zip(("anna", "ben", "cleo"), (a, b, c), strict=True):
            store.set_label(cell, {"b": "blast", "l": "lymphocyte", "m": "monocyte"}[short], who)
    votes = consensus(store.current_labels()).set_index("cell")
    assert votes.loc["c1", "consensus"] == "lymphocyte"
    assert votes.loc["c1", "agreement"] == pytest.approx(2 / 3)
    assert votes.loc["c2", "consensus"] is None  # three-way tie
    result = agreement(store.current_labels(), "anna", "ben")
    assert result["cells"] == 4
    assert result["observed_agreement"] == pytest.approx(0.5)
    assert result["kappa"] == pytest.approx(0.2)  # (0.5 - 0.375) / (1 - 0.375)
    assert result["confusion"].loc["blast", "lymphocyte"] == 2


def test_unknown_class_cell_or_annotator_is_refused(store):
    with pytest.raises(InputError, match="Unknown class 'neutrophil'"):
        store.set_label("c0", "neutrophil", "anna")
    with pytest.raises(InputError, match="Unknown cell"):
        store.set_label("nope", "blast", "anna")
    with pytest.raises(InputError, match="annotator"):
        store.set_label("c0", "blast", "  ")
    assert store.event_count() == 0


def test_csv_round_trip_and_wide_import(tmp_path, store):
    store.set_label("c0", "blast", "anna")
    store.set_label("c1", "monocyte", "ben")
    exported = export_labels(store)
    with AnnotationStore(tmp_path / "copy.sqlite") as copy:
        assert import_labels(copy, exported) == 2
        again = export_labels(copy)
    assert again[["cell", "annotator", "label", "image", "x"]].equals(
        exported[["cell", "annotator", "label", "image", "x"]]
    )
    wide = pd.DataFrame(
        {
            "patient": ["P1", "P1"],
            "file": ["1.tif", "2.tif"],
            "expert": ["blast", "blast"],
            "model": ["blast", "monocyte"],
        }
    )
    with AnnotationStore(tmp_path / "wide.sqlite") as project:
        import_labels(project, wide, cell_columns=["patient", "file"], label_columns=["expert", "model"])
        assert project.annotators() == ["expert", "model"]
        assert agreement(project.current_labels(), "expert", "model")["observed_agreement"] == 0.5


def test_import_refuses_missing_columns_and_unknown_classes(store):
    with pytest.raises(InputError, match="lacks column"):
        import_labels(store, pd.DataFrame({"cell": ["c0"]}))
    with pytest.raises(InputError, match="unknown to the project: basophil"):
        import_labels(store, pd.DataFrame({"cell": ["c0"], "label": ["basophil"]}))
    assert store.event_count() == 0
    import_labels(store, pd.DataFrame({"cell": ["c0"], "label": ["basophil"]}), add_classes=True)
    assert "basophil" in store.classes


def test_corrupt_and_foreign_files_are_refused_untouched(tmp_path):
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a database" * 100)
    foreign = tmp_path / "foreign.sqlite"
    sqlite3.connect(foreign).execute("CREATE TABLE t (x)").connection.commit()
    for path, message in ((corrupt, "not a napari-hematology project"), (foreign, "not a napari-hematology")):
        before = _digest(path)
        with pytest.raises(InputError, match=message):
            AnnotationStore(path)
        assert _digest(path) == before


def test_damaged_pages_are_refused_untouched(tmp_path):
    path = tmp_path / "damaged.sqlite"
    with AnnotationStore(path) as project:
        project.add_classes([f"class{i}" for i in range(400)])
    data = bytearray(path.read_bytes())
    for page in range(1, len(data) // 4096):  # scribble over every b-tree page header but the first
        data[page * 4096 : page * 4096 + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    before = _digest(path)
    with pytest.raises(InputError, match="corrupt"):
        AnnotationStore(path)
    assert _digest(path) == before


def test_newer_schema_is_refused_untouched(tmp_path):
    path = tmp_path / "future.sqlite"
    AnnotationStore(path).close()
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA user_version = 99")
    connection.commit()
    connection.close()
    before = _digest(path)
    with pytest.raises(InputError, match="newer napari-hematology"):
        AnnotationStore(path)
    assert _digest(path) == before


def test_missing_project_is_not_created_when_asked_not_to(tmp_path):
    with pytest.raises(InputError, match="no such project"):
        AnnotationStore(tmp_path / "absent.sqlite", create=False)
    assert not (tmp_path / "absent.sqlite").exists()


def _write_labels(path: str, annotator: str, count: int) -> None:
    with AnnotationStore(path) as project:
        for index in range(count):
            project.set_label(f"c{index % 4}", ("blast", "lymphocyte")[index % 2], annotator)


def test_two_processes_writing_lose_nothing(tmp_path, store):
    context = multiprocessing.get_context("spawn")
    writers = [
        context.Process(target=_write_labels, args=(str(store.path), name, 150)) for name in ("p1", "p2")
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
    assert [writer.exitcode for writer in writers] == [0, 0]
    history = store.history()
    assert (history["annotator"] == "p1").sum() == 150
    assert (history["annotator"] == "p2").sum() == 150


def test_killed_writer_loses_at_most_the_action_in_flight(tmp_path, store):
    script = (
        "import sys\nfrom napari_hematology.core.labels.store import AnnotationStore\n"
        "s = AnnotationStore(sys.argv[1])\ni = 0\n"
        "while True:\n    s.set_label('c0', 'blast', 'k'); i += 1\n    print(i, flush=True)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(store.path)], stdout=subprocess.PIPE, text=True
    )
    acknowledged = 0
    for line in process.stdout:
        acknowledged = int(line)
        if acknowledged >= 40:
            break
    process.kill()
    for line in process.stdout:  # actions acknowledged before the kill landed
        acknowledged = int(line)
    process.wait()
    with AnnotationStore(store.path) as reopened:
        recorded = (reopened.history()["annotator"] == "k").sum()
    assert acknowledged <= recorded <= acknowledged + 1


def test_labels_commands_import_export_agreement(tmp_path, capsys):
    from napari_hematology.cli import main

    wide = tmp_path / "double.csv"
    pd.DataFrame(
        {
            "ID": ["P1", "P1", "P2"],
            "file": ["1.tif", "2.tif", "1.tif"],
            "expert": ["blast", "blast", "monocyte"],
            "second": ["blast", "monocyte", "monocyte"],
        }
    ).to_csv(wide)
    project = tmp_path / "p.sqlite"
    assert (
        main(
            [
                "labels",
                "import",
                "--project",
                str(project),
                "--csv",
                str(wide),
                "--cell-columns",
                "ID",
                "file",
                "--label-columns",
                "expert",
                "second",
            ]
        )
        == 0
    )
    summary = tmp_path / "agreement.json"
    assert (
        main(
            [
                "labels",
                "agreement",
                "--project",
                str(project),
                "--json",
                str(summary),
                "--out",
                str(tmp_path / "confusion.csv"),
            ]
        )
        == 0
    )
    assert "Cohen's kappa" in capsys.readouterr().out
    assert pd.read_json(summary, typ="series")["cells"] == 3
    assert pd.read_csv(tmp_path / "confusion.csv").set_index("expert").loc["blast", "monocyte"] == 1
    out = tmp_path / "export.csv"
    assert main(["labels", "export", "--project", str(project), "--out", str(out)]) == 0
    assert len(pd.read_csv(out)) == 6
    unknown = tmp_path / "unknown.csv"
    pd.DataFrame({"cell": ["P1/1.tif"], "label": ["basophil"]}).to_csv(unknown, index=False)
    before = _digest(project)
    assert main(["labels", "import", "--project", str(project), "--csv", str(unknown)]) == 2
    assert "basophil" in capsys.readouterr().err
    assert main(["labels", "export", "--project", str(tmp_path / "none.sqlite"), "--out", str(out)]) == 2
    assert _digest(project) == before


def test_project_of_schema_1_opens_and_gains_the_detection_columns(tmp_path):
    from napari_hematology.core.labels.store import APPLICATION_ID, SCHEMA_VERSION

    path = tmp_path / "old.sqlite"
    connection = sqlite3.connect(path)
    connection.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "CREATE TABLE images (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE);"
        "CREATE TABLE classes (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);"
        "CREATE TABLE cells (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, image_id INTEGER, x REAL,"
        " y REAL, crop TEXT);"
        "CREATE TABLE label_events (id INTEGER PRIMARY KEY AUTOINCREMENT, cell_id INTEGER NOT NULL,"
        " annotator TEXT NOT NULL, class_id INTEGER, previous_class_id INTEGER, source TEXT NOT NULL,"
        " created TEXT NOT NULL, undoes INTEGER, score REAL, confidence REAL);"
        "CREATE VIEW current_labels AS SELECT e.* FROM label_events e JOIN (SELECT cell_id, annotator,"
        " MAX(id) AS id FROM label_events GROUP BY cell_id, annotator) last ON e.id = last.id;"
        "INSERT INTO cells (name, crop) VALUES ('old', 'old.png');"
    )
    connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    connection.execute("PRAGMA user_version = 1")
    connection.commit()
    connection.close()
    with AnnotationStore(path) as store:
        store.add_cells([{"name": "new", "probabilities": {"blast": 0.7}, "atypical_score": 0.2}])
        cells = store.cells().set_index("cell")
    assert cells.loc["old", "crop"] == "old.png" and cells.loc["old", "probabilities"] is None
    assert cells.loc["new", "probabilities"] == {"blast": 0.7} and cells.loc["new", "atypical_score"] == 0.2
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_undo_many_reverts_a_whole_decision_in_one_action(store):
    store.set_labels([("c0", "blast"), ("c1", "blast"), ("c2", "monocyte")], "anna", "human")
    assert store.undo_many("anna", 2) == ["c2", "c1"]
    assert store.current_labels(["anna"]).set_index("cell")["label"].to_dict() == {"c0": "blast"}


def _png(path, colour=(150, 60, 170)):
    import numpy as np
    from PIL import Image

    image = np.full((24, 24, 3), 230, dtype=np.uint8)
    image[6:18, 6:18] = colour
    Image.fromarray(image).save(path)


def test_crop_folders_import_through_the_mapping_and_unknown_names_are_reported(tmp_path):
    from napari_hematology.core.labels.exchange import import_crop_folders, read_class_mapping
    from napari_hematology.core.labels.review import corrected_labels

    export = tmp_path / "export"
    for folder, count in (("SEG", 2), ("LY", 1), ("Smudge", 1)):
        (export / folder).mkdir(parents=True)
        for index in range(count):
            _png(export / folder / f"{index}.jpg")
    pd.DataFrame({"exporter_name": ["SEG", "LY"], "model_class": ["neutrophil", "lymphocyte"]}).to_csv(
        tmp_path / "map.csv", index=False
    )
    mapping = read_class_mapping(tmp_path / "map.csv")
    with AnnotationStore(tmp_path / "p.sqlite") as store:
        with pytest.raises(InputError, match="Smudge"):
            import_crop_folders(store, export, mapping)
        assert store.cells().empty
        assert import_crop_folders(store, export, {**mapping, "Smudge": "other"}) == {
            "lymphocyte": 1, "neutrophil": 2, "other": 1
        }
        labels = corrected_labels(store, require_reviewed=True)
    assert sorted(labels["label"]) == ["lymphocyte", "neutrophil", "neutrophil", "other"]


def test_detected_cells_go_to_review_with_crop_probabilities_and_model_label(tmp_path):
    import numpy as np

    from napari_hematology.core.labels.exchange import crops_folder, send_to_review
    from napari_hematology.core.labels.review import corrected_labels

    cells = pd.DataFrame(
        {
            "cell_id": [1, 2],
            "centroid_x": [10.0, 40.0],
            "centroid_y": [5.0, 25.0],
            "label": ["blast", "lymphocyte"],
            "prob_blast": [0.8, 0.1],
            "prob_lymphocyte": [0.2, 0.9],
            "atypical_score": [0.3, np.nan],
        }
    )
    crops = [np.full((20, 20, 3), 100, dtype=np.uint8)] * 2
    project = tmp_path / "review.sqlite"
    assert send_to_review(project, "slides/a.svs", cells, crops, ["blast", "lymphocyte"]) == 2
    with AnnotationStore(project) as store:
        table = store.cells().set_index("cell")
        labels = store.current_labels()
        with pytest.raises(InputError, match="no reviewed cells"):
            corrected_labels(store, require_reviewed=True)
    first = table.loc["slides/a.svs#1"]
    assert (first["image"], first["x"], first["y"]) == ("slides/a.svs", 10.0, 5.0)
    assert first["probabilities"] == {"blast": 0.8, "lymphocyte": 0.2} and first["atypical_score"] == 0.3
    assert pd.isna(table.loc["slides/a.svs#2", "atypical_score"])
    assert len(list(crops_folder(project).glob("*.png"))) == 2
    assert labels[["label", "source", "confidence"]].values.tolist() == [
        ["blast", "model", 0.8], ["lymphocyte", "model", 0.9]
    ]
