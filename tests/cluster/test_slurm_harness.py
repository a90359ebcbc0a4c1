"""The single-node Slurm harness runs real jobs: an array, a dependent job and a 2-task step."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_array_then_dependent_job(slurm, tmp_path):
    array = tmp_path / "array.sh"
    array.write_text(
        "#!/bin/bash\necho task=$SLURM_ARRAY_TASK_ID of=$SLURM_ARRAY_TASK_COUNT > "
        f"{tmp_path}/out-$SLURM_ARRAY_TASK_ID.txt\n"
    )
    after = tmp_path / "after.sh"
    after.write_text(f"#!/bin/bash\ncat {tmp_path}/out-*.txt | sort > {tmp_path}/all.txt\n")
    a = slurm.sbatch("--array=0-2", f"--chdir={tmp_path}", "-o", f"{tmp_path}/a-%a.log", str(array))
    d = slurm.sbatch(
        f"--dependency=afterok:{a}", f"--chdir={tmp_path}", "-o", f"{tmp_path}/d.log", str(after)
    )
    states = slurm.wait(a, d)
    assert states[d] == "COMPLETED", slurm.logs()
    assert (tmp_path / "all.txt").read_text().split("\n")[:3] == [
        "task=0 of=3",
        "task=1 of=3",
        "task=2 of=3",
    ]


def test_dependent_job_does_not_run_after_a_failed_array(slurm, tmp_path):
    array = tmp_path / "array.sh"
    array.write_text("#!/bin/bash\n[ $SLURM_ARRAY_TASK_ID -ne 1 ]\n")  # task 1 fails
    after = tmp_path / "after.sh"
    after.write_text(f"#!/bin/bash\ntouch {tmp_path}/ran\n")
    a = slurm.sbatch("--array=0-1", "-o", "/dev/null", str(array))
    # kill_invalid_depend would cancel it; the default leaves it pending with DependencyNeverSatisfied.
    d = slurm.sbatch(
        f"--dependency=afterok:{a}", "--kill-on-invalid-dep=yes", "-o", "/dev/null", str(after)
    )
    states = slurm.wait(a, d)
    assert states[d] == "CANCELLED"
    assert not (tmp_path / "ran").exists()


def test_two_task_srun_step(slurm, tmp_path):
    job = tmp_path / "step.sh"
    job.write_text(
        "#!/bin/bash\nsrun -n 2 bash -c "
        f"'echo rank=$SLURM_PROCID of=$SLURM_NTASKS > {tmp_path}/rank-$SLURM_PROCID.txt'\n"
    )
    j = slurm.sbatch("-n", "2", "-o", f"{tmp_path}/step.log", str(job))
    assert slurm.wait(j)[j] == "COMPLETED", (tmp_path / "step.log").read_text()
    assert sorted(p.read_text().strip() for p in tmp_path.glob("rank-*.txt")) == [
        "rank=0 of=2",
        "rank=1 of=2",
    ]
