"""The Cytometry widget: cluster FCS files with IDEC / VaDE (or staged), view events and proportions."""

from __future__ import annotations

from pathlib import Path

import napari
import numpy as np
from napari.utils.notifications import show_info
from qtpy.QtCore import QRectF, Qt
from qtpy.QtGui import QColor, QPainter
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_hematology.core.cytometry.fcs import TRANSFORMS
from napari_hematology.core.errors import HematologyError
from napari_hematology.widgets._runner import TaskRunner, report_error, shortcut_button

LATENT = "latent space"
POINT_SIZE = 0.05
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


class CytometryWidget(QWidget):
    """Load FCS files, choose channels and transform, run one stage or a stages file, and show results."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.paths: list[Path] = []
        self.result = None
        self.files_list = QListWidget()
        self.add_button = shortcut_button("Add FCS files… (Ctrl+O)", "Ctrl+O", self._browse)
        self.clear_button = shortcut_button("Clear", None, self.clear_files)
        self.channels_list = QListWidget()
        self.transform_combo = QComboBox()
        self.transform_combo.addItems(list(TRANSFORMS))
        self.cofactor_spin = _double_spin(0.1, 10000.0, 150.0)
        self.compensate_combo = QComboBox()
        self.compensate_combo.addItems(["apply spillover matrix", "already compensated"])
        self.method_combo = QComboBox()
        self.method_combo.addItems(["idec", "vade"])
        self.clusters_spin = _spin(2, 50, 5)
        self.epochs_spin = _spin(1, 500, 15)
        self.stages_edit = QLineEdit()
        self.stages_edit.setPlaceholderText("optional stages .yaml (overrides method and clusters)")
        self.reference_edit = QLineEdit()
        self.reference_edit.setPlaceholderText("optional reference .csv: file,population,fraction")
        self.run_button = shortcut_button("Run (Ctrl+R)", "Ctrl+R", self.run)
        self.file_combo = QComboBox()
        self.stage_combo = QComboBox()
        self.x_combo = QComboBox()
        self.y_combo = QComboBox()
        self.plot_button = shortcut_button("Show scatter (Ctrl+P)", "Ctrl+P", self.show_scatter)
        self.table = QTableWidget()
        self.chart = ProportionChart()
        self.runner = TaskRunner(self)
        self._build_layout()

    def _build_layout(self) -> None:
        file_row = QHBoxLayout()
        file_row.addWidget(self.add_button)
        file_row.addWidget(self.clear_button)
        form = QFormLayout()
        form.addRow("Channels", self.channels_list)
        form.addRow("Transform", self.transform_combo)
        form.addRow("Arcsinh cofactor", self.cofactor_spin)
        form.addRow("Compensation", self.compensate_combo)
        form.addRow("Method", self.method_combo)
        form.addRow("Clusters", self.clusters_spin)
        form.addRow("Epochs", self.epochs_spin)
        form.addRow("Stages", self.stages_edit)
        form.addRow("Reference", self.reference_edit)
        view = QFormLayout()
        view.addRow("File", self.file_combo)
        view.addRow("Stage", self.stage_combo)
        view.addRow("X", self.x_combo)
        view.addRow("Y", self.y_combo)
        layout = QVBoxLayout(self)
        layout.addWidget(self.files_list)
        layout.addLayout(file_row)
        layout.addLayout(form)
        layout.addWidget(self.run_button)
        layout.addWidget(self.runner)
        layout.addLayout(view)
        layout.addWidget(self.plot_button)
        layout.addWidget(self.table)
        layout.addWidget(self.chart)

    def _browse(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Open FCS files", "", "FCS files (*.fcs)")
        if paths:
            self.load_files(self.paths + [Path(p) for p in paths])

    def clear_files(self) -> None:
        """Forget the loaded files and results."""
        self.paths = []
        self.result = None
        self.files_list.clear()
        self.channels_list.clear()

    def load_files(self, paths: list[str | Path]) -> bool:
        """Read the files' headers and offer their shared channels (marker channels ticked)."""
        from napari_hematology.core.cytometry import read_batch

        try:
            samples, channels = read_batch([Path(p) for p in paths])
        except HematologyError as error:
            report_error(error)
            return False
        self.paths = [s.path for s in samples]
        self.files_list.clear()
        self.files_list.addItems([f"{s.name} ({len(s.events)} events)" for s in samples])
        self.channels_list.clear()
        for name, shown in zip(samples[0].names, samples[0].display_names(), strict=False):
            item = QListWidgetItem(shown)
            item.setData(Qt.ItemDataRole.UserRole, name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if name in channels else Qt.CheckState.Unchecked)
            self.channels_list.addItem(item)
        return True

    def checked_channels(self) -> list[str]:
        """Detector names of the ticked channels."""
        items = (self.channels_list.item(i) for i in range(self.channels_list.count()))
        return [i.data(Qt.ItemDataRole.UserRole) for i in items if i.checkState() == Qt.CheckState.Checked]

    def pipeline_config(self):
        """Build the run's configuration: the stages file if given, else one stage from the form."""
        import dataclasses

        from napari_hematology.core.cytometry import load_pipeline_config, single_stage_config

        preprocessing = {
            "channels": self.checked_channels() or None,
            "transform": self.transform_combo.currentText(),
            "cofactor": self.cofactor_spin.value(),
            "compensate": self.compensate_combo.currentIndex() == 0,
        }
        if self.stages_edit.text().strip():
            config = load_pipeline_config(self.stages_edit.text().strip())
            return dataclasses.replace(
                config,
                **{k: v for k, v in preprocessing.items() if k != "channels" or config.channels is None},
            )
        epochs = self.epochs_spin.value()
        return single_stage_config(
            clusters=self.clusters_spin.value(),
            method=self.method_combo.currentText(),
            settings={"epochs": epochs, "pretrain_epochs": epochs},
            **preprocessing,
        )

    def run(self) -> None:
        """Train the stages on the loaded files in the background."""
        from napari_hematology.core.cytometry import run_pipeline

        if not self.paths:
            show_info("Add FCS files first (Add FCS files…).")
            return
        try:
            config = self.pipeline_config()
        except HematologyError as error:
            report_error(error)
            return
        reference = self.reference_edit.text().strip() or None
        self.runner.start(run_pipeline, self.paths, config, reference, on_done=self.show_result)

    def show_result(self, result) -> None:
        """Fill the view choices, the proportions table and chart, and show the first scatter."""
        from napari_hematology.core.cytometry import proportions_table

        self.result = result
        _refill(self.file_combo, [s.name for s in result.samples])
        _refill(self.stage_combo, [s.stage.name for s in result.stages])
        axes = [LATENT] + list(result.config.channels)
        _refill(self.x_combo, axes)
        _refill(self.y_combo, axes)
        table = proportions_table(result)
        self._show_table(table)
        first_stage = [c for c in table.columns if c.startswith("prop_")][: result.stages[0].stage.clusters]
        self.chart.set_proportions(table["file"].tolist(), table[first_stage].to_numpy())
        self.show_scatter()

    def show_scatter(self) -> None:
        """Add (or replace) a Points layer of the chosen file, coloured by population, with features."""
        from napari_hematology.core.cytometry import cell_table, scatter_coordinates

        if self.result is None:
            show_info("Run the clustering first (Run).")
            return
        file_index, stage_index = self.file_combo.currentIndex(), self.stage_combo.currentIndex()
        x_axis, y_axis = self.x_combo.currentText(), self.y_combo.currentText()
        channels = None if LATENT in (x_axis, y_axis) else (x_axis, y_axis)
        try:
            coordinates, names = scatter_coordinates(self.result, file_index, stage_index, channels)
        except HematologyError as error:
            report_error(error)
            return
        features = cell_table(self.result, file_index)
        seen = np.isfinite(coordinates).all(axis=1)
        colour_by = "cluster" if "cluster" in features.columns else self.stage_combo.currentText()
        features = features[seen].reset_index(drop=True)
        features[colour_by] = features[colour_by].astype(str)
        name = f"{self.result.samples[file_index].stem} {names[0]} vs {names[1]}"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        span = float(np.nanstd(coordinates)) or 1.0
        self.viewer.add_points(
            coordinates[seen][:, ::-1],
            features=features,
            face_color=colour_by,
            size=POINT_SIZE * span,
            border_width=0,
            name=name,
        )

    def _show_table(self, table) -> None:
        self.table.setRowCount(len(table))
        self.table.setColumnCount(len(table.columns))
        self.table.setHorizontalHeaderLabels([str(c) for c in table.columns])
        for row, values in enumerate(table.itertuples(index=False)):
            for column, value in enumerate(values):
                text = f"{value:.3f}" if isinstance(value, float) else str(value)
                self.table.setItem(row, column, QTableWidgetItem(text))


class ProportionChart(QWidget):
    """Stacked horizontal bars: one bar per file, one colour per population of the first stage."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.rows: list[tuple[str, list[float]]] = []
        self.setMinimumHeight(120)

    def set_proportions(self, files: list[str], proportions: np.ndarray) -> None:
        """Show one row of population fractions per file."""
        self.rows = [
            (str(f), [float(v) for v in values]) for f, values in zip(files, proportions, strict=False)
        ]
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt API)
        """Draw the bars."""
        if not self.rows:
            return
        painter = QPainter(self)
        height = self.height() / len(self.rows)
        for row, (_name, values) in enumerate(self.rows):
            left = 0.0
            for k, value in enumerate(values):
                width = value * self.width()
                painter.fillRect(
                    QRectF(left, row * height + 1, width, height - 2), QColor(PALETTE[k % len(PALETTE)])
                )
                left += width
        painter.end()


def _spin(low: int, high: int, value: int) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    return spin


def _double_spin(low: float, high: float, value: float) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    return spin


def _refill(combo: QComboBox, items: list[str]) -> None:
    combo.clear()
    combo.addItems(items)
