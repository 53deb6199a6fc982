"""FCS files as real instruments and writers make them: offsets, data sets, bit widths, names, bad files."""

from pathlib import Path

import flowio
import numpy as np
import pytest

from napari_hematology.core.cytometry.fcs import (
    channel_indices,
    list_fcs,
    read_fcs,
    read_fcs_data_sets,
    usable_channels,
)
from napari_hematology.core.errors import InputError

# Events x channels of every valid file in shared/data/cytometry/instruments (see its SOURCE.md).
INSTRUMENT_FILES = {
    "fcsparser_Cytek_xP5_Cytek_xP5.fcs": (23126, 8),
    "fcsparser_FACSCaliburHTS_Sample_Well_A02.fcs": (37395, 8),
    "fcsparser_Fortessa_FCS_3.0_Fortessa_PBS_Specimen_001_A1_A01.fcs": (11585, 11),
    "fcsparser_GuavaMuse_Guava_Muse.fcs": (108, 10),
    "fcsparser_HTS_BD_LSR-II_HTS_BD_LSR_II_Mixed_Specimen_001_D6_D06.fcs": (14945, 11),
    "fcsparser_MiltenyiBiotec_FCS2.0_EY_2013-07-19_PBS_FCS_2.0_Custom_Without_Add_Well_A1.001.fcs": (
        10000,
        16,
    ),
    "fcsparser_MiltenyiBiotec_FCS3.0_FCS3.0_Custom_Compatible.fcs": (10000, 16),
    "fcsparser_MiltenyiBiotec_FCS3.1_EY_2013-07-19_PBS_FCS_3.1_Custom_Add_Well_A1.001.fcs": (10000, 19),
    "fcsparser_MiltenyiBiotec_FCS3.1_EY_2013-07-19_PBS_FCS_3.1_Custom_Without_Add_Well_A1.001.fcs": (
        10000,
        19,
    ),
    "fcsparser_MiltenyiBiotec_FCS3.1_EY_2013-07-19_PBS_FCS_3.1_Well_A1.001.fcs": (10000, 19),
    "fcsparser_MiltenyiBiotec_FCS3.1_SG_2014-09-26_Duplicate_Names.fcs": (8129, 9),
    "fcsparser_cyflow_cube_8_cyflow_cube_8.fcs": (725, 10),
    "fcsparser_fake_bitmask_error_fcs1_cleaned.lmd": (50000, 7),
    "fcsparser_fake_large_fcs_fake_large_fcs.fcs": (11585, 11),
    "flowkit_gate_ref_data1.fcs": (13367, 8),
    "flowkit_index_sorted_index_sorted_example.fcs": (384, 13),
    # $TOT is 2 in both: TEXT's DATA span holds exactly 2 events of 54 bytes; HEADER's does not
    "flowkit_noncompliant_data_start_offset_discrepancy_example.fcs": (2, 26),
    "flowkit_noncompliant_data_stop_offset_discrepancy_example.fcs": (2, 26),
    "flowkit_simple_line_example_data_set_simple_line_100.fcs": (100, 2),
    "flowkit_test_comp_example.fcs": (10703, 18),
}


def write(path: Path, events: np.ndarray, names: list[str], metadata: dict | None = None) -> Path:
    with open(path, "wb") as handle:
        flowio.create_fcs(handle, events.astype(np.float32).ravel(), names, metadata_dict=metadata or {})
    return path


@pytest.fixture(scope="module")
def instruments(shared_data) -> Path:
    return shared_data / "cytometry" / "instruments"


@pytest.mark.data
@pytest.mark.parametrize("file_name", sorted(INSTRUMENT_FILES))
def test_every_valid_instrument_file_reads(instruments, file_name):
    sample = read_fcs(instruments / file_name)
    assert sample.events.shape == INSTRUMENT_FILES[file_name]
    assert len(sample.names) == len(set(sample.names)) == sample.events.shape[1]
    assert np.isfinite(sample.events).all()


@pytest.mark.data
@pytest.mark.parametrize("file_name", sorted(INSTRUMENT_FILES))
def test_every_event_and_channel_the_keywords_announce_is_read(instruments, file_name):
    for sample in read_fcs_data_sets(instruments / file_name):
        announced = (int(sample.keywords["tot"]), int(sample.keywords["par"]))
        assert sample.events.shape == announced
        assert len(sample.names) == len(sample.markers) == announced[1]


@pytest.mark.data
def test_bad_files_end_with_one_line_naming_the_problem(instruments):
    expected = {
        "fcsparser_corrupted_corrupted.fcs": r"it is 10 bytes long and does not start with an FCS header",
        "fcsparser_cytek-nl-2000_sample_header.fcs": r"its DATA .* 2,165,911.* 3,931 bytes.*header-only",
    }
    for file_name, problem in expected.items():
        with pytest.raises(InputError, match=rf"{file_name}: cannot be read as FCS: {problem}") as error:
            read_fcs(instruments / file_name)
        assert "\n" not in str(error.value) and "export it again" not in str(error.value)


@pytest.mark.data
def test_several_data_sets_become_several_samples(instruments):
    path = instruments / "fcsparser_GuavaMuse_Guava_Muse.fcs"
    samples = read_fcs_data_sets(path)
    assert [len(s.events) for s in samples] == [108, 50081, 111496, 50037]
    assert [s.stem for s in samples] == [f"fcsparser_GuavaMuse_Guava_Muse_set{k}" for k in (1, 2, 3, 4)]
    assert samples[2].name == f"{path.name} (data set 3 of 4)"
    first = read_fcs(path)
    assert len(first.events) == 108 and any("4 data sets" in note for note in first.notes)


@pytest.mark.data
def test_offset_repairs_are_noted_and_give_the_right_events(instruments):
    blank = read_fcs(instruments / "fcsparser_fake_large_fcs_fake_large_fcs.fcs")
    same = read_fcs(instruments / "fcsparser_Fortessa_FCS_3.0_Fortessa_PBS_Specimen_001_A1_A01.fcs")
    np.testing.assert_array_equal(blank.events, same.events)
    assert any("HEADER leaves the DATA offsets blank" in note for note in blank.notes)
    shifted = read_fcs(instruments / "flowkit_noncompliant_data_start_offset_discrepancy_example.fcs")
    assert any(
        "TEXT bytes 6081-6188, HEADER bytes 5555-6188); TEXT's span was used: it holds $TOT 2 x 54 bytes"
        in note
        for note in shifted.notes
    )
    assert shifted.spill is None and any("lacks; it is not used" in note for note in shifted.notes)
    off_by_one = read_fcs(instruments / "flowkit_test_comp_example.fcs")
    assert any("one byte past the data" in note for note in off_by_one.notes)
    assert off_by_one.spill is not None and len(off_by_one.spill[0]) == 14


@pytest.mark.data
def test_24_bit_integers_bitmasks_and_log_channels(instruments):
    cytek = read_fcs(instruments / "fcsparser_Cytek_xP5_Cytek_xP5.fcs")
    fsc, fl1 = channel_indices(cytek, ["FSC", "FL1"])
    assert cytek.events[:, fsc].max() <= 1023 and cytek.events[:, fsc].min() >= 0  # masked to $PnR 1024
    assert cytek.events[:, fl1].min() >= 1.0 and cytek.events[:, fl1].max() <= 10**4  # 4 decades, linear
    assert any("24 bits" in note for note in cytek.notes)
    beckman = read_fcs(instruments / "fcsparser_fake_bitmask_error_fcs1_cleaned.lmd")
    # every stored value is 0x4210; $PnR 1024 keeps the low 10 bits
    assert np.all(beckman.events[:, 0] == 0x4210 & 1023)
    assert instruments / "fcsparser_fake_bitmask_error_fcs1_cleaned.lmd" in list_fcs(instruments)


def test_duplicate_channel_names_are_made_unique(tmp_path):
    events = np.arange(30, dtype=float).reshape(10, 3)
    sample = read_fcs(write(tmp_path / "dup.fcs", events, ["FL1", "FL1", "FL2"]))
    assert sample.names == ["FL1", "FL1 (2)", "FL2"]
    assert any("FL1 appear more than once" in note for note in sample.notes)
    np.testing.assert_array_equal(sample.events[:, channel_indices(sample, ["FL1 (2)"])[0]], events[:, 1])


def test_unusable_spillover_matrix_is_noted_not_fatal(tmp_path):
    events = np.ones((5, 2)) + np.arange(5)[:, None]
    spill = "2,FL1,FL9,1,0.1,0,1"
    sample = read_fcs(write(tmp_path / "spill.fcs", events, ["FL1", "FL2"], {"spill": spill}))
    assert sample.spill is None
    assert any("names channel(s) FL9 that the file lacks" in note for note in sample.notes)


def test_constant_channels_are_left_out_with_a_warning(tmp_path):
    rng = np.random.default_rng(0)
    events = np.column_stack([rng.normal(size=50), np.zeros(50), rng.normal(size=50)])
    samples = [read_fcs(write(tmp_path / f"s{k}.fcs", events, ["FL1", "DOUBLET", "FL2"])) for k in range(2)]
    usable, warnings = usable_channels(samples, ["FL1", "DOUBLET", "FL2"])
    assert usable == ["FL1", "FL2"]
    assert len(warnings) == 1 and warnings[0].startswith("DOUBLET: every event has the value 0")
    kept, warnings = usable_channels(samples, ["DOUBLET"])
    assert kept == ["DOUBLET"] and warnings[0].startswith("Every chosen channel is constant (DOUBLET)")


@pytest.mark.data
def test_dead_detector_in_a_real_file_is_left_out(instruments):
    sample = read_fcs(instruments / "fcsparser_cyflow_cube_8_cyflow_cube_8.fcs")
    usable, warnings = usable_channels([sample], ["FSC", "SSC", "FL1", "DOUBLET"])
    assert usable == ["FSC", "SSC", "FL1"] and "DOUBLET" in warnings[0]


def _with_text_offsets(raw: bytes, begin: int, end: int) -> bytes:
    """The file with other $BEGINDATA / $ENDDATA values of the same width (HEADER left as written)."""
    import re

    def same_width(match, value):
        return match.group(1) + str(value).rjust(len(match.group(2))).encode() + match.group(3)

    raw = re.sub(rb"(\$BEGINDATA/)([0-9 ]+)(/)", lambda m: same_width(m, begin), raw)
    return re.sub(rb"(\$ENDDATA/)([0-9 ]+)(/)", lambda m: same_width(m, end), raw)


def test_the_data_span_that_holds_tot_events_is_used_and_named(tmp_path):
    events = np.arange(30, dtype=float).reshape(10, 3)
    raw = write(tmp_path / "good.fcs", events, ["A", "B", "C"]).read_bytes()
    start, stop = int(raw[26:34]), int(raw[34:42])
    assert stop - start + 1 == 10 * 3 * 4
    # TEXT says the data start 12 bytes (one event) early: only HEADER's span is 10 events of 12 bytes
    header_right = tmp_path / "header_right.fcs"
    header_right.write_bytes(_with_text_offsets(raw, start - 12, stop))
    sample = read_fcs(header_right)
    np.testing.assert_array_equal(sample.events, events)
    assert any("HEADER's span was used: it holds $TOT 10 x 12 bytes" in note for note in sample.notes)
    # TEXT right, HEADER's end past the data
    text_right = tmp_path / "text_right.fcs"
    text_right.write_bytes(raw[:34] + str(stop + 24).rjust(8).encode() + raw[42:])
    sample = read_fcs(text_right)
    np.testing.assert_array_equal(sample.events, events)
    assert any("TEXT's span was used" in note for note in sample.notes)


def test_no_span_holding_tot_events_is_refused_in_one_line(tmp_path):
    events = np.arange(30, dtype=float).reshape(10, 3)
    raw = write(tmp_path / "good.fcs", events, ["A", "B", "C"]).read_bytes()
    start, stop = int(raw[26:34]), int(raw[34:42])
    broken = tmp_path / "short.fcs"
    # both spans hold fewer than $TOT x 12 bytes
    header_short = raw[:26] + str(start + 24).rjust(8).encode() + raw[34:]
    broken.write_bytes(_with_text_offsets(header_short, start, stop - 36))
    problem = r"short.fcs: cannot be read as FCS .*neither span holds 120 bytes"
    with pytest.raises(InputError, match=problem) as error:
        read_fcs(broken)
    assert "\n" not in str(error.value)
