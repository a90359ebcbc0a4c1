"""The TUSZ annotation file format: a reader for every variant TUH ships and a hypothesis writer.

Owns reading `.csv_bi` (term-based), `.csv` (per TCP channel), `.tse`/`.tse_bi` (TUSZ v1) and
writing hypothesis `.csv_bi` files in TUSZ's own form, so any external scorer (NEDC
`nedc_eeg_eval`, SzCORE) reads what `predict` writes and `score` reads both sides through one
parser. Nothing here opens a recording.

A TUSZ v2 `.csv_bi` file, as TUH ships it (the `.csv` form has one row per TCP channel, e.g.
`FP1-F7`, with the seizure type as the label):

    # version = csv_v1.0.0
    # bname = aaaaaaac_s001_t000
    # duration = 301.00 secs
    # montage_file = $NEDC_NFC/lib/nedc_eas_default_montage.txt
    #
    channel,start_time,stop_time,label,confidence
    TERM,0.0000,42.2786,bckg,1.0000
    TERM,42.2786,81.7760,seiz,1.0000
    TERM,81.7760,301.0000,bckg,1.0000

A TUSZ v1 `.tse` file (`start stop label confidence`, whitespace-separated; rows tile the whole
recording, background included):

    version = tse_v1.0.0

    0.0000 42.2786 bckg 1.0000
    42.2786 81.7760 cpsz 1.0000

What the reader accepts, because real releases vary: header lines with or without spaces around
`=` (`#duration=300.00 secs`), a bare `#`, extra keys (`# label = seiz`, `annotation_label_file`),
blank lines, fields padded with spaces, no trailing newline, columns in any order (found by
name), files holding only seizure rows (gaps are background), a missing `confidence` column.
Every non-background label is a seizure unless `seizure_labels` says otherwise; labels outside
`SEIZURE_LABELS` and `BACKGROUND_LABELS` are listed in `Annotations.unknown_labels` so the
index can report them. Events past the recording's end are clipped and counted.

A TUEV (TUH EEG Events v2) `.rec` file: one comma-separated row per annotated channel-second,
`channel,start,stop,class`, the channel an index into the 22-channel TCP montage (0 = FP1-F7 ...
21 = P4-O2, `preprocess.TCP_PAIRS`' order), the class a code 1-6 (`TUEV_CLASSES`):

    14,53.0000,54.0000,6
    15,53.0000,54.0000,6

`read_rec` takes what the release and files re-saved by tools hold: integer or float fields
("14" or "14.0", "53" or "5.3e1"), padding, blank lines, CRLF, a byte-order mark, `#` comments.

What it refuses, with one BrainpipeError naming the file and the line: a label that is not a
name (a number, a NUL byte, 200,000 characters: the signature of a header whose column order
does not match its rows), a channel that is not a name, a time or confidence that is not a
finite number, a negative onset, an onset after its offset. One bad file costs one recording.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from brainpipe.errors import BrainpipeError
from brainpipe.fsutil import atomic_output

# TUSZ labels every non-background event with a seizure type; these are the ones TUH documents.
SEIZURE_LABELS = frozenset(
    {"seiz", "fnsz", "gnsz", "cpsz", "absz", "spsz", "tcsz", "tnsz", "mysz", "atsz", "cnsz"}
)
# Labels that are not seizures: background and the TUH artifact/event classes.
BACKGROUND_LABELS = frozenset(
    {"bckg", "null", "artf", "eyem", "chew", "shiv", "musc", "elpp", "elec"}
)
# TUEV's `.rec` class codes (its README: 1 spsw ... 6 bckg), in code order.
TUEV_CLASSES = ("spsw", "gped", "pled", "eyem", "artf", "bckg")
# TUEV's `.rec` channel numbers index this montage (the NEDC TCP order, as preprocess.TCP_PAIRS).
TUEV_CHANNELS = (
    "FP1-F7", "F7-T3", "T3-T5", "T5-O1", "FP2-F8", "F8-T4", "T4-T6", "T6-O2",
    "A1-T3", "T3-C3", "C3-CZ", "CZ-C4", "C4-T4", "T4-A2",
    "FP1-F3", "F3-C3", "C3-P3", "P3-O1", "FP2-F4", "F4-C4", "C4-P4", "P4-O2",
)  # fmt: skip
REC_SUFFIX = ".rec"
CSV_VERSION = "csv_v1.0.0"
TSE_VERSION = "tse_v1.0.0"
TSE_SUFFIXES = (".tse", ".tse_bi")
# The kinds (`errors.reason_kind`) of the index warnings a recording's annotation file can give:
# the index writes them, `reporting` counts them and a seizure cache skips recordings with the
# first two (an unlabelled recording is not background).
ANNOTATIONS_MISSING = "annotations missing"
ANNOTATIONS_UNPARSABLE = "annotations unparsable"
UNKNOWN_LABEL = "unknown annotation label"
EVENTS_CLIPPED = "events clipped"
_CSV_COLUMNS = ("channel", "start_time", "stop_time", "label", "confidence")

# A label is a short name (TUH's are 4 letters); a channel is a TCP pair like "FP1-F7", which
# some files pad ("FP1 - F7"). Anything else means the columns were misread.
_LABEL = re.compile(r"[a-z][a-z0-9_\-]{0,31}")
_CHANNEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\- ]{0,63}")


@dataclass(frozen=True, slots=True)
class Event:
    """One annotated interval, seconds from the recording's start."""

    onset_s: float
    offset_s: float
    label: str
    channel: str = "TERM"
    confidence: float = 1.0


@dataclass(frozen=True)
class Annotations:
    """What one annotation file says.

    events: the seizure events, in file order, clipped to the recording (background dropped).
    duration_s: the recording's length: the `# duration` header of a `.csv`/`.csv_bi` (None when
        the file has none), or, for `.tse`, the end of its last row (v1 rows tile the recording).
    unknown_labels: non-background labels not in SEIZURE_LABELS (sorted); counted as seizures
        unless `seizure_labels` was given.
    n_clipped: events cut at (or dropped past) the recording's end.
    """

    path: str
    events: tuple[Event, ...]
    duration_s: float | None
    unknown_labels: tuple[str, ...] = ()
    n_clipped: int = 0


def read_annotations(
    path: str | Path,
    duration_s: float | None = None,
    seizure_labels: Iterable[str] | None = None,
) -> Annotations:
    """Read one TUSZ annotation file (`.csv_bi`, `.csv`, `.tse`, `.tse_bi`).

    duration_s: the recording's length in seconds (e.g. from its EDF); events are clipped to it,
        and it wins over the file's own `# duration`. Without it the file's duration clips.
    seizure_labels: the labels that count as seizure; others are dropped as background. None:
        every label outside BACKGROUND_LABELS is a seizure.
    """
    p = Path(path)
    lines = read_text_lines(p)
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    is_tse = p.suffix.lower() in TSE_SUFFIXES or first.replace(" ", "").startswith("version=tse")
    rows, file_duration = (_tse_rows if is_tse else _csv_rows)(p, lines)
    seiz = None if seizure_labels is None else frozenset(s.lower() for s in seizure_labels)
    limit = duration_s if duration_s is not None else file_duration
    events, unknown, clipped = [], set(), 0
    for ev in rows:
        if ev.label not in BACKGROUND_LABELS and ev.label not in SEIZURE_LABELS:
            unknown.add(ev.label)
        is_seizure = ev.label not in BACKGROUND_LABELS if seiz is None else ev.label in seiz
        if not is_seizure:
            continue
        if ev.offset_s == ev.onset_s:  # covers no sample; not worth failing a recording over
            continue
        if limit is not None and ev.offset_s > limit:
            clipped += 1
            if ev.onset_s >= limit:
                continue
            ev = Event(ev.onset_s, limit, ev.label, ev.channel, ev.confidence)
        events.append(ev)
    duration = duration_s if duration_s is not None else file_duration
    return Annotations(str(p), tuple(events), duration, tuple(sorted(unknown)), clipped)


def parse_annotations(path: str | Path) -> list[Event]:
    """The seizure events of one annotation file (see read_annotations), as a list."""
    return list(read_annotations(path).events)


def merge_channel_events(events: list[Event]) -> list[Event]:
    """Per-channel `.csv` events to term-level events: the union of intervals across channels."""
    if not events:
        return []
    spans = sorted((e.onset_s, e.offset_s, e.label) for e in events)
    merged = [list(spans[0])]
    for on, off, lab in spans[1:]:
        if on <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], off)
        else:
            merged.append([on, off, lab])
    return [Event(on, off, lab, "TERM") for on, off, lab in merged]


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def decode_text(data: bytes) -> str:
    """An annotation or manifest file's bytes as text, byte-order mark removed: Windows editors
    save UTF-8 with a BOM (which otherwise sticks to the first header field) or UTF-16."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    return data.decode("utf-8-sig", errors="replace")


def read_text_lines(p: Path) -> list[str]:
    try:
        return decode_text(p.read_bytes()).splitlines()
    except OSError as e:
        raise BrainpipeError(f"{p}: cannot read annotations ({e.strerror})") from e


def _unquote(field: str) -> str:
    # TUH never quotes, but a file re-saved by a spreadsheet does
    field = field.strip()
    return field[1:-1].strip() if len(field) > 1 and field[0] == field[-1] == '"' else field


def _number(p: Path, lineno: int, what: str, field: str) -> float:
    field = _unquote(field)
    try:
        v = float(field)
    except ValueError:
        raise BrainpipeError(
            f"{p}: row {lineno}: {what} {_show(field)} is not a number; "
            "check the header's column order against the rows"
        ) from None
    if not math.isfinite(v):
        raise BrainpipeError(f"{p}: row {lineno}: {what} is {field.strip()}, not a finite number")
    return v


def _show(field: str) -> str:
    return repr(field[:40] + ("..." if len(field) > 40 else ""))


def _event(
    p: Path, lineno: int, on: str, off: str, label: str, channel: str, conf: str | None
) -> Event:
    label = _unquote(label).lower()
    if not _LABEL.fullmatch(label):
        raise BrainpipeError(
            f"{p}: row {lineno}: label {_show(label)} is not a label name (expected e.g. seiz, "
            f"bckg, fnsz); check the header's column order against the rows"
        )
    channel = _unquote(channel)
    if not _CHANNEL.fullmatch(channel):
        raise BrainpipeError(f"{p}: row {lineno}: channel {_show(channel)} is not a channel name")
    onset = _number(p, lineno, "start time", on)
    offset = _number(p, lineno, "stop time", off)
    confidence = 1.0 if conf is None or not conf.strip() else _number(p, lineno, "confidence", conf)
    if onset < 0:
        raise BrainpipeError(f"{p}: row {lineno}: start time {onset} is negative")
    if onset > offset:
        raise BrainpipeError(f"{p}: row {lineno}: start time {onset} is after stop time {offset}")
    return Event(onset, offset, label, channel, confidence)


def _duration(p: Path, lineno: int, value: str) -> float:
    d = _number(p, lineno, "# duration", (value.split() or [""])[0])
    if d <= 0:
        raise BrainpipeError(f"{p}: row {lineno}: '# duration = {value}' is not a positive length")
    return d


def _csv_rows(p: Path, lines: list[str]) -> tuple[list[Event], float | None]:
    """Every data row's event, background included; and the `# duration` header's value."""
    duration, header, rows = None, None, []
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            key, eq, value = line.lstrip("#").partition("=")
            if eq and key.strip().lower() == "duration":
                duration = _duration(p, lineno, value.strip())
            continue
        # Split by hand: TUH never quotes, and the csv module's field-size limit turned one
        # overlong field into an exception that aborted a whole index.
        fields = line.split(",")
        if header is None:
            header = [_unquote(h).lower() for h in fields]
            missing = [c for c in _CSV_COLUMNS[1:4] if c not in header]
            if missing:
                raise BrainpipeError(
                    f"{p}: annotation columns {missing} not found in header "
                    f"{[h[:40] for h in header[:8]]}"
                )
            cols = {c: header.index(c) for c in _CSV_COLUMNS if c in header}
            continue
        if len(fields) < len(header):
            raise BrainpipeError(
                f"{p}: row {lineno} is malformed: {len(fields)} fields where the header has "
                f"{len(header)}: {_show(line)}"
            )
        get = fields.__getitem__
        rows.append(
            _event(
                p,
                lineno,
                get(cols["start_time"]),
                get(cols["stop_time"]),
                get(cols["label"]),
                get(cols["channel"]) if "channel" in cols else "TERM",
                get(cols["confidence"]) if "confidence" in cols else None,
            )
        )
    if header is None:
        raise BrainpipeError(f"{p}: annotation file has no header row")
    return rows, duration


def _tse_rows(p: Path, lines: list[str]) -> tuple[list[Event], float | None]:
    rows, end = [], None
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#") or line.replace(" ", "").startswith("version="):
            continue
        fields = line.split()
        if len(fields) not in (3, 4):
            raise BrainpipeError(
                f"{p}: row {lineno} is malformed: expected 'start stop label [confidence]', "
                f"got {_show(line)}"
            )
        conf = fields[3] if len(fields) == 4 else None
        ev = _event(p, lineno, fields[0], fields[1], fields[2], "TERM", conf)
        rows.append(ev)
        end = ev.offset_s if end is None else max(end, ev.offset_s)
    return rows, end


def read_rec(path: str | Path, duration_s: float | None = None) -> Annotations:
    """Read one TUEV `.rec` file: every row an event (background included) labelled by its
    class name (`TUEV_CLASSES`) on its TCP channel (`TUEV_CHANNELS`), in file order.

    Rows are kept per channel, as the file has them: the field's protocol makes one example of
    each row. duration_s: the recording's length; events starting at or after it are dropped and
    events running past it clipped, both counted in `n_clipped`.
    """
    p = Path(path)
    events, clipped = [], 0
    for lineno, raw in enumerate(read_text_lines(p), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(",")
        if len(fields) != 4:
            raise BrainpipeError(
                f"{p}: row {lineno} is malformed: expected 'channel,start,stop,class' "
                f"(a TUEV .rec row), got {_show(line)}"
            )
        chan = _code(p, lineno, "channel", fields[0], len(TUEV_CHANNELS) - 1, 0)
        code = _code(p, lineno, "class", fields[3], len(TUEV_CLASSES), 1)
        ev = _event(
            p, lineno, fields[1], fields[2], TUEV_CLASSES[code - 1], TUEV_CHANNELS[chan], None
        )
        if duration_s is not None and ev.offset_s > duration_s:
            clipped += 1
            if ev.onset_s >= duration_s:
                continue
            ev = Event(ev.onset_s, duration_s, ev.label, ev.channel)
        events.append(ev)
    return Annotations(str(p), tuple(events), duration_s, (), clipped)


def _code(p: Path, lineno: int, what: str, field: str, top: int, bottom: int) -> int:
    """An integer code written as an integer or a float ("6", "6.0", " 6.000 ")."""
    v = _number(p, lineno, what, field)
    if v != int(v) or not bottom <= v <= top:
        raise BrainpipeError(
            f"{p}: row {lineno}: {what} {field.strip()!r} is not a TUEV {what} "
            f"(an integer {bottom}-{top})"
        )
    return int(v)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def format_hypothesis(events: Sequence[Event], duration_s: float, bname: str = "") -> str:
    """The text of a hypothesis `.csv_bi`: TERM rows, `seiz` events with their confidence and
    `bckg` rows (confidence 1) filling the rest of [0, duration_s], as TUSZ's own files do."""
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise BrainpipeError(f"hypothesis duration {duration_s!r} s is not a positive length")
    lines = [
        f"# version = {CSV_VERSION}",
        f"# bname = {bname}",
        f"# duration = {duration_s:.4f} secs",
        "#",
        ",".join(_CSV_COLUMNS),
    ]
    t = 0.0
    for e in sorted(events, key=lambda e: e.onset_s):
        if not (math.isfinite(e.onset_s) and math.isfinite(e.offset_s) and 0 <= e.confidence <= 1):
            raise BrainpipeError(
                f"{bname or 'hypothesis'}: event {e} has a non-finite time or "
                "a confidence outside [0, 1]"
            )
        on, off = max(e.onset_s, t), min(e.offset_s, duration_s)
        if off <= on:  # inside the previous event, or past the end
            continue
        if on > t:
            lines.append(f"TERM,{t:.4f},{on:.4f},bckg,1.0000")
        lines.append(f"TERM,{on:.4f},{off:.4f},seiz,{e.confidence:.4f}")
        t = off
    if t < duration_s:
        lines.append(f"TERM,{t:.4f},{duration_s:.4f},bckg,1.0000")
    return "\n".join(lines) + "\n"


def write_hypothesis(
    path: str | Path, events: Sequence[Event], duration_s: float, bname: str | None = None
) -> Path:
    """Write one recording's detected events as a TUSZ `.csv_bi` (atomically). Returns the path."""
    p = Path(path)
    text = format_hypothesis(events, duration_s, p.stem if bname is None else bname)
    with atomic_output(p) as tmp:
        tmp.write_text(text)
    return p
