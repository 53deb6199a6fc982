import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_hematology.core.errors import InputError
from napari_hematology.core.io import (
    list_images,
    read_ahead,
    read_image,
    read_labels,
    read_table,
    to_rgb8,
    write_labels,
    write_table,
)


def test_read_sample_jpeg_gives_the_decoded_rgb_pixels(sample_field_path):
    from PIL import Image

    image = read_image(sample_field_path)
    assert image.data.dtype == np.uint8 and not image.is_multiscale
    with Image.open(sample_field_path) as decoded:
        np.testing.assert_array_equal(image.data, np.asarray(decoded.convert("RGB")))


def test_small_tiff_is_read_eagerly(tmp_path, sample_field):
    path = tmp_path / "field.tif"
    tifffile.imwrite(path, sample_field, photometric="rgb")
    image = read_image(path)
    assert isinstance(image.data, np.ndarray)
    np.testing.assert_array_equal(image.data, sample_field)


def test_pyramidal_ome_tiff_is_lazy_and_multiscale(tmp_path, sample_field):
    path = tmp_path / "slide.ome.tif"
    base = np.tile(sample_field, (2, 2, 1))
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(base, subifds=1, tile=(256, 256), photometric="rgb")
        tif.write(base[::2, ::2], subfiletype=1, tile=(256, 256), photometric="rgb")
    image = read_image(path)
    assert image.is_multiscale
    assert image.levels[0].shape == base.shape
    assert image.levels[1].shape == base[::2, ::2].shape
    assert not isinstance(image.data, np.ndarray)  # dask: read tile by tile
    np.testing.assert_array_equal(np.asarray(image.data[100:150, 200:260]), base[100:150, 200:260])


def test_lazy_reading_can_be_forced(tmp_path, sample_field):
    path = tmp_path / "field.tif"
    tifffile.imwrite(path, sample_field, photometric="rgb", tile=(128, 128))
    image = read_image(path, lazy=True)
    assert hasattr(image.data, "compute")
    np.testing.assert_array_equal(image.data.compute(), sample_field)


def test_truncated_file_gives_clear_error(tmp_path, sample_field_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(sample_field_path.read_bytes()[:200])
    with pytest.raises(InputError, match="corrupt, truncated"):
        read_image(broken)


def test_text_file_named_tiff_gives_clear_error(tmp_path):
    fake = tmp_path / "fake.tif"
    fake.write_text("not an image")
    with pytest.raises(InputError, match="cannot be read"):
        read_image(fake)


def _png_with_a_broken_chunk(path, image: np.ndarray):
    """A PNG whose second image-data chunk has a garbled type: Pillow raises SyntaxError loading it."""
    import io
    import struct
    import zlib

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    png = buffer.getvalue()
    start = png.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", png[start : start + 4])
    data, half = png[start + 8 : start + 8 + length], length // 2
    crc = struct.pack(">I", zlib.crc32(b"IDAT" + data[:half]))
    first = struct.pack(">I", half) + b"IDAT" + data[:half] + crc
    garbled = struct.pack(">I", length - half) + b"\x01\x02\x03\x04" + data[half:] + b"\0\0\0\0"
    path.write_bytes(png[:start] + first + garbled + png[start + 12 + length :])
    return path


def _tiff_with_damaged_pixels(path, image: np.ndarray):
    """A deflate-compressed TIFF whose pixel data starts with a broken zlib header."""
    tifffile.imwrite(path, image, compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages.first.dataoffsets[0]
    data = bytearray(path.read_bytes())
    data[offset : offset + 2] = b"\xff\xff"
    path.write_bytes(bytes(data))
    return path


def test_each_reader_s_errors_on_a_damaged_file_give_one_clear_message(tmp_path, sample_field_path,
                                                                       sample_field):
    damaged = {
        "UnidentifiedImageError": tmp_path / "garbage.jpg",
        "OSError: image file is truncated": tmp_path / "half.jpg",
        "SyntaxError": _png_with_a_broken_chunk(tmp_path / "chunk.png", sample_field[:64, :64]),
        "DeflateError": _tiff_with_damaged_pixels(tmp_path / "pixels.tif", sample_field[:64, :64]),
    }
    damaged["UnidentifiedImageError"].write_bytes(b"\xff\xd8" + bytes(range(256)) * 4)
    whole = sample_field_path.read_bytes()
    damaged["OSError: image file is truncated"].write_bytes(whole[: len(whole) // 2])
    for reason, path in damaged.items():
        with pytest.raises(InputError, match=rf"{path.name}: cannot be read \({reason}.*corrupt, truncated"):
            read_image(path)


def test_a_picture_too_large_for_pillow_says_so(sample_field_path, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(InputError, match="exceeds limit.*Pillow opens no picture this large; save .* TIFF"):
        read_image(sample_field_path)


def test_a_programming_error_while_reading_is_not_called_a_damaged_file(tmp_path, sample_field_path,
                                                                        sample_field, monkeypatch):
    from PIL import Image

    from napari_hematology.core.whole_slide import formats

    def bug(*args, **kwargs):
        raise AttributeError("a bug, not a damaged file")

    tiff = tmp_path / "field.tif"
    tifffile.imwrite(tiff, sample_field)
    monkeypatch.setattr(Image, "open", bug)
    monkeypatch.setattr(formats, "tiff_pixel_size", bug)
    for path in (sample_field_path, tiff):
        with pytest.raises(AttributeError, match="a bug"):
            read_image(path)


def test_unsupported_format_and_missing_file(tmp_path):
    other = tmp_path / "cells.gif"
    other.write_bytes(b"GIF89a")
    with pytest.raises(InputError, match="unsupported format"):
        read_image(other)
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "absent.png")


def test_to_rgb8_accepts_rgb_unchanged(sample_field):
    rgb, notes = to_rgb8(sample_field)
    assert rgb.dtype == np.uint8 and notes == []
    np.testing.assert_array_equal(rgb, sample_field)


def test_to_rgb8_rescales_16_bit(sample_field):
    rgb, notes = to_rgb8(sample_field.astype(np.uint16) * 257)
    assert rgb.dtype == np.uint8
    assert np.abs(rgb.astype(int) - sample_field).max() <= 1
    assert any("rescaled" in note for note in notes)


def test_to_rgb8_drops_alpha(sample_field):
    rgba = np.dstack([sample_field, np.full(sample_field.shape[:2], 255, np.uint8)])
    rgb, notes = to_rgb8(rgba)
    assert rgb.shape == sample_field.shape
    assert any("alpha" in note for note in notes)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((64, 64), np.uint8) + np.arange(64, dtype=np.uint8), "grayscale"),
        (np.zeros((1, 1, 3), np.uint8), "at least"),
        (np.full((64, 64, 3), 255, np.uint8), "blank"),
        (np.zeros((4, 64, 64, 3), np.uint8), "shape"),
    ],
)
def test_to_rgb8_refuses_unusable_images(array, message):
    with pytest.raises(InputError, match=message):
        to_rgb8(array)


def test_labels_round_trip(tmp_path):
    labels = np.zeros((50, 60), np.int32)
    labels[5:10, 5:10] = 1
    labels[20:30, 40:50] = 300
    path = write_labels(tmp_path / "out" / "labels.tif", labels)
    back = read_labels(path)
    np.testing.assert_array_equal(back, labels)
    assert back.dtype == np.uint16


def test_write_labels_refuses_floats(tmp_path):
    with pytest.raises(InputError, match="integers"):
        write_labels(tmp_path / "x.tif", np.zeros((4, 4), np.float32))


def test_table_round_trip_and_required_columns(tmp_path):
    table = pd.DataFrame({"cell_id": [1, 2], "blast_probability": [0.1, 0.9]})
    path = write_table(tmp_path / "cells.csv", table)
    pd.testing.assert_frame_equal(read_table(path, ["cell_id"]), table)
    with pytest.raises(InputError, match="lacks column"):
        read_table(path, ["cell_id", "label"])


def test_list_images_expands_folders(tmp_path, sample_field_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.jpg").write_bytes(sample_field_path.read_bytes())
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="No images"):
        list_images(tmp_path / "empty")
    with pytest.raises(InputError, match="no such file"):
        list_images(tmp_path / "absent")


def test_plain_images_say_their_format_and_have_no_pixel_size(sample_field_path):
    image = read_image(sample_field_path)
    assert (image.format_name, image.reader) == ("JPEG", "Pillow")
    assert image.pixel_size_um is None and image.pixel_size_source is None


def test_scanner_slides_are_listed_with_the_images(tmp_path, sample_field):
    tifffile.imwrite(tmp_path / "scan.svs", sample_field, photometric="rgb")
    (tmp_path / "scan.czi").write_bytes(b"\x00")
    assert [p.name for p in list_images(tmp_path)] == ["scan.svs"]


def test_read_ahead_keeps_the_order_and_stops_reading_with_its_consumer():
    import threading

    image = np.arange(40 * 30).reshape(40, 30)
    windows = [(slice(y, y + 10), slice(x, x + 15)) for y in range(0, 40, 10) for x in (0, 15)]
    tiles = list(read_ahead(image, windows))
    assert len(tiles) == len(windows)
    for tile, window in zip(tiles, windows, strict=True):
        np.testing.assert_array_equal(tile, image[window])
    reader = read_ahead(image, windows)
    next(reader)
    reader.close()  # a consumer that stops early (cancel, enough cells) leaves no reading thread behind
    assert not [t for t in threading.enumerate() if t.name.startswith("tile-reader")]
    assert list(read_ahead(image, [])) == []
