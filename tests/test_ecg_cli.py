"""`fhir-server ecg` on MIT-BIH record 100 and on records that cannot be read."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from ecg_signals import MITDB_100, synthesise

from fhir_server.ecg.wfdb_record import write_record


def fhir_server(*args: str) -> subprocess.CompletedProcess:
    beside = Path(sys.executable).parent / "fhir-server"
    exe = str(beside) if beside.exists() else shutil.which("fhir-server")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def test_report_on_record_100():
    run = fhir_server("ecg", str(MITDB_100.with_suffix(".hea")))
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"{MITDB_100}: 2 lead(s) MLII, V5, 360 Hz, 0:30:05")
    assert "triage      ROUTINE" in run.stdout and "rhythm      Normal sinus rhythm" in run.stdout
    assert "beats       2272" in run.stdout or "beats       2273" in run.stdout
    assert "heart rate  mean 76/min" in run.stdout


def test_json_for_several_records(tmp_path):
    vt = write_record(synthesise("vt", leads=["MLII", "V5"], fs=360.0, seed=1), "vt", tmp_path)
    run = fhir_server("ecg", "--json", str(MITDB_100), str(vt) + ".dat")
    assert run.returncode == 0, run.stderr
    first, second = (json.loads(line) for line in run.stdout.splitlines())
    assert first["triage"] == "routine" and abs(first["beats"] - 2273) <= 11
    assert 70 < first["heart_rate"]["mean"] < 80 and first["heart_rate"]["min"] < first["heart_rate"]["max"]
    assert second["triage"] == "critical" and second["worst"]["category"] == "vt"
    assert second["worst"]["start_s"] > 3


def test_unreadable_record_is_reported_and_fails(tmp_path):
    (tmp_path / "broken.hea").write_text("broken 1 360 nonsense\n")
    run = fhir_server("ecg", str(tmp_path / "missing"), str(tmp_path / "broken"), str(MITDB_100))
    assert run.returncode == 1
    assert "missing: cannot read the WFDB record" in run.stderr
    assert "broken: cannot read the WFDB record" in run.stderr
    assert "triage      ROUTINE" in run.stdout  # the readable record is still triaged
