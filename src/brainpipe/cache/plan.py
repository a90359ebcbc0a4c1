"""build-cache's plan: the cache's whole layout from the index and the config, before any signal.

Sizes are known from the index, so the channels present, each recording's output length, the
labels and the file's layout (`cachefile.Layout`) are fixed before a byte of signal is read.
Recordings that cannot work (missing channels, mixed rates, too short, a seizure recording
whose annotation file is missing) are skipped up front with their reason; a task whose classes
are empty in the plan (`check_planned_labels`), an index built under another corpus layout, and
an events cache whose classes have no events are refused here, before the build starts.
"""

from __future__ import annotations

import difflib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from brainpipe import __version__
from brainpipe.annotations import ANNOTATIONS_MISSING, ANNOTATIONS_UNPARSABLE
from brainpipe.cachefile import Layout
from brainpipe.channels import BAD_TYPE, canonical_name
from brainpipe.config import Config, PreprocessConfig
from brainpipe.corpus import TASK_LABELS, TUAB_LABELS, TUSZ_LABELS, event_label_names
from brainpipe.errors import BrainpipeError, reason_kind
from brainpipe.preprocess import TCP_PAIRS, output_length, plan_channels
from brainpipe.reporting import window_counts_text

CONFIG_SECTIONS = ("corpus", "preprocess", "window", "cache")


@dataclass
class Plan:
    layout: Layout
    index_rows: np.ndarray  # index row of each planned recording
    skipped: list[tuple[str, str]]
    raw_bytes: np.ndarray  # file size per planned recording
    window: int
    stride: int
    # planned row -> channel labels the index marks bad (BIDS channels.tsv): read as missing
    bad_channels: dict[int, tuple[str, ...]] = field(default_factory=dict)


def label_names_for(layout: str, labels: list[str]) -> tuple[str, ...]:
    if layout == "tuab":
        return TUAB_LABELS
    if layout == "tusz":
        return TUSZ_LABELS
    return tuple(sorted(set(labels) - {""}))


def make_plan(index, cfg: Config) -> Plan:
    """The cache's layout from the index and the config alone: rows, lengths, channels, labels."""
    p, w = cfg.preprocess, cfg.window
    window = int(round(w.seconds * p.sfreq))
    stride = int(round(w.stride_seconds * p.sfreq))
    layout_name = index.meta.get("layout", cfg.corpus.layout)
    if layout_name and cfg.corpus.layout != "generic" and layout_name != cfg.corpus.layout:
        # Labels, splits and events mean different things per layout: a TUSZ index built into a
        # TUAB config labels nothing and was only refused after the whole build. A config that
        # names no corpus layout (generic, the default) builds an index by the index's layout.
        raise BrainpipeError(
            f"the index was built with corpus.layout={layout_name}, the config has "
            f"corpus.layout={cfg.corpus.layout}; build with the config the index was made with, or re-index"
        )
    names = label_names_for(layout_name, index.arrays["label"].tolist())
    if cfg.cache.task == "events":
        names = event_label_names(cfg.corpus.event_labels)
    skipped: list[tuple[str, str]] = [(e["path"], e["reason"]) for e in index.errors]
    kept, plans = _plan_recordings(index, p, w, window, skipped)
    if cfg.cache.task == "seizure":
        kept = _annotated(index, kept, skipped)
    rows = np.array([k[0] for k in kept], dtype=np.int64)
    channels = _output_channels(plans, p)
    events = _planned_events(index, rows, cfg.cache.task, names)
    if cfg.cache.task == "events":
        _check_event_classes(index, cfg, events, names)
    layout = Layout(
        channels,
        p.sfreq,
        cfg.cache.dtype,
        _recording_table(index, kept, names, len(channels)),
        events,
        names,
        _provenance(index, cfg, layout_name),
        task="" if cfg.cache.task == "none" else cfg.cache.task,
    )
    return Plan(
        layout,
        rows,
        skipped,
        index.arrays["size"][rows],
        window,
        stride,
        _bad_channels(index, rows),
    )


def _bad_channels(index, rows: np.ndarray) -> dict[int, tuple[str, ...]]:
    if BAD_TYPE not in set(index.arrays["chanset_types"].tolist()):
        return {}
    out = {}
    for k, i in enumerate(rows.tolist()):
        bad = tuple(
            lab
            for lab, t in zip(index.channels(i), index.channel_types(i), strict=True)
            if t == BAD_TYPE
        )
        if bad:
            out[k] = bad
    return out


def upsampling_warning(source_rates: np.ndarray, sfreq: float) -> list[str]:
    """A resampling up adds no information and makes the cache (and every epoch) larger."""
    low = [float(r) for r in source_rates.tolist() if r < sfreq - 1e-9]
    if not low:
        return []
    return [
        f"warning: preprocess.sfreq={sfreq:g} Hz is above the own rate of {len(low)} recordings (lowest "
        f"{min(low):g} Hz): they are upsampled, which adds no information and makes the cache "
        f"{sfreq / min(low):.1f}x larger for them; set preprocess.sfreq <= {min(low):g}"
    ]


def check_planned_labels(plan: Plan, task: str) -> None:
    """Refuse a task whose classes are empty in the plan, before any signal is read.

    The labels are known from the index: recordings' labels (abnormal) or their events
    (seizure). The same check on the finished windows (`_check_labels`) stays as the exact one.
    """
    need = TASK_LABELS.get(task)
    if need is None:
        return
    r, ev = plan.layout.recordings, plan.layout.events
    names = plan.layout.label_names
    counts: dict[str, Counter] = {}
    for split in sorted(set(r["split"].tolist())):
        m = r["split"] == split
        if task == "seizure":
            # The index keeps seizure events only (background is dropped when it is read).
            rows = np.flatnonzero(m)
            seiz = np.isin(ev["recording"], rows) & (ev["offset_s"] > ev["onset_s"])
            counts[split] = Counter({need[0]: int(m.sum()), need[1]: int(seiz.sum())})
        else:
            labels = r["label"][m]
            counts[split] = Counter(
                {names[k]: int((labels == k).sum()) for k in range(len(names)) if names[k] in need}
            )
    total = sum(counts.values(), Counter())
    empty = [k for k in need if total.get(k, 0) == 0]
    if empty:
        what = "seizure events" if task == "seizure" else "recordings"
        table = window_counts_text(
            {s: {k: v for k, v in c.items() if v} for s, c in counts.items()}
        )
        raise BrainpipeError(
            f"cache.task={task} needs {' and '.join(need)} windows but {', '.join(empty)} came out empty "
            f"in the plan ({what} per split: {table}); check the labels/annotations in the index "
            "(refused before reading any signal)"
        )


def _plan_recordings(
    index, p: PreprocessConfig, w, window: int, skipped: list
) -> tuple[list, dict]:
    """(index row, output length, channel mask, source rate, t0_s) of each recording that can work.

    Recordings that cannot (missing channels, mixed rates, too short) are appended to `skipped`
    with their reason. Grouped by subject (then path), so each subject's windows are one run.
    """
    a = index.arrays
    order = np.lexsort((a["path"], a["subject"])) if len(index) else np.zeros(0, np.int64)
    kept: list[tuple[int, int, np.ndarray, float, float]] = []
    plans: dict[int, Any] = {}  # channel set -> its channel plan, or why it cannot work
    for i in order.tolist():
        path = str(a["path"][i])
        s = int(a["chanset"][i])
        if s not in plans:
            try:
                labels, types = index.channels(i), index.channel_types(i)
                plans[s] = plan_channels(labels, p, types)
            except BrainpipeError as e:
                plans[s] = e
        plan = plans[s]
        if isinstance(plan, BrainpipeError):
            plan = plans[s] = _with_closest_channels(plan, index.channels(i), p)
            skipped.append((path, str(plan)))
            continue
        srates = (
            index.channel_sfreqs(i)[list(plan.source)] if plan.source else np.array([a["sfreq"][i]])
        )
        if len(set(srates.tolist())) > 1:
            reason = f"picked channels have different sample rates {sorted(set(srates.tolist()))}"
            skipped.append((path, reason))
            continue
        sf = float(srates[0])
        n_in = (
            int(a["n_samples"][i])
            if np.isclose(sf, a["sfreq"][i])
            else int(round(a["duration_s"][i] * sf))
        )
        try:
            length = output_length(n_in, sf, p)
        except BrainpipeError as e:
            skipped.append((path, str(e)))
            continue
        if length < window:
            reason = (
                f"too short: {length / p.sfreq:.1f} s after cropping, one window is {w.seconds:g} s"
            )
            skipped.append((path, reason))
            continue
        kept.append((i, length, plan.mask, sf, min(p.crop_start_s, n_in / sf)))
    return kept, plans


def _with_closest_channels(e: BrainpipeError, labels, p: PreprocessConfig) -> BrainpipeError:
    """Add, to "none of the required channels", the recording's names closest to those asked for."""
    if "none of the required channels" not in str(e) or "; closest found" in str(e):
        return e
    asked = (
        list(dict.fromkeys(x for pair in TCP_PAIRS for x in pair))
        if p.montage == "tcp"
        else [canonical_name(c) for c in p.channels]
    )
    have = {canonical_name(str(x)): str(x) for x in labels}
    close = []
    for name in asked:
        hit = difflib.get_close_matches(name, list(have), n=1, cutoff=0.5)
        if hit:
            close.append(f"{name}~{have[hit[0]]}")
    hint = f"; closest found: {', '.join(close[:8]) or 'none'}"
    return BrainpipeError(f"{e}{hint}")


def _recording_table(index, kept: list, names: tuple[str, ...], n_ch: int) -> dict[str, np.ndarray]:
    a = index.arrays
    rows = np.array([k[0] for k in kept], dtype=np.int64)
    lookup = {n: k for k, n in enumerate(names)}
    return {
        "path": a["path"][rows],
        "subject": a["subject"][rows],
        "session": a["session"][rows],
        "split": a["split"][rows],
        "label": np.array([lookup.get(x, -1) for x in a["label"][rows].tolist()], dtype=np.int8),
        "sfreq_orig": np.array([k[3] for k in kept], dtype=np.float64),
        "length": np.array([k[1] for k in kept], dtype=np.int64),
        "t0_s": np.array([k[4] for k in kept], dtype=np.float64),
        "mask": np.array([k[2] for k in kept], dtype=bool).reshape(len(kept), n_ch),
    }


def _annotated(index, kept: list, skipped: list) -> list:
    """The planned recordings a seizure cache can label: one whose TUSZ annotation file is
    missing or unparsable is skipped with the index's reason, never taken as background."""
    bad = {
        w["path"]: w["reason"]
        for w in index.warnings
        if reason_kind(w["reason"]) in (ANNOTATIONS_MISSING, ANNOTATIONS_UNPARSABLE)
    }
    if not bad:
        return kept
    paths = index.arrays["path"]
    skipped += [(str(paths[k[0]]), bad[str(paths[k[0]])]) for k in kept if str(paths[k[0]]) in bad]
    return [k for k in kept if str(paths[k[0]]) not in bad]


def _check_event_classes(index, cfg: Config, events: dict, names: tuple[str, ...]) -> None:
    """cache.task=events, before any signal is read: the index's events were labelled by this
    corpus.event_labels, and every class has events in the planned recordings."""
    if index.event_labels != dict(cfg.corpus.event_labels):
        raise BrainpipeError(
            f"cache.task=events: the index's events were labelled by corpus.event_labels="
            f"{index.event_labels}, this config has {dict(cfg.corpus.event_labels)}; re-run "
            f"`brainpipe index` with this config"
        )
    have = Counter(events["label"].tolist())
    empty = [n for n in names if not have[n]]
    if empty:
        found = ", ".join(f"{n}={have[n]}" for n in names)
        raise BrainpipeError(
            f"cache.task=events: no event of class {', '.join(empty)} in the recordings to "
            f"cache (events per class: {found}); check corpus.event_labels against the "
            f"descriptions `brainpipe inspect` shows"
        )


def _planned_events(
    index, rows: np.ndarray, task: str = "", names: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    """The index's events re-keyed to planned rows; a TUSZ recording's label comes from them.

    A seizure cache keeps the annotation files' events only (description ""): an EDF+ text
    annotation is never a seizure. An events cache keeps the events of its classes."""
    a = index.arrays
    ev_rec = a["event_recording"]
    pos = np.full(len(index), -1, np.int64)
    pos[rows] = np.arange(len(rows))
    keep = pos[ev_rec] >= 0 if len(ev_rec) else np.zeros(0, bool)
    if task == "seizure" and len(ev_rec):
        keep &= a["event_description"] == ""
    elif task == "events" and len(ev_rec):
        keep &= np.isin(a["event_label"], np.asarray(names, dtype=str))
    events = {
        "recording": pos[ev_rec][keep],
        "onset_s": a["event_onset_s"][keep],
        "offset_s": a["event_offset_s"][keep],
        "label": a["event_label"][keep],
    }
    order = np.argsort(events["recording"], kind="stable")
    return {k: v[order] for k, v in events.items()}


def _provenance(index, cfg: Config, layout_name: str) -> dict[str, Any]:
    """The attributes saying what a cache was built from (and when a partial file may resume)."""
    return {
        "config": json.dumps({s: cfg.to_dict()[s] for s in CONFIG_SECTIONS}),
        "config_hash": cfg.section_hash(*CONFIG_SECTIONS),
        "index_hash": index.index_hash,
        "raw_root": index.raw_root,
        "brainpipe_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "layout": layout_name,
        **({"shard": index.meta["shard"]} if "shard" in index.meta else {}),
    }


def _output_channels(plans: dict, p: PreprocessConfig) -> tuple[str, ...]:
    good = [v for v in plans.values() if not isinstance(v, BrainpipeError)]
    if p.montage != "meg":
        return tuple(good[0].names) if good else tuple(p.channels)
    names = {tuple(v.names) for v in good}
    if len(names) > 1:
        raise BrainpipeError(
            "MEG recordings have different channel sets; pick one system per cache"
        )
    return next(iter(names)) if names else ()
