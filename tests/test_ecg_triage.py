"""QRS detection scored on MIT-BIH record 100 as ANSI/AAMI EC57 does, and the triage of synthetic
ECGs of every rhythm category, of unusable signals and of long recordings judged in windows."""

from __future__ import annotations

import numpy as np
import pytest
import wfdb
from ecg_signals import MITDB_100, TWELVE_LEADS, noise, synthesise

from fhir_server.ecg.qrs import detect_qrs
from fhir_server.ecg.scoring import reference_beats, score_beats
from fhir_server.ecg.triage import analyse
from fhir_server.ecg.waveform import Waveform
from fhir_server.ecg.wfdb_record import read_record


@pytest.fixture(scope="module")
def record_100() -> tuple[Waveform, np.ndarray]:
    annotation = wfdb.rdann(str(MITDB_100), "atr")
    return read_record(MITDB_100), reference_beats(annotation.sample, annotation.symbol)


@pytest.mark.parametrize("leads", [[0], [0, 1]], ids=["MLII", "MLII+V5"])
@pytest.mark.parametrize("start_s", [0.0, 300.0], ids=["whole-record", "after-5-min"])
def test_qrs_detection_on_mitdb_100_meets_ec57_figures(record_100, leads, start_s):
    waveform, reference = record_100
    assert len(reference) == 2273  # beats only: the rhythm annotation "+" is not one
    detected = detect_qrs(waveform.signal[:, leads], waveform.fs)
    score = score_beats(reference, detected, waveform.fs, start_s=start_s)
    assert score.sensitivity >= 0.995, score
    assert score.positive_predictivity >= 0.995, score


def test_scoring_matches_within_150_ms_once_each():
    reference = np.array([1000, 2000, 3000, 4000])
    detected = np.array([1050, 1060, 2100, 3200, 9000])  # at 1000 Hz: 50, 60, 100, 200 ms off; one far away
    score = score_beats(reference, detected, 1000.0)
    assert (score.true_positives, score.false_negatives, score.false_positives) == (2, 2, 3)
    assert score.sensitivity == 0.5 and score.positive_predictivity == 0.4
    late = score_beats(reference, detected, 1000.0, start_s=2.5)  # only 3000 and 4000 are scored
    assert (late.true_positives, late.false_negatives, late.false_positives) == (0, 2, 2)


def test_record_100_is_routine_normal_sinus_rhythm(record_100):
    result = analyse(record_100[0])
    assert (result.level, result.rhythm) == ("routine", "normal")
    assert 70 < result.rr.rate_mean < 80
    assert result.qrs_width < 0.12
    assert result.leads_used == ["MLII", "V5"]


CASES = [  # synthetic rhythm, expected rhythm category, expected triage level
    ("normal", "normal", "routine"),
    ("brady", "bradycardia", "urgent"),
    ("tachy", "tachycardia", "urgent"),
    ("af", "af", "urgent"),
    ("pause", "pause", "critical"),
    ("asystole", "asystole", "critical"),
    ("vt", "vt", "critical"),
    ("slow", "bradycardia", "critical"),  # 34/min: below 40
    ("fast", "tachycardia", "critical"),  # 165/min: above 150
]


@pytest.mark.parametrize("rhythm, category, level", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("leads, fs, seed", [(["II"], 500.0, 1), (TWELVE_LEADS, 500.0, 2), (["MLII", "V5"], 360.0, 3)],
                         ids=["1-lead", "12-lead", "2-lead-360Hz"])
def test_synthetic_rhythms_get_their_triage(rhythm, category, level, leads, fs, seed):
    result = analyse(synthesise(rhythm, leads=leads, fs=fs, seed=seed))
    assert (result.rhythm, result.level) == (category, level), [f.reason for f in result.findings]
    assert result.worst.level == level and result.worst.reason


def test_critical_findings_say_what_and_when():
    vt = analyse(synthesise("vt", seed=4))
    assert vt.worst.category == "vt" and "6 wide-QRS beats at 180/min" in vt.worst.reason
    assert vt.worst.start == pytest.approx(3.9, abs=0.2)
    pause = analyse(synthesise("pause", seed=4))
    assert pause.worst.category == "pause" and pause.worst.end - pause.worst.start >= 3.0
    slow = analyse(synthesise("slow", seed=4))
    assert any(f.category == "rate" and "below 40/min" in f.reason for f in slow.findings)


def test_signal_unreadable_when_no_lead_is_usable():
    flat = Waveform(np.zeros((5000, 2)), 500.0, ["I", "II"])
    result = analyse(flat)
    assert (result.level, result.rhythm) == ("urgent", "unreadable")
    assert "repeat the recording" in result.worst.reason and "flat" in result.worst.reason
    assert result.rr is None and result.beats.size == 0


@pytest.mark.parametrize("make, why", [
    (lambda w: np.clip(w, -0.05, 0.05), "saturated"),
    (lambda w: np.where(np.arange(len(w))[:, None] % 3 == 0, w, np.nan), "have no value"),
], ids=["clipped", "missing-samples"])
def test_saturated_or_gappy_signal_is_unreadable(make, why):
    waveform = synthesise("normal", seed=5)
    result = analyse(Waveform(make(waveform.signal), waveform.fs, waveform.names))
    assert result.rhythm == "unreadable" and why in result.worst.reason


def test_noise_is_unreadable():
    result = analyse(noise(seed=6))
    assert (result.level, result.rhythm) == ("urgent", "unreadable")
    assert "noise" in result.worst.reason


def test_too_short_is_unreadable():
    result = analyse(synthesise("normal", duration=3.0, seed=7))
    assert result.rhythm == "unreadable" and "less than 5 s" in result.worst.reason


def test_a_flat_lead_is_left_out_and_the_others_are_triaged():
    waveform = synthesise("tachy", leads=["I", "II", "V2"], seed=8)
    waveform.signal[:, 1] = 0.0
    result = analyse(waveform)
    assert (result.rhythm, result.level) == ("tachycardia", "urgent")
    assert result.leads_used == ["I", "V2"] and "flat" in result.leads_rejected["II"]
    assert any(f.category == "lead" and f.reason.startswith("Lead II not used") for f in result.findings)


def test_long_recording_reports_the_worst_window_with_its_time():
    parts = [synthesise("normal", duration=60.0, seed=9), synthesise("af", duration=30.0, seed=10),
             synthesise("normal", duration=60.0, seed=11)]
    waveform = Waveform(np.concatenate([p.signal for p in parts]), 500.0, ["II"])
    result = analyse(waveform)
    assert (result.rhythm, result.level) == ("af", "urgent")
    assert 55.0 <= result.worst.start <= 70.0 and result.worst.end <= 100.0
    assert "0:01:" in result.worst.reason  # long recordings give clock times
    assert any(f.category == "normal" for f in result.findings)


def test_pause_inside_a_long_recording_is_critical_with_its_time():
    parts = [synthesise("normal", duration=40.0, seed=12), synthesise("asystole", duration=4.0, seed=13),
             synthesise("normal", duration=40.0, seed=14)]
    result = analyse(Waveform(np.concatenate([p.signal for p in parts]), 500.0, ["II"]))
    assert (result.rhythm, result.level) == ("pause", "critical")
    assert 39.0 <= result.worst.start <= 41.0 and result.worst.end == pytest.approx(44.4, abs=0.5)
