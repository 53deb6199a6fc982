"""What a user installs: the npe2 manifest, the built wheel's files and metadata, and the real-data rule."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import packages_distributions

import pytest
from conftest import REPO_ROOT, require_shared_data, require_shipped_weights

PACKAGE_DIR = REPO_ROOT / "src" / "napari_hematology"


def test_top_level_manifest_is_the_packaged_one_and_valid():
    from npe2 import PluginManifest

    top_level = REPO_ROOT / "napari.yaml"
    assert top_level.is_symlink() and top_level.resolve() == (PACKAGE_DIR / "napari.yaml").resolve()
    manifest = PluginManifest.from_file(top_level)
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert manifest.name == project["name"]
    assert project["entry-points"]["napari.manifest"] == {manifest.name: "napari_hematology:napari.yaml"}


def _canonical(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _imported_top_level_modules(folder=PACKAGE_DIR) -> set[str]:
    modules = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.partition(".")[0])
    return modules - set(sys.stdlib_module_names) - {"napari_hematology"}


def test_every_imported_package_is_a_declared_dependency():
    declared = {_canonical(r) for r in tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
                ["dependencies"]}
    distributions = packages_distributions()
    undeclared = {
        module: distributions.get(module)
        for module in _imported_top_level_modules()
        if not declared & {_canonical(d) for d in distributions.get(module, [module])}
    }
    assert not undeclared


# napari_lazy_openslide: tried by bench_whole_slide.py when importable, not declared: it needs zarr 2 (this
# package needs zarr 3); test_gui_stalls: the repository's own tests/ module, which bench_gui_stalls.py runs
UNDECLARED_BENCHMARK_IMPORTS = {"napari_lazy_openslide", "test_gui_stalls"}


def test_every_package_a_benchmark_imports_is_declared_or_a_benchmark_extra():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]["benchmarks"]
    declared = {_canonical(r) for r in project["dependencies"] + extras}
    benchmarks = REPO_ROOT / "benchmarks"
    local = {path.stem for path in benchmarks.glob("*.py")}
    distributions = packages_distributions()
    imported = _imported_top_level_modules(benchmarks) - local - UNDECLARED_BENCHMARK_IMPORTS
    # a module of a package that is not installed here is named after its distribution (napari_wsi)
    undeclared = {
        module for module in imported
        if not declared & {_canonical(d) for d in distributions.get(module, [module.replace("_", "-")])}
    }
    assert {"matplotlib", "psutil", "flowsom", "napari_wsi"} <= imported
    assert not undeclared


def test_missing_data_skips_locally_and_fails_in_ci(tmp_path, monkeypatch):
    absent = tmp_path / "absent"
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="NAPARI_HEMATOLOGY_DATA"):
        require_shared_data(absent)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="real data not found at .*absent"):
        require_shared_data(absent)
    assert require_shared_data(tmp_path) == tmp_path


def test_missing_weights_skip_locally_and_fail_in_ci(tmp_path, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="weights not built"):
        require_shipped_weights(tmp_path)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="weights not built.*CI must have them"):
        require_shipped_weights(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    assert require_shipped_weights(tmp_path) == tmp_path


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel built, without network, from a copy of the sources (the checkout stays untouched)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO_ROOT / name, source)
    shutil.copytree(PACKAGE_DIR, source / "src" / "napari_hematology",
                    ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
         str(source)],
        check=True,
    )
    (path,) = out.glob("napari_hematology-*.whl")
    return zipfile.ZipFile(path)


def _metadata_lines(wheel: zipfile.ZipFile, name: str) -> list[str]:
    (path,) = [n for n in wheel.namelist() if n.endswith(f".dist-info/{name}")]
    return wheel.read(path).decode().splitlines()


@pytest.mark.slow
def test_wheel_ships_license_manifest_weights_and_samples(wheel):
    names = set(wheel.namelist())
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    weights = "napari_hematology/weights/cell_classifier/"
    expected = {"napari_hematology/napari.yaml", f"{weights}MODEL_CARD.md", f"{weights}config.json",
                f"{weights}model.safetensors", "napari_hematology/sample_images/ATTRIBUTION.md"}
    assert expected <= names
    for folder in ("fields", "cells"):
        shipped = {n for n in names if n.startswith(f"napari_hematology/sample_images/{folder}/")}
        assert len(shipped) == len(list((PACKAGE_DIR / "sample_images" / folder).glob("*.jpg"))) > 0


@pytest.mark.slow
def test_wheel_metadata_is_a_headless_napari_plugin(wheel):
    metadata = _metadata_lines(wheel, "METADATA")
    assert "Classifier: Framework :: napari" in metadata
    assert "License-Expression: BSD-3-Clause" in metadata
    prefix = "Requires-Dist: "
    requirements = [line.removeprefix(prefix) for line in metadata if line.startswith(prefix)]
    qt_bindings = ("pyqt", "pyside")
    base = [r for r in requirements if "extra ==" not in r]
    assert not [r for r in base if r.lower().startswith(qt_bindings)]  # the CLI installs without Qt
    gui = [r for r in requirements if 'extra == "all"' in r]
    assert [r for r in gui if r.lower().startswith(qt_bindings)]
    entry_points = _metadata_lines(wheel, "entry_points.txt")
    assert "napari-hematology = napari_hematology:napari.yaml" in entry_points
    assert "napari-hematology = napari_hematology.cli:main" in entry_points
