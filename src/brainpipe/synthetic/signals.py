"""Signal models of the synthetic EEG: background, artefacts, slowing and seizures.

Stationary parts are drawn in the frequency domain (one irfft per recording); events (blinks,
heart beats, seizures) are added in the time domain. All vectorized over samples; float32 in uV.
What each part looks like (and why it survives z-scoring) is in the package docstring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft
import scipy.signal

from brainpipe.synthetic.plan import (
    POS,
    TUEV_SPREAD,
    Seizure,
    SyntheticRecording,
    TuevEvent,
    electrode,
    seizure_field,
)

MAINS_HZ = 60.0

_BLINK_WEIGHT = {
    "FP1": 1.0,
    "FP2": 1.0,
    "LOC": 0.8,
    "ROC": 0.8,
    "F7": 0.35,
    "F8": 0.35,
    "F3": 0.25,
    "F4": 0.25,
    "FZ": 0.2,
}


def bump(freqs: np.ndarray, fc: float, sd: float) -> np.ndarray:
    """A Gaussian spectral peak scaled to unit sum over 0.5-40 Hz."""
    g = np.exp(-0.5 * ((freqs - fc) / sd) ** 2)
    return g / g[(freqs >= 0.5) & (freqs <= 40)].sum()


def background_psd(
    rng: np.random.Generator, freqs: np.ndarray, xy: np.ndarray, slowing: float
) -> np.ndarray:
    """(channels, freqs) power spectra; the 1/f part sums to 1 over 0.5-40 Hz so the other
    components' weights read as multiples of it."""
    # 1/f^a with a roll-off below 0.3 Hz so that no channel drifts off the physical range.
    pink = np.maximum(freqs, 0.5) ** -rng.uniform(0.9, 1.3) * freqs**2 / (freqs**2 + 0.3**2)
    pink /= pink[(freqs >= 0.5) & (freqs <= 40)].sum()
    x, y = xy[:, 0], xy[:, 1]
    posterior = 1 / (1 + np.exp(6 * (y + 0.25)))
    n = len(xy)
    if slowing >= 1:
        alpha_hz, alpha_w = rng.uniform(7.0, 8.5), rng.uniform(0.05, 0.3)
        theta_w, delta_w = rng.uniform(0.5, 1.5), rng.uniform(4.0, 8.0)
    else:
        alpha_hz, alpha_w = rng.uniform(9.0, 11.5), rng.uniform(1.5, 4.0)
        theta_w = rng.uniform(0.0, 0.25) + 0.5 * slowing
        delta_w = rng.uniform(0.0, 0.1) + 2.0 * slowing
    delta = bump(freqs, rng.uniform(1.8, 3.5), 0.9)
    # polymorphic delta is often asymmetric: one hemisphere up to twice the other
    side = 1 + rng.uniform(-0.5, 0.5) * np.tanh(2 * x)
    beta_w = rng.uniform(0.05, 0.2)
    jitter = rng.uniform(0.8, 1.2, (4, n, 1))
    return (
        pink
        + alpha_w * posterior[:, None] * jitter[0] * bump(freqs, alpha_hz, 0.7)
        + theta_w * jitter[1] * bump(freqs, rng.uniform(5.0, 7.0), 1.0)
        + delta_w * side[:, None] * jitter[2] * delta
        + beta_w * (1 - posterior[:, None]) * jitter[3] * bump(freqs, rng.uniform(16.0, 24.0), 3.0)
    )


def colored(rng: np.random.Generator, psd: np.ndarray, n: int, rms: float) -> np.ndarray:
    """Gaussian noise with spectrum `psd` (rows), float32; a row whose psd sums to 1 has RMS `rms`
    (so a `background_psd` row has about `rms` of 1/f noise plus its peaks on top)."""
    z = rng.standard_normal((*psd.shape, 2), dtype=np.float32).view(np.complex64)[..., 0]
    z *= np.sqrt(psd, dtype=np.float32) * np.float32(rms * n / 2)
    z[..., 0] = 0
    return scipy.fft.irfft(z, n=n, axis=-1)


def _place(n: int, starts: np.ndarray, kernel: np.ndarray, amps: np.ndarray) -> np.ndarray:
    """A length-`n` trace with `kernel * amp` added at each start (starts must leave room for it)."""
    out = np.zeros(n, np.float32)
    idx = starts[:, None] + np.arange(len(kernel))
    np.add.at(out, idx.ravel(), (amps[:, None] * kernel).ravel().astype(np.float32))
    return out


def blinks(rng: np.random.Generator, n: int, sfreq: float) -> np.ndarray:
    klen = int(rng.uniform(0.3, 0.45) * sfreq)
    kernel = np.sin(np.pi * np.arange(klen) / klen) ** 2
    count = rng.poisson(n / sfreq / rng.uniform(3.0, 10.0))
    return _place(n, rng.integers(0, n - klen, count), kernel, rng.uniform(40, 120, count))


def ecg(rng: np.random.Generator, n: int, sfreq: float) -> np.ndarray:
    t = np.arange(int(0.6 * sfreq)) / sfreq
    kernel = np.exp(-0.5 * ((t - 0.1) / 0.012) ** 2) - 0.15 * np.exp(
        -0.5 * ((t - 0.125) / 0.01) ** 2
    )
    kernel += 0.25 * np.exp(-0.5 * ((t - 0.35) / 0.045) ** 2)
    rr = 60 / rng.uniform(55, 95)
    beats = np.cumsum(rr * (1 + 0.04 * rng.standard_normal(int(n / sfreq / rr) + 2)))
    starts = (beats * sfreq).astype(np.int64) - int(0.1 * sfreq)
    starts = starts[(starts >= 0) & (starts < n - len(kernel))]
    return _place(n, starts, kernel, np.full(len(starts), rng.uniform(300, 1000)))


def mains(n: int, sfreq: float) -> np.ndarray:
    """(2, n) float32: sin and cos of 60 Hz; any amplitude and phase is a mix of the two rows."""
    w = (2 * np.pi * MAINS_HZ / sfreq) * np.arange(n)
    return np.stack([np.sin(w), np.cos(w)]).astype(np.float32)


def mains_weights(rng: np.random.Generator, amp: np.ndarray) -> np.ndarray:
    """(channels, 2) weights on `mains` rows for amplitudes `amp` and random phases."""
    phase = rng.uniform(0, 2 * np.pi, len(amp))
    return np.stack([amp * np.cos(phase), amp * np.sin(phase)], axis=1)


def _seizure_wave(
    seizure: Seizure, gain: np.ndarray, delay: np.ndarray, rms: np.ndarray, sfreq: float, n: int
) -> tuple[slice, np.ndarray]:
    """(slice, (channels, samples) float32) to add for one seizure."""
    i0, i1 = int(math.ceil(seizure.onset_s * sfreq)), min(n, int(seizure.offset_s * sfreq))
    t = np.arange(i0, i1) / sfreq - seizure.onset_s
    length = seizure.offset_s - seizure.onset_s
    freq = seizure.f_start + (seizure.f_end - seizure.f_start) * t / length
    phase = 2 * np.pi * np.cumsum(freq) / sfreq
    # Three harmonics make sharp waves. A channel lagging by `delay` is the same wave shifted in
    # phase, so every channel is a mix of six rows (sin, cos of each harmonic): one matrix
    # product instead of channels x samples sines.
    harmonics = ((1, 1.0, 0.0), (2, 0.45, 0.6), (3, 0.2, 1.2))
    basis = np.concatenate(
        [[np.sin(h * phase + b), np.cos(h * phase + b)] for h, _, b in harmonics]
    )
    lag = 2 * np.pi * seizure.f_start * delay
    mix = np.concatenate(
        [np.stack([a * np.cos(h * lag), -a * np.sin(h * lag)], axis=1) for h, a, _ in harmonics],
        axis=1,
    )
    wave = mix.astype(np.float32) @ basis.astype(np.float32)
    # Each channel ramps up over ~3 s after its own onset, and the discharge grows as it slows.
    rise = np.clip((t[None, :] - delay[:, None]) / 3.0, 0, 1).astype(np.float32)
    fall = np.clip((length - t) / 1.5, 0, 1) * (0.6 + 0.4 * t / length)
    amp = seizure.gain * gain * rms
    wave *= rise
    wave *= amp[:, None].astype(np.float32) * fall[None, :].astype(np.float32)
    return slice(i0, i1), wave


# TUEV classes: (peak gain in multiples of the channel's background RMS, a waveform over the
# event's seconds t). Each class differs in rhythm and shape as well as place, so a small CNN
# can tell them apart after per-channel z-scoring.
def _spike_wave(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    phase = 2 * np.pi * 3.0 * t  # 3 Hz spike-and-slow-wave
    return np.sin(phase) + 0.45 * np.sin(2 * phase + 0.6) + 0.2 * np.sin(3 * phase + 1.2)


def _periodic_sharp(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    beat = (t % 1.0) - 0.2  # one sharp wave a second, as periodic discharges are
    return np.exp(-0.5 * (beat / 0.04) ** 2) - 0.3 * np.exp(-0.5 * ((beat - 0.15) / 0.1) ** 2)


def _eye_movement(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.sin(np.pi * t / max(float(t[-1]), 1e-3)) if len(t) else t


def _muscle(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal(len(t))
    return np.diff(x, prepend=0.0) / 2  # broadband, weighted to high frequencies


_TUEV_WAVES = {
    "spsw": (4.0, _spike_wave),
    "gped": (5.0, _periodic_sharp),
    "pled": (5.0, _periodic_sharp),
    "eyem": (6.0, _eye_movement),
    "artf": (4.0, _muscle),
}


def tuev_wave(
    event: TuevEvent, names: list[str], rms: np.ndarray, sfreq: float, n: int, rng
) -> tuple[slice, np.ndarray] | None:
    """(slice, (channels, samples)) to add for one TUEV event; None for background."""
    if event.kind not in _TUEV_WAVES:
        return None
    gain, shape = _TUEV_WAVES[event.kind]
    i0, i1 = int(math.ceil(event.onset_s * sfreq)), min(n, int(event.offset_s * sfreq))
    t = np.arange(i1 - i0) / sfreq
    fx, fy = POS[event.focus]
    field = np.array(
        [
            math.exp(
                -0.5 * (math.hypot(POS[e][0] - fx, POS[e][1] - fy) / TUEV_SPREAD[event.kind]) ** 2
            )
            for e in names
        ]
    )
    wave = (gain * field * rms)[:, None] * shape(t, rng)[None, :]
    return slice(i0, i1), wave.astype(np.float32)


def eeg_signals(rec: SyntheticRecording, rng: np.random.Generator) -> np.ndarray:
    """(channels, samples) float32 in uV for an EEG recording planned in `rec`."""
    sfreq, n = rec.sfreq, int(rec.sfreq * rec.duration_s)
    electrodes = [electrode(c) for c in rec.channels]
    scalp = np.flatnonzero([e in POS for e in electrodes])
    xy = np.array([POS[electrodes[i]] for i in scalp])
    freqs = scipy.fft.rfftfreq(n, 1 / sfreq)

    # Every channel is a weighted sum of a few source traces, so the whole recording is one
    # matrix product (weights: channels x sources) @ (sources: sources x samples).
    level = rng.uniform(12, 30)  # uV RMS of the 1/f part
    psd = background_psd(rng, freqs, xy, rec.slowing)
    # Referential channels all carry the reference electrode's own activity (0.4x as strong).
    pink = np.maximum(freqs, 0.5) ** -1.3 * freqs**2 / (freqs**2 + 0.3**2)
    psd = np.vstack([psd, 0.16 * pink / pink.sum()])
    noisy = [i for i, e in enumerate(electrodes) if e == "EMG" or e.isdigit()]
    sources = np.concatenate(
        [
            colored(rng, psd, n, level),
            blinks(rng, n, sfreq)[None],
            ecg(rng, n, sfreq)[None],
            mains(n, sfreq),
            rng.standard_normal((len(noisy), n), dtype=np.float32),
        ]
    )
    k = len(scalp)
    i_blink, i_ecg, i_mains, i_white = k + 1, k + 2, k + 3, k + 5
    weights = np.zeros((len(electrodes), len(sources)), np.float32)

    d2 = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    mixing = np.exp(-d2 / (2 * 0.35**2))
    mixing /= np.sqrt((mixing**2).sum(1, keepdims=True))
    impedance = rng.uniform(0.85, 1.15, k)
    weights[scalp, :k] = impedance[:, None] * mixing
    weights[scalp, k] = impedance
    weights[scalp, i_blink] = impedance * [_BLINK_WEIGHT.get(electrodes[i], 0.0) for i in scalp]
    weights[[i for i, e in enumerate(electrodes) if e == "EKG1"], i_ecg] = 1.0
    for j, i in enumerate(noisy):  # EMG: broadband; unused amplifier inputs (26-30): low noise
        weights[i, i_white + j] = (
            rng.uniform(3, 15) if electrodes[i] == "EMG" else rng.uniform(0.5, 2)
        )
    # PHOTIC, IBI, BURSTS, SUPPR stay flat (no stimulator or detector running); all else hums.
    hums = np.array([e not in ("PHOTIC", "IBI", "BURSTS", "SUPPR") for e in electrodes])
    amp = rng.uniform(0.5, 4.0) * rng.uniform(0.5, 1.5, len(electrodes))
    weights[hums, i_mains : i_mains + 2] = mains_weights(rng, amp[hums])
    # einsum, not `@`: BLAS would start threads for this small product, and on a busy machine
    # (2 cores shared) waiting for them made generation 1.2-4x slower than one thread (measured).
    data = np.einsum("cs,sn->cn", weights, sources)

    if rec.seizures:
        rms = data[scalp].std(axis=1)
        names = [electrodes[i] for i in scalp]
        for seizure in rec.seizures:
            gain, delay = seizure_field(seizure, names)
            where, wave = _seizure_wave(seizure, gain, delay, rms, sfreq, n)
            data[scalp, where] += wave
    if rec.events:
        rms = data[scalp].std(axis=1)
        names = [electrodes[i] for i in scalp]
        for event in rec.events:
            got = tuev_wave(event, names, rms, sfreq, n, rng)
            if got is not None:
                data[scalp, got[0]] += got[1]
    return data


# ---------------------------------------------------------------------------------------------
# MEG: 306 Neuromag sensors, generated block by block so that an hour at 1 kHz (4.4 GB as float32)
# never sits in memory. Time-domain filters with carried state make the blocks one continuous
# signal; the block grid is fixed, so the samples do not depend on how the writer asks for them.

_MEG_BLOCK = 4096  # samples per generated block
_MEG_BACKGROUND_SOURCES = 16
# Paul Kellett's "economy" pink-noise filter: 1/f within ~3 decades below Nyquist at any rate.
_PINK_BA = (
    np.array([0.049922035, -0.095993537, 0.050612699, -0.004408786]),
    np.array([1.0, -2.494956002, 2.017265875, -0.522189400]),
)


@dataclass(frozen=True)
class MegSubject:
    """What makes one subject's MEG recognisable in every session: the alpha peak frequency and
    topography (two posterior generators), a central beta rhythm, and each sensor's gain (head
    size and position in the helmet). Sessions add only independent noise and small jitter."""

    alpha_hz: float
    alpha_maps: np.ndarray  # (2, sensors)
    beta_hz: float
    beta_map: np.ndarray  # (sensors,)
    gain: np.ndarray  # (sensors,)


def meg_sensors() -> tuple[np.ndarray, np.ndarray]:
    """Sensor positions (sensors, 2) in the scalp's [-1, 1] frame, and which are magnetometers."""
    import mne

    layout = mne.channels.read_layout("Vectorview-all")
    xy = layout.pos[:, :2] + layout.pos[:, 2:] / 2
    xy = 2 * (xy - xy.min(0)) / (xy.max(0) - xy.min(0)) - 1
    return xy, np.array([name.endswith("1") for name in layout.names])


def _blob(xy: np.ndarray, centre: np.ndarray, width: float) -> np.ndarray:
    return np.exp(-((xy - centre) ** 2).sum(1) / (2 * width**2))


def draw_meg_subject(rng: np.random.Generator, xy: np.ndarray) -> MegSubject:
    n = len(xy)
    # Generators left and right of the midline, posterior; a per-sensor factor stands for the
    # folding of each subject's cortex, which makes fine-grained topographies differ.
    alpha_maps = np.stack(
        [
            _blob(xy, np.array([side * rng.uniform(0.1, 0.7), rng.uniform(-0.9, -0.3)]), rng.uniform(0.25, 0.5))
            * rng.uniform(0.4, 1.6, n)
            for side in (-1, 1)
        ]
    )  # fmt: skip
    beta_centre = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.2, 0.5)])
    return MegSubject(
        alpha_hz=float(rng.uniform(8.0, 12.5)),
        alpha_maps=alpha_maps,
        beta_hz=float(rng.uniform(15.0, 25.0)),
        beta_map=_blob(xy, beta_centre, rng.uniform(0.3, 0.6)) * rng.uniform(0.4, 1.6, n),
        gain=rng.uniform(0.7, 1.3, n),
    )


def _unit_rms(b: np.ndarray, a: np.ndarray, sfreq: float) -> float:
    """RMS of the filter's output for unit white noise (from 60 s of its impulse response)."""
    impulse = np.zeros(int(60 * sfreq))
    impulse[0] = 1
    return float(np.sqrt((scipy.signal.lfilter(b, a, impulse) ** 2).sum()))


class MegSource:
    """One MEG recording's samples in SI units, `read(start, stop)` block by block: 306 MEG
    sensors (T, T/m), 4 EEG, EOG, ECG (V) and the trigger channel, in `meg_channels()` order.

    MEG = the subject's alpha and beta rhythms through its topographies, 16 pink background
    sources at random places, sensor noise and 60 Hz mains; each sensor scaled by its gain. The
    small channels (7 of 313) are drawn whole at the start as in the EEG model.
    """

    def __init__(self, rec: SyntheticRecording, subject: MegSubject, seed: list[int]):
        self.rec, self.subject, self.seed = rec, subject, seed
        self.n_times = round(rec.sfreq * rec.duration_s)
        self.xy, self.is_mag = meg_sensors()
        self._reset()

    def _reset(self) -> None:
        rng = self._rng = np.random.default_rng(self.seed)
        sfreq, subject, n_sensors = self.rec.sfreq, self.subject, len(self.xy)
        alpha_hz = subject.alpha_hz + rng.normal(0, 0.1)
        self._filters = [
            _PINK_BA,
            scipy.signal.iirpeak(alpha_hz, alpha_hz / 1.5, fs=sfreq),
            scipy.signal.iirpeak(subject.beta_hz, subject.beta_hz / 4.0, fs=sfreq),
        ]
        self._state = [
            np.zeros((k, len(a) - 1))
            for k, (_, a) in zip((_MEG_BACKGROUND_SOURCES, 2, 1), self._filters, strict=True)
        ]
        centres = rng.uniform(-1, 1, (_MEG_BACKGROUND_SOURCES, 2))
        mixing = np.exp(-((self.xy[:, None] - centres[None]) ** 2).sum(-1) / (2 * 0.4**2))
        mixing /= np.sqrt((mixing**2).sum(1, keepdims=True))  # background RMS 1 at every sensor
        unit = [_unit_rms(b, a, sfreq) for b, a in self._filters]
        alpha_amp, beta_amp = rng.uniform(1.5, 2.5), rng.uniform(0.3, 0.6)
        self._weights = np.concatenate(
            [
                mixing / unit[0],
                alpha_amp * subject.alpha_maps.T / unit[1],
                beta_amp * subject.beta_map[:, None] / unit[2],
                mains_weights(rng, rng.uniform(0.05, 0.15, n_sensors)),
            ],
            axis=1,
        ).astype(np.float32)
        # ~200 fT RMS on magnetometers, ~30 fT/cm on gradiometers
        scale = np.where(self.is_mag, 200e-15, 30e-13) * subject.gain
        self._scale = (scale * rng.uniform(0.97, 1.03, n_sensors))[:, None].astype(np.float32)
        self._small = self._small_channels(rng)
        self._buf, self._buf_start = np.zeros((n_sensors, 0), np.float32), 0

    def _small_channels(self, rng: np.random.Generator) -> np.ndarray:
        """(7, samples) float32: 4 EEG, EOG, ECG in V and the trigger channel."""
        sfreq, n = self.rec.sfreq, self.n_times
        freqs = scipy.fft.rfftfreq(n, 1 / sfreq)
        eeg_xy = np.array([[-0.3, 0.5], [0.3, 0.5], [-0.3, -0.8], [0.3, -0.8]])
        eeg = colored(rng, background_psd(rng, freqs, eeg_xy, 0.0), n, 15.0)
        eog = blinks(rng, n, sfreq) * 3 + rng.standard_normal(n, dtype=np.float32) * 5
        stim = np.zeros(n, np.float32)  # 50 ms trigger pulses every 2-4 s, event codes 1-4
        onsets = np.arange(
            int(rng.uniform(1, 3) * sfreq), n - int(0.1 * sfreq), int(rng.uniform(2, 4) * sfreq)
        )
        stim[onsets[:, None] + np.arange(int(0.05 * sfreq))] = rng.integers(1, 5, (len(onsets), 1))
        return np.concatenate(
            [eeg * 1e-6, eog[None] * 1e-6, ecg(rng, n, sfreq)[None] * 1e-6, stim[None]]
        )

    def _next_block(self) -> np.ndarray:
        rng, start = self._rng, self._buf_start + self._buf.shape[1]
        rows = []
        for k, (b, a), i in zip(
            (_MEG_BACKGROUND_SOURCES, 2, 1), self._filters, range(3), strict=True
        ):
            white = rng.standard_normal((k, _MEG_BLOCK))
            out, self._state[i] = scipy.signal.lfilter(b, a, white, axis=-1, zi=self._state[i])
            rows.append(out.astype(np.float32))
        w = (2 * np.pi * MAINS_HZ / self.rec.sfreq) * np.arange(start, start + _MEG_BLOCK)
        rows.append(np.stack([np.sin(w), np.cos(w)]).astype(np.float32))
        noise = rng.standard_normal((len(self.xy), _MEG_BLOCK), dtype=np.float32)
        # einsum, not `@`: see eeg_signals (BLAS threads on a busy machine)
        block = np.einsum("cs,sn->cn", self._weights, np.concatenate(rows))
        block += np.float32(0.3) * noise
        block *= self._scale
        return block

    def read(self, start: int, stop: int) -> np.ndarray:
        """(313, stop - start) float64; rewinds (regenerates from the start) if asked backwards."""
        if start < self._buf_start:
            self._reset()
        while self._buf_start + self._buf.shape[1] < stop:
            self._buf = np.concatenate([self._buf, self._next_block()], axis=1)
        meg = self._buf[:, start - self._buf_start : stop - self._buf_start]
        out = np.concatenate([meg, self._small[:, start:stop]]).astype(np.float64)
        drop = (start - self._buf_start) // _MEG_BLOCK * _MEG_BLOCK  # whole blocks before `start`
        self._buf, self._buf_start = self._buf[:, drop:], self._buf_start + drop
        return out
