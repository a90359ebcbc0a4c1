"""Configuration: frozen dataclasses that mirror the YAML files in `configs/`.

Defaults live here and only here; a YAML file and `--set dotted.key=value` overrides only change
them. Unknown keys, wrong types and bad choices fail before any work with one message naming the
key, the bad value and the valid choices.

    cfg = load_config("configs/tuab.yaml", ["preprocess.sfreq=128", "train.epochs=5"])

Long because every section's dataclass (with its comments, the documentation of each
key), the loader and the validation table live together: one place to read what a key means and
which values it takes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from brainpipe.errors import BrainpipeError

# The 19 channels of the international 10-20 system in TUH's naming (T3/T4/T5/T6, not T7/T8/P7/P8),
# in the fixed order the cache stores them.
STANDARD_1020 = (
    "FP1", "FP2", "F7", "F3", "FZ", "F4", "F8", "T3", "C3", "CZ",
    "C4", "T4", "T5", "P3", "PZ", "P4", "T6", "O1", "O2",
)  # fmt: skip


def _added(default: Any) -> Any:
    """A field added after caches and indexes were written: left out of `Config.to_dict()` (and
    so of the config hash a cache or index stores) while it has its default, so an old cache
    still matches an unchanged config. `default` may be a factory (dict)."""
    meta = {"omit_at_default": True}
    if callable(default):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class CorpusConfig:
    # tuab: edf/{train,eval}/{normal,abnormal}/01_tcp_ar/<subj>_s<sess>_t<tok>.edf
    # tusz: edf/{train,dev,eval}/<subj>/<sess>_<date>/<montage>/<subj>_s<sess>_t<tok>.edf + .csv_bi
    # generic: any tree; subject/label from `filename_regex` or `manifest`
    # bids: a BIDS dataset (brainpipe.bids): subject/session/task/run from the file names
    # tuev: edf/{train,eval}/<subj>/<name>.edf + <name>.rec (TUH EEG Events; events labelled
    #   spsw, gped, pled, eyem, artf, bckg, mapped to classes by event_labels)
    layout: Literal["tuab", "tusz", "tuev", "generic", "bids"] = "generic"
    # File suffixes the scan picks up (case-insensitive). mne reads the non-EDF ones.
    extensions: tuple[str, ...] = (".edf", ".bdf", ".fif")
    # generic layout: regex searched in the path relative to the raw root; named groups
    # `subject`, `session`, `label`, `split` are used when present.
    filename_regex: str | None = None
    # generic layout: CSV with a `path` column (relative to the raw root) and any of
    # `subject`, `session`, `label`, `split`.
    manifest: str | None = None
    # TUSZ annotation files beside each EDF, tried in this order.
    annotation_suffixes: tuple[str, ...] = (".csv_bi", ".csv")
    # Keyword arguments for mne's reader per file suffix, e.g. {".fif": {"allow_maxshield": true}}
    # (brainpipe.readers). Used by index, build-cache and EdfWindowDataset alike.
    reader_options: dict[str, Any] = _added(dict)
    # bids layout: the participants.tsv column holding each subject's label (null: no labels)
    # and the one holding its split (null: splits from `subject_splits`, else none).
    label_column: str | None = _added(None)
    split_column: str | None = _added(None)
    # Splits by subject, for recordings whose layout gives them none (generic without a split
    # group, bids without split_column): {"train": ["01", "02"], "eval": ["03"]}; subjects
    # listed nowhere keep no split.
    subject_splits: dict[str, Any] = _added(dict)
    # generic layout: pairs an annotation-only EDF+ file with its recording. A regex searched in
    # each path relative to the raw root; files whose named group `key` matches are a pair (one
    # recording, its annotation-only files). Default: Sleep-EDF's SC4001E0-PSG.edf beside
    # SC4001EC-Hypnogram.edf. null: no pairing (an annotation-only file is an error).
    annotation_pairing: str | None = _added(r"(?i)^(?P<key>.+)[^/]{2}-(?:PSG|Hypnogram)\.edf$")
    # EDF+/BDF+ annotation description -> event label (exact text, else a regex matching the
    # whole description; the first match in file order wins), e.g. {"Sleep stage W": "W",
    # "T1": "left"}. Stored with the index's events; unmatched events keep label "".
    event_labels: dict[str, str] = _added(dict)
    # tusz layout: the annotation labels that are seizures (e.g. [seiz, fnsz, gnsz]); any other
    # label is background. Empty: every label but background and TUH's artifact classes is a
    # seizure, and labels outside TUH's documented types are reported in the index summary.
    seizure_labels: tuple[str, ...] = _added(tuple)


@dataclass(frozen=True)
class IndexConfig:
    # Concurrent header reads. Large by default because on network mounts (WSL2 /mnt, NFS,
    # bucket FUSE) each open costs milliseconds of latency, not CPU.
    workers: int = 32


@dataclass(frozen=True)
class PreprocessConfig:
    # referential: the channels below as recorded against their reference.
    # tcp: the 22-channel temporal central parasagittal bipolar montage (FP1-F7, F7-T3, ...).
    # meg: MEG channels picked by type (`meg_picks`).
    # bipolar: `channels` are derivations "ANODE-CATHODE" (e.g. FP1-F7), any subset of electrodes.
    montage: Literal["referential", "tcp", "bipolar", "meg"] = "referential"
    channels: tuple[str, ...] = STANDARD_1020
    meg_picks: Literal["meg", "mag", "grad"] = "meg"
    # A recording lacking a required channel: skip it (with the reason) or zero-fill the channel
    # and record it in the per-recording channel mask.
    on_missing: Literal["skip", "zero"] = "skip"
    sfreq: float = 200.0
    l_freq: float | None = 0.5
    h_freq: float | None = 40.0
    # Mains frequencies to notch out (US: 60 Hz, as in TUH). Empty: no notch.
    notch_freqs: tuple[float, ...] = (60.0,)
    # Clip after normalization at +-clip (in normalized units); null: no clipping.
    clip: float | None = None
    normalize: Literal["zscore", "robust", "none"] = "zscore"
    # Samples cut from the start of each recording (TUH files start with amplifier settling).
    crop_start_s: float = 0.0
    # Upper bound on the seconds used per recording (null: the whole recording).
    max_duration_s: float | None = None


@dataclass(frozen=True)
class WindowConfig:
    seconds: float = 10.0
    stride_seconds: float = 10.0
    # TUSZ: a window is a seizure window when at least this fraction of it overlaps an event.
    label_overlap: float = 0.5
    # grid: windows every stride_seconds. events (cache.task=events): one window per event,
    # centred on it (TUEV's protocol: a 5-s window around each 1-s event), labelled by it.
    anchor: Literal["grid", "events"] = _added("grid")


@dataclass(frozen=True)
class CacheConfig:
    dtype: Literal["float16", "float32"] = "float16"
    compression: Literal["none", "lzf", "gzip", "blosc"] = "none"
    workers: int = 2
    # Which classes the task needs; the build fails when one comes out empty.
    # abnormal: TUAB normal/abnormal; seizure: TUSZ bckg/seiz (from annotation-file events only,
    # never EDF+ annotations); none: no label check.
    # events: the classes are the distinct labels of corpus.event_labels (in order of first
    # appearance), a window takes the class of the event overlapping it by window.label_overlap
    # (none: unlabelled, -1, left out of training); every class must have windows.
    task: Literal["abnormal", "seizure", "events", "none"] = "none"


@dataclass(frozen=True)
class AugmentConfig:
    random_crop: bool = False
    amplitude_scale: float = 0.0  # scale ~ U(1-a, 1+a); 0 disables
    channel_dropout: float = 0.0  # probability of zeroing each channel


@dataclass(frozen=True)
class TrainConfig:
    model: str = "ShallowFBCSPNet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_epochs: float = 1.0
    grad_clip: float | None = 1.0
    num_workers: int = 4
    prefetch_factor: int = 4
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    compile: bool = False
    channels_last: bool = False
    seed: int = 0
    val_fraction: float = 0.2
    # Class imbalance (TUSZ: seizures are a few percent of windows), two ways, alone or together:
    # balanced_sampling draws training windows with replacement so each class is equally likely;
    # pos_weight multiplies the cross-entropy of class 1 (seizure, abnormal) windows by this
    # factor (two-class caches only; 1: unweighted).
    balanced_sampling: bool = False
    pos_weight: float = 1.0
    eval_split: str = "eval"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    wandb_project: str | None = None
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    # Stop after this many steps per epoch (null: the whole epoch); for smoke runs and benchmarks.
    max_steps_per_epoch: int | None = None
    # classify: window -> class (labels). pairs / contrastive: subject embeddings, no labels
    # needed (MEG subject identification); splits by subject, see brainpipe.subjects.
    task: Literal["classify", "pairs", "contrastive"] = "classify"
    embedding_dim: int = 128  # subject tasks: the encoder's output size
    same_fraction: float = 0.5  # pairs: share of same-subject pairs in a batch
    windows_per_subject: int = 4  # contrastive: k windows of each of batch_size // k subjects
    temperature: float = 0.1  # contrastive: of the softmax over cosine similarities
    # Subject tasks on a corpus without an `eval_split`: share of subjects held out for eval.
    test_fraction: float = 0.2
    # A subject in more than one split of the cache leaks it between training and evaluation:
    # `train` refuses such a cache unless this is set.
    allow_subject_overlap: bool = _added(False)
    # Protocols (README, "Results you can compare"). val_split: the corpus's own validation split
    # (TUSZ `dev`, a manifest's or BIDS `val`) selects best.pt instead of subjects carved from
    # train by val_fraction ("": carve). select_by: the validation metric best.pt maximizes
    # ("": the task's default, `metrics.default_select_by`). folds >= 2: subject-wise K-fold
    # cross-validation, this run holding out fold `fold` of the subjects of `train` (or of
    # every split: fold_splits=all) as its eval set, assigned by `fold_seed`
    # (`protocols.assign_folds`); `brainpipe train --folds K` sets these per run.
    val_split: str = _added("")
    select_by: str = _added("")
    folds: int = _added(0)
    fold: int = _added(0)
    fold_seed: int = _added(0)
    fold_splits: Literal["train", "all"] = _added("train")
    # Foundation models (brainpipe.training.foundation; README "Foundation models").
    # pretrained: a weights directory (braindecode save_pretrained: config.json +
    # model.safetensors) or a Hugging Face repo id found in the local cache (never downloaded).
    pretrained: str | None = _added(None)
    # full: train everything; linear_probe: the head only (backbone frozen, in eval mode);
    # last_blocks: the head and the last `finetune_blocks` transformer blocks.
    finetune: Literal["full", "linear_probe", "last_blocks"] = _added("full")
    finetune_blocks: int = _added(2)
    layer_decay: float = _added(1.0)  # block i of L trains at lr * layer_decay**(L - i)
    grad_checkpointing: bool = _added(False)  # recompute transformer blocks in backward
    # Scaling applied on the device to each batch: auto = the model's contract (none for other
    # models); uv_100 (µV/100) and mv need a cache in µV (preprocess.normalize: none).
    input_scaling: Literal[
        "auto", "none", "uv_100", "mv", "window_zscore", "zscore_clip15", "percentile95"
    ] = _added("auto")
    # A channel the model's contract lists but the cache lacks: refuse, or feed zeros.
    missing_channels: Literal["refuse", "zero"] = _added("refuse")


@dataclass(frozen=True)
class PostprocessConfig:
    """Window seizure probabilities -> events (`detection.detect_events`), for `predict` and the
    validation event metrics of `train`.

    The defaults are conventional, not fitted: a 3-window moving average, threshold 0.5, events
    of at least 4 s (one window of the smoke config), events closer than 10 s merged. On the
    synthetic TUSZ corpus's dev split (never eval) they score OVLP sensitivity 1.0 at 0 FA/24h,
    as `predict --tune-on dev`'s best settings do. Real data needs its own values: choose them
    on a validation split with `brainpipe predict --tune-on dev` (README, "Seizure detection
    (TUSZ)"), which writes the chosen values to the output's postprocess.json.
    """

    # Centred moving average of the probabilities over this many windows (1: none).
    smooth_windows: int = 3
    # A window is positive when its smoothed probability is >= threshold.
    threshold: float = 0.5
    # Events shorter than this are dropped (s).
    min_duration_s: float = 4.0
    # Events closer than this are merged into one (s).
    merge_gap_s: float = 10.0
    # `predict --tune-on SPLIT`: the false-alarm budget the tuned parameters must meet (FA/24h,
    # NEDC OVLP); among the settings within it, the one with the highest sensitivity wins.
    tune_fa_per_24h: float = 10.0


@dataclass(frozen=True)
class Config:
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    def section_hash(self, *sections: str) -> str:
        """Stable hash of the named sections; decides whether a cache matches a config.

        Keys added after caches were first written (`_added`) are left out of `to_dict` while at
        their default, so a cache built before they existed still matches its unchanged config."""
        d = self.to_dict()
        blob = json.dumps({s: d[s] for s in sections}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _is_default(f: dataclasses.Field, value: Any) -> bool:
    if f.default_factory is not dataclasses.MISSING:
        return value == f.default_factory()
    return value == f.default


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {
            f.name: _to_plain(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if not (f.metadata.get("omit_at_default") and _is_default(f, getattr(obj, f.name)))
        }
    if isinstance(obj, tuple | list):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`; return it converted (lists to tuples)."""
    origin = typing.get_origin(tp)
    bad = BrainpipeError(f"config key {key!r}: {value!r} is not valid; expected {_describe(tp)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except BrainpipeError:
                pass
        raise bad
    if origin is tuple:
        (inner, _ellipsis) = typing.get_args(tp)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            value = [value]  # `--set preprocess.notch_freqs=50` means one item
        if not isinstance(value, list | tuple):
            raise bad
        return tuple(_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        # NaN compares false with every bound and inf passes "> 0": neither is a setting.
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise AssertionError(f"unsupported config type {tp!r} for {key}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise BrainpipeError(
                f"unknown config key {dotted!r}; valid keys under "
                f"{prefix.rstrip('.') or 'the top level'}: {', '.join(names)}"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise BrainpipeError(
                    f"config key {dotted!r} must be a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}"
                )
            kwargs[key] = _build(tp, value, f"{dotted}.")
        else:
            kwargs[key] = _coerce(dotted, value, tp)
    return cls(**kwargs)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise BrainpipeError(f"--set {dotted}: {p!r} is not a section")
        node = child
    node[parts[-1]] = value


# Words YAML 1.1 (PyYAML) reads as booleans or null rather than as strings.
_YAML_WORDS = frozenset(["true", "false", "yes", "no", "on", "off", "y", "n", "null", "~"])
_PLAIN_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*")


def parse_override(item: str) -> tuple[str, Any]:
    """Parse `dotted.key=value`; the value is read as YAML (so 5, 0.5, true, null, [1, 2] work)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise BrainpipeError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.epochs=5")
    text = raw.strip()
    if not text:
        return key.strip(), ""
    # JSON covers numbers, true/false/null and quoted lists, and keeps yaml's ~30 ms import off
    # the `brainpipe index` start-up path; anything else is YAML (unquoted lists, plain strings).
    try:
        return key.strip(), json.loads(text)
    except ValueError:
        pass
    if _PLAIN_WORD.fullmatch(text) and text.lower() not in _YAML_WORDS:
        return key.strip(), text  # what YAML would read too: a plain string such as `tuab`
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Defaults, then the YAML file, then `--set` overrides; validated as a whole."""
    data: dict[str, Any] = {}
    if path is not None:
        import yaml

        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise BrainpipeError(f"{p}: cannot read config ({e.strerror})") from e
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise BrainpipeError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise BrainpipeError(
                f"{p}: a config must be a mapping of sections, got {type(loaded).__name__}"
            )
        data = loaded
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(data, key, value)
    cfg = _build(Config, data, "")
    _check_semantics(cfg)
    return cfg


# Numeric keys and the range each must lie in: (low, high, low_inclusive, high_inclusive); None
# means unbounded. Checked for every config before any work, so a bad value fails with the key's
# name instead of an all-zero cache or a torch traceback hours later.
_RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "index.workers": (1, None, True, False),
    "cache.workers": (1, None, True, False),
    "preprocess.sfreq": (0, None, False, False),
    "preprocess.l_freq": (0, None, False, False),
    "preprocess.h_freq": (0, None, False, False),
    "preprocess.notch_freqs": (0, None, False, False),
    # clip=0 would write an all-zero cache and a negative clip a constant one.
    "preprocess.clip": (0, None, False, False),
    "preprocess.crop_start_s": (0, None, True, False),
    "preprocess.max_duration_s": (0, None, False, False),
    "window.seconds": (0, None, False, False),
    "window.stride_seconds": (0, None, False, False),
    "window.label_overlap": (0, 1, False, True),
    "train.epochs": (1, None, True, False),
    "train.batch_size": (1, None, True, False),
    "train.lr": (0, None, False, False),
    "train.weight_decay": (0, None, True, False),
    "train.warmup_epochs": (0, None, True, False),
    "train.grad_clip": (0, None, False, False),
    "train.num_workers": (0, None, True, False),
    "train.prefetch_factor": (1, None, True, False),
    "train.val_fraction": (0, 1, True, False),
    "train.pos_weight": (0, None, False, False),
    "train.max_steps_per_epoch": (1, None, True, False),
    "train.embedding_dim": (1, None, True, False),
    "train.same_fraction": (0, 1, True, True),
    "train.windows_per_subject": (2, None, True, False),
    "train.temperature": (0, None, False, False),
    "train.test_fraction": (0, 1, True, False),
    "train.folds": (0, None, True, False),
    "train.fold": (0, None, True, False),
    "train.finetune_blocks": (1, None, True, False),
    "train.layer_decay": (0, 1, False, True),
    "train.augment.amplitude_scale": (0, 1, True, False),
    "train.augment.channel_dropout": (0, 1, True, False),
    "postprocess.smooth_windows": (1, None, True, False),
    "postprocess.threshold": (0, 1, True, True),
    "postprocess.min_duration_s": (0, None, True, False),
    "postprocess.merge_gap_s": (0, None, True, False),
    "postprocess.tune_fa_per_24h": (0, None, True, False),
}


def _range_text(lo: float | None, hi: float | None, lo_in: bool, hi_in: bool) -> str:
    if hi is None:
        return f"{'>=' if lo_in else '>'} {lo:g}"
    return f"in {'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"


def _check_ranges(cfg: Config) -> None:
    for key, (lo, hi, lo_in, hi_in) in _RANGES.items():
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        for v in value if isinstance(value, tuple) else (value,):
            if v is None:
                continue
            ok = (lo is None or (v >= lo if lo_in else v > lo)) and (
                hi is None or (v <= hi if hi_in else v < hi)
            )
            if not ok:
                raise BrainpipeError(
                    f"config key {key!r}: {v!r} is not valid; it must be {_range_text(lo, hi, lo_in, hi_in)}"
                )


def _check_bipolar_and_anchor(cfg: Config) -> None:
    """preprocess.montage=bipolar channels are derivations; window.anchor=events needs events."""
    p = cfg.preprocess
    for ch in p.channels if p.montage == "bipolar" else ():
        a, dash, c = ch.partition("-")
        if not (dash and a.strip() and c.strip()) or "-" in c:
            raise BrainpipeError(
                f"config key 'preprocess.channels': {ch!r} is not a derivation 'ANODE-CATHODE' "
                "(e.g. FP1-F7), which preprocess.montage=bipolar needs"
            )
    if cfg.window.anchor == "events" and cfg.cache.task != "events":
        raise BrainpipeError(
            "config key 'window.anchor'=events places windows on events: it needs cache.task=events"
        )


def _check_semantics(cfg: Config) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise BrainpipeError(msg)

    _check_ranges(cfg)
    p = cfg.preprocess
    if p.l_freq is not None and p.h_freq is not None:
        need(
            p.l_freq < p.h_freq, "config keys 'preprocess.l_freq' must be below 'preprocess.h_freq'"
        )
    if p.h_freq is not None:
        need(
            p.h_freq < p.sfreq / 2,
            f"config key 'preprocess.h_freq'={p.h_freq} must be below Nyquist ({p.sfreq / 2} Hz at preprocess.sfreq={p.sfreq})",
        )
    need(
        len(p.channels) > 0 or p.montage == "meg",
        "config key 'preprocess.channels' must not be empty",
    )
    _check_bipolar_and_anchor(cfg)
    _check_corpus(cfg.corpus)
    if cfg.corpus.annotation_pairing is not None:
        try:
            rx = re.compile(cfg.corpus.annotation_pairing)
        except re.error as e:
            raise BrainpipeError(
                f"config key 'corpus.annotation_pairing': invalid regex ({e})"
            ) from e
        need(
            "key" in rx.groupindex,
            "config key 'corpus.annotation_pairing' needs a named group (?P<key>...) that pairs files",
        )
    for desc, label in cfg.corpus.event_labels.items():
        need(
            isinstance(label, str) and isinstance(desc, str),
            f"config key 'corpus.event_labels': {desc!r}: {label!r} must map text to a label name",
        )
        try:
            re.compile(desc)
        except re.error as e:
            raise BrainpipeError(
                f"config key 'corpus.event_labels': {desc!r} is neither plain text nor a valid regex ({e})"
            ) from e
    for lab in cfg.corpus.seizure_labels:
        need(
            isinstance(lab, str) and re.fullmatch(r"[A-Za-z][A-Za-z0-9_\-]{0,31}", lab) is not None,
            f"config key 'corpus.seizure_labels': {lab!r} is not an annotation label "
            "(a short name such as seiz, fnsz or gnsz)",
        )
    if cfg.cache.task == "events":
        need(
            len(set(cfg.corpus.event_labels.values()) - {""}) >= 2,
            "config key 'cache.task'=events needs corpus.event_labels mapping event descriptions "
            'to at least two classes, e.g. {"Sleep stage W": W, "Sleep stage 1": N1}',
        )
    t = cfg.train
    need(
        t.task == "classify" or not (t.folds or t.val_split),
        f"config keys 'train.folds'/'train.val_split' are for train.task=classify; the subject "
        f"task {t.task!r} divides subjects itself (train.val_fraction, train.test_fraction)",
    )
    need(
        t.folds != 1 and (t.folds == 0 or t.fold < t.folds),
        f"config keys 'train.folds'={t.folds}, 'train.fold'={t.fold}: folds is 0 (none) or >= 2, "
        "and fold one of 0 .. folds-1",
    )
    if cfg.corpus.filename_regex is not None:
        try:
            re.compile(cfg.corpus.filename_regex)
        except re.error as e:
            raise BrainpipeError(f"config key 'corpus.filename_regex': invalid regex ({e})") from e


def config_from_dict(data: dict[str, Any]) -> Config:
    """A Config from a plain dict (e.g. the one stored in a cache's attributes), validated."""
    cfg = _build(Config, data, "")
    _check_semantics(cfg)
    return cfg


def _check_corpus(c: CorpusConfig) -> None:
    from brainpipe.readers import format_refusal

    for ext in c.extensions:
        why = format_refusal(ext) if ext.startswith(".") else "a suffix starts with '.'"
        if why:
            raise BrainpipeError(f"config key 'corpus.extensions': {ext!r}: {why}")
    for ext, opts in c.reader_options.items():
        if not str(ext).startswith(".") or not isinstance(opts, dict):
            raise BrainpipeError(
                f"config key 'corpus.reader_options': {ext!r}: {opts!r} is not valid; expected a "
                'mapping of file suffix to mne reader arguments, e.g. {".fif": {"allow_maxshield": true}}'
            )
    seen: dict[str, str] = {}
    for split, subjects in c.subject_splits.items():
        if not isinstance(subjects, list | tuple) or not all(
            isinstance(s, str | int) for s in subjects
        ):
            raise BrainpipeError(
                f"config key 'corpus.subject_splits.{split}': {subjects!r} is not valid; expected "
                "a list of subject ids"
            )
        for s in map(str, subjects):
            if seen.setdefault(s, split) != split:
                raise BrainpipeError(
                    f"config key 'corpus.subject_splits': subject {s!r} is in both "
                    f"{seen[s]!r} and {split!r}; a subject belongs to one split"
                )
    bids_only = {"label_column": c.label_column, "split_column": c.split_column}
    for key, value in bids_only.items():
        if value is not None and c.layout != "bids":
            raise BrainpipeError(
                f"config key 'corpus.{key}' reads participants.tsv, which only corpus.layout=bids has"
            )
