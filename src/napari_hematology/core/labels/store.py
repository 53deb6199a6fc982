"""The annotation store: one SQLite file per project, with an append-only history of cell labels.

Tables: ``images``, ``classes``, ``cells`` (an id such as the crop path, its image, optional position
and crop, and for detected cells the model's class probabilities as JSON and its atypical score) and
``label_events``: every label ever given, with annotator, UTC time, source (``model``,
``import`` or ``human``), previous label of that annotator, and for model suggestions an issue score and
a confidence. Nothing is updated or deleted: undo appends an event that restores the previous label.

Every action runs in its own ``BEGIN IMMEDIATE`` transaction in WAL mode with a busy timeout, so killing
a process loses at most the action in flight and several processes can write to one project. A file
from a newer schema, a foreign SQLite file or a corrupt file is refused before anything is written; a file
of an older schema is brought up to date when opened (columns are only added).
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from napari_hematology.core.errors import InputError

SCHEMA_VERSION = 2
APPLICATION_ID = 0x4E48454D  # "NHEM"
SQLITE_HEADER = b"SQLite format 3\x00"
BUSY_TIMEOUT_MS = 60_000
SOURCES = ("model", "import", "human")
_SQL_BATCH = 500  # cells per IN (...) query (SQLite allows 999 parameters in old builds)

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE);
CREATE TABLE classes (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE cells (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    image_id INTEGER REFERENCES images(id),
    x REAL,
    y REAL,
    crop TEXT,
    probabilities TEXT,
    atypical_score REAL
);
CREATE TABLE label_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    cell_id INTEGER NOT NULL REFERENCES cells(id),
    annotator TEXT NOT NULL,
    class_id INTEGER REFERENCES classes(id),
    previous_class_id INTEGER REFERENCES classes(id),
    source TEXT NOT NULL CHECK (source IN ('model', 'import', 'human')),
    created TEXT NOT NULL,
    undoes INTEGER REFERENCES label_events(id),
    score REAL,
    confidence REAL
);
CREATE INDEX events_by_cell ON label_events (cell_id, annotator, id);
CREATE INDEX events_by_annotator ON label_events (annotator, id);
CREATE VIEW current_labels AS
    SELECT e.* FROM label_events e
    JOIN (SELECT cell_id, annotator, MAX(id) AS id FROM label_events GROUP BY cell_id, annotator) last
      ON e.id = last.id;
"""
# What each schema version adds to the one before it.
MIGRATIONS = {
    2: (
        "ALTER TABLE cells ADD COLUMN probabilities TEXT",
        "ALTER TABLE cells ADD COLUMN atypical_score REAL",
    ),
}
CELL_COLUMNS = ["cell", "image", "x", "y", "crop", "probabilities", "atypical_score"]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _check_header(path: Path) -> None:
    with open(path, "rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        raise InputError(
            f"{path.name} is not a napari-hematology project (not an SQLite file, or corrupt). "
            "It was left untouched; choose another file or restore a backup."
        )


def _check_project(path: Path) -> None:
    """Refuse foreign, newer or corrupt project files, reading them only."""
    _check_header(path)
    try:
        connection = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000
        )
        try:
            application_id = connection.execute("PRAGMA application_id").fetchone()[0]
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if application_id != APPLICATION_ID:
                raise InputError(
                    f"{path.name} is an SQLite file but not a napari-hematology project; "
                    "it was left untouched."
                )
            if version > SCHEMA_VERSION:
                raise InputError(
                    f"{path.name} was written by a newer napari-hematology (project schema {version}, this "
                    f"version reads up to {SCHEMA_VERSION}); upgrade the plugin. The file was left untouched."
                )
            check = connection.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        raise InputError(
            f"{path.name} is a corrupt project file ({error}); it was left untouched. Restore a backup."
        ) from error


def _create_project(path: Path) -> None:
    """Build the schema in a temporary file and link it into place, so a half-made project never exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    connection = sqlite3.connect(temporary)
    try:
        connection.executescript(SCHEMA)
        connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        connection.execute("INSERT INTO meta VALUES ('created', ?)", (_now(),))
        connection.commit()
        connection.execute("PRAGMA journal_mode = WAL")
    finally:
        connection.close()
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass  # another process created it first; use theirs
    finally:
        temporary.unlink(missing_ok=True)


class AnnotationStore:
    """A project's annotation store (one SQLite file).

    Open with ``AnnotationStore(path)`` (created if missing, ``create=False`` to refuse that); use as a
    context manager or call :meth:`close`. One store object per thread.
    """

    def __init__(self, path: str | Path, create: bool = True) -> None:
        self.path = Path(path)
        if self.path.exists():
            if self.path.is_dir():
                raise InputError(f"{self.path} is a folder; a project is one .sqlite file.")
            _check_project(self.path)
        elif create:
            _create_project(self.path)
            _check_project(self.path)
        else:
            raise InputError(f"{self.path}: no such project file. Import labels first to create it.")
        self._connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        self._connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._connection.execute("PRAGMA foreign_keys = ON")
        self._connection.execute("PRAGMA synchronous = NORMAL")
        self._migrate()

    def __enter__(self) -> AnnotationStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (everything is already committed)."""
        self._connection.close()

    def _migrate(self) -> None:
        """Bring a project of an older schema up to :data:`SCHEMA_VERSION` (one action)."""
        if self._query("PRAGMA user_version")[0][0] == SCHEMA_VERSION:
            return
        with self._action() as connection:
            # read again inside the lock: another process may have migrated it meanwhile
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target]:
                    connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _action(self) -> Iterator[sqlite3.Connection]:
        """One user action = one immediate transaction; rolled back whole on any error."""
        connection = self._connection
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as error:
            raise InputError(f"{self.path.name}: cannot write to the project ({error}).") from error
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def _query(self, sql: str, parameters: Sequence = ()) -> list[tuple]:
        try:
            return self._connection.execute(sql, parameters).fetchall()
        except sqlite3.DatabaseError as error:
            raise InputError(f"{self.path.name}: cannot read the project ({error}).") from error

    # classes, images, cells -------------------------------------------------------------------------

    @property
    def classes(self) -> list[str]:
        """Class names, in the order they were added (key 1 = first class in the review widget)."""
        return [row[0] for row in self._query("SELECT name FROM classes ORDER BY id")]

    def add_classes(self, names: Sequence[str]) -> list[str]:
        """Add class names not yet in the project (one action); returns all classes."""
        with self._action() as connection:
            connection.executemany(
                "INSERT OR IGNORE INTO classes (name) VALUES (?)", [(str(name),) for name in names]
            )
        return self.classes

    def _class_id(self, name: str | None) -> int | None:
        if name is None:
            return None
        rows = self._query("SELECT id FROM classes WHERE name = ?", (str(name),))
        if not rows:
            raise InputError(
                f"Unknown class {name!r}; the project's classes are "
                f"{', '.join(self.classes) or '(none yet)'}."
            )
        return rows[0][0]

    def add_cells(self, cells: Sequence[dict]) -> int:
        """Add cells (one action); existing cells keep their data.

        Args:
            cells: Dicts with ``name`` (unique id, e.g. the crop path) and optional ``image`` (the slide
                or field it lies in), ``x``, ``y`` (its centre in that image, pixels), ``crop`` (path),
                ``probabilities`` (``{class: probability}`` of the model) and ``atypical_score``.

        Returns:
            The number of cells in the project.

        """
        with self._action() as connection:
            for cell in cells:
                image_id = None
                if cell.get("image") is not None:
                    connection.execute(
                        "INSERT OR IGNORE INTO images (path) VALUES (?)", (str(cell["image"]),)
                    )
                    image_id = connection.execute(
                        "SELECT id FROM images WHERE path = ?", (str(cell["image"]),)
                    ).fetchone()[0]
                probabilities = cell.get("probabilities")
                connection.execute(
                    "INSERT OR IGNORE INTO cells (name, image_id, x, y, crop, probabilities, atypical_score) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        str(cell["name"]),
                        image_id,
                        cell.get("x"),
                        cell.get("y"),
                        cell.get("crop"),
                        None if probabilities is None else json.dumps(probabilities),
                        cell.get("atypical_score"),
                    ),
                )
        return self._query("SELECT COUNT(*) FROM cells")[0][0]

    def cells(self):
        """All cells as a DataFrame: ``cell, image, x, y, crop, probabilities, atypical_score``.

        ``probabilities`` is the model's ``{class: probability}`` of a detected cell, else None.
        """
        import pandas as pd

        rows = self._query(
            "SELECT c.name, i.path, c.x, c.y, c.crop, c.probabilities, c.atypical_score FROM cells c "
            "LEFT JOIN images i ON i.id = c.image_id ORDER BY c.id"
        )
        table = pd.DataFrame(rows, columns=CELL_COLUMNS)
        table["probabilities"] = [None if text is None else json.loads(text) for text in table.probabilities]
        return table

    def _cell_id(self, connection: sqlite3.Connection, name: str) -> int:
        row = connection.execute("SELECT id FROM cells WHERE name = ?", (str(name),)).fetchone()
        if row is None:
            raise InputError(f"Unknown cell {name!r}; add it to the project first.")
        return row[0]

    # labels -----------------------------------------------------------------------------------------

    def set_label(
        self,
        cell: str,
        label: str | None,
        annotator: str,
        source: str = "human",
        score: float | None = None,
        confidence: float | None = None,
    ) -> int:
        """Record one label (one action).

        Args:
            cell: Cell name.
            label: Class name (None clears the annotator's label).
            annotator: Who gave it (a person's name, or a model name for suggestions).
            source: ``human``, ``model`` or ``import``.
            score: Issue score of a model suggestion.
            confidence: Probability of a model suggestion.

        Returns:
            The event id.

        """
        return self.set_labels([(cell, label)], annotator, source, scores=[score], confidences=[confidence])[
            0
        ]

    def set_labels(
        self,
        labels: Sequence[tuple[str, str | None]],
        annotator: str,
        source: str = "import",
        scores: Sequence[float | None] | None = None,
        confidences: Sequence[float | None] | None = None,
    ) -> list[int]:
        """Record many labels of one annotator in one action (an import or a model's suggestions).

        Raises:
            InputError: Unknown cell, class or source, or an empty annotator name.

        """
        annotator = (annotator or "").strip()
        if not annotator:
            raise InputError("An annotator name is needed; type your name first.")
        if source not in SOURCES:
            raise InputError(f"Unknown label source {source!r}; use one of {', '.join(SOURCES)}.")
        scores = scores or [None] * len(labels)
        confidences = confidences or [None] * len(labels)
        class_ids = {name: self._class_id(name) for name in {label for _, label in labels}}
        with self._action() as connection:
            # looked up for all the cells at once: a page of 2,000 cells is signed off in one go
            cell_ids = self._cell_ids(connection, [cell for cell, _ in labels])
            current = self._current_class_ids(connection, list(set(cell_ids.values())), annotator)
            created = _now()
            rows = []
            for (cell, label), score, confidence in zip(labels, scores, confidences, strict=True):
                cell_id, class_id = cell_ids[str(cell)], class_ids[label]
                previous = current.get(cell_id)
                rows.append((cell_id, annotator, class_id, previous, source, created, score, confidence))
                current[cell_id] = class_id  # a cell labelled twice in one action
            event_ids = self._insert_events(
                connection,
                "INSERT INTO label_events (cell_id, annotator, class_id, previous_class_id, source, created, "
                "score, confidence) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return event_ids

    @staticmethod
    def _insert_events(connection: sqlite3.Connection, sql: str, rows: list[tuple]) -> list[int]:
        """Insert label events in one statement; their ids, in order.

        The action holds the write lock and ``label_events.id`` is AUTOINCREMENT, so the rows get the ids
        that follow the table's sequence, one after the other.
        """
        if not rows:
            return []
        connection.executemany(sql, rows)
        (last,) = connection.execute("SELECT seq FROM sqlite_sequence WHERE name = 'label_events'").fetchone()
        return list(range(last - len(rows) + 1, last + 1))

    def _cell_ids(self, connection: sqlite3.Connection, names: Sequence[str]) -> dict[str, int]:
        """The id of each named cell.

        Raises:
            InputError: A cell is not in the project.

        """
        wanted = list(dict.fromkeys(str(name) for name in names))
        found: dict[str, int] = {}
        for start in range(0, len(wanted), _SQL_BATCH):
            chunk = wanted[start : start + _SQL_BATCH]
            rows = connection.execute(
                f"SELECT name, id FROM cells WHERE name IN ({', '.join('?' * len(chunk))})", chunk
            ).fetchall()
            found.update(rows)
        for name in wanted:
            if name not in found:
                raise InputError(f"Unknown cell {name!r}; add it to the project first.")
        return found

    @staticmethod
    def _current_class_ids(
        connection: sqlite3.Connection, cell_ids: Sequence[int], annotator: str
    ) -> dict[int, int | None]:
        """The class each cell has now from ``annotator`` (absent: never labelled by them)."""
        current: dict[int, int | None] = {}
        for start in range(0, len(cell_ids), _SQL_BATCH):
            chunk = list(cell_ids[start : start + _SQL_BATCH])
            rows = connection.execute(
                "SELECT e.cell_id, e.class_id FROM label_events e JOIN (SELECT cell_id, MAX(id) AS id "
                "FROM label_events WHERE annotator = ? AND cell_id IN "
                f"({', '.join('?' * len(chunk))}) GROUP BY cell_id) last ON last.id = e.id",
                [annotator, *chunk],
            ).fetchall()
            current.update(rows)
        return current

    @staticmethod
    def _current_class_id(connection: sqlite3.Connection, cell_id: int, annotator: str) -> int | None:
        row = connection.execute(
            "SELECT class_id FROM label_events WHERE cell_id = ? AND annotator = ? ORDER BY id DESC LIMIT 1",
            (cell_id, annotator),
        ).fetchone()
        return row[0] if row else None

    def undo(self, annotator: str) -> str | None:
        """Undo the annotator's latest label that is not yet undone, by appending a restoring event.

        Returns:
            The cell whose label was restored, or None when there is nothing left to undo.

        """
        restored = self.undo_many(annotator, 1)
        return restored[0] if restored else None

    def undo_many(self, annotator: str, count: int) -> list[str]:
        """Undo the annotator's latest ``count`` labels (one action), newest first.

        Returns:
            The cells whose labels were restored (fewer than ``count`` when the history runs out).

        """
        restored = []
        with self._action() as connection:
            # the latest ``count`` events not undone yet, newest first (undoing them, in turn, is what
            # ``count`` single undos would do: an undo event is never itself undone here)
            rows = connection.execute(
                "SELECT e.id, e.cell_id, e.previous_class_id, e.source, c.name FROM label_events e "
                "JOIN cells c ON c.id = e.cell_id WHERE e.annotator = ? AND e.undoes IS NULL "
                "AND e.id NOT IN (SELECT undoes FROM label_events WHERE undoes IS NOT NULL) "
                "ORDER BY e.id DESC LIMIT ?",
                (annotator, max(0, int(count))),
            ).fetchall()
            current = self._current_class_ids(connection, list({row[1] for row in rows}), annotator)
            created = _now()
            events = []
            for event_id, cell_id, previous, source, name in rows:
                events.append((cell_id, annotator, previous, current.get(cell_id), source, created, event_id))
                current[cell_id] = previous
                restored.append(name)
            self._insert_events(
                connection,
                "INSERT INTO label_events (cell_id, annotator, class_id, previous_class_id, source, created, "
                "undoes) VALUES (?, ?, ?, ?, ?, ?, ?)",
                events,
            )
        return restored

    def annotators(self, source: str | None = None) -> list[str]:
        """Names of everyone (or every model) who labelled cells, optionally of one source."""
        sql = "SELECT DISTINCT annotator FROM label_events"
        rows = (
            self._query(sql + " WHERE source = ? ORDER BY annotator", (source,))
            if source
            else self._query(sql + " ORDER BY annotator")
        )
        return [row[0] for row in rows]

    def current_labels(self, annotators: Sequence[str] | None = None):
        """Every annotator's current label per cell (cleared labels left out).

        Returns:
            A DataFrame ``cell, image, x, y, crop, annotator, label, source, score, confidence, created``.

        """
        import pandas as pd

        rows = self._query(
            "SELECT c.name, i.path, c.x, c.y, c.crop, e.annotator, k.name, e.source, e.score, e.confidence, "
            "e.created FROM current_labels e JOIN cells c ON c.id = e.cell_id "
            "LEFT JOIN images i ON i.id = c.image_id JOIN classes k ON k.id = e.class_id "
            "ORDER BY c.id, e.annotator"
        )
        table = pd.DataFrame(
            rows,
            columns=[
                "cell",
                "image",
                "x",
                "y",
                "crop",
                "annotator",
                "label",
                "source",
                "score",
                "confidence",
                "created",
            ],
        )
        if annotators is not None:
            table = table[table["annotator"].isin(list(annotators))].reset_index(drop=True)
        return table

    def history(self):
        """Return the full append-only label history as a DataFrame, oldest first."""
        import pandas as pd

        rows = self._query(
            "SELECT e.id, c.name, e.annotator, k.name, p.name, e.source, e.created, e.undoes, e.score, "
            "e.confidence FROM label_events e JOIN cells c ON c.id = e.cell_id "
            "LEFT JOIN classes k ON k.id = e.class_id LEFT JOIN classes p ON p.id = e.previous_class_id "
            "ORDER BY e.id"
        )
        columns = [
            "event",
            "cell",
            "annotator",
            "label",
            "previous",
            "source",
            "created",
            "undoes",
            "score",
            "confidence",
        ]
        return pd.DataFrame(rows, columns=columns)

    def event_count(self) -> int:
        """Count the label events recorded."""
        return self._query("SELECT COUNT(*) FROM label_events")[0][0]
