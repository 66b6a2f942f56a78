"""Every number the triage decides by, in one place. Rates are beats per minute, times seconds.

Triage levels: critical = refer to the county ECG centre now; urgent = review the same day;
routine = normal. A recording gets the level of its worst finding."""

from __future__ import annotations

# --- rhythm and rate (judged per analysis window, see WINDOW_S) ---
BRADYCARDIA_BPM = 60.0  # mean rate below: sinus bradycardia (urgent)
TACHYCARDIA_BPM = 100.0  # mean rate above: sinus tachycardia (urgent)
CRITICAL_LOW_BPM = 40.0  # mean rate below: critical, whatever the rhythm
CRITICAL_HIGH_BPM = 150.0  # mean rate above: critical, whatever the rhythm
PAUSE_S = 3.0  # no beat for this long: pause (critical); no beat at all in a readable recording: asystole
VT_MIN_BEATS = 3  # this many consecutive wide, fast beats make a ventricular tachycardia run (critical)
WIDE_QRS_S = 0.120  # a beat at least this wide is wide
VT_RATE_BPM = 100.0  # ...and faster than this (from its preceding RR interval) is fast
# Atrial fibrillation (urgent): irregularly irregular RR, i.e. at least AF_IRREGULAR_FRACTION of
# successive RR intervals differ by more than AF_STEP of the median RR, AND at least AF_DISPERSED_FRACTION
# of the intervals lie more than AF_STEP from the median. The second test keeps isolated premature beats
# (one short and one long interval in a regular rhythm) from counting; frequent ectopy (bigeminy)
# does count, and also deserves a same-day review.
AF_STEP = 0.10
AF_IRREGULAR_FRACTION = 0.50
AF_DISPERSED_FRACTION = 0.40
AF_MIN_INTERVALS = 8  # fewer RR intervals than this: too few to call AF

# --- windows: long recordings are judged window by window and the worst window reported ---
WINDOW_S = 10.0  # a standard resting ECG is 10 s; longer recordings are cut into windows this long
MIN_WINDOW_S = 5.0  # a trailing piece shorter than this joins the window before it

# --- signal quality: a lead failing any of these is not used; no usable lead = "unreadable" (urgent) ---
MIN_DURATION_S = 5.0  # shorter recordings cannot be triaged
FLAT_MV = 0.005  # standard deviation below 5 µV: flat (lead off, all zeros)
SATURATED_FRACTION = 0.05  # more than 5 % of samples stuck at the lead's extremes: saturated / clipped
MISSING_FRACTION = 0.20  # more than 20 % of samples without a value
NOISE_MIN_CORRELATION = 0.60  # median correlation of the lead's beats with its median beat below: noise
MAX_PLAUSIBLE_BPM = 300.0  # more detections than this rate: noise, not beats
MIN_QRS_MV = 0.10  # a detection whose 5-15 Hz band amplitude (peak to peak) is smaller is not a QRS complex
