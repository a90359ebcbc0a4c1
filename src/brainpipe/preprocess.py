"""Signal maths for the cache: channel names, montages, resampling, filters, normalization.

`build-cache` reads the channels a `ChannelPlan` names, as float64 Volts of shape
(len(plan.source), n_samples), and calls `preprocess` on the block; `output_length` tells it the
exact number of output samples beforehand so it can lay out the HDF5 file.

    h = read_header(path); sig = h.signal_indices                     # brainpipe.edf
    plan = plan_channels([h.labels[i] for i in sig], cfg)              # once per channel set
    picks = [sig[j] for j in plan.source]
    n, sfreq = h.n_samples(picks[0]), h.sfreq(picks[0])
    start, stop = crop_bounds(n, sfreq, cfg)                           # read only what is kept
    out = preprocess(read_signals(h, picks, start, stop), sfreq, plan, cfg, crop=False)
    assert out.shape == (len(plan.names), output_length(n, sfreq, cfg))   # float32

Pipeline, and why in this order (every step up to normalization is linear and channel-wise):

1. pick the channels the montage needs (`plan.source`) — the read itself, so nothing else is
   decoded, resampled or filtered;
2. crop (`crop_start_s`, `max_duration_s`) — before any arithmetic, for the same reason;
3-4. resample to `sfreq` (exact rational up/down), band-pass and notch in ONE zero-phase pass
   (`brainpipe.dsp`): mne's own kernels (firwin, hamming, phase="zero", designed at the output
   rate, numpy only) merged into one, applied with the resampling as one product in the
   frequency domain: one FFT at the input rate, one inverse FFT at the output's length. The
   result is that of resampling first (odd-reflection edges at the input rate), then the FIR at
   the output rate with mne-style odd-reflection edges, the previous two-pass order; where the
   band-pass leaves no room below the lower Nyquist frequency the two passes run as such
   (`scipy.signal.resample_poly` first); docs/dsp.md has the tolerance;
5. montage: referential outputs are rows of the filtered block, bipolar (TCP) outputs are
   differences of rows, absent channels are zero. Derivation commutes with steps 3-4, so it is
   done here, on the distinct electrodes (19 for TCP's 22 derivations) at the low rate;
6. normalize per output channel over the whole recording, then clip.

The band-pass is designed in Hz at the output rate, not at the recorded rate as mne's usual
order (filter, then resample) would; both are linear, so away from the edges the result matches
mne in either order to ~2e-4 relative RMS in the passband, 2e-3 overall (the residue is the
skipped notch, below); tests/test_preprocess.py checks this for 250, 256 and 512 Hz input, and
tests/test_dsp.py on real recordings.

Filter design (mne's "auto" rules, `filter_design_description(cfg)` prints it for any config).
For l_freq=0.5, h_freq=40 at 200 Hz, mne designs a 1321-tap (6.605 s) hamming-window FIR:
lower transition band 0.5 Hz (passband from 0.5 Hz, -6 dB at 0.25 Hz), upper transition band
10 Hz (passband to 40 Hz, -6 dB at 45 Hz, stop band from 50 Hz), 0.0194 dB passband ripple and
about 53 dB stop-band attenuation. A notch frequency is skipped when it is at or above Nyquist
(its band-stop would reach Nyquist) or when the band-pass already attenuates the whole notch band
by at least 50 dB, about what mne's hamming notch would add: the default 60 Hz notch is skipped
because the 40 Hz low-pass attenuates 59.35-60.65 Hz by 60 dB or more (so 100 µV of line noise
leaves 0.1 µV at 60 Hz, outside the passband).

Normalization: "zscore" (x - mean) / std, "robust" (x - median) / (IQR / 1.349) (std where the
IQR is degenerate), both per channel over the whole recording; "none" keeps physical units
scaled by `plan.scale` (EEG in µV, MEG magnetometers in fT, gradiometers in fT/cm) because
float16 storage cannot hold 1e-5 V or 1e-13 T. Channels that are constant over the recording
give exactly 0 under zscore/robust; zero-filled channels are exactly 0 always.

Long recordings: `preprocess_chunked` runs the same steps a time chunk at a time (build-cache
uses it, through `cache.process_recording`), so a worker holds its result plus ~100-300 MB
whatever the length, instead of the float64 recording and its copies (an hour of 306-channel
1 kHz MEG: 8.8 GB per copy). Chunks overlap by the filters' reach, so their cores are the whole
run's to rounding; see its docstring for the design.

Long because the whole-recording pipeline and its chunked twin share every private
step (filter plan, derive, normalization statistics); apart they would have to export them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from brainpipe import dsp
from brainpipe.channels import BAD_TYPE, canonical_name, locate
from brainpipe.config import STANDARD_1020, PreprocessConfig
from brainpipe.errors import BrainpipeError

__all__ = [
    "STANDARD_1020",
    "TCP_PAIRS",
    "ChannelPlan",
    "canonical_name",
    "crop_bounds",
    "filter_design_description",
    "output_length",
    "plan_channels",
    "preprocess",
    "preprocess_chunked",
    "resample_factors",
]

# The TUH/NEDC "01_tcp_ar" montage (TUSZ/TUAB annotation channel numbers 0-21 follow this
# order): (anode, cathode) as canonical electrode names; derivation = anode - cathode.
TCP_PAIRS: tuple[tuple[str, str], ...] = (
    ("FP1", "F7"), ("F7", "T3"), ("T3", "T5"), ("T5", "O1"),
    ("FP2", "F8"), ("F8", "T4"), ("T4", "T6"), ("T6", "O2"),
    ("A1", "T3"), ("T3", "C3"), ("C3", "CZ"), ("CZ", "C4"), ("C4", "T4"), ("T4", "A2"),
    ("FP1", "F3"), ("F3", "C3"), ("C3", "P3"), ("P3", "O1"),
    ("FP2", "F4"), ("F4", "C4"), ("C4", "P4"), ("P4", "O2"),
)  # fmt: skip

# Factor to the stored unit under normalize="none": float16 has ~3 significant digits and no
# normal numbers below 6e-5, so Volts and Tesla would lose everything.
_SCALE = {"eeg": 1e6, "mag": 1e15, "grad": 1e13}  # V -> µV, T -> fT, T/m -> fT/cm
_MEG_TYPES = {"meg": ("mag", "grad"), "mag": ("mag",), "grad": ("grad",)}


@dataclass(frozen=True)
class ChannelPlan:
    """Which recorded channels to read and how to derive each output channel from them.

    Output k is `block[anode[k]] - block[cathode[k]]` for a bipolar derivation,
    `block[anode[k]]` when `cathode[k] == -1`, and all zeros when `anode[k] == -1` (then
    `mask[k]` is False). `block` rows follow `source`.
    """

    source: tuple[int, ...]  # indices into the recording's channel list to read (sorted, unique)
    names: tuple[str, ...]  # output channel names, in output order
    anode: tuple[int, ...]  # per output: row of the read block; -1 = zero-filled
    cathode: tuple[int, ...]  # per output: row subtracted (bipolar); -1 = none
    missing: tuple[str, ...]  # required channel names absent from the recording
    mask: tuple[bool, ...]  # per output: True = real data, False = zero-filled
    scale: tuple[float, ...]  # per output: factor to µV / fT / fT/cm under normalize="none"


def plan_channels(
    labels: Sequence[str], cfg: PreprocessConfig, ch_types: Sequence[str] | None = None
) -> ChannelPlan:
    """Plan the montage `cfg.montage` for a recording with these channel labels.

    referential: outputs `cfg.channels` in that order; tcp: the 22 `TCP_PAIRS` derivations
    (`cfg.channels` is not used); meg: channels whose `ch_types` (mne's names) match
    `cfg.meg_picks`, named by their labels. EEG electrodes are found by `channels.locate`:
    canonical names, 10-10 names (T7/T8/P7/P8) standing in for T3/T4/T5/T6 and back, only
    channels of type eeg (`ch_types` when given, else typed from the labels), and two channels
    for one electrode are an error naming both. A missing required channel raises
    `BrainpipeError` when `cfg.on_missing == "skip"` and is zero-filled (mask False) when "zero".
    """
    if ch_types is not None and len(ch_types) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(ch_types)} channel types")
    if cfg.montage == "meg":
        return _plan_meg(labels, cfg, ch_types)

    if cfg.montage == "tcp":
        pairs = TCP_PAIRS
        names = tuple(f"{a}-{c}" for a, c in pairs)
    elif cfg.montage == "bipolar":
        pairs = tuple(_derivation(ch) for ch in cfg.channels)
        names = tuple(f"{a}-{c}" for a, c in pairs)
    else:
        pairs = tuple((canonical_name(ch), None) for ch in cfg.channels)
        names = tuple(a for a, _ in pairs)
    needed = list(dict.fromkeys(e for pair in pairs for e in pair if e is not None))
    where = dict(zip(needed, locate(labels, needed, ch_types), strict=True))
    missing = tuple(e for e in needed if where[e] is None)

    if (missing and cfg.on_missing == "skip") or len(missing) == len(needed):
        marks = ch_types or ("",) * len(labels)
        have = (
            ", ".join(
                dict.fromkeys(
                    canonical_name(x) + (" (bad)" if t == BAD_TYPE else "")
                    for x, t in zip(labels, marks, strict=True)
                )
            )
            or "no channels"
        )
        what = (
            "none of the required channels is present"
            if len(missing) == len(needed)
            else "missing channels"
        )
        raise BrainpipeError(
            f"{what}: {', '.join(missing)} (have: {have}); "
            "set preprocess.on_missing=zero to zero-fill them"
        )

    source = tuple(sorted({i for i in where.values() if i is not None}))
    row = {i: r for r, i in enumerate(source)}
    anode, cathode, mask = [], [], []
    for a, c in pairs:
        ok = where[a] is not None and (c is None or where[c] is not None)
        anode.append(row[where[a]] if ok else -1)
        cathode.append(row[where[c]] if ok and c is not None else -1)
        mask.append(ok)
    return ChannelPlan(
        source=source,
        names=names,
        anode=tuple(anode),
        cathode=tuple(cathode),
        missing=missing,
        mask=tuple(mask),
        scale=(_SCALE["eeg"],) * len(names),
    )


def _derivation(name: str) -> tuple[str, str]:
    """'FP1-F7' -> ('FP1', 'F7'): a bipolar channel of preprocess.montage=bipolar."""
    anode, dash, cathode = name.partition("-")
    if not (dash and anode.strip() and cathode.strip()) or "-" in cathode:
        raise BrainpipeError(
            f"preprocess.montage=bipolar: channel {name!r} is not a derivation 'ANODE-CATHODE' "
            "(e.g. FP1-F7)"
        )
    return canonical_name(anode), canonical_name(cathode)


def _plan_meg(
    labels: Sequence[str], cfg: PreprocessConfig, ch_types: Sequence[str] | None
) -> ChannelPlan:
    if ch_types is None:
        raise BrainpipeError(
            "preprocess.montage=meg needs channel types (mne's 'mag'/'grad'); "
            "pass ch_types from the recording's mne Info"
        )
    wanted = _MEG_TYPES[cfg.meg_picks]
    source = tuple(i for i, t in enumerate(ch_types) if t in wanted)
    if not source:
        raise BrainpipeError(
            f"no MEG channels of type {'/'.join(wanted)} (preprocess.meg_picks={cfg.meg_picks}); "
            f"the recording has types: {', '.join(sorted(set(ch_types))) or 'none'}"
        )
    return ChannelPlan(
        source=source,
        names=tuple(labels[i].strip() for i in source),
        anode=tuple(range(len(source))),
        cathode=(-1,) * len(source),
        missing=(),
        mask=(True,) * len(source),
        scale=tuple(_SCALE[ch_types[i]] for i in source),
    )


# ---------------------------------------------------------------------------------------------
# lengths


def crop_bounds(n_samples: int, sfreq_in: float, cfg: PreprocessConfig) -> tuple[int, int]:
    """[start, stop) in input samples kept by `crop_start_s` / `max_duration_s`.

    Read only this span and pass `crop=False` to `preprocess`. start == stop when nothing is left.
    """
    start = min(round(cfg.crop_start_s * sfreq_in), n_samples)
    stop = n_samples
    if cfg.max_duration_s is not None:
        stop = min(stop, start + round(cfg.max_duration_s * sfreq_in))
    return start, stop


def resample_factors(sfreq_in: float, sfreq_out: float) -> tuple[int, int]:
    """(up, down) with sfreq_out / sfreq_in == up / down.

    Exact for rates given to 1/1000 Hz (250, 256, 1017.25, ...); EDF headers that store
    1/record_duration as 249.99999999999997 Hz round to the intended rate.
    """
    if not sfreq_in > 0:
        raise BrainpipeError(f"sampling rate must be > 0, got {sfreq_in} Hz")
    ratio = Fraction(sfreq_out).limit_denominator(1000) / Fraction(sfreq_in).limit_denominator(1000)
    if max(ratio.numerator, ratio.denominator) > 100_000:  # keeps resample_poly's FIR bounded
        ratio = ratio.limit_denominator(100_000)
    return ratio.numerator, ratio.denominator


def output_length(
    n_samples: int, sfreq_in: float, cfg: PreprocessConfig, *, crop: bool = True
) -> int:
    """Exact number of samples `preprocess` returns for n_samples input samples at sfreq_in.

    0 means the crop leaves nothing; `preprocess` raises `BrainpipeError` for such input.
    """
    start, stop = crop_bounds(n_samples, sfreq_in, cfg) if crop else (0, n_samples)
    up, down = resample_factors(sfreq_in, cfg.sfreq)
    return -(-(stop - start) * up // down)  # resample_poly: ceil(n * up / down)


# ---------------------------------------------------------------------------------------------
# filter design (brainpipe.dsp)

# What bench and test scripts warm up before measuring a worker's memory.
_design = dsp.design


def filter_design_description(cfg: PreprocessConfig) -> str:
    """One line for logs and docs: the band-pass and notch filters `preprocess` applies."""
    d = dsp.design(cfg.sfreq, cfg.l_freq, cfg.h_freq, tuple(cfg.notch_freqs))
    l_trans, h_trans = dsp.auto_transitions(cfg.sfreq, cfg.l_freq, cfg.h_freq)
    parts = []
    if d.bandpass_taps:
        kind = (
            "band-pass"
            if cfg.l_freq is not None and cfg.h_freq is not None
            else ("high-pass" if cfg.l_freq is not None else "low-pass")
        )
        edges = []
        if cfg.l_freq is not None:
            edges.append(
                f"lower transition {l_trans:g} Hz (passband from {cfg.l_freq:g} Hz, "
                f"-6 dB at {cfg.l_freq - l_trans / 2:g} Hz)"
            )
        if cfg.h_freq is not None:
            edges.append(
                f"upper transition {h_trans:g} Hz (passband to {cfg.h_freq:g} Hz, "
                f"-6 dB at {cfg.h_freq + h_trans / 2:g} Hz)"
            )
        parts.append(
            f"zero-phase FIR {kind} at {cfg.sfreq:g} Hz (mne firwin, hamming, 53 dB stop band): "
            f"{d.bandpass_taps} taps ({d.bandpass_taps / cfg.sfreq:g} s), {', '.join(edges)}"
        )
    if d.notched:
        parts.append(
            f"FIR notch at {', '.join(f'{f:g}' for f in d.notched)} Hz (mne notch_filter design): "
            + (f"{d.notch_taps} taps" if not d.bandpass_taps else
               f"{d.notch_taps} taps, merged with the band-pass into one {len(d.kernel)}-tap kernel")
        )  # fmt: skip
    if d.skipped:
        parts.append("notch skipped at " + "; ".join(d.skipped))
    return "; ".join(parts) if parts else "no filtering"


# ---------------------------------------------------------------------------------------------
# the pipeline


def preprocess(
    data: np.ndarray,
    sfreq_in: float,
    plan: ChannelPlan,
    cfg: PreprocessConfig,
    *,
    crop: bool = True,
) -> np.ndarray:
    """Raw block (len(plan.source), n_samples) float Volts -> (len(plan.names), n_out) float32.

    n_out == output_length(n_samples, sfreq_in, cfg, crop=crop). With crop=False the block is
    taken as already cropped (read with `crop_bounds`). Raises `BrainpipeError` for NaN/Inf
    input or when the crop leaves no samples. Inputs shorter than the filter (6.6 s at the
    defaults) still give a defined result, dominated by the edge padding.
    """
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[0] != len(plan.source):
        raise ValueError(
            f"expected a ({len(plan.source)}, n_samples) block for this plan, got shape {data.shape}"
        )
    n_samples = data.shape[1]
    start, stop = _span(n_samples, sfreq_in, cfg, crop)
    x = data[:, start:stop]
    lo, hi = _min_max(x, plan)
    y = _filter(x, sfreq_in, cfg)
    out, flat_out = _derive(y, lo == hi, plan)
    _normalize(out, flat_out, plan, cfg)
    if cfg.clip is not None:
        np.clip(out, -cfg.clip, cfg.clip, out=out)
    return out


def _span(n_samples: int, sfreq_in: float, cfg: PreprocessConfig, crop: bool) -> tuple[int, int]:
    start, stop = crop_bounds(n_samples, sfreq_in, cfg) if crop else (0, n_samples)
    if stop <= start:
        raise BrainpipeError(
            f"recording too short: {n_samples} samples at {sfreq_in:g} Hz leave nothing after "
            f"cropping (preprocess.crop_start_s={cfg.crop_start_s:g}, "
            f"max_duration_s={cfg.max_duration_s})"
        )
    return start, stop


def _min_max(x: np.ndarray, plan: ChannelPlan) -> tuple[np.ndarray, np.ndarray]:
    """Per-row min and max; they find NaN (it propagates) and Inf, and flat channels."""
    lo, hi = x.min(axis=1), x.max(axis=1)
    bad = ~(np.isfinite(lo) & np.isfinite(hi))
    if bad.any():
        raise BrainpipeError(
            f"input has non-finite samples (NaN/Inf) in source channel(s) "
            f"{', '.join(str(plan.source[i]) for i in np.flatnonzero(bad))}"
        )
    return lo, hi


def _filter(x: np.ndarray, sfreq_in: float, cfg: PreprocessConfig) -> np.ndarray:
    """Resample to cfg.sfreq, band-pass and notch in one zero-phase pass (`dsp.apply`); float32."""
    return dsp.apply(x, _filter_plan(sfreq_in, cfg))


def _filter_plan(sfreq_in: float, cfg: PreprocessConfig) -> dsp.FilterPlan:
    up, down = resample_factors(sfreq_in, cfg.sfreq)
    return dsp.filter_plan(
        sfreq_in, cfg.sfreq, up, down, cfg.l_freq, cfg.h_freq, tuple(cfg.notch_freqs)
    )


def _derive(y: np.ndarray, flat: np.ndarray, plan: ChannelPlan) -> tuple[np.ndarray, np.ndarray]:
    anode = np.asarray(plan.anode, dtype=np.intp)
    cathode = np.asarray(plan.cathode, dtype=np.intp)
    real = anode >= 0
    bipolar = real & (cathode >= 0)
    if real.all():
        out = y if np.array_equal(anode, np.arange(len(y))) else y[anode]
    else:
        out = np.zeros((len(plan.names), y.shape[1]), dtype=np.float32)
        out[real] = y[anode[real]]
    if bipolar.any():
        out[bipolar] -= y[cathode[bipolar]]
    # an output is constant when its electrodes all were (a bipolar of two flat ones included)
    flat_out = np.zeros(len(plan.names), dtype=bool)
    flat_out[real] = flat[anode[real]]
    flat_out[bipolar] &= flat[cathode[bipolar]]
    return out, flat_out


def _normalize(
    out: np.ndarray, flat_out: np.ndarray, plan: ChannelPlan, cfg: PreprocessConfig
) -> None:
    real = np.asarray(plan.mask, dtype=bool)
    if cfg.normalize == "none":
        out *= np.asarray(plan.scale, dtype=np.float32)[:, None]
        return
    everything = bool(real.all())
    rows = out if everything else out[real]  # out[real] is a copy; skip it when possible
    centre, scale = _centre_scale(rows, cfg)
    scale[flat_out[real]] = 0.0
    rows -= centre
    rows *= scale
    if not everything:
        out[real] = rows


def _centre_scale(rows: np.ndarray, cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (centre, 1 / spread) of float32 rows (k, n) under zscore/robust, shapes (k, 1)."""
    if cfg.normalize == "zscore":
        centre = rows.mean(axis=1, keepdims=True)
        spread = rows.std(axis=1, keepdims=True)
    else:
        q25, centre, q75 = np.quantile(rows, [0.25, 0.5, 0.75], axis=1, keepdims=True)
        spread = (q75 - q25) / 1.349  # IQR of a normal distribution is 1.349 sigma
        # A channel that is mostly one value (half the samples equal: a disconnected electrode
        # with a few artifacts) has an IQR of ~0 and would map its artifacts to 1e30 and to inf
        # in a float16 cache; it falls back to the standard deviation.
        std = rows.std(axis=1, keepdims=True)
        spread = np.where(spread < 1e-3 * std, std, spread)
    # the smallest normal float32 keeps 1/spread finite; flat channels (rounding noise only)
    # are set to exactly 0 by the caller instead of having that noise blown up to unit variance
    return centre, 1.0 / np.maximum(spread, np.finfo(np.float32).tiny)


# ---------------------------------------------------------------------------------------------
# the same pipeline over time chunks, for recordings too long to hold as float64


# Raw values (channels x samples) one chunk holds: the filtering keeps the float64 chunk, its
# float32 result and the FFT blocks of a few rows at a time alive, ~150 MB at this size.
CHUNK_VALUES = 4_000_000
# Float32 values one normalization group holds (robust: a group of whole output channels).
_GROUP_VALUES = 32_000_000


def preprocess_chunked(
    read: Callable[[int, int], np.ndarray],
    n_samples: int,
    sfreq_in: float,
    plan: ChannelPlan,
    cfg: PreprocessConfig,
    *,
    dtype: np.typing.DTypeLike = np.float32,
    chunk_values: int | None = None,
    out: Any = None,
) -> Any:
    """`preprocess` of a recording read a time slice at a time, time-major and in `dtype`.

    `read(start, stop)` returns samples [start, stop) of the uncropped recording, shape
    (len(plan.source), stop - start), in Volts. The result equals
    `preprocess(read(0, n_samples), sfreq_in, plan, cfg).T.astype(dtype)` within float32
    rounding (robust and none: the same operations on the same float32 values; zscore: its
    mean and variance summed in float64 across chunks), while the working memory is a few
    chunks of `chunk_values` raw values, whatever the recording's length, plus the result.
    `out` (optional, returned) receives the result instead of a new array: anything that takes
    `out[t0:t1] = rows` for consecutive time blocks, e.g. a writer that pwrites each block at
    its file offset, so that not even the result is held.

    Why time chunks: FIF (and EDF) store all channels sample block by sample block, so reading
    channel groups would read the whole file once per group. A time chunk is read with enough
    margin on each side (the FIR's half length plus the anti-alias filter's reach, at the output
    rate) that its core comes out as in the whole-recording run: both filters are linear and
    shift-invariant, and chunks start at multiples of the resampling `down` factor, so the
    polyphase phase lines up exactly (the true edges are padded as in the whole run). The
    filtered, derived core goes to a float32 scratch file (unnamed, in TMPDIR) while the
    normalization statistics gather; a second pass normalizes, clips and casts each chunk.
    """
    chunk_values = chunk_values or CHUNK_VALUES
    start, stop = _span(n_samples, sfreq_in, cfg, crop=True)
    up, down, margin, core = _chunk_geometry(sfreq_in, cfg, len(plan.source), chunk_values)
    n_out = output_length(stop - start, sfreq_in, cfg, crop=False)
    n_ch = len(plan.names)
    if out is None:
        out = np.empty((n_out, n_ch), dtype=dtype)
    # Up to six chunks' worth in one piece: the whole-recording path itself (~22 bytes of peak
    # per raw value with the float64 input, 0.5 GB at the default), faster for EEG up to ~1.5 h:
    # chunking costs ~15% in the scratch file's round trip and the extra statistics pass
    if (stop - start) * len(plan.source) <= 6 * chunk_values or stop - start <= core + 2 * margin:
        out[0:n_out] = preprocess(read(start, stop), sfreq_in, plan, cfg, crop=False).T
        return out

    lo = np.full(len(plan.source), np.inf)
    hi = np.full(len(plan.source), -np.inf)
    zsum = _ZSum(n_ch) if cfg.normalize == "zscore" else None
    with tempfile.TemporaryFile() as scratch:
        for a in range(start, stop, core):
            b = min(a + core, stop)
            r0, r1 = max(start, a - margin), min(stop, b + margin)
            x = read(r0, r1)
            clo, chi = _min_max(x, plan)
            np.minimum(lo, clo, out=lo)
            np.maximum(hi, chi, out=hi)
            y = _filter(x, sfreq_in, cfg)
            del x
            o0 = (a - start) * up // down - (r0 - start) * up // down
            o1 = o0 + output_length(b - a, sfreq_in, cfg, crop=False)
            derived, _ = _derive(y[:, o0:o1], np.zeros(len(y), dtype=bool), plan)
            del y
            if zsum is not None:
                zsum.add(derived)
            scratch.write(np.ascontiguousarray(derived.T).tobytes())
            del derived
        _, flat_out = _derive(np.zeros((len(plan.source), 0), np.float32), lo == hi, plan)
        centre, scale = _chunked_centre_scale(
            scratch, n_out, flat_out, plan, cfg, zsum, chunk_values
        )
        _normalize_scratch(scratch, out, n_out, n_ch, centre, scale, cfg.clip, chunk_values)
    return out


def _chunk_geometry(
    sfreq_in: float, cfg: PreprocessConfig, n_source: int, chunk_values: int
) -> tuple[int, int, int, int]:
    """Resampling factors, the margin each chunk is read with on both sides (input samples,
    a multiple of `down`) and the chunk's core length."""
    plan = _filter_plan(sfreq_in, cfg)
    up, down, reach = plan.up, plan.down, plan.reach  # reach: output samples an edge disturbs
    margin = _round_up(_round_up(reach * down, up) // up, down)  # input samples
    # at least 4 margins long: the overlap costs at most 50% more filtering (8 margins: 25%,
    # but ~150 MB more for 306 channels, where the merged 50 Hz notch makes the kernel long)
    core = _round_up(max(chunk_values // max(n_source, 1), 4 * margin, 1), down)
    return up, down, margin, core


def _normalize_scratch(scratch, out, n_out, n_ch, centre, scale, clip, chunk_values) -> None:
    """Second pass: the scratch file's rows normalized, clipped and handed to `out` in order."""
    block = max(chunk_values // max(n_ch, 1), 1)
    for t in range(0, n_out, block):
        rows = _scratch_rows(scratch, t, min(t + block, n_out), n_ch)
        rows -= centre
        rows *= scale
        if clip is not None:
            np.clip(rows, -clip, clip, out=rows)
        out[t : t + len(rows)] = rows


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


class _ZSum:
    """Per-channel mean and standard deviation accumulated over chunks, in float64 around a
    shift (the first chunk's mean), so the variance does not cancel for offsets of 1e3 sd."""

    def __init__(self, n_ch: int) -> None:
        self.n, self.shift = 0, None
        self.s1, self.s2 = np.zeros(n_ch), np.zeros(n_ch)

    def add(self, rows: np.ndarray) -> None:
        if self.shift is None:
            self.shift = rows.mean(axis=1, dtype=np.float64)
        d = rows - self.shift[:, None]
        self.s1 += d.sum(axis=1)
        self.s2 += np.einsum("ij,ij->i", d, d)
        self.n += rows.shape[1]

    def centre_spread(self) -> tuple[np.ndarray, np.ndarray]:
        m = self.s1 / self.n
        return self.shift + m, np.sqrt(np.maximum(self.s2 / self.n - m * m, 0.0))


def _scratch_rows(scratch, t0: int, t1: int, n_ch: int) -> np.ndarray:
    """Output samples [t0, t1) of the float32 time-major scratch file, shape (t1 - t0, n_ch)."""
    scratch.seek(t0 * n_ch * 4)
    rows = np.fromfile(scratch, dtype=np.float32, count=(t1 - t0) * n_ch)
    return rows.reshape(t1 - t0, n_ch)


def _chunked_centre_scale(
    scratch,
    n_out: int,
    flat_out: np.ndarray,
    plan: ChannelPlan,
    cfg: PreprocessConfig,
    zsum: _ZSum | None,
    chunk_values: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(centre, scale) per output channel, shape (n_ch,) float32, as `_normalize` sets them."""
    n_ch = len(plan.names)
    real = np.asarray(plan.mask, dtype=bool)
    centre = np.zeros(n_ch, dtype=np.float32)
    scale = np.ones(n_ch, dtype=np.float32)
    if cfg.normalize == "none":
        return centre, np.asarray(plan.scale, dtype=np.float32)
    if zsum is not None:
        c, spread = zsum.centre_spread()
        centre[:] = c
        scale[:] = 1.0 / np.maximum(spread.astype(np.float32), np.finfo(np.float32).tiny)
    else:  # robust: the quantiles need each channel whole, gathered a group at a time
        group = max(_GROUP_VALUES // max(n_out, 1), 1)
        step = max(chunk_values // n_ch, 1)
        for g0 in range(0, n_ch, group):
            cols = slice(g0, min(g0 + group, n_ch))
            rows = np.empty((cols.stop - g0, n_out), dtype=np.float32)
            for t in range(0, n_out, step):
                part = _scratch_rows(scratch, t, min(t + step, n_out), n_ch)
                rows[:, t : t + len(part)] = part[:, cols].T
            c, s = _centre_scale(rows, cfg)
            centre[cols], scale[cols] = c[:, 0], s[:, 0]
    scale[flat_out | ~real] = 0.0  # zero-filled outputs are 0 and stay 0
    centre[~real] = 0.0
    return centre, scale
