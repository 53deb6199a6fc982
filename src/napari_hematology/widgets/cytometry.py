"""The Cytometry widget: cluster FCS files with IDEC / VaDE (or staged), view, name and export the clusters.

Each file's preprocessing (compensation, transform) is decided from its values and shown; the populations
of a run are listed with their colour, share and marked channels, and their names can be edited there.
The chosen file's events are plotted in the dock (``_plot``): a scatter on two channels, in their scale,
or on the latent space's principal components, and a bar chart of the populations' shares. Names and
colours (``_palette``) are the same in the plots, the populations table and every export.
"""

from __future__ import annotations

from pathlib import Path

import napari
import numpy as np
from napari.utils.notifications import show_info
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from napari_hematology.core.errors import HematologyError
from napari_hematology.widgets._keys import OPEN, RUN, SAVE, bind_button_keys, shortcut_button
from napari_hematology.widgets._layout import (
    combo_box,
    double_spin_box,
    fit_names,
    form_layout,
    note,
    read_only_item,
    refill,
    scrolling_layout,
    spin_box,
)
from napari_hematology.widgets._palette import category_colours
from napari_hematology.widgets._plot import (
    MAX_POINTS,
    PlotArea,
    bars_height,
    category_scatter,
    scatter_height,
    share_bars,
)
from napari_hematology.widgets._runner import TaskRunner, report_error

LATENT = "latent space"
# "auto" and core.cytometry.fcs.TRANSFORMS, written here so the dock opens without importing the
# cytometry package (pandas, FCS readers); tests/test_cytometry_widget.py checks that they agree
TRANSFORM_CHOICES = ("auto", "arcsinh", "logicle", "none")
COMPENSATION_CHOICES = {"auto": "auto", "apply spillover matrix": True, "do not compensate": False}
AUTO_COFACTOR = 0.0
AUTO_CLUSTERS = 1  # the clusters spin box's lowest value, shown as "auto": the data choose
# Model choices: True trains one pooled model, False one per file (warm-started from one autoencoder).
MODEL_CHOICES = {"one for all files": True, "one per file": False}
POPULATION_COLUMNS = ("", "name", "share", "high", "low")
NAME_COLUMN = 1
FCS_FOLDER = "fcs"
H5AD_FILE = "events.h5ad"



def _read_batch(paths: list[Path], **callbacks):
    """Read FCS files as one batch in the runner's worker (the cytometry package is imported there too)."""
    from napari_hematology.core.cytometry import read_batch

    return read_batch(paths, **callbacks)

class CytometryWidget(QWidget):
    """Load FCS files, choose channels and preprocessing, run one stage or a stages file, show and name."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.paths: list[Path] = []
        self.batch = None
        self.result = None
        self.files_list = QListWidget()
        self.add_button = shortcut_button("Add FCS files…", OPEN, self._browse)
        self.clear_button = shortcut_button("Clear", None, self.clear_files)
        self.channels_list = QListWidget()
        self.transform_combo = combo_box(TRANSFORM_CHOICES)
        self.cofactor_spin = double_spin_box(AUTO_COFACTOR, 10000.0, AUTO_COFACTOR)
        self.cofactor_spin.setSpecialValueText("auto")  # short: the spin box is narrow at 1280x800
        self.cofactor_spin.setToolTip("auto: 5 for mass cytometry, 150 for flow cytometry")
        self.compensate_combo = combo_box(COMPENSATION_CHOICES)
        self.preprocessing_text = QPlainTextEdit()
        self.preprocessing_text.setReadOnly(True)
        self.method_combo = combo_box(("idec", "vade"))
        self.clusters_spin = spin_box(AUTO_CLUSTERS, 50, AUTO_CLUSTERS)
        self.clusters_spin.setSpecialValueText("auto")
        self.clusters_spin.setToolTip("auto: the number of populations is chosen from the data")
        self.count_label = note("")
        self.epochs_spin = spin_box(1, 500, 15)
        self.models_combo = combo_box(MODEL_CHOICES)
        self.models_combo.setToolTip(
            "one per file: each file gets its own populations; the autoencoder is pretrained once on "
            "all files' events and every file's model starts from it (a stages file sets its own)"
        )
        self.stages_edit = QLineEdit()
        self.stages_edit.setPlaceholderText("optional stages .yaml (overrides method and clusters)")
        self.reference_edit = QLineEdit()
        self.reference_edit.setPlaceholderText("optional reference .csv: file,population,fraction")
        self.run_button = shortcut_button("Run", RUN, self.run)
        self.file_combo = fit_names(QComboBox())
        self.stage_combo = fit_names(QComboBox())
        self.x_combo = fit_names(QComboBox())
        self.y_combo = fit_names(QComboBox())
        self.scatter_plot = PlotArea()
        self.shares_plot = PlotArea()
        self.populations = QTableWidget()
        self.table = QTableWidget()
        self.save_button = shortcut_button("Save results…", SAVE, self._browse_save)
        self.runner = TaskRunner(self)
        self._build_layout()
        self._connect()
        bind_button_keys(self)

    def _build_layout(self) -> None:
        file_row = QHBoxLayout()
        file_row.addWidget(self.add_button)
        file_row.addWidget(self.clear_button)
        form = form_layout()
        form.addRow("Channels", self.channels_list)
        form.addRow("Transform", self.transform_combo)
        form.addRow("Arcsinh cofactor", self.cofactor_spin)
        form.addRow("Compensation", self.compensate_combo)
        form.addRow("Preprocessing", self.preprocessing_text)
        form.addRow("Method", self.method_combo)
        form.addRow("Clusters", self.clusters_spin)
        form.addRow("Epochs", self.epochs_spin)
        form.addRow("Models", self.models_combo)
        form.addRow("Stages", self.stages_edit)
        form.addRow("Reference", self.reference_edit)
        view = form_layout()
        view.addRow("File", self.file_combo)
        view.addRow("Stage", self.stage_combo)
        view.addRow("X", self.x_combo)
        view.addRow("Y", self.y_combo)
        layout = scrolling_layout(self)
        layout.addWidget(self.files_list)
        layout.addLayout(file_row)
        layout.addLayout(form)
        layout.addWidget(self.run_button)
        layout.addWidget(self.runner)
        layout.addLayout(view)
        layout.addWidget(self.scatter_plot)
        layout.addWidget(self.shares_plot)
        layout.addWidget(note("Populations: double-click a name to edit it"))
        layout.addWidget(self.count_label)
        layout.addWidget(self.populations)
        layout.addWidget(QLabel("Proportions per file"))
        layout.addWidget(self.table)
        layout.addWidget(self.save_button)

    def _connect(self) -> None:
        for combo in (self.transform_combo, self.compensate_combo):
            combo.currentIndexChanged.connect(self.show_preprocessing)
        self.cofactor_spin.valueChanged.connect(self.show_preprocessing)
        self.channels_list.itemChanged.connect(self.show_preprocessing)
        self.stage_combo.currentIndexChanged.connect(self._show_stage)
        for combo in (self.file_combo, self.x_combo, self.y_combo):
            combo.currentIndexChanged.connect(self.show_plots)
        self.populations.itemChanged.connect(self._population_renamed)

    def _browse(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Open FCS files", "", "FCS files (*.fcs *.lmd)")
        if paths:
            self.load_files(self.paths + [Path(p) for p in paths])

    def clear_files(self) -> None:
        """Forget the loaded files and results."""
        self.paths = []
        self.batch = None
        self.result = None
        self.files_list.clear()
        self.channels_list.clear()
        self.preprocessing_text.clear()
        self.scatter_plot.clear()
        self.shares_plot.clear()

    def load_files(self, paths: list[str | Path]) -> None:
        """Read the files in the background, then offer their shared channels (marker channels ticked)."""
        self.runner.start(_read_batch, [Path(p) for p in paths], on_done=self._show_batch)

    def _show_batch(self, batch) -> None:
        self.batch = batch
        self.paths = list(dict.fromkeys(s.path for s in batch.samples))
        self.files_list.clear()
        self.files_list.addItems([f"{s.name} ({len(s.events)} events)" for s in batch.samples])
        self.channels_list.blockSignals(True)
        self.channels_list.clear()
        first = batch.samples[0]
        for name, shown in zip(first.names, first.display_names(), strict=False):
            item = QListWidgetItem(shown)
            item.setData(Qt.ItemDataRole.UserRole, name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            ticked = name in batch.channels
            item.setCheckState(Qt.CheckState.Checked if ticked else Qt.CheckState.Unchecked)
            self.channels_list.addItem(item)
        self.channels_list.blockSignals(False)
        self.show_preprocessing()

    def checked_channels(self) -> list[str]:
        """Detector names of the ticked channels."""
        items = (self.channels_list.item(i) for i in range(self.channels_list.count()))
        return [i.data(Qt.ItemDataRole.UserRole) for i in items if i.checkState() == Qt.CheckState.Checked]

    def preprocessing_choices(self) -> dict:
        """Transform, compensation and cofactor as chosen (``auto`` / None where left to each file)."""
        cofactor = self.cofactor_spin.value()
        return {
            "transform": self.transform_combo.currentText(),
            "compensate": COMPENSATION_CHOICES[self.compensate_combo.currentText()],
            "cofactor": None if cofactor == AUTO_COFACTOR else cofactor,
        }

    def show_preprocessing(self, *_) -> None:
        """Show, per loaded file, what its values are and what the run will do to them."""
        import dataclasses

        from napari_hematology.core.cytometry import decide_batch_preprocessing, single_stage_config

        channels = self.checked_channels()
        if self.batch is None or not channels:
            self.preprocessing_text.setPlainText("")
            return
        config = single_stage_config(channels=channels, **self.preprocessing_choices())
        try:
            batch = decide_batch_preprocessing(dataclasses.replace(self.batch, channels=channels), config)
        except HematologyError as error:
            self.preprocessing_text.setPlainText(str(error))
            return
        self._write_preprocessing(batch)

    def _write_preprocessing(self, batch) -> None:
        lines = [f"warning: {w}" for w in batch.warnings]
        for sample, decision in zip(batch.samples, batch.preprocessing, strict=True):
            lines.append(f"{sample.name}: {decision.summary()}")
            lines += [f"  note: {note}" for note in sample.notes]
            lines += [f"  warning: {warning}" for warning in decision.warnings]
        self.preprocessing_text.setPlainText("\n".join(lines))

    def pipeline_config(self):
        """Build the run's configuration: the stages file if given, else one stage from the form.

        Raises:
            InputError: The stages file is missing or invalid.

        """
        import dataclasses

        from napari_hematology.core.cytometry import load_pipeline_config, single_stage_config

        channels = self.checked_channels() or None
        if self.stages_edit.text().strip():
            config = load_pipeline_config(self.stages_edit.text().strip())
            chosen = {k: v for k, v in self.preprocessing_choices().items() if v not in ("auto", None)}
            return dataclasses.replace(config, channels=config.channels or channels, **chosen)
        epochs = self.epochs_spin.value()
        clusters = self.clusters_spin.value()
        return single_stage_config(
            clusters=None if clusters == AUTO_CLUSTERS else clusters,
            method=self.method_combo.currentText(),
            channels=channels,
            settings={"epochs": epochs, "pretrain_epochs": epochs},
            pooled=MODEL_CHOICES[self.models_combo.currentText()],
            **self.preprocessing_choices(),
        )

    def run(self) -> None:
        """Train the stages on the loaded files in the background."""
        from napari_hematology.core.cytometry import run_pipeline

        if not self.paths:
            show_info("Add FCS files first (Add FCS files…).")
            return
        try:
            config = self.pipeline_config()
            config.check()
        except HematologyError as error:
            report_error(error)
            return
        reference = self.reference_edit.text().strip() or None
        self.runner.start(run_pipeline, self.paths, config, reference, on_done=self.show_result)

    def show_result(self, result) -> None:
        """Fill the view choices, the populations, the proportions, and plot the first file."""
        self.result = result
        self._write_preprocessing(result.batch)
        refill(self.file_combo, [s.name for s in result.samples])
        first = result.samples[0]
        channels = result.config.all_channels()
        shown = dict(zip(first.names, first.display_names(), strict=True))
        for combo in (self.x_combo, self.y_combo):
            refill(combo, [LATENT] + [shown.get(c, c) for c in channels], [None, *channels])
        refill(self.stage_combo, [s.stage.name for s in result.stages])
        self._show_stage()

    def _show_stage(self, *_) -> None:
        from napari_hematology.core.cytometry import proportions_table

        if self.result is None or self.stage_combo.currentIndex() < 0:
            return
        self.count_label.setText(self.cluster_count_text())
        self._show_populations()
        self._show_table(proportions_table(self.result))
        self.show_plots()

    def cluster_count_text(self) -> str:
        """The chosen stage's number of clusters, how it was chosen, and how its populations were named."""
        from napari_hematology.core.cytometry import populations_summary

        index = self.stage_combo.currentIndex()
        stage = self.result.stages[index]
        named = f"; named by {stage.naming.table}" if stage.naming is not None else ""
        return populations_summary(self.result)[index].split("; populations:")[0] + named

    def stage_colours(self) -> dict[str, str]:
        """``{population: "#rrggbb"}`` of the chosen stage, the same in the plots and the table."""
        stage = self.result.stages[self.stage_combo.currentIndex()].stage
        return category_colours(stage.population_names)

    def _show_populations(self) -> None:
        from napari_hematology.core.cytometry import marker_table

        stage_name = self.stage_combo.currentText()
        markers = marker_table(self.result)
        markers = markers[markers["stage"] == stage_name].groupby("population", sort=False).first()
        colours = self.stage_colours()
        self.populations.blockSignals(True)
        self.populations.clear()
        self.populations.setColumnCount(len(POPULATION_COLUMNS))
        self.populations.setHorizontalHeaderLabels(list(POPULATION_COLUMNS))
        self.populations.setRowCount(len(colours))
        for row, (name, colour) in enumerate(colours.items()):
            swatch = read_only_item("")
            swatch.setBackground(QColor(colour))
            found = name in markers.index
            cells = [
                swatch,
                QTableWidgetItem(name),
                read_only_item(f"{markers.loc[name, 'fraction']:.1%}" if found else "0%"),
                read_only_item(markers.loc[name, "high"] if found else ""),
                read_only_item(markers.loc[name, "low"] if found else ""),
            ]
            for column, cell in enumerate(cells):
                self.populations.setItem(row, column, cell)
        self.populations.resizeColumnsToContents()
        self.populations.blockSignals(False)

    def population_names(self) -> list[str]:
        """The names in the populations table, in cluster order."""
        return [self.populations.item(row, NAME_COLUMN).text() for row in range(self.populations.rowCount())]

    def _population_renamed(self, item: QTableWidgetItem) -> None:
        if item.column() != NAME_COLUMN or self.result is None:
            return
        self.rename_populations(self.population_names())

    def rename_populations(self, names: list[str]) -> bool:
        """Name the chosen stage's populations; the plots, tables and exports then use the names."""
        try:
            self.result.rename(self.stage_combo.currentText(), names)
        except HematologyError as error:
            report_error(error)
            self._show_populations()
            return False
        self._show_stage()
        return True

    def show_plots(self, *_) -> None:
        """Plot the chosen file's events and population shares, for the chosen stage and axes."""
        if self.result is None or min(self.file_combo.currentIndex(), self.stage_combo.currentIndex()) < 0:
            return
        self._plot_scatter(self.file_combo.currentIndex(), self.stage_combo.currentIndex())
        self._plot_shares(self.file_combo.currentIndex(), self.stage_combo.currentIndex())

    def _plot_scatter(self, file_index: int, stage_index: int) -> None:
        """The events the stage saw, coloured by population, on the chosen channels or the latent space.

        The coordinates (for the latent space, the model's embedding and its principal axes) are computed
        with the figure in the drawing thread, not in napari's.
        """
        from napari_hematology.core.cytometry import cell_table, scatter_coordinates

        x_axis, y_axis = self.x_combo.currentData(), self.y_combo.currentData()
        channels = None if None in (x_axis, y_axis) else (x_axis, y_axis)
        result, stage_name, colours = self.result, self.stage_combo.currentText(), self.stage_colours()
        channel_labels = None if channels is None else self._channel_labels(file_index, channels)
        laid_out: dict = {}  # computed once, by the first drawing; redrawing for a new width reuses it

        def lay_out() -> dict:
            coordinates, names = scatter_coordinates(result, file_index, stage_index, channels)
            events = cell_table(result, file_index)
            populations = events["cluster" if "cluster" in events.columns else stage_name].to_numpy()
            seen = np.isfinite(coordinates).all(axis=1)
            title = f"{result.samples[file_index].name}: {int(seen.sum()):,} events"
            if seen.sum() > MAX_POINTS:
                title += f", {MAX_POINTS:,} drawn at random"
            return {"points": coordinates[seen], "categories": populations[seen], "title": title,
                    "axes": channel_labels or names}

        def draw(figure) -> int:
            if not laid_out:
                laid_out.update(lay_out())
            x, y = laid_out["axes"]
            category_scatter(figure, laid_out["points"], laid_out["categories"], colours,
                             title=laid_out["title"], x=x, y=y)
            return scatter_height(len(colours))

        self.scatter_plot.plot(draw)

    def _channel_labels(self, file_index: int, channels: tuple[str, str]) -> list[str]:
        """The scatter's axis labels for two channels: each channel as listed, and its scale."""
        from napari_hematology.core.cytometry.scales import value_scale

        sample, preprocessing = self.result.samples[file_index], self.result.batch.preprocessing[file_index]
        return [
            f"{combo.currentText()}, {value_scale(sample, channel, preprocessing)}"
            for combo, channel in zip((self.x_combo, self.y_combo), channels, strict=True)
        ]

    def _plot_shares(self, file_index: int, stage_index: int) -> None:
        """One bar per population of the stage: its percent of the file's events (of its parent's)."""
        from napari_hematology.core.cytometry import sample_proportions

        stage = self.result.stages[stage_index]
        colours = self.stage_colours()
        fractions = sample_proportions(stage.probabilities[file_index])
        parent = stage.stage.parent_population
        populations = "Populations" if len(self.result.stages) == 1 else f"{stage.stage.name} populations"
        shares = dict(zip(colours, 100 * fractions, strict=True))
        title = f"{populations} in {self.result.samples[file_index].name}"
        x = f"% of {parent} events" if parent else "% of events"

        def draw(figure) -> int:
            share_bars(figure, shares, colours, title=title, x=x, y="population")
            return bars_height(len(colours))

        self.shares_plot.plot(draw)

    def _show_table(self, table) -> None:
        self.table.setRowCount(len(table))
        self.table.setColumnCount(len(table.columns))
        self.table.setHorizontalHeaderLabels([str(c) for c in table.columns])
        for row, values in enumerate(table.itertuples(index=False)):
            for column, value in enumerate(values):
                text = f"{value:.3f}" if isinstance(value, float) else str(value)
                self.table.setItem(row, column, QTableWidgetItem(text))

    def _browse_save(self) -> None:
        if self.result is None:
            show_info("Run the clustering first (Run).")
            return
        folder = QFileDialog.getExistingDirectory(self, "Save results into folder")
        if folder:
            self.save_results(folder)

    def save_results(self, folder: str | Path) -> list[Path]:
        """Write the tables, each file again as FCS with its populations, and one ``.h5ad`` file.

        Returns:
            The written paths.

        """
        from napari_hematology.core.cytometry import write_anndata, write_fcs_outputs, write_outputs

        folder = Path(folder)
        try:
            written = write_outputs(self.result, folder)
            written += write_fcs_outputs(self.result, folder / FCS_FOLDER)
            written.append(write_anndata(self.result, folder / H5AD_FILE))
        except (HematologyError, OSError) as error:
            report_error(error)
            return []
        show_info(f"Saved {len(written)} files to {folder}.")
        return written
