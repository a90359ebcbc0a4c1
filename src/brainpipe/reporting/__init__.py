"""Summaries and tables for people; stages and formats return data, the CLI prints these.

Every line a command prints for people is built here, split by what it reports on:

- `data.py`: the data path (`index`, `build-cache`, `cache-set`, `inspect`, `verify`);
- `runs.py`: the model side (`synth`, `train` as it runs and when done, `embed`, `predict`);
- `scores.py`: the `score` report and its `--json` form.

Nothing here imports torch or a stage (a stage's result types are read by attribute), so
every stage and the CLI can import it. Names are re-exported: `from brainpipe.reporting import
scan_line` works for every function of the three modules.

    print(scan_line(build_index(raw, out, cfg)))
    print(index_table(Index.load(out).summary()))
"""

from brainpipe.reporting.data import (
    annotations_line,
    build_summary_text,
    cache_set_line,
    channel_type_summary,
    format_cache_table,
    index_output_line,
    index_table,
    lost_worker_line,
    scan_line,
    verify_json,
    verify_text,
    window_counts_text,
)
from brainpipe.reporting.runs import (
    embed_line,
    epoch_line,
    finetune_line,
    lost_best_note,
    predict_text,
    pretrained_line,
    resume_line,
    shared_subjects_note,
    shm_prefetch_note,
    synth_line,
    train_start_line,
    train_text,
)
from brainpipe.reporting.scores import score_json, score_report

__all__ = [
    "annotations_line",
    "build_summary_text",
    "cache_set_line",
    "channel_type_summary",
    "embed_line",
    "epoch_line",
    "finetune_line",
    "format_cache_table",
    "index_output_line",
    "index_table",
    "lost_best_note",
    "lost_worker_line",
    "predict_text",
    "pretrained_line",
    "resume_line",
    "scan_line",
    "score_json",
    "score_report",
    "shared_subjects_note",
    "shm_prefetch_note",
    "synth_line",
    "train_start_line",
    "train_text",
    "verify_json",
    "verify_text",
    "window_counts_text",
]
