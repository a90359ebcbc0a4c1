from pathlib import Path

import pytest

from brainpipe.config import STANDARD_1020, Config, load_config, parse_override
from brainpipe.errors import BrainpipeError

# configs/*.yaml and the recipes under configs/recipes/
CONFIGS = sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml"))


def test_the_three_shipped_configs_exist():
    assert {p.stem for p in CONFIGS} >= {"tuab", "tusz", "tuev", "smoke", "eegmat", "sleep_edf"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.parent.name + "/" + p.name)
def test_every_shipped_config_loads_and_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.corpus.layout in ("tuab", "tusz", "tuev", "generic")


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
