#!/usr/bin/env python3
"""ECG benchmark: QRS detection quality and triage speed. Prints figures; asserts nothing.

Run from the repository root with the package installed (e.g. in its virtualenv):

    python bench/ecg.py                                  # MIT-BIH record 100 from ../shared
    python bench/ecg.py path/to/mitdb/105 path/to/203    # more WFDB records with .atr annotations
    python bench/ecg.py --repeats 11

For each record with reference annotations (`.atr`) it prints sensitivity (Se) and positive
predictivity (+P) of the beat detector on all leads, scored as ANSI/AAMI EC57 does (150 ms match
window, beat annotations only), over the whole record and from 5 minutes on (EC57's learning period
excluded). Then the median milliseconds over --repeats runs to triage (quality checks, detection,
QRS widths, rhythm rules) record 100 (30 minutes, 2 leads, 360 Hz) and a synthesised 10-second
12-lead 500 Hz ECG, and the same 12-lead ECG starting from its FHIR SampledData Observation.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import wfdb

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from ecg_signals import MITDB_100, TWELVE_LEADS, synthesise  # noqa: E402

from fhir_server.ecg.qrs import detect_qrs  # noqa: E402
from fhir_server.ecg.sampled_data import observation_from_waveform, waveform_from_observation  # noqa: E402
from fhir_server.ecg.scoring import reference_beats, score_beats  # noqa: E402
from fhir_server.ecg.triage import analyse  # noqa: E402
from fhir_server.ecg.wfdb_record import read_record, record_base  # noqa: E402


def median_ms(work, repeats: int) -> float:
    work()  # warm-up: filter design caches, imports
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", nargs="*", type=Path, help="more WFDB records (with .atr) to score")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per figure (median printed)")
    args = parser.parse_args()

    print("QRS detection, EC57 scoring (150 ms window, beat annotations only)")
    print(f"{'record':<28}{'beats':>7}{'Se':>9}{'+P':>9}{'Se 5min+':>10}{'+P 5min+':>10}")
    for path in [MITDB_100, *args.records]:
        base = record_base(path)
        waveform = read_record(base)
        annotation = wfdb.rdann(str(base), "atr")
        reference = reference_beats(annotation.sample, annotation.symbol)
        detected = detect_qrs(waveform.signal, waveform.fs)
        whole = score_beats(reference, detected, waveform.fs)
        late = score_beats(reference, detected, waveform.fs, start_s=300.0)
        name = f"{base.parent.name}/{base.name}"
        print(f"{name:<28}{len(reference):>7}{whole.sensitivity:>9.2%}{whole.positive_predictivity:>9.2%}"
              f"{late.sensitivity:>10.2%}{late.positive_predictivity:>10.2%}")

    print(f"\nTriage time, median of {args.repeats} runs (target: < 1000 ms and < 50 ms)")
    record = read_record(MITDB_100)
    print(f"  record 100, {record.duration / 60:.0f} min, {len(record.names)} leads, {record.fs:g} Hz: "
          f"{median_ms(lambda: analyse(record), args.repeats):8.1f} ms")
    twelve = synthesise("normal", leads=TWELVE_LEADS, fs=500.0, seed=1)
    print(f"  synthesised 10 s, 12 leads, 500 Hz:    {median_ms(lambda: analyse(twelve), args.repeats):8.1f} ms")
    observation = observation_from_waveform(twelve)
    print("  the same from its SampledData Observation: "
          f"{median_ms(lambda: analyse(waveform_from_observation(observation)), args.repeats):8.1f} ms")


if __name__ == "__main__":
    main()
