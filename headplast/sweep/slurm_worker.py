"""The callable a SLURM job runs (pickled by submitit). Checkpointable: on preemption or time-out
submitit requeues the same job, which is safe because every step is idempotent."""

from __future__ import annotations

import submitit

from headplast.sweep.worker import work


class SlurmWork(submitit.helpers.Checkpointable):
    def __call__(self, job, jobs, threads, gpus=None):  # gpus: None from jobs submitted before it was passed
        return work(job, jobs, "slurm", threads, submitit.JobEnvironment().job_id, gpus=gpus)
