"""Writers of the synthetic corpus's files: EDF (edfio), TUSZ annotation CSVs, FIF (mne), the marker.

Each file is written under a temporary name and renamed, so no half-written file ever has a final
name; no per-file fsync: the marker (`synthetic_corpus.json`), written last with fsync, is what
says "done". A previous corpus is recognised by its marker and only the files it lists are removed.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Protocol

import numpy as np

from brainpipe.errors import BrainpipeError
from brainpipe.fsutil import atomic_output
from brainpipe.preprocess import TCP_PAIRS
from brainpipe.synthetic.plan import SyntheticRecording, seizure_field
from brainpipe.synthetic.signals import MAINS_HZ

if TYPE_CHECKING:
    import mne

MARKER = "synthetic_corpus.json"
_MARKER_FORMAT = 1


_DIGITAL_MAX = 32767
_PREFILTER = "HP:0.000 Hz LP:0.0 Hz N:0.0"
_CSV_VARIANT_P = (0.55, 0.15, 0.15, 0.15)  # TUSZ's usual comment block, then three variations


class BlockSource(Protocol):
    def read(self, start: int, stop: int) -> np.ndarray:
        """(channels, stop - start) samples in SI units; called with increasing `start`."""


def _tmp(path: Path) -> Path:
    return path.with_name(f".tmp{os.getpid()}_{path.name}")


def write_edf(path: Path, rec: SyntheticRecording, data: np.ndarray) -> list[Path]:
    """Write `data` (uV, float32; overwritten) as `path`; returns the files written."""
    import edfio

    # Quantize in place in float32 and hand edfio int16 (`from_digital`): its float path wants a
    # float64 copy per signal. Measured about equal in time (~1 ms per 30 x 5000 file); less memory.
    data *= np.float32(_DIGITAL_MAX / rec.physical_max)
    np.rint(data, out=data)
    np.clip(data, -_DIGITAL_MAX, _DIGITAL_MAX, out=data)
    digital = data.astype(np.int16)
    signals = [
        edfio.EdfSignal.from_digital(
            digital[i], rec.sfreq, label=label, physical_dimension="uV",
            physical_range=(-rec.physical_max, rec.physical_max),
            digital_range=(-_DIGITAL_MAX, _DIGITAL_MAX), prefiltering=_PREFILTER,
        )
        for i, label in enumerate(rec.channels)
    ]  # fmt: skip
    age = rec.start.year - rec.birth_year
    patient = edfio.Patient(
        code=rec.subject,
        sex=rec.sex,
        birthdate=datetime.date(rec.birth_year, 1, 1),
        name=rec.subject,
        additional=(f"Age:{age}",),
    )
    recording = edfio.Recording(
        startdate=rec.start.date(),
        hospital_administration_code=f"{rec.subject}_s{rec.session:03d}_t{rec.token:03d}",
    )
    edf = edfio.Edf(
        signals,
        patient=patient,
        recording=recording,
        starttime=rec.start.time(),
        data_record_duration=1.0,
        # an empty list still makes edfio write EDF+C (reserved field and an annotations signal)
        annotations=[] if rec.edf_plus else None,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    edf.write(tmp)
    os.replace(tmp, path)
    return [path]


def _csv_header(stem: str, duration: float, variant: int) -> str:
    """TUSZ v2's comment block; variants differ in spacing and extra lines as real files do."""
    lines = ["version = csv_v1.0.0", f"bname = {stem}", f"duration = {duration:.2f} secs"]
    montage = "montage_file = $NEDC_NFC/lib/nedc_eas_default_montage.txt"
    if variant == 1:
        lines.append("annotation_label_file = $NEDC_NFC/lib/nedc_eas_default_labels.txt")
    if variant == 2:
        return "".join(f"#{ln.replace(' = ', '=')}\n" for ln in [*lines, montage])
    if variant == 3:
        return "".join(f"#  {ln}\n" for ln in [*lines, montage]) + "#\n#\n"
    return "".join(f"# {ln}\n" for ln in [*lines, montage]) + "#\n"


def _segments(
    duration: float, events: list[tuple[float, float, str]]
) -> list[tuple[float, float, str]]:
    """`events` (sorted, disjoint) with bckg rows filling the rest of [0, duration]."""
    rows, t = [], 0.0
    for on, off, label in events:
        if on > t:
            rows.append((t, on, "bckg"))
        rows.append((on, off, label))
        t = off
    if t < duration:
        rows.append((t, duration, "bckg"))
    return rows


def write_annotations(
    edf_path: Path, rec: SyntheticRecording, rng: np.random.Generator
) -> list[Path]:
    """TUSZ's `.csv_bi` (TERM rows) and `.csv` (TCP channel rows) beside `edf_path`; the comment
    block's variant is drawn from `rng`. Returns the files written."""
    variant = int(rng.choice(len(_CSV_VARIANT_P), p=_CSV_VARIANT_P))
    stem = edf_path.stem
    header = (
        _csv_header(stem, rec.duration_s, variant)
        + "channel,start_time,stop_time,label,confidence\n"
    )

    def row(channel: str, on: float, off: float, label: str) -> str:
        return f"{channel},{on:.4f},{off:.4f},{label},1.0000\n"

    term = _segments(rec.duration_s, [(s.onset_s, s.offset_s, "seiz") for s in rec.seizures])
    csv_bi = header + "".join(row("TERM", *r) for r in term)

    pairs = [
        p for p in TCP_PAIRS if not (rec.montage == "03_tcp_ar_a" and ("A1" in p or "A2" in p))
    ]
    electrodes = sorted({e for p in pairs for e in p})
    fields = [seizure_field(s, electrodes) for s in rec.seizures]
    per_channel = []
    for a, b in pairs:
        ia, ib = electrodes.index(a), electrodes.index(b)
        events = []
        for s, (gain, delay) in zip(rec.seizures, fields, strict=True):
            # A bipolar channel shows the discharge where either electrode carries enough of it.
            if max(gain[ia], gain[ib]) >= 0.35:
                events.append(
                    (round(s.onset_s + float(min(delay[ia], delay[ib])), 4), s.offset_s, s.kind)
                )
        per_channel += [row(f"{a}-{b}", *r) for r in _segments(rec.duration_s, events)]
    csv = header + "".join(per_channel)

    written = []
    for suffix, text in ((".csv_bi", csv_bi), (".csv", csv)):
        target = edf_path.with_suffix(suffix)
        tmp = _tmp(target)
        tmp.write_text(text)
        os.replace(tmp, target)
        written.append(target)
    return written


_REC_FORMATS = ("{:.4f}", "{:.1f}", "{:g}")  # TUEV's own, and as other tools re-save them


def write_rec(edf_path: Path, rec: SyntheticRecording, rng: np.random.Generator) -> list[Path]:
    """TUEV's `.rec` beside `edf_path`: one `channel,start,stop,class` row per listed channel and
    second of each event (class codes 1-6 in TUEV_KINDS order). The number format and line ends
    vary per file as real and re-saved files do. Returns the files written."""
    from brainpipe.synthetic.plan import TUEV_KINDS

    fmt = _REC_FORMATS[int(rng.integers(len(_REC_FORMATS)))]
    end = "\r\n" if rng.random() < 0.2 else "\n"
    rows = []
    for ev in rec.events:
        code = TUEV_KINDS.index(ev.kind) + 1
        for t in range(int(ev.onset_s), int(ev.offset_s)):
            rows += [f"{c},{fmt.format(t)},{fmt.format(t + 1)},{code}{end}" for c in ev.channels]
    target = edf_path.with_suffix(".rec")
    tmp = _tmp(target)
    tmp.write_bytes("".join(rows).encode())
    os.replace(tmp, target)
    return [target]


def write_fif(path: Path, rec: SyntheticRecording, source: BlockSource) -> list[Path]:
    """Write `source` (read block by block, never whole) as FIF at `path`; returns the files
    written: `path`, and `path`'s `-1.fif`, `-2.fif`, ... parts when it is over FIF's 2 GB limit.

    mne names the parts after the file and records those names inside it, so the parts are written
    under their final names in a temporary directory beside `path` and moved out, `path` last.
    """
    import mne

    ch_types = [_fif_channel_type(name) for name in rec.channels]
    info = mne.create_info(list(rec.channels), rec.sfreq, ch_types, verbose=False)
    info["line_freq"] = MAINS_HZ
    info.set_meas_date(
        datetime.datetime.combine(rec.start.date(), rec.start.time(), datetime.timezone.utc)
    )
    n_times = round(rec.sfreq * rec.duration_s)
    raw = _generated_raw(info, n_times, source)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = _tmp(path).with_suffix(".d")
    shutil.rmtree(tmp_dir, ignore_errors=True)  # left by a crashed run that had our pid
    tmp_dir.mkdir()
    try:
        # buffer_size_sec: 10 s of 313 channels at 1 kHz is ~25 MB of float64 per buffer.
        raw.save(tmp_dir / path.name, buffer_size_sec=10.0, overwrite=True, verbose=False)
        parts = sorted(p for p in tmp_dir.iterdir() if p.name != path.name)
        for part in [*parts, tmp_dir / path.name]:
            os.replace(part, path.parent / part.name)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return [path.parent / p.name for p in parts] + [path]


def _fif_channel_type(name: str) -> str:
    """Neuromag names: `MEG xxx1` magnetometers, `MEG xxx2/3` gradiometers; then by prefix."""
    if name.startswith("MEG"):
        return "mag" if name.endswith("1") else "grad"
    return {"EEG": "eeg", "EOG": "eog", "ECG": "ecg", "STI": "stim"}[name[:3]]


def _generated_raw(info: mne.Info, n_times: int, source: BlockSource) -> mne.io.BaseRaw:
    """A raw whose data mne reads from `source` as it saves (like a file reader, preload=False)."""
    import mne
    from mne._fiff.utils import _mult_cal_one

    class GeneratedRaw(mne.io.BaseRaw):
        def _read_segment_file(self, data, idx, fi, start, stop, cals, mult):
            _mult_cal_one(data, self._raw_extras[fi]["source"].read(start, stop), idx, cals, mult)

    return GeneratedRaw(
        info, preload=False, first_samps=(0,), last_samps=(n_times - 1,), filenames=(None,),
        raw_extras=[{"source": source}], orig_format="single", verbose=False,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The output directory and its marker.


def read_marker(out: Path) -> dict | None:
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("generator") != "brainpipe.synthetic":
        return None
    return marker


def prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise BrainpipeError(
            f"{out}: exists and is not a directory; choose a directory path for the synthetic corpus"
        )
    if not out.is_dir() or not any(out.iterdir()):
        return
    previous = read_marker(out)
    if previous is None:
        if overwrite:
            return
        raise BrainpipeError(
            f"{out}: directory is not empty and is not a synthetic corpus (no {MARKER}); "
            "choose an empty or new directory, or pass overwrite=True (--overwrite) to write into it anyway"
        )
    # Remove only what the previous run wrote, so a smaller corpus leaves no stale recordings.
    for rel in previous.get("files", []):
        parts = PurePosixPath(rel).parts
        if not parts or ".." in parts or PurePosixPath(rel).is_absolute():
            continue
        path = out.joinpath(*parts)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        for parent in path.parents:
            if parent == out or out not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:
                break  # not empty: something else lives there


def write_marker(out: Path, layout: str, seed: int, files: list[str], complete: bool) -> None:
    marker = {
        "generator": "brainpipe.synthetic",
        "format": _MARKER_FORMAT,
        "layout": layout,
        "seed": seed,
        "complete": complete,
        "files": files,
    }
    with atomic_output(out / MARKER) as tmp:
        tmp.write_text(json.dumps(marker, indent=1) + "\n")
