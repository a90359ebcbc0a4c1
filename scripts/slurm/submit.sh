#!/bin/bash
# Submit the whole chain: the build-cache array, the cache-set job after it (afterok), and
# optionally training after that. Prints the job ids; nothing runs here.
#
#   scripts/slurm/submit.sh --index index.npz --config configs/tuab.yaml --out /shared/cache \
#       [--shards N | --per-shard 100] [--train RUN_DIR [--nodes 2] [--nproc-per-node 4]] \
#       [-- more sbatch options for every job, e.g. --account=abc --partition=cpu]
#
# N defaults to ceil(recordings in the index / --per-shard), at most the number of subjects
# (a shard holds whole subjects) and at most 1001 (a common MaxArraySize). Jobs run
# $BRAINPIPE (default brainpipe); sbatch options for the training job only (GPUs) go in
# BP_TRAIN_SBATCH, e.g. BP_TRAIN_SBATCH="--gpus-per-node=4".
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage() { sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

index= config= out= shards= per_shard=100 run_dir= nodes=1 nproc=
while (( $# )); do
    case $1 in
        --index) index=$2; shift 2 ;;
        --config) config=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --shards) shards=$2; shift 2 ;;
        --per-shard) per_shard=$2; shift 2 ;;
        --train) run_dir=$2; shift 2 ;;
        --nodes) nodes=$2; shift 2 ;;
        --nproc-per-node) nproc=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        --) shift; break ;;
        *) echo "submit.sh: unknown option $1" >&2; usage ;;
    esac
done
extra=("$@")
[[ -n $index && -n $config && -n $out ]] || { echo "submit.sh: --index, --config and --out are required" >&2; usage; }
[[ -f $index ]] || { echo "$index: no such index file; run brainpipe index first" >&2; exit 2; }

if [[ -z $shards ]]; then
    # The index is an .npz with one `path` and `subject` row per recording
    # (docs/index-format.md). A shard holds whole subjects, so there are at most as many
    # shards as subjects (a recording without a subject counts as its own).
    read -r n n_subjects < <(${PYTHON:-python3} -c '
import sys, numpy as np
a = np.load(sys.argv[1])
keys = np.where(a["subject"] == "", np.char.add("recording:", a["path"]), a["subject"])
print(len(a["path"]), len(np.unique(keys)))' "$index")
    shards=$(( (n + per_shard - 1) / per_shard ))
    (( shards <= n_subjects )) || shards=$n_subjects
    (( shards >= 1 )) || shards=1
    if (( shards > 1001 )); then
        echo "submit.sh: $n recordings / $per_shard = $shards shards > 1001, the usual array cap; using 1001" >&2
        shards=1001
    fi
fi
if ! [[ $shards =~ ^[0-9]+$ ]] || (( shards < 1 )); then
    echo "submit.sh: --shards must be a positive integer, got '$shards'" >&2
    exit 2
fi

out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
mkdir -p "$out"
abs() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }
index=$(abs "$index") config=$(abs "$config")
env="ALL,BP_INDEX=$index,BP_CONFIG=$config,BP_OUT=$out,BP_SHARDS=$shards"
sb=${SBATCH:-sbatch}

array=$($sb --parsable --array=0-$((shards - 1)) --chdir="$out" --export="$env" "${extra[@]}" \
    "$here/build_cache_array.sbatch")
array=${array%%;*}
set_job=$($sb --parsable --dependency=afterok:"$array" --kill-on-invalid-dep=yes --chdir="$out" \
    --export="$env" "${extra[@]}" "$here/cache_set.sbatch")
set_job=${set_job%%;*}
echo "build-cache array: $array ($shards tasks) -> $out/shard-*-of-$shards.h5"
echo "cache set: $set_job -> $out/set.json"

if [[ -n $run_dir ]]; then
    mkdir -p "$run_dir"
    run_dir=$(abs "$run_dir")
    tenv="$env,BP_CACHE=$out/set.json,BP_RUN_DIR=$run_dir${nproc:+,BP_NPROC_PER_NODE=$nproc}"
    # shellcheck disable=SC2086
    train=$($sb --parsable --dependency=afterok:"$set_job" --kill-on-invalid-dep=yes \
        --nodes="$nodes" --chdir="$run_dir" --export="$tenv" ${BP_TRAIN_SBATCH:-} "${extra[@]}" \
        "$here/train.sbatch")
    echo "train: ${train%%;*} -> $run_dir ($nodes node(s))"
fi
