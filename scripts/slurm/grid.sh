#!/bin/bash
# Submit a seeds x folds protocol: one array task per cell (grid_array.sbatch), then the
# aggregate job after all of them (afterok). Prints the job ids; nothing runs here.
#
#   scripts/slurm/grid.sh --cache cache.h5 --config configs/x.yaml --run-dir /shared/runs/x \
#       [--seeds 0,1,2,3,4] [--folds 5] [--train-args "--fold-all-splits"] \
#       [-- more sbatch options for both jobs, e.g. --account=abc]
#
# sbatch options for the array only (GPUs) go in BP_GRID_SBATCH, e.g. "--gpus=1 --partition=gpu";
# jobs run $BRAINPIPE (default brainpipe).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage() { sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

cache= config= run_dir= seeds= folds= train_args=
while (( $# )); do
    case $1 in
        --cache) cache=$2; shift 2 ;;
        --config) config=$2; shift 2 ;;
        --run-dir) run_dir=$2; shift 2 ;;
        --seeds) seeds=$2; shift 2 ;;
        --folds) folds=$2; shift 2 ;;
        --train-args) train_args=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        --) shift; break ;;
        *) echo "grid.sh: unknown option $1" >&2; usage ;;
    esac
done
extra=("$@")
[[ -n $cache && -n $config && -n $run_dir ]] || { echo "grid.sh: --cache, --config and --run-dir are required" >&2; usage; }
[[ -n $seeds || -n $folds ]] || { echo "grid.sh: give --seeds and/or --folds" >&2; usage; }
[[ -e $cache ]] || { echo "$cache: no such cache; build it first (brainpipe build-cache)" >&2; exit 2; }
if [[ -n $folds ]] && ! [[ $folds =~ ^[0-9]+$ && $folds -ge 2 ]]; then
    echo "grid.sh: --folds must be an integer >= 2, got '$folds'" >&2
    exit 2
fi

# Seeds as `brainpipe train --seeds` reads them: a comma list of numbers or ranges (0-4).
n_seeds=1
if [[ -n $seeds ]]; then
    n_seeds=0
    IFS=, read -ra parts <<< "$seeds"
    for p in "${parts[@]}"; do
        if [[ $p =~ ^([0-9]+)-([0-9]+)$ ]]; then
            n_seeds=$(( n_seeds + BASH_REMATCH[2] - BASH_REMATCH[1] + 1 ))
        elif [[ $p =~ ^[0-9]+$ ]]; then
            n_seeds=$(( n_seeds + 1 ))
        else
            echo "grid.sh: --seeds '$seeds': expected e.g. 0,1,2,3,4 or 0-4" >&2
            exit 2
        fi
    done
fi
cells=$(( n_seeds * ${folds:-1} ))

abs() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }
mkdir -p "$run_dir"
cache=$(abs "$cache") config=$(abs "$config") run_dir=$(abs "$run_dir")
# Through the environment (--export=ALL), not --export=VAR=value: seed lists and train options
# hold commas, which --export would split on.
export BP_CACHE=$cache BP_CONFIG=$config BP_RUN_DIR=$run_dir BP_SEEDS=$seeds BP_FOLDS=$folds
export BP_TRAIN_ARGS=$train_args
env=ALL
sb=${SBATCH:-sbatch}

# shellcheck disable=SC2086
array=$($sb --parsable --array=0-$((cells - 1)) --chdir="$run_dir" --export="$env" \
    ${BP_GRID_SBATCH:-} "${extra[@]}" "$here/grid_array.sbatch")
array=${array%%;*}
agg=$($sb --parsable --dependency=afterok:"$array" --kill-on-invalid-dep=yes --chdir="$run_dir" \
    --export="$env" "${extra[@]}" "$here/grid_aggregate.sbatch")
agg=${agg%%;*}
echo "grid array: $array ($cells tasks) -> $run_dir/<cell>/"
echo "aggregate: $agg -> $run_dir/summary.json"
