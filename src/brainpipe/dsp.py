"""Filter design and the one-pass resample + band-pass + notch filter, on numpy alone.

`preprocess` calls `filter_plan` once per (input rate, filter settings) and `apply` per block:

    plan = filter_plan(256.0, 200.0, 25, 32, 0.5, 40.0, (60.0,))   # up/down; cached
    y = apply(x, plan)      # (channels, n) Volts -> (channels, ceil(n * up / down)) float32

Design. The band-pass and notch kernels are mne's (`mne.filter.create_filter`, firwin, hamming,
phase="zero", "auto" lengths and transitions; `notch_filter`'s band-stop design), computed here
with numpy (`firwin_lowpass` is `scipy.signal.firwin(..., window="hamming")`): importing
`scipy.signal` costs ~2 s of start-up, more than the filtering of a typical recording.
tests/test_dsp.py checks both against mne and scipy to rounding.

One pass. Resampling is itself a filter, so resample, band-pass and notch are one product in
the frequency domain: the block is padded at the input rate (odd reflection), one real FFT,
the spectrum multiplied by the merged kernel's exact DFT at the output rate and by the
polyphase anti-alias filter's response (what `scipy.signal.resample_poly` with that filter
passes), and one inverse FFT of the output's length, which is the resampling. What that
filter would let alias is dropped instead; the plan takes this path only where all of it lands
in the band-pass's stop band. The result is that of the previous two passes (resample, then
the FIR at the output rate with its own odd-reflection edges): `apply` says how the ends are
kept equal. Float64 FFTs: numpy's float32 ones are slower, `scipy.fft`'s import costs ~0.25 s.

docs/dsp.md gives the order, the fallback (no low-pass below the lower Nyquist frequency: the
two passes as such, `scipy.signal.resample_poly` first) and the tolerance against the previous
path (1e-4 of each channel's peak where its anti-alias filter was its own 80 dB design, 1e-3
where it was scipy's default), measured on real recordings by tests/test_dsp.py.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

from brainpipe.errors import BrainpipeError

__all__ = [
    "Design",
    "FilterPlan",
    "apply",
    "attenuation_db",
    "auto_transitions",
    "design",
    "filter_plan",
    "firwin_lowpass",
    "mne_fir",
    "mne_notch",
]

# mne's `_length_factors["hamming"]`: a hamming firwin needs 3.3 / transition (s) of taps.
_HAMMING_LENGTH = 3.3
# A notch is pointless where the band-pass already attenuates its band this much: mne's
# hamming-window FIR notch itself reaches about 53 dB.
NOTCH_SKIP_DB = 50.0
# mne's notch_filter defaults (method="fir"): stop band freq/200 wide, 1 Hz transition.
NOTCH_TRANS_HZ = 1.0
# Stop-band attenuation (and passband ripple, 1e-4) of the polyphase anti-alias filter. Not 60 dB:
# a 1 mV electrode offset's images at multiples of the input rate fold into the band (24 and 32 Hz
# for 256 -> 200 Hz) at 1 µV, visible next to 10-50 µV of EEG; at 80 dB they are 0.1 µV.
_ANTIALIAS_DB = 80.0
# Values of one FFT block (rows x padded length): the rows are transformed a group at a time,
# so the working set stays ~50 MB, whatever the channel count.
_BLOCK_VALUES = 2_000_000


# ---------------------------------------------------------------------------------------------
# design


def firwin_lowpass(numtaps: int, cutoff: float, fs: float, beta: float | None = None) -> np.ndarray:
    """`scipy.signal.firwin(numtaps, cutoff, window="hamming", fs=fs)` (with `beta`:
    `window=("kaiser", beta)`): a windowed sinc scaled to unit DC gain."""
    c = cutoff / (0.5 * fs)
    m = np.arange(numtaps, dtype=np.float64) - 0.5 * (numtaps - 1)
    window = np.hamming(numtaps) if beta is None else np.kaiser(numtaps, beta)
    h = c * np.sinc(c * m) * window
    return h / h.sum()


def _firwin_design(n: int, freq: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """mne.filter._firwin_design: one low-pass per transition, each as long as its own width
    needs, added or subtracted about the centre. `freq` runs 0..1 (Nyquist)."""
    h = np.zeros(n)
    prev_f, prev_g = freq[-1], gain[-1]
    if prev_g == 1:
        h[n // 2] = 1.0  # start with "all pass"
    for f, g in zip(freq[-2::-1], gain[-2::-1], strict=True):
        if g != prev_g:
            transition = (prev_f - f) / 2.0
            k = int(round(_HAMMING_LENGTH / transition))
            k += 1 - k % 2
            if k > n:
                raise BrainpipeError(f"a {k}-tap transition does not fit the {n}-tap filter")
            lowpass = firwin_lowpass(k, (prev_f + f) / 2.0, 2.0)
            off = (n - k) // 2
            h[off : n - off] += lowpass if g else -lowpass
        prev_f, prev_g = f, g
    return h


def _auto_length(sfreq: float, transition: float) -> int:
    # mne: filter_length = f"{3.3 / transition}s", ceil(seconds * sfreq) samples, made odd
    n = max(int(np.ceil(_HAMMING_LENGTH * 1.0 / transition * 1 * sfreq)), 1)
    return n + (n - 1) % 2


def auto_transitions(
    sfreq: float, l_freq: float | None, h_freq: float | None
) -> tuple[float | None, float | None]:
    """mne's "auto" transition bandwidths (Hz) for a band-pass at `sfreq`."""
    l_trans = None if l_freq is None else min(max(0.25 * l_freq, 2.0), l_freq)
    h_trans = None if h_freq is None else min(max(0.25 * h_freq, 2.0), sfreq / 2 - h_freq)
    return l_trans, h_trans


def mne_fir(sfreq: float, l_freq: float | None, h_freq: float | None) -> np.ndarray | None:
    """`mne.filter.create_filter(None, sfreq, l_freq, h_freq, fir_design="firwin",
    phase="zero")` (band-, high- or low-pass; None when neither edge is set)."""
    nyq = sfreq / 2.0
    if l_freq == 0:
        l_freq = None
    if l_freq is None and h_freq is None:
        return None
    if h_freq is not None and not h_freq < nyq:
        raise BrainpipeError(f"low-pass {h_freq:g} Hz must be below Nyquist ({nyq:g} Hz)")
    l_trans, h_trans = auto_transitions(sfreq, l_freq, h_freq)
    if l_freq is None:
        freq, gain = [0, h_freq, h_freq + h_trans], [1, 1, 0]
    elif h_freq is None:
        freq, gain = [l_freq - l_trans, l_freq, nyq], [0, 1, 1]
    else:
        freq, gain = [l_freq - l_trans, l_freq, h_freq, h_freq + h_trans], [0, 1, 1, 0]
    if freq[-1] != nyq:  # mne's order: the stop band runs on to Nyquist, then from 0
        freq, gain = [*freq, nyq], [*gain, 0]
    if freq[0] != 0:
        freq, gain = [0, *freq], [0, *gain]
    n = _auto_length(sfreq, min(t for t in (l_trans, h_trans) if t is not None))
    return _firwin_design(n, np.asarray(freq, float) / nyq, np.asarray(gain, float))


def mne_notch(sfreq: float, freqs: tuple[float, ...]) -> np.ndarray:
    """What `mne.filter.notch_filter(x, sfreq, freqs)` (method="fir") designs: one multi-band
    stop firwin, each stop band freq/200 wide with 0.5 Hz transitions."""
    f = np.asarray(freqs, float)
    half = f / 400 + NOTCH_TRANS_HZ / 2
    lo, hi, t = f - half, f + half, NOTCH_TRANS_HZ / 2
    # mne's band-stop edges, in its order of operations (create_filter -> _triage_filter_params)
    pass1, stop1, stop2, pass2 = (lo - t) + t, lo + t, hi - t, (hi + t) - t
    freq = np.r_[pass1, stop1, stop2, pass2]
    gain = np.r_[
        np.ones_like(pass1), np.zeros_like(stop1), np.zeros_like(stop2), np.ones_like(pass2)
    ]
    order = np.argsort(freq)
    freq, gain = freq[order], gain[order]
    nyq = sfreq / 2.0
    if freq[0] != 0:
        freq, gain = np.r_[[0.0], freq], np.r_[[1.0], gain]
    if freq[-1] != nyq:
        freq, gain = np.r_[freq, [nyq]], np.r_[gain, [1.0]]
    if np.any(np.abs(np.diff(gain, 2)) > 1):
        raise BrainpipeError(
            f"notch frequencies {', '.join(f'{x:g}' for x in freqs)} Hz are too close together; "
            "their stop bands overlap (set preprocess.notch_freqs to distinct mains harmonics)"
        )
    return _firwin_design(_auto_length(sfreq, t), freq / nyq, gain)


def attenuation_db(kernel: np.ndarray, sfreq: float, lo: float, hi: float) -> float:
    """Least attenuation (dB) of a zero-phase kernel over [lo, hi] Hz, at 9 frequencies."""
    f = np.linspace(lo, hi, 9)
    n = np.arange(len(kernel))
    response = np.exp(-2j * np.pi * np.outer(f / sfreq, n)) @ kernel
    return float(-20 * np.log10(max(np.abs(response).max(), 1e-300)))


class Design(NamedTuple):
    kernel: np.ndarray | None  # float64, odd length, zero-phase (centred); None = no filtering
    bandpass_taps: int
    notch_taps: int
    notched: tuple[float, ...]
    skipped: tuple[str, ...]  # "60 Hz (reason)"


@functools.lru_cache(maxsize=32)
def design(
    sfreq: float, l_freq: float | None, h_freq: float | None, notch_freqs: tuple[float, ...]
) -> Design:
    """The band-pass and notch at the output rate `sfreq`, merged into one kernel.

    A notch is skipped at or above Nyquist (its band-stop would reach it) and where the band-pass
    already attenuates its whole stop band by `NOTCH_SKIP_DB`.
    """
    bandpass = mne_fir(sfreq, l_freq, h_freq)
    nyquist = sfreq / 2
    notched, skipped = [], []
    for f in notch_freqs:
        half = f / 400 + NOTCH_TRANS_HZ / 2  # mne: stop band f/200 wide, plus half a transition
        if f <= 0:
            skipped.append(f"{f:g} Hz (not a frequency)")
        elif f + half >= nyquist:
            skipped.append(f"{f:g} Hz (at or above the {nyquist:g} Hz Nyquist frequency)")
        elif (
            bandpass is not None
            and (db := attenuation_db(bandpass, sfreq, f - half, f + half)) >= NOTCH_SKIP_DB
        ):
            skipped.append(
                f"{f:g} Hz (the filter already attenuates {f - half:g}-{f + half:g} Hz by {db:.0f} dB)"
            )
        else:
            notched.append(f)
    notch = mne_notch(sfreq, tuple(notched)) if notched else None
    parts = [k for k in (bandpass, notch) if k is not None]
    # two zero-phase FIRs in sequence are one FIR: their kernels convolved
    kernel = functools.reduce(np.convolve, parts) if parts else None
    if kernel is not None:
        kernel.flags.writeable = False
    return Design(
        kernel=kernel,
        bandpass_taps=0 if bandpass is None else len(bandpass),
        notch_taps=0 if notch is None else len(notch),
        notched=tuple(notched),
        skipped=tuple(skipped),
    )


# ---------------------------------------------------------------------------------------------
# the plan: which pass, and how far an edge reaches


class FilterPlan(NamedTuple):
    up: int
    down: int
    sfreq_out: float
    design_key: tuple  # `design`'s arguments
    antialias_key: tuple | None  # `antialias`'s arguments when the FFT resamples, else None
    one_pass: bool  # False: the fallback, `window` resamples first, then the band-pass alone
    window: np.ndarray | None  # the polyphase anti-alias FIR (`antialias`) when resampling
    reach: int  # output samples an edge (or a chunk's cut) disturbs


@functools.lru_cache(maxsize=32)
def filter_plan(
    sfreq_in: float,
    sfreq_out: float,
    up: int,
    down: int,
    l_freq: float | None,
    h_freq: float | None,
    notch_freqs: tuple[float, ...],
) -> FilterPlan:
    """How `apply` filters a block at `sfreq_in` (up / down == sfreq_out / sfreq_in)."""
    key = (sfreq_out, l_freq, h_freq, tuple(notch_freqs))
    kernel = design(*key).kernel
    half = 0 if kernel is None else (len(kernel) - 1) // 2
    if up == down:
        return FilterPlan(up, down, sfreq_out, key, None, True, None, half)
    aa_key = (sfreq_in, sfreq_out, up, down, h_freq)
    window = antialias(*aa_key)
    reach = half + len(window) // min(up, down) + 2
    # One pass where what the polyphase filter lets alias (it is not modelled) lands where the
    # band-pass removes it: above its stop-band edge `keep`, below the lower Nyquist frequency
    keep = None if h_freq is None else h_freq + auto_transitions(sfreq_out, None, h_freq)[1]
    one_pass = keep is not None and keep < min(sfreq_in, sfreq_out) / 2
    return FilterPlan(
        up, down, sfreq_out, key, aa_key if one_pass else None, one_pass, window, reach
    )


@functools.lru_cache(maxsize=32)
def antialias(
    sfreq_in: float, sfreq_out: float, up: int, down: int, h_freq: float | None
) -> np.ndarray:
    """The polyphase resampler's anti-alias FIR (at sfreq_in * up), shortened by the low-pass.

    Only [0, keep] must come out flat and alias-free, keep being the band-pass's stop-band edge
    (50 Hz at the defaults): everything above is removed afterwards. What folds into [0, keep]
    comes from above lo - keep (lo = the lower of the two rates), so the transition band may span
    keep .. lo - keep instead of scipy's default, which is narrow around lo / 2 and
    20 * max(up, down) + 1 taps long: Kaiser, 80 dB (a 1 mV electrode offset's images would
    otherwise fold into the band at 1 µV). Without a low-pass (or no room for the wide band) it
    is `scipy.signal.resample_poly`'s default design.

    Each of the `up` polyphase branches is then scaled to a DC gain of exactly 1, which puts
    exact zeros at the multiples of sfreq_in where an electrode offset's images sit.
    """
    numtaps = 20 * max(up, down) + 1
    window: np.ndarray | None = None
    if h_freq is not None:
        keep = h_freq + auto_transitions(sfreq_out, None, h_freq)[1]
        lo = min(sfreq_in, sfreq_out)
        rate = sfreq_in * up  # the rate the polyphase filter runs at
        if lo - 2 * keep > 0:
            # scipy.signal.kaiserord(80, width) and kaiser_beta(80)
            width = (lo - 2 * keep) / (rate / 2)
            n = math.ceil((_ANTIALIAS_DB - 7.95) / 2.285 / (np.pi * width) + 1)
            if n | 1 < numtaps:
                beta = 0.1102 * (_ANTIALIAS_DB - 8.7)
                window = firwin_lowpass(n | 1, lo / 2, rate, beta=beta)
    if window is None:  # what resample_poly designs by default
        window = firwin_lowpass(numtaps, 1 / max(up, down), 2.0, beta=5.0)
    branch = np.arange(len(window)) % up
    window = window / (np.bincount(branch, weights=window, minlength=up)[branch] * up)
    window.flags.writeable = False
    return window


# ---------------------------------------------------------------------------------------------
# applying it


def apply(x: np.ndarray, plan: FilterPlan) -> np.ndarray:
    """(channels, n) samples -> (channels, ceil(n * up / down)) float32, resampled and filtered.

    The result is that of resampling (edges padded by odd reflection at the input rate), then
    the zero-phase FIR at the output rate (edges padded by odd reflection of the resampled
    signal, held beyond one reflection: mne's "reflect_limited"), the order and edge handling
    of the previous two-pass path. One pass computes it: odd reflection commutes with the
    resampling about the first sample, which input and output share; at the far end, where the
    last output sample may fall between two input samples, `_fix_tail` redoes the last half
    kernel of outputs the two-pass way. Blocks shorter than the filter take the two passes.
    """
    kernel = design(*plan.design_key).kernel
    if not plan.one_pass:  # fallback: resample first, then the band-pass alone
        x = _resample_poly(x, plan.up, plan.down, plan.window)
    up, down = (plan.up, plan.down) if plan.one_pass else (1, 1)
    if kernel is None and up == down:
        return np.asarray(x, dtype=np.float32)
    band = (plan.sfreq_out, plan.design_key, None)
    if up == down:
        return _fft_pass(x, 1, 1, band, plan.reach)
    half = (len(kernel) - 1) // 2
    n = x.shape[1]
    n_out = -(-n * up // down)
    if n_out <= 2 * plan.reach + 1 or n <= plan.reach * down // up + down + 1:
        y = _resample_at(x, up, down, plan.window, 0, n_out)
        return _fft_pass(y, 1, 1, band, half)
    y = _fft_pass(x, up, down, (*band[:2], plan.antialias_key), plan.reach)
    if (n_out - 1) * down != (n - 1) * up:
        _fix_tail(x, y, up, down, plan.window, kernel)
    return y


def _fft_pass(x: np.ndarray, up: int, down: int, what: tuple, reach: int) -> np.ndarray:
    """One real FFT of the padded block, times `_response(*what)`, one inverse FFT of the
    output's length. `reach`: output samples the edge padding must cover."""
    n_ch, n = x.shape
    n_out = -(-n * up // down)
    # input samples padded before the block: enough for the filter, and a multiple of `down`
    # so that output sample 0 falls on input sample 0
    lead = _round_up(-(-reach * down // up) + 1, down)
    q = _smooth_at_least(-(-(n + 2 * lead) // down))
    n_fft, n_fft_out = q * down, q * up
    response = _response(*what, n_fft, n_fft_out)
    o0 = lead * up // down
    out = np.empty((n_ch, n_out), dtype=np.float32)
    rows = min(n_ch, max(1, _BLOCK_VALUES // n_fft))
    # one set of buffers for every group of rows: fresh ones would be page-faulted in each time
    buf, spectrum = np.empty((rows, n_fft)), np.empty((rows, n_fft // 2 + 1), dtype=complex)
    result = np.empty((rows, n_fft_out))
    for r0 in range(0, n_ch, rows):
        k = min(rows, n_ch - r0)
        buf[:k, lead : lead + n] = x[r0 : r0 + k]
        _pad_odd(buf[:k], lead, n)
        part = np.fft.rfft(buf[:k], axis=1, out=spectrum[:k])[:, : len(response)]
        part *= response
        y = np.fft.irfft(part, n=n_fft_out, axis=1, out=result[:k])
        out[r0 : r0 + k] = y[:, o0 : o0 + n_out]
    return out


def _fix_tail(
    x: np.ndarray, y: np.ndarray, up: int, down: int, window: np.ndarray, kernel: np.ndarray
) -> None:
    """Redo y's last half kernel of outputs as resample-then-filter does them: the signal
    resampled by the polyphase `window` (so what lies above the passband, which the reflection
    folds back into it, is what that resampler leaves), reflected about its own last sample."""
    n_out = y.shape[1]
    half = (len(kernel) - 1) // 2
    first = n_out - 1 - 2 * half  # the first resampled sample those outputs see
    seg = _resample_at(x, up, down, window, first, 2 * half + 1)
    z = np.concatenate([seg, 2 * seg[:, -1:] - seg[:, -2 : -2 - half : -1]], axis=1)
    size = _smooth_at_least(z.shape[1] + len(kernel) - 1)
    full = np.fft.irfft(np.fft.rfft(z, size, axis=1) * np.fft.rfft(kernel, size), size, axis=1)
    y[:, n_out - 1 - half :] = full[:, 2 * half : 3 * half + 1]


def _resample_at(
    x: np.ndarray, up: int, down: int, window: np.ndarray, j0: int, count: int
) -> np.ndarray:
    """Outputs [j0, j0 + count) of `scipy.signal.resample_poly(x, up, down, window=window,
    padtype="antireflect")` by direct polyphase sums (a few thousand outputs: cheaper than
    resampling the block). Output j is up * sum_k window[k] * u[j * down + centre - k], u being
    x on every up-th sample of the upsampled grid and zero between; the outputs j, j + up,
    j + 2 up, ... share one branch of the window and step `down` input samples at a time, so
    each branch is one product of the input's strided windows with its taps."""
    centre, n = (len(window) - 1) // 2, x.shape[1]
    taps = -(-len(window) // up)
    branches = np.zeros(taps * up)
    branches[: len(window)] = window * up
    branches = branches.reshape(taps, up).T[:, ::-1]  # [phase, t]: taps for x[base - taps + 1 + t]
    # the input over [lo, hi], reflected where that passes an end; beyond one reflection (a
    # block shorter than the filter) the outermost value is held
    lo = (j0 * down + centre) // up - taps + 1
    hi = ((j0 + count - 1) * down + centre) // up
    near = np.arange(lo, hi + 1)
    src = np.clip(np.where(near < 0, -near, np.where(near > n - 1, 2 * (n - 1) - near, near)), 0, n - 1)  # fmt: skip
    ext = x[:, src] * np.where((near < 0) | (near > n - 1), -1.0, 1.0)
    ext[:, near < 0] += 2 * x[:, :1]
    ext[:, near > n - 1] += 2 * x[:, -1:]
    out = np.empty((len(x), count))
    step = ext.strides[1]
    for r in range(min(up, count)):
        pos = (j0 + r) * down + centre
        k = len(range(r, count, up))
        start = ext[:, pos // up - taps + 1 - lo :]
        view = np.lib.stride_tricks.as_strided(
            start, (len(x), k, taps), (ext.strides[0], down * step, step), writeable=False
        )
        out[:, r::up] = np.einsum("ckt,t->ck", view, branches[pos % up])
    return out


def _pad_odd(buf: np.ndarray, lead: int, n: int) -> None:
    """Fill buf's columns around [lead, lead + n) by odd reflection, then hold the end values."""
    r = min(lead, n - 1)
    if r:
        buf[:, lead - r : lead] = 2 * buf[:, lead : lead + 1] - buf[:, lead + r : lead : -1]
    buf[:, : lead - r] = buf[:, lead - r : lead - r + 1]
    end = lead + n - 1
    r = min(buf.shape[1] - end - 1, n - 1)
    if r:
        buf[:, end + 1 : end + 1 + r] = (
            2 * buf[:, end : end + 1] - buf[:, end - 1 : end - 1 - r : -1]
        )
    buf[:, end + 1 + r :] = buf[:, end + r : end + r + 1]


# a few: a chunked recording reuses one length; whole recordings each bring their own
@functools.lru_cache(maxsize=4)
def _response(
    sfreq_out: float,
    design_key: tuple | None,
    antialias_key: tuple | None,
    n_fft: int,
    n_fft_out: int,
) -> np.ndarray:
    """Per-bin gain of a pass with FFTs of n_fft in / n_fft_out out: the kernel's exact DFT at
    the output rate (when `design_key`), the polyphase anti-alias filter's response (when
    `antialias_key`), the resampling's scale."""
    m = min(n_fft, n_fft_out) // 2 + 1
    kernel = None if design_key is None else design(*design_key).kernel
    if kernel is None:
        gain = np.ones(m)
    else:
        half = (len(kernel) - 1) // 2
        centred = np.zeros(n_fft_out)
        centred[: half + 1] = kernel[half:]
        if half:
            centred[-half:] = kernel[:half]
        gain = np.fft.rfft(centred)[:m].real  # zero-phase: the imaginary part is rounding
    if antialias_key is not None:
        step, response = _antialias_response(*antialias_key)
        f = np.arange(m) * (sfreq_out / n_fft_out)
        gain = gain * np.interp(f, np.arange(len(response)) * step, response)
    gain = gain * (n_fft_out / n_fft)
    gain.flags.writeable = False
    return gain


@functools.lru_cache(maxsize=8)
def _antialias_response(
    sfreq_in: float, sfreq_out: float, up: int, down: int, h_freq: float | None
) -> tuple[float, np.ndarray]:
    """(step Hz, gain per step from 0 Hz) of `antialias`'s filter as the polyphase resampler
    applies it: zero-phase, unit gain at 0 Hz, on a grid 32 points per 1 / its duration, up to
    the lower Nyquist frequency: linear interpolation between them is exact to ~1e-6 of its
    ripple, and the grid does not depend on the block's length."""
    window = antialias(sfreq_in, sfreq_out, up, down, h_freq)
    rate = sfreq_in * up
    size = 1 << (32 * len(window) - 1).bit_length()
    half = (len(window) - 1) // 2
    centred = np.zeros(size)
    centred[: half + 1] = window[half:]
    centred[-half:] = window[:half]
    bins = int(min(sfreq_in, sfreq_out) / 2 / (rate / size)) + 2
    return rate / size, np.fft.rfft(centred)[:bins].real


def _resample_poly(x: np.ndarray, up: int, down: int, window: np.ndarray) -> np.ndarray:
    from scipy import signal  # the fallback only: ~2 s of import

    # antireflect (odd) padding continues value and slope, so a DC offset makes no edge step.
    # scipy 1.17's reflect modes kill the interpreter (SIGFPE) on one sample: "edge" there.
    pad = "antireflect" if x.shape[1] > 1 else "edge"
    return signal.resample_poly(x, up, down, axis=1, padtype=pad, window=window)


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def _smooth_at_least(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: the FFT's length in units of `down`."""
    best = 1 << max(n - 1, 0).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best
