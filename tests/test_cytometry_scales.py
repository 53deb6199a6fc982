"""Telling raw, compensated and transformed FCS values apart, on real files and variants made from them."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from napari_hematology.core.cytometry.fcs import (
    FcsSample,
    channel_indices,
    compensate,
    default_channels,
    read_fcs_data_sets,
    transform,
)
from napari_hematology.core.cytometry.scales import apply_preprocessing, channel_scales, decide_preprocessing
from napari_hematology.core.errors import InputError

# FlowSOM's seven lineage markers in ff.fcs.
LINEAGE = ["PE-A", "PE-Cy7-A", "PE-Cy5-A", "Pacific Blue-A", "APC-A", "PE-Texas Red-A", "APC-Cy7-A"]


def real_samples(shared_data) -> list[FcsSample]:
    folder = shared_data / "cytometry"
    paths = sorted(folder.rglob("*.fcs")) + sorted(folder.rglob("*.lmd"))
    samples = []
    for path in paths:
        if "corrupted" in path.name or "sample_header" in path.name:
            continue
        samples += read_fcs_data_sets(path)
    return samples


def with_events(sample: FcsSample, events: np.ndarray, **changes) -> FcsSample:
    return dataclasses.replace(sample, events=events, notes=[], **changes)


def signal_channels(sample: FcsSample) -> list[str]:
    """Default channels that vary and are not scatter."""
    chosen = [c for c in default_channels(sample) if not c.lower().startswith(("fsc", "ssc", "fs ", "ss "))]
    scales = channel_scales(sample, chosen)
    return [c for c in chosen if scales[c] != "constant"]


@pytest.fixture(scope="module")
def flowsom(shared_data) -> tuple[FcsSample, FcsSample]:
    folder = shared_data / "cytometry" / "flowsom"
    return read_fcs_data_sets(folder / "ff.fcs")[0], read_fcs_data_sets(folder / "not_preprocessed.fcs")[0]


@pytest.mark.data
def test_ff_is_transformed_and_left_as_it_is(flowsom):
    ff, _ = flowsom
    decision = decide_preprocessing(ff, LINEAGE)
    assert decision.state == "transformed"
    assert not decision.compensate and decision.transform == "none" and decision.transform_channels == []
    assert any("spillover matrix, but its values are transformed" in w for w in decision.warnings)
    np.testing.assert_array_equal(
        apply_preprocessing(ff, LINEAGE, decision), ff.events[:, channel_indices(ff, LINEAGE)]
    )


@pytest.mark.data
def test_raw_counterpart_is_compensated_then_transformed(flowsom):
    _, raw = flowsom
    decision = decide_preprocessing(raw, LINEAGE)
    assert decision.state == "raw" and decision.compensate
    assert decision.transform == "arcsinh" and decision.transform_channels == LINEAGE
    expected = transform(compensate(raw)[:, channel_indices(raw, LINEAGE)], "arcsinh", 150.0)
    np.testing.assert_allclose(apply_preprocessing(raw, LINEAGE, decision), expected)


@pytest.mark.data
def test_compensated_variant_is_not_compensated_again(flowsom):
    _, raw = flowsom
    compensated = with_events(raw, compensate(raw))
    decision = decide_preprocessing(compensated, LINEAGE)
    assert decision.state == "compensated" and not decision.compensate
    assert decision.transform_channels == LINEAGE
    assert any("already compensated" in w for w in decision.warnings)


@pytest.mark.data
def test_sinh_of_ff_reads_as_linear_and_gets_transformed(flowsom):
    ff, _ = flowsom
    columns = channel_indices(ff, LINEAGE)
    events = ff.events.copy()
    events[:, columns] = 150.0 * np.sinh(events[:, columns] * 2.0)
    decision = decide_preprocessing(with_events(ff, events, keywords={}), LINEAGE)
    assert decision.state != "transformed" and decision.transform_channels == LINEAGE


@pytest.mark.data
def test_every_real_file_and_its_arcsinh_variant(shared_data):
    checked = 0
    for sample in real_samples(shared_data):
        channels = signal_channels(sample)
        if not channels:
            continue
        decision = decide_preprocessing(sample, channels)
        scales = channel_scales(sample, channels)
        if decision.state == "transformed":  # never compensated, never transformed twice
            assert not decision.compensate, sample.name
            assert all(scales[c] == "linear" for c in decision.transform_channels), sample.name
        linear = [c for c, s in scales.items() if s == "linear"]
        if len(linear) * 2 <= len(channels) or sample.keywords.get("datatype", "").upper() == "I":
            continue
        events = sample.events.copy()
        columns = channel_indices(sample, channels)
        events[:, columns] = np.arcsinh(events[:, columns] / decision.cofactor)
        variant = decide_preprocessing(with_events(sample, events, keywords={}), channels)
        assert variant.state == "transformed", sample.name
        assert not variant.compensate and variant.transform == "none", sample.name
        checked += 1
    assert checked >= 30


@pytest.mark.data
def test_real_files_are_what_their_history_says(shared_data):
    folder = shared_data / "cytometry"
    mass = read_fcs_data_sets(folder / "cytonorm" / "Gates_PTLG021_Unstim_Control_1.fcs")[0]
    mass_decision = decide_preprocessing(mass, signal_channels(mass))
    assert mass_decision.state == "raw" and mass_decision.cofactor == 5.0
    diva = read_fcs_data_sets(folder / "facs_diva_test.fcs")[0]
    assert decide_preprocessing(diva, signal_channels(diva)).compensate
    guava = read_fcs_data_sets(folder / "instruments" / "fcsparser_GuavaMuse_Guava_Muse.fcs")[1]
    guava_decision = decide_preprocessing(guava, default_channels(guava))
    # the *-HLog channels hold log10 values and say so in $PnE: kept apart, not transformed again
    assert "FSC-HLog" not in guava_decision.transform_channels
    assert "FSC-HLin" in guava_decision.transform_channels


@pytest.mark.data
def test_keywords_that_contradict_the_values_are_warned_and_values_win(flowsom):
    _, raw = flowsom
    columns = channel_indices(raw, LINEAGE)
    keywords = dict(raw.keywords, transformation="custom")
    keywords.update({f"flowcore_p{c + 1}rmax": "4.5" for c in columns})
    decision = decide_preprocessing(with_events(raw, raw.events, keywords=keywords), LINEAGE)
    assert decision.transform_channels == LINEAGE
    assert any(w.startswith("PE-A: flowCore_$P") and "values are used" in w for w in decision.warnings)
    log_declared = dict(raw.keywords, **{f"p{c + 1}e": "4,1" for c in columns})
    decision = decide_preprocessing(with_events(raw, raw.events, keywords=log_declared), LINEAGE)
    assert decision.transform_channels == LINEAGE
    assert any("log decades" in w and "look linear" in w for w in decision.warnings)


@pytest.mark.data
def test_explicit_choices_override_with_a_warning(flowsom):
    ff, raw = flowsom
    forced = decide_preprocessing(ff, LINEAGE, transform="arcsinh", compensate=True)
    assert forced.compensate and forced.transform_channels == LINEAGE
    assert any("again" in w for w in forced.warnings) and any(
        "Compensating transformed" in w for w in forced.warnings
    )
    plain = decide_preprocessing(raw, LINEAGE, transform="none", compensate=False, cofactor=5.0)
    assert not plain.compensate and plain.transform == "none" and plain.cofactor == 5.0
    with pytest.raises(InputError, match="Unknown transform 'log'"):
        decide_preprocessing(raw, LINEAGE, transform="log")


def test_scatter_is_judged_apart_from_the_signal_channels():
    rng = np.random.default_rng(0)
    events = np.column_stack([rng.uniform(5e4, 1.5e5, 500), rng.normal(2.0, 0.5, (500, 3))])
    sample = FcsSample(Path("mixed.fcs"), events, names=["FSC-A", "A", "B", "C"], markers=["", "", "", ""])
    decision = decide_preprocessing(sample, ["FSC-A", "A", "B", "C"])
    assert decision.state == "transformed" and decision.transform_channels == ["FSC-A"]
    assert "arcsinh (cofactor 150) on 1 channel(s)" in decision.summary()
