"""The `build-cache` stage (and `verify`): preprocess indexed recordings into one HDF5 cache.

Reads an index and the raw recordings it names; writes one cache through
`cachefile.CacheWriter` (docs/cache-format.md). Owns the stage only; the file, its crash safety
and its resume belong to the writer, the text printed to `reporting`.

- `plan.py`: the layout from the index and the config, with the checks made before any signal
  is read (`make_plan`, `check_planned_labels`).
- `build.py`: the main process: `build_cache` (shards, resume, up-to-date), the jobs, the
  results journalled through the writer, `Interrupted`, `BuildResult`.
- `workers.py`: what runs in the worker processes (`process_recording`, the job that pwrites a
  recording's rows itself) and the watched pool that runs them (`run_jobs`).
- `verify.py`: `verify_cache`, a finished cache against itself and its raw files.

    from brainpipe.cache import build_cache, verify_cache
"""

from brainpipe.cache.build import BuildResult, Interrupted, build_cache
from brainpipe.cache.plan import Plan, check_planned_labels, make_plan
from brainpipe.cache.verify import VerifyReport, verify_cache
from brainpipe.cache.workers import process_recording

__all__ = [
    "BuildResult",
    "Interrupted",
    "Plan",
    "VerifyReport",
    "build_cache",
    "check_planned_labels",
    "make_plan",
    "process_recording",
    "verify_cache",
]
