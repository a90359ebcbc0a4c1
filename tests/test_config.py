import dataclasses
import functools
import math

import pytest
import torch
from helpers import CONFIGS as CONFIG_DIR

from brainpipe.cache import make_plan
from brainpipe.config import STANDARD_1020, Config, load_config, parse_override
from brainpipe.errors import BrainpipeError
from brainpipe.index import build_index
from brainpipe.training.adapt import adapted_args, needs_adapter
from brainpipe.training.models import build_model, model_args

CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
# configs/recipes/: each runs end to end on its corpus's layout in test_recipes.py
RECIPES = sorted((CONFIG_DIR / "recipes").glob("*.yaml"))


def test_the_three_shipped_configs_exist():
    assert {p.stem for p in CONFIGS} >= {"tuab", "tusz", "tuev", "smoke"}
    assert {p.stem for p in RECIPES} >= {"tuab", "tusz", "tuev", "sleep_edf", "eegmmidb", "eegmat"}


@pytest.mark.parametrize(
    "path", CONFIGS + RECIPES, ids=lambda p: str(p.relative_to(CONFIG_DIR))
)  # fmt: skip
def test_every_shipped_config_loads_and_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.corpus.layout in ("tuab", "tusz", "tuev", "generic")


def synthetic_layout(cfg: Config) -> str | None:
    """The `brainpipe synth` layout whose files this config reads, or None when it has none."""
    if cfg.corpus.layout in ("tuab", "tusz", "tuev"):
        return cfg.corpus.layout
    if cfg.corpus.layout == "generic" and ".fif" in cfg.corpus.extensions:
        return "meg"  # BIDS-like sub-*/ses-* FIF files, what the MEG configs' regex expects
    return None


def seconds_needed(cfg: Config) -> float:
    """A recording length that leaves the config two windows after its crop."""
    w = cfg.window
    return cfg.preprocess.crop_start_s + w.seconds + max(w.seconds, w.stride_seconds)


@functools.cache
def corpus_seconds(layout: str) -> int:
    """One corpus per layout, its recordings long enough for every shipped config of the layout
    (a config that does not load fails in its own test, not here)."""
    need = 0.0
    for path in CONFIGS:
        try:
            cfg = load_config(path)
        except BrainpipeError:
            continue
        if synthetic_layout(cfg) == layout:
            need = max(need, seconds_needed(cfg))
    if layout == "tuev":  # an events cache needs every class: 45 s hold all six TUEV classes
        need = max(need, 45.0)
    return math.ceil(need)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_plans_a_cache_and_builds_its_model(path, synthetic_corpus, tmp_path):
    """What `build-cache` and `train` would make of the config, on a synthetic corpus of its
    layout (two subjects, three recordings): a config that loads but cannot run fails here, not on a cluster."""
    cfg = load_config(path)
    layout = synthetic_layout(cfg)
    if layout is None:
        pytest.fail(
            f"{path.name}: corpus.layout={cfg.corpus.layout} with extensions "
            f"{list(cfg.corpus.extensions)} has no synthetic corpus (brainpipe synth) to plan on"
        )
    raw = synthetic_corpus(
        layout, n_subjects=2, n_recordings=3, seed=0, duration_s=(corpus_seconds(layout),) * 2
    )
    index = build_index(raw, tmp_path / "index.npz", cfg, workers=2, progress=False).index
    assert len(index) == 3 and not index.errors, index.errors
    plan = make_plan(index, cfg)
    assert not plan.skipped, plan.skipped
    assert len(plan.index_rows) == 3
    assert (plan.layout.recordings["length"] >= plan.window).all()
    assert plan.layout.sfreq == cfg.preprocess.sfreq
    if cfg.train.task != "classify":  # the subject tasks learn who is who: subjects from the paths
        subjects = set(plan.layout.recordings["subject"].tolist())
        assert len(subjects) == 2 and "" not in subjects, subjects

    t = cfg.train
    n_outputs = len(plan.layout.label_names) if t.task == "classify" else t.embedding_dim
    n_chans = len(plan.layout.channels)
    args = model_args(t.model, t.model_kwargs, n_chans, plan.window, n_outputs, plan.layout.sfreq)
    if needs_adapter(t):  # a foundation model: its contract checked, random weights (none here)
        t = dataclasses.replace(t, pretrained=None, finetune="full")
        args = adapted_args(
            t, plan.layout.channels, plan.layout.sfreq, cfg.preprocess.normalize, plan.window,
            n_outputs,
        )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(args | ({"head": t.task} if t.task != "classify" else {})).eval()
    x = torch.randn(4, n_chans, plan.window)
    with torch.no_grad():
        out = model(x)
        assert tuple(out.shape) == (4, n_outputs) and torch.isfinite(out).all()
        if t.task != "classify":  # the subject tasks score window pairs through the same model
            same = model(x, x.flip(0))
            assert tuple(same.shape) == (4,) and torch.isfinite(same).all()


def test_defaults_without_a_file():
    cfg = load_config(None)
    assert cfg.preprocess.channels == STANDARD_1020
    assert cfg.cache.dtype == "float16"


def test_set_overrides_are_parsed_as_yaml(tmp_path):
    cfg = load_config(
        CONFIGS[0],
        [
            "preprocess.sfreq=128",
            "train.epochs=3",
            "preprocess.notch_freqs=[50, 100]",
            "preprocess.l_freq=null",
        ],
    )
    assert cfg.preprocess.sfreq == 128.0
    assert cfg.train.epochs == 3
    assert cfg.preprocess.notch_freqs == (50.0, 100.0)
    assert cfg.preprocess.l_freq is None


@pytest.mark.parametrize(
    "text",
    [
        "tuab",
        "configs/x.yaml",
        "a-b",
        "_x",
        "Y",
        "n",
        "True",
        "yes",
        "No",
        "Off",
        "null",
        "~",
        "0.5",
        "-3",
        "[1, 2]",
        "[a, b]",
        "foo bar",
        "x: y",
        "'quoted'",
        "{a: 1}",
    ],
)
def test_set_values_read_as_yaml_reads_them(text):
    # The shortcuts that keep yaml's import off the start-up path must not change a value.
    yaml = pytest.importorskip("yaml")
    assert parse_override(f"k={text}") == ("k", yaml.safe_load(text))


def test_unknown_key_names_the_key_and_valid_choices():
    with pytest.raises(BrainpipeError) as e:
        load_config(None, ["preprocess.sfrq=100"])
    msg = str(e.value)
    assert "preprocess.sfrq" in msg and "sfreq" in msg and "\n" not in msg


def test_unknown_section(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("prepocess:\n  sfreq: 100\n")
    with pytest.raises(BrainpipeError, match="'prepocess'.*corpus, index, preprocess"):
        load_config(p)


def test_bad_choice_lists_the_valid_ones():
    with pytest.raises(
        BrainpipeError, match=r"corpus.layout.*'tuab' \| 'tusz' \| 'tuev' \| 'generic'"
    ):
        load_config(None, ["corpus.layout=tuh"])


def test_wrong_type_is_rejected():
    with pytest.raises(BrainpipeError, match="train.epochs"):
        load_config(None, ["train.epochs=many"])
    with pytest.raises(BrainpipeError, match="train.amp"):
        load_config(None, ["train.amp=3"])


def test_semantic_checks():
    with pytest.raises(BrainpipeError, match="Nyquist"):
        load_config(None, ["preprocess.sfreq=50", "preprocess.h_freq=40"])
    with pytest.raises(BrainpipeError, match="l_freq"):
        load_config(None, ["preprocess.l_freq=30", "preprocess.h_freq=20"])


def test_malformed_set_and_yaml(tmp_path):
    with pytest.raises(BrainpipeError, match="KEY=VALUE"):
        load_config(None, ["train.epochs"])
    p = tmp_path / "bad.yaml"
    p.write_text("train: [unclosed\n")
    with pytest.raises(BrainpipeError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(BrainpipeError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_hash_tracks_only_named_sections():
    a = load_config(None)
    b = load_config(None, ["train.epochs=99"])
    c = load_config(None, ["preprocess.sfreq=100"])
    assert a.section_hash("preprocess") == b.section_hash("preprocess")
    assert a.section_hash("preprocess") != c.section_hash("preprocess")


@pytest.mark.parametrize(
    "override, key",
    [
        ("preprocess.clip=0", "preprocess.clip"),  # would write an all-zero cache
        ("preprocess.clip=-1", "preprocess.clip"),  # would write a constant cache
        ("preprocess.crop_start_s=-5", "preprocess.crop_start_s"),
        ("preprocess.l_freq=-0.5", "preprocess.l_freq"),
        ("preprocess.max_duration_s=0", "preprocess.max_duration_s"),
        ("preprocess.notch_freqs=[50, -60]", "preprocess.notch_freqs"),
        ("train.lr=-1", "train.lr"),
        ("train.lr=0", "train.lr"),
        ("train.prefetch_factor=-1", "train.prefetch_factor"),
        ("train.weight_decay=-0.1", "train.weight_decay"),
        ("train.grad_clip=0", "train.grad_clip"),
        ("train.max_steps_per_epoch=0", "train.max_steps_per_epoch"),
        ("train.augment.channel_dropout=1.5", "train.augment.channel_dropout"),
        ("window.label_overlap=0", "window.label_overlap"),
        ("train.lr=NaN", "train.lr"),
        ("preprocess.sfreq=Infinity", "preprocess.sfreq"),
    ],
)
def test_every_numeric_key_is_range_checked_at_load_time(override, key):
    with pytest.raises(BrainpipeError, match=f"'{key}'") as e:
        load_config(None, [override])
    assert "\n" not in str(e.value)


def test_range_errors_say_the_allowed_range():
    with pytest.raises(BrainpipeError, match=r"'train\.lr': -1\.0 .* must be > 0"):
        load_config(None, ["train.lr=-1"])
    with pytest.raises(BrainpipeError, match=r"must be in \[0, 1\)"):
        load_config(None, ["train.val_fraction=1"])
