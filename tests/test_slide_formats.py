"""Whole-slide formats: lazy multiscale reading (tifffile, OpenSlide), pixel sizes, clear refusals."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from slide_helpers import mosaic, write_ome_pyramid, write_svs

from napari_hematology.core.errors import InputError
from napari_hematology.core.io import IMAGE_SUFFIXES, is_image_path, list_images, read_image
from napari_hematology.core.whole_slide import formats as slide_formats


@pytest.fixture(scope="module")
def base() -> np.ndarray:
    return mosaic(1024, 1536)


def _jpeg_close(read: np.ndarray, original: np.ndarray) -> None:
    assert read.shape == original.shape
    assert np.abs(read.astype(int) - original.astype(int)).mean() < 3  # JPEG tiles


def test_ome_tiff_is_lazy_multiscale_with_its_physical_size(tmp_path, base):
    image = read_image(write_ome_pyramid(tmp_path / "slide.ome.tif", base, levels=3, pixel_size_um=0.25))
    assert image.format_name == "OME-TIFF" and image.reader == "tifffile"
    assert [level.shape[:2] for level in image.levels] == [(1024, 1536), (512, 768), (256, 384)]
    assert hasattr(image.data, "compute")
    assert image.pixel_size_um == pytest.approx(0.25) and image.pixel_size_source == "OME PhysicalSizeX"
    np.testing.assert_array_equal(np.asarray(image.data[300:400, 500:650]), base[300:400, 500:650])


def test_ome_physical_size_in_nanometres_is_converted(tmp_path, base):
    path = write_ome_pyramid(tmp_path / "nm.ome.tif", base, levels=2, pixel_size_um=250, unit="nm")
    image = read_image(path)
    assert image.pixel_size_um == pytest.approx(0.25)


@pytest.mark.parametrize("reader", ["tifffile", "openslide"])
def test_svs_opens_with_both_readers_and_the_aperio_mpp(tmp_path, base, reader):
    image = read_image(write_svs(tmp_path / "slide.svs", base, mpp=0.2525), reader=reader)
    assert image.reader == reader and image.format_name == "Aperio SVS"
    assert [level.shape[:2] for level in image.levels] == [(1024, 1536), (256, 384)]
    assert image.pixel_size_um == pytest.approx(0.2525)
    expected_source = "Aperio MPP" if reader == "tifffile" else "openslide.mpp-x"
    assert image.pixel_size_source == expected_source
    _jpeg_close(np.asarray(image.data[200:456, 700:1000]), base[200:456, 700:1000])
    _jpeg_close(np.asarray(image.levels[1]), base[::4, ::4])


def test_resolution_tags_give_the_pixel_size_but_72_dpi_does_not(tmp_path, base):
    microscope = tmp_path / "microscope.tif"
    tifffile.imwrite(microscope, base, photometric="rgb", tile=(256, 256), resolution=(20_000, 20_000),
                     resolutionunit="CENTIMETER")
    image = read_image(microscope)
    assert image.pixel_size_um == pytest.approx(0.5) and image.pixel_size_source == "TIFF resolution tags"
    photo = tmp_path / "photo.tif"
    tifffile.imwrite(photo, base, photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    image = read_image(photo)
    assert image.pixel_size_um is None and image.pixel_size_source is None
    assert any("no pixel size" in note for note in image.notes)


def test_openslide_reads_unscanned_areas_as_white_glass(tmp_path, base):
    image = read_image(write_svs(tmp_path / "slide.svs", base), reader="openslide")
    outside = np.asarray(image.data[-10:, -10:])
    assert outside.shape == (10, 10, 3) and outside.dtype == np.uint8


def test_tiles_tifffile_cannot_decode_go_through_openslide(tmp_path, base, monkeypatch):
    path = write_svs(tmp_path / "slide.svs", base)

    def undecodable(path, lazy):
        raise slide_formats._UndecodableTiles("JPEG needs imagecodecs")

    monkeypatch.setattr(slide_formats, "_open_tifffile", undecodable)
    assert read_image(path).reader == "openslide"
    monkeypatch.setattr(slide_formats, "_openslide_available", lambda: False)
    with pytest.raises(InputError, match="Aperio SVS slide use a compression .*imagecodecs.*openslide-bin"):
        read_image(path)


def test_openslide_formats_need_openslide_and_say_so(tmp_path, base, monkeypatch):
    mrxs = tmp_path / "slide.mrxs"
    mrxs.write_bytes(b"not really a slide")
    with pytest.raises(InputError, match="OpenSlide cannot open this 3DHistech MRXS slide.*folder of .dat"):
        read_image(mrxs)
    monkeypatch.setattr(slide_formats, "_openslide_available", lambda: False)
    with pytest.raises(InputError, match="3DHistech MRXS slides are read through OpenSlide.*pip install"):
        read_image(mrxs)


@pytest.mark.parametrize(("suffix", "name"), [(".czi", "Zeiss CZI"), (".vsi", "Olympus VSI")])
def test_formats_no_reader_opens_get_one_message_naming_the_format(tmp_path, suffix, name):
    path = tmp_path / f"slide{suffix}"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match=f"{name} slides cannot be read by tifffile or OpenSlide.*OME-TIFF"):
        read_image(path)


def test_scanner_suffixes_are_images_and_the_reader_declares_them_all():
    for name in ("a.svs", "a.NDPI", "a.scn", "a.bif", "a.mrxs", "a.dcm", "a.ome.tif"):
        assert is_image_path(name)
    manifest = yaml.safe_load((Path(slide_formats.__file__).parents[2] / "napari.yaml").read_text())
    patterns = manifest["contributions"]["readers"][0]["filename_patterns"]
    assert sorted(patterns) == sorted(f"*{suffix}" for suffix in IMAGE_SUFFIXES)


def test_a_dicom_slide_folder_is_listed_once(tmp_path, sample_field_path):
    dicom = tmp_path / "dicom_slide"
    dicom.mkdir()
    for level in range(3):
        (dicom / f"level{level}.dcm").write_bytes(b"DICM")
    (tmp_path / "field.jpg").write_bytes(sample_field_path.read_bytes())
    assert [path.name for path in list_images(tmp_path)] == ["level0.dcm", "field.jpg"]


def test_largest_series_is_the_slide(tmp_path, base):
    path = tmp_path / "overview_first.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(base[::8, ::8], photometric="rgb", metadata={})
        tif.write(base, photometric="rgb", tile=(256, 256), metadata={})
    image = read_image(path)
    assert image.data.shape == base.shape
