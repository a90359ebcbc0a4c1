"""Seeded synthetic corpora in TUH's layouts (TUAB, TUSZ v2) and a small MEG tree.

There is no real TUH data in tests, benchmarks or the demo, so this package writes trees that look
like TUH's on disk (paths, EDF headers, channel labels, annotation files) and carry a signal a
small CNN can learn. Everything derives from one `CorpusSpec`; nothing depends on the wall clock.

    plan.py     CorpusSpec and what recordings exist (subjects, sessions, splits, labels, seizures)
    signals.py  the signal models (EEG background, artefacts, slowing, seizures; MEG by blocks)
    writers.py  EDF (edfio), TUSZ annotation CSVs, FIF (mne), the output directory and its marker

Writes under `out/`:

    tuab  edf/{train,eval}/{normal,abnormal}/01_tcp_ar/<subject>_s<session>_t<token>.edf
    tusz  edf/{train,dev,eval}/<subject>/s<session>_<year>/<montage>/<subject>_s<session>_t<token>.edf
          + <stem>.csv_bi (TERM rows: seiz/bckg) and <stem>.csv (TCP channel rows: seizure type/bckg)
    tuev  edf/{train,eval}/<subject>/<subject>_<nnnnnnnn>.edf (eval: <class>_<subject>_a_<k>.edf)
          + <stem>.rec (TUEV rows `channel,start,stop,class` per channel-second of each event)
    meg   meg/sub-<NN>/ses-<NN>/sub-<NN>_ses-<NN>_task-rest_meg.fif (306 Neuromag MEG + EEG/EOG/ECG/STI;
          over 2 GB: mne's `-1.fif`, `-2.fif` parts beside it)
          + manifest.csv (path, subject, session) for the generic layout's `corpus.manifest`
    synthetic_corpus.json   what was written; `"complete": true` once every file is in place

Signals (EEG in uV; sfreq 250/256/400/512 Hz; 1 s data records; int16 with TUH's physical ranges).
Spectral weights below are multiples of the 1/f power in 0.5-40 Hz, so they survive z-scoring:

- background (every EEG recording): 1/f^a noise (a in 0.9-1.3, 12-30 uV), a posterior alpha
  rhythm (9-11.5 Hz, weight 1.5-4), theta 0-0.25, frontal-central beta 0.05-0.2; channels mixed
  by scalp distance and all carrying the reference electrode's own noise; eye blinks (40-120 uV,
  one per 3-10 s) on FP1/FP2 and weaker on F7/F8/F3/F4/FZ; 0.25-6 uV of 60 Hz mains on every
  channel that is not flat (PHOTIC, IBI, BURSTS, SUPPR are zeros).
- TUAB abnormal, for the whole recording: polymorphic delta (a broad peak at 1.8-3.5 Hz, s.d.
  0.9 Hz, weight 4-8, on every channel, up to +-50% more on one side), theta 0.5-1.5,
  and alpha weakened to 0.05-0.3 and slowed to 7-8.5 Hz. After per-channel z-scoring the
  relative 1-4 Hz power of a 10 s window is ~0.44-0.78 (abnormal) against ~0.17-0.36 (normal).
- TUSZ seizures, only inside the annotated intervals: a rhythmic discharge whose frequency falls
  from 5-6.5 Hz to 2.8-3.8 Hz, with harmonics (sharp waves), growing in amplitude to 4-8x the
  channel's background RMS at the focus and spreading over most channels with an onset lag of up
  to 2.5 s per head radius. About half the recordings have 1-3 seizures of 10-60 s (shorter when
  the recording is too short to hold them); 30% of TUSZ backgrounds are mildly slowed.
- TUEV events (1-3 whole seconds, up to 12 per recording, classes spsw/gped/pled/eyem/artf/bckg):
  a 3 Hz spike-and-wave (spsw, focal), one sharp wave a second (gped over the midline, widely;
  pled over one temporal chain), a slow frontal bump (eyem at FP1/FP2) and broadband high-
  frequency noise (artf, temporal), each at 4-6x the channel's background RMS; bckg adds nothing.
- MEG (250 Hz unless `sfreq` says otherwise): each subject has its own alpha peak (8-12.5 Hz) and
  topography (two posterior generators), a central beta rhythm (15-25 Hz) and per-sensor gains,
  shared by all its sessions; each session adds independent pink background from 16 random
  sources, sensor noise and mains, so subject identification is learnable from the signal.

Same seed, same bytes for EDF, CSV and the marker. FIF files embed MNE's machine id (from the MAC
address) in their file ids, so they are byte-identical on one host and equal in data elsewhere.

    brainpipe synth --layout tuab --out /tmp/tuab --n-subjects 20 --seed 0

    from brainpipe.synthetic import CorpusSpec, make_corpus
    summary = make_corpus("/tmp/tusz", CorpusSpec("tusz", n_subjects=12, seed=1))
    summary = make_corpus("/tmp/tusz", "tusz", n_subjects=12, seed=1)  # the same corpus
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from brainpipe.fsutil import atomic_output
from brainpipe.synthetic.plan import CorpusSpec, Seizure, SyntheticRecording, plan_recordings
from brainpipe.synthetic.signals import MegSource, draw_meg_subject, eeg_signals, meg_sensors
from brainpipe.synthetic.writers import (
    MARKER,
    prepare_out,
    write_annotations,
    write_edf,
    write_fif,
    write_marker,
    write_rec,
)

__all__ = ["MARKER", "CorpusSpec", "CorpusSummary", "Seizure", "SyntheticRecording", "make_corpus"]

MEG_MANIFEST = "manifest.csv"


@dataclass(frozen=True)
class CorpusSummary:
    root: Path
    layout: str
    seed: int
    recordings: tuple[SyntheticRecording, ...]
    annotation_files: tuple[str, ...]  # relative paths of TUSZ .csv_bi/.csv files
    n_bytes: int  # all files written, marker excluded
    spec: CorpusSpec | None = None

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(r.path for r in self.recordings)

    @property
    def counts(self) -> dict[tuple[str, str], int]:
        """Recordings per (split, label)."""
        return dict(sorted(Counter((r.split, r.label) for r in self.recordings).items()))

    @property
    def n_subjects(self) -> int:
        return len({r.subject for r in self.recordings})

    @property
    def n_seizures(self) -> int:
        return sum(len(r.seizures) for r in self.recordings)

    @property
    def total_seconds(self) -> float:
        return float(sum(r.duration_s for r in self.recordings))


def make_corpus(
    out: str | Path, spec: CorpusSpec | str, *, overwrite: bool = False, **fields
) -> CorpusSummary:
    """Write the corpus `spec` describes under `out` and return what was written.

    `spec` is a `CorpusSpec`, or a layout name with the spec's other fields as keywords
    (`make_corpus(out, "tuab", n_subjects=20, seed=0)`).
    overwrite: write into a non-empty directory that is not a previous synthetic corpus. A previous
        synthetic corpus is always replaced (only the files its marker lists are removed).
    """
    out = Path(out)
    if isinstance(spec, str):
        spec = CorpusSpec(spec, **fields)  # type: ignore[arg-type]
    elif fields:
        raise TypeError(f"make_corpus: pass either a CorpusSpec or keywords, not both ({fields})")
    recordings = plan_recordings(spec)
    suffixes = {"tusz": (".csv_bi", ".csv"), "tuev": (".rec",)}.get(spec.layout, ())
    annotations = tuple(
        str(PurePosixPath(r.path).with_suffix(s)) for r in recordings for s in suffixes
    )
    prepare_out(out, overwrite)
    files = [r.path for r in recordings] + list(annotations)
    if spec.layout == "meg":
        files.append(MEG_MANIFEST)
    # The marker goes first (unfinished) so a crashed run is still recognised, and cleaned, as ours.
    write_marker(out, spec.layout, spec.seed, files, complete=False)
    written = []
    meg_subjects = _meg_subjects(spec, recordings) if spec.layout == "meg" else {}
    for i, rec in enumerate(recordings):
        path = out / rec.path
        if spec.layout == "meg":
            source = MegSource(rec, meg_subjects[rec.subject], spec.stream(i, 1))
            written += write_fif(path, rec, source)
            continue
        rng = spec.rng(i, 1)
        written += write_edf(path, rec, eeg_signals(rec, rng))
        if spec.layout == "tusz":
            written += write_annotations(path, rec, rng)
        elif spec.layout == "tuev":
            written += write_rec(path, rec, rng)
    if spec.layout == "meg":
        _write_meg_manifest(out, recordings)
    # split FIF parts exist only once written; the final marker lists them for the next cleanup
    extra = [str(p.relative_to(out).as_posix()) for p in written]
    files += [f for f in extra if f not in set(files)]
    write_marker(out, spec.layout, spec.seed, files, complete=True)
    n_bytes = sum(p.stat().st_size for p in written)
    return CorpusSummary(out, spec.layout, spec.seed, tuple(recordings), annotations, n_bytes, spec)


def _meg_subjects(spec: CorpusSpec, recordings: list[SyntheticRecording]) -> dict:
    """Each subject's signature, drawn from its own stream (so it does not depend on how many
    sessions it or others have)."""
    xy, _ = meg_sensors()
    subjects = dict.fromkeys(r.subject for r in recordings)
    return {s: draw_meg_subject(spec.rng(k, 2), xy) for k, s in enumerate(subjects, start=1)}


def _write_meg_manifest(out: Path, recordings: list[SyntheticRecording]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "subject", "session"])
    writer.writerows([r.path, r.subject, f"ses-{r.session:02d}"] for r in recordings)
    with atomic_output(out / MEG_MANIFEST) as tmp:
        tmp.write_text(text.getvalue())
