"""Command line: parse arguments, call one library function per stage, print.

    brainpipe synth --layout tuab --out data/raw
    brainpipe index --raw data/raw --index data/index.npz --config configs/smoke.yaml
    brainpipe build-cache --index data/index.npz --cache data/cache.h5 --config configs/smoke.yaml
    brainpipe train --cache data/cache.h5 --run-dir runs/smoke --config configs/smoke.yaml
    brainpipe embed --cache data/meg.h5 --checkpoint runs/meg/best.pt --out data/meg-emb.h5
    brainpipe inspect data/index.npz --json
    brainpipe predict --cache data/tusz.h5 --checkpoint runs/x/best.pt --split eval --out runs/x/pred
    brainpipe score --ref tusz/edf/eval --hyp runs/x/hyp --method nedc-ovlp --json
    brainpipe score --ref data/tusz.h5 --hyp runs/x/pred/hyp
    brainpipe train ... --seeds 0,1,2,3,4 --folds 5; brainpipe report runs/x --out runs/x/report

Stage modules are imported inside their command so `brainpipe index` never pays for torch or mne.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from brainpipe import __version__
from brainpipe.errors import BrainpipeError


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override a config value, e.g. --set preprocess.sfreq=128 (repeatable)",
    )


def _add_stages(sub: argparse._SubParsersAction) -> None:
    """The pipeline: synth, index, build-cache, cache-set, train."""
    p = sub.add_parser("synth", help="write a synthetic TUH-like corpus (TUAB, TUSZ, TUEV or MEG)")
    p.add_argument("--layout", choices=["tuab", "tusz", "tuev", "meg"], required=True)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument(
        "--n-subjects", type=int, default=None, help="number of subjects (default: the generator's)"
    )
    p.add_argument("--n-recordings", type=int, default=None, help="exact number of recordings")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration", type=float, nargs=2, metavar=("MIN_S", "MAX_S"), default=None)
    p.add_argument(
        "--sessions", type=int, nargs=2, metavar=("MIN", "MAX"), default=None,
        help="sessions per subject (default 1 2)",
    )  # fmt: skip
    p.add_argument(
        "--sfreq", type=float, default=None,
        help="Hz of every recording (default: TUH's mix for EEG, 250 for MEG)",
    )  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty directory")

    p = sub.add_parser("index", help="scan raw recordings (headers only) into one index file")
    p.add_argument(
        "--raw", required=True, metavar="DIR", help="root of the raw corpus (or s3://bucket/prefix)"
    )
    p.add_argument("--index", required=True, metavar="PATH", help="index file to write (.npz)")
    _add_config(p)
    p.add_argument(
        "--workers", type=int, default=None, help="concurrent header reads (default: index.workers)"
    )
    p.add_argument(
        "--force", action="store_true", help="re-read every file (also BRAINPIPE_FORCE_REINDEX=1)"
    )

    p = sub.add_parser("build-cache", help="preprocess the indexed recordings into one HDF5 cache")
    p.add_argument("--index", required=True, metavar="PATH")
    p.add_argument("--cache", required=True, metavar="PATH", help="cache file to write (.h5)")
    p.add_argument(
        "--raw", metavar="DIR", help="raw root, when it moved since indexing (default: the index's)"
    )
    _add_config(p)
    p.add_argument(
        "--workers", type=int, default=None, help="preprocessing processes (default: cache.workers)"
    )
    p.add_argument("--force", action="store_true", help="rebuild from scratch")
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="build only shard I of N (whole subjects; join with cache-set)",
    )

    p = sub.add_parser("cache-set", help="write a cache set: one manifest naming member caches")
    p.add_argument("--out", required=True, metavar="SET.json", help="manifest to write")
    p.add_argument("caches", nargs="+", metavar="CACHE", help="member caches (.h5)")

    p = sub.add_parser("train", help="train a model from the cache")
    p.add_argument("--cache", required=True, metavar="PATH")
    p.add_argument("--run-dir", required=True, metavar="DIR")
    _add_config(p)
    p.add_argument(
        "--resume", action="store_true", help="continue from the run dir's last checkpoint"
    )
    _add_protocol(p)


def _add_protocol(p: argparse.ArgumentParser) -> None:
    """train's protocol flags: seeds, subject-wise folds, one cell of their grid, aggregation."""
    g = p.add_argument_group("protocols (README: Results you can compare)")
    g.add_argument("--seeds", metavar="LIST", help="one sub-run per seed, e.g. 0,1,2,3,4")
    g.add_argument(
        "--folds", type=int, default=0, metavar="K",
        help="subject-wise K-fold cross-validation over the train split's subjects",
    )  # fmt: skip
    g.add_argument(
        "--fold-all-splits", action="store_true",
        help="with --folds: fold the subjects of every split, not only train's",
    )  # fmt: skip
    g.add_argument(
        "--cell", type=int, metavar="I",
        help="train only cell I of the seeds x folds grid (a Slurm array task)",
    )  # fmt: skip
    g.add_argument(
        "--aggregate", action="store_true",
        help="only write the parent summary.json from the finished cells",
    )  # fmt: skip


def _add_inference(sub: argparse._SubParsersAction) -> None:
    """What a trained model gives: embed, predict, score."""
    p = sub.add_parser("embed", help="embeddings of every window of a cache from a checkpoint")
    p.add_argument("--cache", required=True, metavar="PATH")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="e.g. runs/meg/best.pt")
    p.add_argument("--out", required=True, metavar="FILE", help="embeddings file to write (.h5)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: the run's)")

    p = sub.add_parser(
        "predict",
        help="seizure probabilities and events (.csv_bi) of a cache split from a checkpoint",
    )
    p.add_argument("--cache", required=True, metavar="PATH", help="seizure cache (.h5)")
    p.add_argument("--checkpoint", required=True, metavar="PT", help="e.g. runs/x/best.pt")
    p.add_argument("--split", default="eval", help="split to predict, or 'val' (default: eval)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument(
        "--tune-on", metavar="SPLIT",
        help="choose postprocess.* on this validation split (e.g. dev or val), never on eval",
    )  # fmt: skip
    p.add_argument("--config", metavar="FILE", help="YAML config in place of the checkpoint's own")
    p.add_argument(
        "--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
        help="override a config value, e.g. --set postprocess.threshold=0.7 (repeatable)",
    )  # fmt: skip

    p = sub.add_parser(
        "score", help="score hypothesis seizure events against references (NEDC, SzCORE)"
    )
    p.add_argument(
        "--ref", required=True, metavar="DIR_OR_CACHE",
        help="reference annotation tree, or a seizure cache (its stored events)",
    )  # fmt: skip
    p.add_argument("--hyp", required=True, metavar="DIR", help="hypothesis .csv_bi tree")
    p.add_argument(
        "--method",
        action="append",
        metavar="METHOD",
        help="nedc-ovlp, nedc-taes, nedc-epoch or szcore (repeatable; default: all four)",
    )
    p.add_argument(
        "--json", action="store_true", help="one JSON object (an array for several methods)"
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="vary the confidence threshold: sensitivity at 1, 2.5, 5, 10 FA/24h",
    )
    p.add_argument("--curve", metavar="FILE.csv", help="write the sweep's curve (implies --sweep)")
    p.add_argument("--plot", metavar="FILE.png", help="plot the sweep's curve (implies --sweep)")


def _add_checks(sub: argparse._SubParsersAction) -> None:
    """Looking at files: inspect, verify."""
    p = sub.add_parser("report", help="one static HTML report (index.html + PNGs) of run dirs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="runs, or protocols' parents")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write")

    p = sub.add_parser("inspect", help="summarize an index or a cache")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--verify", action="store_true", help="cache: also run `brainpipe verify`")

    p = sub.add_parser("verify", help="check a cache: tables, finite values, windows vs raw files")
    p.add_argument("path", metavar="CACHE")
    p.add_argument(
        "--n-windows", type=int, default=8, help="random windows re-preprocessed from raw"
    )
    p.add_argument("--raw", metavar="DIR", help="raw root, when it moved since indexing")
    p.add_argument("--seed", type=int, default=0)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="brainpipe", description="EEG/MEG training stack: index -> build-cache -> train."
    )
    ap.add_argument("--version", action="version", version=f"brainpipe {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_stages, _add_inference, _add_checks):
        add(sub)
    return ap


def _load_cfg(args: argparse.Namespace):
    from brainpipe.config import load_config

    return load_config(args.config, args.overrides)


def cmd_synth(args: argparse.Namespace) -> int:
    from brainpipe.reporting import synth_line
    from brainpipe.synthetic import CorpusSpec, make_corpus

    given = {
        "n_subjects": args.n_subjects,
        "n_recordings": args.n_recordings,
        "duration_s": tuple(args.duration) if args.duration else None,
        "sessions_per_subject": tuple(args.sessions) if args.sessions else None,
        "sfreq": args.sfreq,
    }
    spec = CorpusSpec(
        args.layout, seed=args.seed, **{k: v for k, v in given.items() if v is not None}
    )
    summary = make_corpus(args.out, spec, overwrite=args.overwrite)
    print(synth_line(summary, args.layout, args.out))
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    cfg = _load_cfg(args)
    if args.workers is not None and args.workers < 1:
        raise BrainpipeError(f"--workers {args.workers}: must be >= 1")
    from brainpipe.index import build_index
    from brainpipe.reporting import index_output_line, scan_line

    result = build_index(args.raw, args.index, cfg, force=args.force, workers=args.workers)
    print(scan_line(result))
    print(index_output_line(result, args.index))
    return 0


def cmd_build_cache(args: argparse.Namespace) -> int:
    cfg = _load_cfg(args)
    if args.workers is not None and args.workers < 1:
        raise BrainpipeError(f"--workers {args.workers}: must be >= 1")
    from brainpipe.cache import build_cache
    from brainpipe.cacheset import parse_shard
    from brainpipe.reporting import build_summary_text

    shard = parse_shard(args.shard) if args.shard else None
    try:
        result = build_cache(
            args.index,
            args.cache,
            cfg,
            workers=args.workers,
            force=args.force,
            raw_root=args.raw,
            shard=shard,
        )
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM; the message says what is kept
        print(f"brainpipe build-cache: {e or 'interrupted'}", file=sys.stderr)
        return 130
    print(build_summary_text(result))
    return 0


def cmd_cache_set(args: argparse.Namespace) -> int:
    from brainpipe.cacheset import write_cache_set
    from brainpipe.reporting import cache_set_line

    print(cache_set_line(write_cache_set(args.out, args.caches), args.out))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _load_cfg(args)
    if args.seeds or args.folds or args.cell is not None or args.aggregate:
        return _train_protocol(args, cfg)
    from brainpipe.reporting import train_text
    from brainpipe.training.train import train

    print(train_text(train(args.cache, args.run_dir, cfg, resume=args.resume), args.run_dir))
    return 0


def _train_protocol(args: argparse.Namespace, cfg) -> int:
    from dataclasses import replace

    from brainpipe.protocols import parse_seeds
    from brainpipe.reporting import train_text
    from brainpipe.reporting.html import protocol_text
    from brainpipe.training.protocol import run_protocol

    if args.fold_all_splits:
        cfg = replace(cfg, train=replace(cfg.train, fold_splits="all"))
    seeds = parse_seeds(args.seeds) if args.seeds else None
    s = run_protocol(
        args.cache, args.run_dir, cfg, seeds, args.folds, args.resume, args.cell, args.aggregate
    )
    print(protocol_text(s) if "protocol" in s else train_text(s, s["run_dir"]))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from brainpipe.reporting.html import report_line, write_report

    print(report_line(write_report(args.run_dirs, args.out)))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 0:
        raise BrainpipeError(f"--workers {args.workers}: must be >= 0")
    from brainpipe.reporting import embed_line
    from brainpipe.training.embed import embed

    s = embed(args.cache, args.checkpoint, args.out, device=args.device, num_workers=args.workers)
    print(embed_line(s))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from brainpipe.filekinds import file_kind

    path = Path(args.path)
    if file_kind(path) == "index":
        from brainpipe.indexfile import Index
        from brainpipe.reporting import index_table

        summary = Index.load(path).summary()
        print(json.dumps(summary) if args.json else index_table(summary))
        return 0
    from brainpipe.cacheset import open_cache
    from brainpipe.reporting import format_cache_table

    with open_cache(path) as reader:
        summary = reader.summary()
    if args.verify:
        from brainpipe.cache import verify_cache
        from brainpipe.reporting import verify_json

        summary["verify"] = verify_json(verify_cache(path))
    print(json.dumps(summary) if args.json else format_cache_table(summary))
    return 0 if summary.get("verify", {}).get("ok", True) else 1


def cmd_verify(args: argparse.Namespace) -> int:
    from brainpipe.cache import verify_cache
    from brainpipe.reporting import verify_text

    report = verify_cache(args.path, n_windows=args.n_windows, raw_root=args.raw, seed=args.seed)
    print(verify_text(report))
    return 0 if report.ok else 1


def cmd_predict(args: argparse.Namespace) -> int:
    from brainpipe.reporting import predict_text
    from brainpipe.training.predict import predict

    s = predict(
        args.cache, args.checkpoint, args.out, args.split, args.config, args.overrides,
        args.tune_on,
    )  # fmt: skip
    print(predict_text(s))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from brainpipe.reporting import score_json, score_report
    from brainpipe.score import score_trees
    from brainpipe.scoring import METHODS

    results = score_trees(
        args.ref, args.hyp, args.method or METHODS, args.sweep, args.curve, args.plot
    )
    print(score_json(results) if args.json else score_report(results))
    return 0


COMMANDS = {
    "synth": cmd_synth,
    "index": cmd_index,
    "build-cache": cmd_build_cache,
    "cache-set": cmd_cache_set,
    "train": cmd_train,
    "embed": cmd_embed,
    "inspect": cmd_inspect,
    "verify": cmd_verify,
    "predict": cmd_predict,
    "score": cmd_score,
    "report": cmd_report,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except BrainpipeError as e:
        print(f"brainpipe {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"brainpipe {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
