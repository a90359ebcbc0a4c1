"""EDF, EDF+, BDF and BDF+ headers and signal windows, read without mne.

Reads:  the fixed 256-byte header, the ns*256-byte signal header (or the same bytes already in
        memory: `read_header_bytes`), the annotation signals' bytes (`read_annotations`) and,
        for `read_signals`, only the data records that overlap the requested window.
Writes: nothing (`brainpipe synth` writes its EDF files with edfio).

Why hand-written: the `index` stage reads thousands of headers, often on network mounts where
every open and read costs milliseconds, and must finish in under a second. mne needs ~1 s to
import and `mne.io.read_raw_edf(preload=False)` ~1.6-2.2 ms per header (it also reads the
annotations); `read_header` takes ~55 us on a 33-signal TUH-like file read alone (pyedflib: ~105
us) and ~30 us per file over a corpus, whose repeated header blocks it converts once per scan,
with one open, one `fstat` and two small reads. numpy is imported only by `read_signals`.

    h = read_header("aaaaaaaa_s001_t000.edf")
    eeg = [i for i in h.signal_indices if h.sfreq(i) == 250.0]
    x = read_signals(h, eeg, start=0, stop=2500)   # (len(eeg), 2500) float64, in volts

Policies where files in the wild break the spec (each one a decision, not an accident):
- Size: the file must hold at least `header_bytes + n_records * record_bytes` bytes; fewer is an
  `EdfError` ("truncated"). Extra trailing bytes (a partial record left by a crashed recorder,
  padding) are ignored and `n_records` is the header's. mne instead re-derives n_records from
  the file size in both directions, with a warning.
- `n_records == -1` (recording still in progress) is inferred as the number of whole records in
  the file.
- Dates: the 2-digit year maps 85-99 to 19xx and 00-84 to 20xx (the EDF+ clipping rule). For
  EDF+/BDF+, the 4-digit year in the recording field's "Startdate dd-MMM-yyyy" wins when it
  agrees with the 2-digit one, and replaces it when the field holds the literal "yy" (years after
  2084). The sub-second start kept in EDF+ annotations is ignored. A date written with colons
  ("01:01:85", seen in TUSZ) is read as "01.01.85" and the repair noted in `notes`. An
  unparsable date gives `start=None` and a note (`on_bad_date="raise"`: an error), so the
  recording still indexes and its signals still read.
- Text fields are UTF-8 (EDFbrowser writes it) with a fallback to latin-1, cut at the first NUL
  and stripped. Numbers accept a decimal comma and NUL padding, as mne does.
- Digital min must be below digital max for data signals (annotation signals are not checked,
  they are never scaled). Physical min == max is kept as read; `read_signals` then uses a
  physical range of 1, like mne.
- A record duration of 0 is allowed only when every signal is an annotation signal.
- EDF+D/BDF+D (discontinuous) records are read back to back; `read_annotations` maps annotation
  times onto that timeline with each record's time-keeping onset.
- Annotations (`read_annotations`): TALs of every annotation signal, read record by record in
  chunks only when asked (the index reads them for EDF+/BDF+ files; plain EDF costs nothing).

Owns reading the EDF/BDF file format: headers, annotations and signal windows.
Long because it is one parser of one format: the policies above, each with the error line
that names the file and the fault, the header memo, and the annotation and signal readers
share the header's fields and checks, and read best in one place.
"""

from __future__ import annotations

import datetime
import functools
import math
import operator
import os
import re
import stat
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from brainpipe.errors import BrainpipeError

if TYPE_CHECKING:
    import numpy as np

_FIXED_BYTES = 256
_EDF_VERSION = b"0       "
_BDF_VERSION = b"\xffBIOSEMI"
ANNOTATION_LABELS = frozenset({"EDF Annotations", "BDF Annotations"})
# The ns field has 4 characters; 4096 signals covers high-density EEG, MEG and sEEG, and a larger
# claim is far likelier a corrupt byte than a real recording.
_MAX_SIGNALS = 4096

# Unit -> factor to volts. mne (1.13) knows only the micro variants and "mV" and treats every other
# unit, "nV" included, as volts; we scale nV too, so nV files read 1e9 times smaller than mne's
# get_data(). "\x83\xcaV" is a Shift-JIS mu read as latin-1, which mne accepts too.
_UNIT_SCALE = {
    "uV": 1e-6,
    "\u00b5V": 1e-6,
    "\u03bcV": 1e-6,
    "\x83\xcaV": 1e-6,
    "mV": 1e-3,
    "nV": 1e-9,
    "V": 1.0,
}

_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
    )
}


class EdfError(BrainpipeError):
    """An EDF/BDF file that cannot be read; the one-line message names the file and the reason."""


def is_annotation_label(label: str) -> bool:
    """True for an EDF+/BDF+ annotation signal ("EDF Annotations", "BDF Annotations")."""
    return label.strip() in ANNOTATION_LABELS


@dataclass(frozen=True, slots=True)
class EdfHeader:
    """Everything in an EDF/BDF header. Per-signal tuples cover ALL signals, annotations too."""

    path: str
    format: str  # "EDF", "EDF+C", "EDF+D", "BDF", "BDF+C", "BDF+D"
    start: datetime.datetime | None  # naive, from the header fields; None: unparsable date
    n_records: int
    record_duration: float  # s
    header_bytes: int
    sample_bytes: int  # 2 (EDF) or 3 (BDF)
    labels: tuple[str, ...]
    units: tuple[str, ...]
    samples_per_record: tuple[int, ...]
    physical_min: tuple[float, ...]
    physical_max: tuple[float, ...]
    digital_min: tuple[int, ...]
    digital_max: tuple[int, ...]
    prefilter: tuple[str, ...]
    transducer: tuple[str, ...]
    patient_id: str
    recording_id: str
    file_size: int  # bytes
    mtime_ns: int  # modification time at the read; with file_size, tells a changed file
    # Repairs and warnings about this header (a colon-separated date read, an unparsable
    # date left out), one line each, for the index's warning list.
    notes: tuple[str, ...] = ()

    @property
    def signal_indices(self) -> tuple[int, ...]:
        """Indices of the data signals (everything but annotation signals)."""
        if ANNOTATION_LABELS.isdisjoint(self.labels):  # plain EDF: no per-label loop
            return tuple(range(len(self.labels)))
        return tuple(i for i, lab in enumerate(self.labels) if lab not in ANNOTATION_LABELS)

    def sfreq(self, i: int) -> float:
        """Sample rate of signal i in Hz; 0.0 in annotation-only files (record duration 0)."""
        if self.record_duration == 0:
            return 0.0
        return self.samples_per_record[i] / self.record_duration

    def n_samples(self, i: int) -> int:
        """Number of samples of signal i in the whole recording."""
        return self.n_records * self.samples_per_record[i]

    @property
    def duration(self) -> float:
        """Recording length in s (for EDF+D, the recorded time without the gaps)."""
        return self.n_records * self.record_duration

    @property
    def record_bytes(self) -> int:
        """Size of one data record in bytes."""
        return sum(self.samples_per_record) * self.sample_bytes


# ---------------------------------------------------------------------------------------------
# header


def read_header(
    path: str | os.PathLike, memo: dict | None = None, on_bad_date: str = "warn"
) -> EdfHeader:
    """Read and check the header of an EDF/EDF+/BDF/BDF+ file: one open, two reads, one fstat.

    `memo`: a dict (start it empty) shared by the reads of one scan, threads included, so
    header blocks that repeat across files are converted once; the headers are the same with
    or without it.

    `on_bad_date`: "warn" (default) gives a header whose start date/time cannot be parsed
    `start=None` and a line in `notes` (clinical files carry such dates and their signals are
    fine); "raise" makes it an EdfError.

    Raises EdfError (one line: the path and what is wrong) for anything that is not a readable
    EDF/BDF file whose size agrees with its header.
    """
    spath = os.fspath(path)
    try:
        fd = os.open(spath, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise EdfError(f"{spath}: cannot open: {e.strerror or e}") from e
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise EdfError(f"{spath}: is a directory, not an EDF/BDF file")
        size = st.st_size
        if size == 0:
            raise EdfError(f"{spath}: empty file: 0 bytes, not an EDF/BDF recording")
        if size < _FIXED_BYTES:
            raise EdfError(
                f"{spath}: too short for an EDF/BDF header: {size} bytes, need at least 256"
            )
        fixed = _read_exact(fd, _FIXED_BYTES, spath)
        h = _parse_fixed(fixed, spath, size, on_bad_date)
        signal_header = _read_exact(fd, h["header_bytes"] - _FIXED_BYTES, spath)
    except OSError as e:
        raise EdfError(f"{spath}: cannot read: {e.strerror or e}") from e
    finally:
        os.close(fd)
    h["mtime_ns"] = st.st_mtime_ns
    return _parse_signals(signal_header, h, spath, size, memo)


def header_length(first256: bytes) -> int:
    """The header size an EDF/BDF declares in its first 256 bytes (the header-size field).

    For readers that fetch a header in pieces (an object store's range reads); a field that is
    no number gives 256, and `read_header_bytes` then reports what is wrong."""
    try:
        return max(_FIXED_BYTES, int(first256[184:192].strip() or b"0"))
    except ValueError:
        return _FIXED_BYTES


def read_header_bytes(
    buf: bytes, name: str, size: int, mtime_ns: int, memo: dict | None = None
) -> EdfHeader:
    """`read_header` of a header already in memory: `buf` holds at least the file's first
    `header_length` bytes, `size` is the whole file's (from a listing), `name` names it in errors."""
    if size == 0:
        raise EdfError(f"{name}: empty file: 0 bytes, not an EDF/BDF recording")
    if size < _FIXED_BYTES or len(buf) < _FIXED_BYTES:
        raise EdfError(f"{name}: too short for an EDF/BDF header: {size} bytes, need at least 256")
    h = _parse_fixed(buf[:_FIXED_BYTES], name, size)
    if len(buf) < h["header_bytes"]:
        raise EdfError(
            f"{name}: truncated header: wanted {h['header_bytes']} bytes, got {len(buf)}"
        )
    h["mtime_ns"] = mtime_ns
    return _parse_signals(buf[_FIXED_BYTES : h["header_bytes"]], h, name, size, memo)


def _read_exact(fd: int, n: int, path: str) -> bytes:
    # A regular file returns short reads only at EOF, so this is one read unless the file shrank
    # between fstat and read.
    data = os.read(fd, n)
    while len(data) < n:
        more = os.read(fd, n - len(data))
        if not more:
            raise EdfError(
                f"{path}: truncated header: wanted {n} bytes, file ended after {len(data)}"
            )
        data += more
    return data


def _parse_fixed(b: bytes, path: str, size: int, on_bad_date: str = "warn") -> dict:
    version = b[0:8]
    # Some writers pad the EDF "0" with NULs instead of spaces; the digit is what identifies it.
    if version == _EDF_VERSION or version.rstrip(b" \x00") == b"0":
        sample_bytes, family = 2, "EDF"
    elif version == _BDF_VERSION:
        sample_bytes, family = 3, "BDF"
    else:
        raise EdfError(
            f"{path}: not an EDF/BDF file: version field is {version!r}, "
            f"expected b'0       ' (EDF) or b'\\xffBIOSEMI' (BDF)"
        )
    reserved = b[192:236]
    if reserved[:5] in (b"EDF+C", b"BDF+C"):
        fmt = family + "+C"
    elif reserved[:5] in (b"EDF+D", b"BDF+D"):
        fmt = family + "+D"
    else:
        fmt = family

    ns = _int(b[252:256], "number of signals", path)
    if not 1 <= ns <= _MAX_SIGNALS:
        raise EdfError(f"{path}: number of signals is {ns}, expected 1 to {_MAX_SIGNALS}")
    header_bytes = _int(b[184:192], "header size", path)
    if header_bytes != _FIXED_BYTES * (ns + 1):
        raise EdfError(
            f"{path}: header size field says {header_bytes} bytes but {ns} signals need "
            f"{_FIXED_BYTES * (ns + 1)}"
        )
    if size < header_bytes:
        raise EdfError(
            f"{path}: truncated header: {ns} signals need a {header_bytes}-byte header "
            f"but the file has {size} bytes"
        )
    n_records = _int(b[236:244], "number of data records", path)
    if n_records < -1:
        raise EdfError(f"{path}: number of data records is {n_records}, expected >= -1")
    record_duration = _float(b[244:252], "data record duration", path)
    if record_duration < 0:
        raise EdfError(f"{path}: data record duration is {record_duration} s, expected >= 0")

    patient_id = _text(b[8:88])
    recording_id = _text(b[88:168])
    try:
        start, notes = _start(b[168:176], b[176:184], recording_id, fmt != family, path)
    except EdfError as e:
        if on_bad_date != "warn":
            raise
        start, notes = None, (str(e)[len(path) + 2 :] + "; start time left empty",)
    return {
        "format": fmt,
        "ns": ns,
        "header_bytes": header_bytes,
        "sample_bytes": sample_bytes,
        "n_records": n_records,
        "record_duration": record_duration,
        "patient_id": patient_id,
        "recording_id": recording_id,
        "start": start,
        "notes": notes,
    }


# Signal-header fields in file order with their widths; every field holds one entry per signal.
_SIGNAL_FIELDS = (16, 80, 8, 8, 8, 8, 8, 80, 8, 32)


@functools.lru_cache(maxsize=256)
def _field_struct(width: int, ns: int) -> struct.Struct:
    # One unpack splits a block's ns fields in C; slicing them one by one in Python was 2x slower.
    return struct.Struct(f"{width}s" * ns)


# Header memos: a plain dict a caller passes to every `read_header` of one scan.
#
# A corpus repeats its headers' per-signal blocks: one amplifier writes the same ranges, units,
# filters and rates into thousands of files, and one montage the same labels (in a synthetic
# 2,717-file TUAB tree, 14 to 104 distinct blocks per field; labels repeat label by label).
# Converting a block once per scan instead of once per file took the signal-header parse of that
# tree from ~70 us to ~10 us per file. The memo holds one dict per field, keyed by raw bytes: the
# same bytes in two fields keep their own meaning ("256.0" is a valid digital minimum but not a
# samples-per-record count). Only successful conversions are stored, so a bad field still
# raises with the message of the file that holds it. Values are immutable and dict get/set are
# atomic under the GIL, so the threads of one scan share one memo. Bounded: a field's dict is
# emptied when its keys pass _MEMO_FIELD_BYTES.
_MEMO_FIELD_BYTES = 8 << 20
_LABELS, _ALL = -1, -2  # memo fields beside the eight blocks 0..7


def _field_memo(memo: dict, field: int, key_bytes: int) -> dict:
    d = memo.get(field)
    if d is None:
        d = memo.setdefault(field, {})
    elif len(d) * key_bytes > _MEMO_FIELD_BYTES:  # a field's keys all have about this size
        d.clear()
    return d


def _memoized(memo: dict | None, field: int, raw: bytes, convert: Callable, *args: Any) -> Any:
    """convert(*args), the value of `raw` in `field`, looked up in or stored into `memo`."""
    if memo is None or len(raw) > _MEMO_FIELD_BYTES:
        return convert(*args)
    d = _field_memo(memo, field, len(raw))
    v = d.get(raw)
    if v is None:
        v = d[raw] = convert(*args)
    return v


def _labels(block: bytes, ns: int, memo: dict | None) -> tuple[str, ...]:
    fields = _field_struct(16, ns).unpack(block)
    if memo is None:
        return _texts(fields, b"\x00" in block)
    # Label by label: a corpus reorders and varies its channels far more than it varies the
    # labels themselves (849 distinct label blocks in the tree above, of a few dozen labels).
    d = _field_memo(memo, _LABELS, 16)
    try:
        return tuple(map(d.__getitem__, fields))
    except KeyError:
        # Per label, _text gives exactly what the block-wise _texts gives.
        out = []
        for f in fields:
            v = d.get(f)
            if v is None:
                v = d[f] = _text(f)
            out.append(v)
        return tuple(out)


def _blocks(b: bytes, ns: int, labels: tuple[str, ...], path: str, memo: dict | None) -> tuple:
    """The eight blocks after the labels as values, then whether their numbers pass the
    label-independent checks, then the samples in one data record."""
    blocks = []
    o = 0
    for k, w in enumerate(_SIGNAL_FIELDS[1:9]):
        block = b[o : o + w * ns]
        o += w * ns
        blocks.append(_memoized(memo, k, block, _convert_block, k, block, ns, labels, path))
    digital_min, digital_max, samples = blocks[4], blocks[5], blocks[7]
    ok = min(samples) >= 0 and not any(map(operator.ge, digital_min, digital_max))
    return (*blocks, ok, sum(samples))


def _parse_signals(b: bytes, h: dict, path: str, size: int, memo: dict | None) -> EdfHeader:
    ns = h["ns"]
    labels = _labels(b[: 16 * ns], ns, memo)
    # The eight blocks together with their checks: a corpus has a few hundred such combinations,
    # so one lookup instead of eight. Up to the reserved fields, which nothing reads.
    rest = b[16 * ns : 224 * ns]
    v = _memoized(memo, _ALL, rest, _blocks, rest, ns, labels, path, memo)
    (
        transducer,
        units,
        physical_min,
        physical_max,
        digital_min,
        digital_max,
        prefilter,
        samples,
        ok,
        record_samples,
    ) = v

    if not ok:  # name the offending signal (the digital range of annotations does not count)
        for i in range(ns):
            if samples[i] < 0:
                raise EdfError(
                    f"{path}: signal {i} ({labels[i]!r}): samples per record is {samples[i]}, "
                    f"expected >= 0"
                )
            # Annotation signals are never scaled, so their digital range does not matter.
            if digital_min[i] >= digital_max[i] and labels[i] not in ANNOTATION_LABELS:
                raise EdfError(
                    f"{path}: signal {i} ({labels[i]!r}): digital minimum {digital_min[i]} is "
                    f"not below digital maximum {digital_max[i]}"
                )
    has_data = not ANNOTATION_LABELS.issuperset(labels)
    record_bytes = record_samples * h["sample_bytes"]
    if record_bytes == 0:
        raise EdfError(f"{path}: every signal has 0 samples per record")
    if has_data and h["record_duration"] == 0:
        raise EdfError(
            f"{path}: data record duration is 0 s but the file has data signals "
            f"(0 is allowed only in annotation-only files)"
        )

    header_bytes = h["header_bytes"]
    n_records = h["n_records"]
    available = (size - header_bytes) // record_bytes
    if n_records == -1:
        n_records = available
    elif n_records > available:
        need = header_bytes + n_records * record_bytes
        raise EdfError(
            f"{path}: truncated: header says {n_records} data records ({need} bytes with the "
            f"header) but the file has {size} bytes ({available} whole records)"
        )

    return EdfHeader(
        path=path,
        format=h["format"],
        start=h["start"],
        n_records=n_records,
        record_duration=h["record_duration"],
        header_bytes=header_bytes,
        sample_bytes=h["sample_bytes"],
        labels=labels,
        units=units,
        samples_per_record=samples,
        physical_min=physical_min,
        physical_max=physical_max,
        digital_min=digital_min,
        digital_max=digital_max,
        prefilter=prefilter,
        transducer=transducer,
        patient_id=h["patient_id"],
        recording_id=h["recording_id"],
        file_size=size,
        mtime_ns=h["mtime_ns"],
        notes=h["notes"],
    )


def _convert_block(k: int, block: bytes, ns: int, labels: tuple[str, ...], path: str) -> tuple:
    """Block k (0: transducer ... 7: samples per record) of the signal header as values."""
    fields = _field_struct(_SIGNAL_FIELDS[k + 1], ns).unpack(block)
    if k in (0, 1, 6):
        return _texts(fields, b"\x00" in block)
    if k in (2, 3):
        what = "physical minimum" if k == 2 else "physical maximum"
        return _floats(fields, what, labels, path)
    if k in (4, 5):
        what = "digital minimum" if k == 4 else "digital maximum"
        return _ints(fields, what, labels, path, integral_float=True)
    return _ints(fields, "samples per record", labels, path)


def _text(b: bytes) -> str:
    b = b.split(b"\x00", 1)[0].strip()
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b.decode("latin-1")


def _by_value(fn: Callable[[bytes], Any], fields: Sequence[bytes]) -> tuple:
    """tuple(map(fn, fields)), converting each distinct field once.

    Writers give all channels of one amplifier the same range, unit, filter and rate fields
    (TUH files: one or two distinct values per block of ~30), and converting each field was
    half the header parse. Exceptions from fn propagate as they would from the plain map.
    """
    distinct = set(fields)
    if 2 * len(distinct) > len(fields):
        return tuple(map(fn, fields))
    table = {f: fn(f) for f in distinct}
    return tuple(map(table.__getitem__, fields))


def _strict_text(b: bytes) -> str:
    return b.strip().decode()  # UTF-8, strict


def _texts(fields: Sequence[bytes], nul: bool) -> tuple[str, ...]:
    if not nul:
        try:
            return _by_value(_strict_text, fields)
        except UnicodeDecodeError:
            pass
    return _by_value(_text, fields)


def _num_str(b: bytes) -> str:
    return b.split(b"\x00", 1)[0].decode("latin-1").strip()


def _to_float(s: str) -> float:
    """The number in s (a decimal comma allowed, as mne does), NaN when there is none."""
    try:
        return float(s.replace(",", "."))
    except ValueError:
        return math.nan


def _int(b: bytes, what: str, path: str) -> int:
    # int() parses space-padded ASCII bytes in C, the same way as their decoded text; NULs or
    # non-ASCII spaces take the slow path.
    try:
        return int(b)
    except ValueError:
        pass
    s = _num_str(b)
    try:
        return int(s)
    except ValueError:
        raise EdfError(f"{path}: {what} field is {s!r}, not an integer") from None


def _float(b: bytes, what: str, path: str) -> float:
    try:
        v = float(b)  # as in _int
    except ValueError:
        v = math.nan
    if math.isfinite(v):
        return v
    s = _num_str(b)
    v = _to_float(s)
    if not math.isfinite(v):
        raise EdfError(f"{path}: {what} field is {s!r}, not a finite number")
    return v


def _num(b: bytes) -> str:
    # mne's rule for numbers: cut at the first NUL, accept a decimal comma.
    return b.split(b"\x00", 1)[0].decode("latin-1").strip().replace(",", ".")


def _floats(
    fields: Sequence[bytes], what: str, labels: tuple[str, ...], path: str
) -> tuple[float, ...]:
    # Fast path: float() parses space-padded bytes in C; the loop below runs only for files
    # with NULs or decimal commas, or to name the bad field.
    try:
        values = _by_value(float, fields)
        # A NaN or infinity anywhere makes the sum non-finite (so can an overflow of finite
        # values, which the loop below then accepts): one C-level check instead of one per field.
        if math.isfinite(sum(values)):
            return values
    except ValueError:
        pass
    out = []
    for i, f in enumerate(fields):
        v = _to_float(_num(f))
        if not math.isfinite(v):
            raise EdfError(
                f"{path}: signal {i} ({labels[i]!r}): {what} is {_num_str(f)!r}, "
                f"not a finite number"
            )
        out.append(v)
    return tuple(out)


def _ints(
    fields: Sequence[bytes],
    what: str,
    labels: tuple[str, ...],
    path: str,
    integral_float: bool = False,
) -> tuple[int, ...]:
    try:
        return _by_value(int, fields)
    except ValueError:
        pass
    out = []
    for i, f in enumerate(fields):
        s = _num(f)
        try:
            out.append(int(s))
            continue
        except ValueError:
            pass
        # Some writers put "-32768.0" in the digital fields; mne parses them as floats.
        v = _to_float(s) if integral_float else math.nan
        if not (math.isfinite(v) and v == int(v)):
            raise EdfError(
                f"{path}: signal {i} ({labels[i]!r}): {what} is {_num_str(f)!r}, not an integer"
            )
        out.append(int(v))
    return tuple(out)


def _start(
    date_b: bytes, time_b: bytes, recording_id: str, edf_plus: bool, path: str
) -> tuple[datetime.datetime, tuple[str, ...]]:
    """The start date-time and the repairs made to read it."""
    date_s = date_b.decode("latin-1")
    time_s = time_b.decode("latin-1")
    notes: tuple[str, ...] = ()
    try:
        day, month, yy = _date_parts(date_s)
        if ":" in date_s:  # some TUSZ files write "01:01:85"
            notes = (f"start date {date_s!r} written with colons, read as 'dd.mm.yy'",)
        day_i, month_i = int(day), int(month)
        full_year = _recording_year(recording_id) if edf_plus else None
        if yy.strip().lower() == "yy":
            if full_year is None:
                raise ValueError("year 'yy' without a Startdate in the recording field")
            year = full_year
        else:
            yy_i = int(yy)
            if not 0 <= yy_i <= 99:
                raise ValueError("2-digit year out of range")
            year = yy_i + (1900 if yy_i >= 85 else 2000)
            if full_year is not None and full_year % 100 == yy_i:
                year = full_year
        # The spec says "hh.mm.ss"; some writers use colons.
        hh, mm, ss = time_s.replace(":", ".").split(".")
        return datetime.datetime(year, month_i, day_i, int(hh), int(mm), int(ss)), notes
    except (ValueError, OverflowError):
        raise EdfError(
            f"{path}: start date/time fields are {date_s!r} {time_s!r}, "
            f"expected 'dd.mm.yy' 'hh.mm.ss'"
        ) from None


def _date_parts(date_s: str) -> list[str]:
    # The spec says "dd.mm.yy"; TUSZ has "dd:mm:yy". Mixed separators are not a date.
    parts = date_s.split(".")
    if len(parts) == 1:
        parts = date_s.split(":")
    if len(parts) != 3:
        raise ValueError("not dd.mm.yy")
    return parts


def _recording_year(recording_id: str) -> int | None:
    # EDF+ recording field: "Startdate 02-MAR-2002 ..."; "Startdate X" when unknown.
    parts = recording_id.split(None, 2)
    if len(parts) < 2 or parts[0] != "Startdate":
        return None
    d = parts[1].split("-")
    if len(d) != 3 or d[1].upper() not in _MONTHS or len(d[2]) != 4 or not d[2].isdigit():
        return None
    return int(d[2])


# ---------------------------------------------------------------------------------------------
# annotations


class EdfAnnotation(NamedTuple):
    """One EDF+/BDF+ annotation: seconds from the first sample, seconds long, its text."""

    onset_s: float
    duration_s: float
    description: str


def read_annotations(header: EdfHeader) -> tuple[EdfAnnotation, ...]:
    """The annotations of every annotation signal of an EDF+/BDF+ file, sorted by onset.

    Onsets count seconds from the first sample, as mne's `raw.annotations` do: the first
    record's time-keeping TAL (the sub-second start) is subtracted. In EDF+D/BDF+D files each
    record's own time-keeping TAL gives its onset, and annotation times are mapped onto the
    records read back to back (what `read_signals` returns): a time inside a gap maps to the
    start of the next record. Plain EDF/BDF: (). Annotations without text (time-keeping) are
    left out. Text is UTF-8 (latin-1 when it is not).

    Reads only the annotation signals' bytes (a memory map) and finds the TALs of each with one
    regex pass, as mne does: most records hold only their time-keeping TAL, and a per-record
    parse in Python cost more than the header read.
    """
    ann = [i for i, lab in enumerate(header.labels) if lab in ANNOTATION_LABELS]
    if not ann or header.n_records == 0:
        return ()

    sb = header.sample_bytes
    spr = header.samples_per_record
    spans = [(sum(spr[:i]) * sb, spr[i] * sb) for i in ann]
    # A slot too small for any text cannot hold an annotation: each record's first signal starts
    # with its time-keeping TAL, so text there needs 7 bytes at least ("+0\x14\x14x\x14\x00"),
    # and a TAL with text elsewhere 6 ("+0\x14x\x14\x00"). edfio sizes the slot to what it
    # writes, so its files without annotations (a quarter of the benchmark tree, where reading
    # them cost 20% of a cold index) are answered without a read.
    if spans[0][1] < 7 and all(n < 6 for _, n in spans[1:]):
        return ()
    signals = _annotation_bytes(header, spans)  # per annotation signal, per data record
    first = signals[0]
    plus_d = header.format.endswith("+D") and header.record_duration > 0
    onsets = [_record_onset(b, header.path) for b in (first if plus_d else first[:1])]
    t0 = onsets[0]
    place = _gap_mapper(onsets, header.record_duration) if plus_d else None
    out = []
    for records in signals:
        for m in _TAL.finditer(b"".join(records)):
            onset = float(m[1])
            duration = float(m[2]) if m[2] else 0.0
            for text in m[3].split(b"\x14"):
                if not text:
                    continue
                if place is None:
                    out.append(EdfAnnotation(onset - t0, duration, _tal_text(text)))
                else:
                    a = place(onset)
                    out.append(EdfAnnotation(a, place(onset + duration) - a, _tal_text(text)))
    if header.record_duration > 0 and not ANNOTATION_LABELS.issuperset(header.labels):
        out = _clip(out, header.n_records * header.record_duration)
    out.sort(key=lambda a: a.onset_s)  # stable: file order among equal onsets
    return tuple(out)


def _clip(annotations: list[EdfAnnotation], end: float) -> list[EdfAnnotation]:
    # As mne does for a recording's own annotations: none starts after the data ends, and
    # durations stop at its end. An annotation-only file (a hypnogram) has no data to clip to.
    return [
        a if a.onset_s + a.duration_s <= end else a._replace(duration_s=end - a.onset_s)
        for a in annotations
        if a.onset_s <= end
    ]


# A TAL with text: onset, optional duration, then annotations each ended by 0x14, then a NUL.
# Time-keeping TALs ("+12\x14\x14\x00") have no text and do not match.
_TAL = re.compile(rb"([+-]\d+(?:\.\d*)?)(?:\x15(\d*(?:\.\d*)?))?\x14\x14?([^\x14\x00][^\x00]*)\x00")


def _record_onset(block: bytes, path: str) -> float:
    """The onset of a data record: its first TAL (time-keeping), seconds from the start date."""
    head = block.split(b"\x14", 1)[0].partition(b"\x15")[0]
    try:
        v = float(head)
    except ValueError:
        v = math.nan
    if not math.isfinite(v):
        raise EdfError(
            f"{path}: annotation signal does not start with a time-keeping TAL "
            f"(found {head[:20]!r})"
        )
    return v


# Files of at most this many data records are read with one small read per record and
# annotation signal; longer ones through a memory map.
_READ_PER_RECORD = 512


def _annotation_bytes(header: EdfHeader, spans: list[tuple[int, int]]) -> list[list[bytes]]:
    """Each annotation signal's bytes, one item per data record.

    Only those bytes are read: a file of a few records with one small read per record (13
    records: 12 us, where reading the whole 175 kB file cost about as much per file and 4x
    more over a corpus, copying every sample), a long one through a memory map (set-up ~25 us,
    then only the pages holding annotations are touched)."""
    rb, n_rec, base = header.record_bytes, header.n_records, header.header_bytes
    size = n_rec * rb
    try:
        fd = os.open(header.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            if header.file_size < base + size:  # as at the header read: no fstat
                raise EdfError(
                    f"{header.path}: file ended inside the data records; it changed after its "
                    f"header was read"
                )
            if n_rec <= _READ_PER_RECORD:
                pread = os.pread
                return [
                    [pread(fd, n, a) for a in range(base + o, base + size, rb)] for o, n in spans
                ]
            import mmap

            with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mm:
                return [[mm[a : a + n] for a in range(base + o, base + size, rb)] for o, n in spans]
        finally:
            os.close(fd)
    except OSError as e:
        raise EdfError(f"{header.path}: cannot read: {e.strerror or e}") from e


def _tal_text(b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b.decode("latin-1")


def _gap_mapper(record_onsets: list[float], record_duration: float) -> Callable[[float], float]:
    """Time since the start date (EDF+D) -> seconds into the records read back to back."""
    import bisect

    def place(t: float) -> float:
        r = max(0, bisect.bisect_right(record_onsets, t) - 1)
        into = t - record_onsets[r]
        return r * record_duration + min(max(into, 0.0), record_duration)

    return place


# ---------------------------------------------------------------------------------------------
# signals


def read_signals(header: EdfHeader, picks: Sequence[int], start: int, stop: int) -> np.ndarray:
    """Samples [start, stop) of the signals `picks`, as float64 volts, shape (len(picks), n).

    `picks` index `header.labels` and must share one samples_per_record (so one sample rate);
    `start`/`stop` count samples at that rate. Only the data records overlapping the window are
    read (one seek, one read). Scaling is mne's: (dig * cal + pmin - dmin * cal) * unit factor,
    cal = (pmax - pmin) / (dmax - dmin), with a physical range of 0 taken as 1.
    """
    import numpy as np

    picks = [int(p) for p in picks]
    start, stop = int(start), int(stop)
    if not picks:
        if stop < start:
            raise ValueError(f"stop {stop} < start {start}")
        return np.empty((0, stop - start), dtype=np.float64)
    spr = _window_rate(header, picks, start, stop)
    if stop == start:
        return np.empty((len(picks), 0), dtype=np.float64)
    r0 = start // spr
    r1 = -(-stop // spr)
    record_bytes = header.record_bytes
    # Like np.fromfile(offset=, count=) over the records as (n_records, record_bytes), minus the
    # Python file object: one open, one seek, one read of just the overlapping records.
    buf = np.empty((r1 - r0, record_bytes), dtype=np.uint8)
    _read_into(header.path, header.header_bytes + r0 * record_bytes, buf, record_bytes, r0)
    dig = _digital(buf, header, picks, spr, start - r0 * spr, stop - r0 * spr)
    return _to_volts(dig, header, picks)


def _window_rate(header: EdfHeader, picks: list[int], start: int, stop: int) -> int:
    """The picks' one samples-per-record count, after checking the picks and the window."""
    ns = len(header.labels)
    for p in picks:
        if not 0 <= p < ns:
            raise ValueError(f"pick {p} out of range for {ns} signals in {header.path}")
        if header.labels[p] in ANNOTATION_LABELS:
            raise ValueError(f"pick {p} is an annotation signal in {header.path}")
    spr_all = header.samples_per_record
    spr = spr_all[picks[0]]
    if any(spr_all[p] != spr for p in picks):
        raise ValueError(
            f"picks {picks} mix samples per record {sorted({spr_all[p] for p in picks})} "
            f"in {header.path}; read each rate separately"
        )
    n_total = header.n_records * spr
    if not 0 <= start <= stop <= n_total:
        raise ValueError(
            f"window [{start}, {stop}) outside [0, {n_total}] samples in {header.path}"
        )
    return spr


def _digital(
    buf: np.ndarray, header: EdfHeader, picks: list[int], spr: int, a: int, b: int
) -> np.ndarray:
    """The picks' digital values, samples [a, b) of the records in `buf`, as (picks, b - a)."""
    import numpy as np

    sb = header.sample_bytes
    n_rec = buf.shape[0]
    # Stage the picked signals as (picks, records, samples) integers, then view them as one
    # continuous row per pick; a per-pick slice copy beats a fancy-index gather by ~5x.
    first = [sum(header.samples_per_record[:p]) * sb for p in picks]
    if sb == 2:
        stage = np.empty((len(picks), n_rec, spr * 2), dtype=np.uint8)
        for j, o in enumerate(first):
            stage[j] = buf[:, o : o + spr * 2]
        return stage.view("<i2").reshape(len(picks), n_rec * spr)[:, a:b]
    # 24-bit little-endian two's complement: copy the 3 bytes into the low bytes of a 4-byte
    # word, then shift left and (arithmetically) right to extend the sign.
    stage = np.zeros((len(picks), n_rec, spr, 4), dtype=np.uint8)
    for j, o in enumerate(first):
        stage[j, :, :, :3] = buf[:, o : o + spr * 3].reshape(n_rec, spr, 3)
    dig = stage.view("<i4").reshape(len(picks), n_rec * spr)[:, a:b]
    dig <<= 8
    dig >>= 8
    return dig


def _to_volts(dig: np.ndarray, header: EdfHeader, picks: list[int]) -> np.ndarray:
    """Digital values scaled to float64 volts (mne's calibration, see `read_signals`)."""
    import numpy as np

    pmin = np.array([header.physical_min[p] for p in picks])
    pmax = np.array([header.physical_max[p] for p in picks])
    dmin = np.array([header.digital_min[p] for p in picks], dtype=np.float64)
    dmax = np.array([header.digital_max[p] for p in picks], dtype=np.float64)
    prange = pmax - pmin
    prange[prange == 0] = 1.0  # as mne: keep the digital values rather than divide by zero
    cal = prange / (dmax - dmin)
    offset = pmin - dmin * cal
    gain = np.array([_UNIT_SCALE.get(header.units[p], 1.0) for p in picks])
    # mne computes (dig * cal + offset) * gain; folding the gain in saves a pass over the data
    # and differs by an ulp or two.
    out = np.multiply(dig, (cal * gain)[:, None])
    out += (offset * gain)[:, None]
    return out


def _read_into(path: str, offset: int, buf: np.ndarray, record_bytes: int, r0: int) -> None:
    view = memoryview(buf).cast("B")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            os.lseek(fd, offset, os.SEEK_SET)
            got = 0
            while got < len(view):
                n = os.readv(fd, [view[got:]])
                if not n:
                    raise EdfError(
                        f"{path}: file ended inside data record {r0 + got // record_bytes}; "
                        f"it changed after its header was read"
                    )
                got += n
        finally:
            os.close(fd)
    except OSError as e:
        raise EdfError(f"{path}: cannot read: {e.strerror or e}") from e
