"""The sweep's own options; every train/measure/analysis option comes from the pipeline's configs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from headplast.errors import HeadplastError
from headplast.options import NONNEGATIVE, POSITIVE, opt, option, validate
from headplast.steps.pipeline import PipelineConfig

ENGINES = ("local", "ray", "slurm")
GPU_SBATCH = ("gpus", "gpus_per_node", "gpus_per_task", "gpus_per_socket", "num_gpus", "G")


@dataclass(frozen=True)
class SweepConfig:
    pipeline: PipelineConfig = field(default=PipelineConfig(), metadata=opt(cli=False))
    models: tuple[str, ...] = option((), "models to sweep (hub ids or local folders; several: one output folder "
                                     "each under --output-root); default: --model")
    engine: str = option("local", "where jobs run: local (one after another), ray, slurm", choices=ENGINES)
    status: bool = option(False, "print each job's state (done, running, pending, failed) and exit")
    cpus_per_job: int | None = option(None, "CPU cores per job, also its torch threads (default: local: torch's "
                                      "default; slurm: 1; ray: the cluster's CPUs / its GPUs when jobs get a "
                                      "GPU, else 1). Results are bitwise equal across engines for equal values",
                                      **POSITIVE)
    gpus_per_job: float | None = option(None, "ray: GPUs per job (default: 1 when the Ray cluster has GPUs, else "
                                        "0; Ray sets CUDA_VISIBLE_DEVICES, a job given 0 sees none; 0.5 shares "
                                        "a GPU between two jobs)", **NONNEGATIVE)
    max_retries: int = option(2, "ray: how often a job whose worker process died is retried", **NONNEGATIVE)
    ray_address: str | None = option(None, "ray: join this cluster ('auto', or ray://host:10001); default: "
                                     "start a local Ray sized to this machine")
    slurm_partition: str | None = option(None, "slurm: partition (default: the cluster's default)")
    slurm_time: int = option(120, "slurm: time limit per job in minutes", **POSITIVE)
    slurm_gpus_per_job: int = option(0, "slurm: GPUs per job, as --gpus-per-task so a job sees exactly its own "
                                     "(0: the job sees none)", **NONNEGATIVE)
    slurm_cpus_per_job: int | None = option(None, "slurm: CPUs per job (default: --cpus-per-job, else 1)",
                                            **POSITIVE)
    slurm_mem: str | None = option(None, "slurm: memory per job, e.g. 16G")
    slurm_account: str | None = option(None, "slurm: account to charge")
    slurm_array_parallelism: int = option(64, "slurm: most array tasks running at once", **POSITIVE)
    slurm_option: tuple[str, ...] = option((), "slurm: other #SBATCH options as NAME=VALUE, e.g. qos=high "
                                           "constraint=a100")
    wait: bool = option(False, "slurm: wait for the jobs (and the cross-run jobs) and print the status table")

    def __post_init__(self):
        validate(self)
        if self.gpus_per_job is not None and self.gpus_per_job > 1 and self.gpus_per_job % 1:
            raise HeadplastError(f"--gpus-per-job {self.gpus_per_job}: Ray shares a GPU only below 1 GPU per job",
                                 "give a whole number of GPUs, or a fraction below 1 (e.g. 0.5)")
        self.sbatch_options()

    def sbatch_options(self) -> dict[str, str]:
        """--slurm-option NAME=VALUE ... as submitit's additional_parameters."""
        out = {}
        for item in self.slurm_option:
            name, sep, value = item.partition("=")
            if not sep or not name.strip("- "):
                raise HeadplastError(f"--slurm-option '{item}' is not NAME=VALUE",
                                     "give #SBATCH options without the dashes, e.g. --slurm-option qos=high "
                                     "constraint=a100")
            key = name.strip().lstrip("-").replace("-", "_")
            if key in GPU_SBATCH or (key == "gres" and "gpu" in value.lower()):
                # GPUs asked for behind our back would be hidden from a job given --slurm-gpus-per-job 0
                raise HeadplastError(f"--slurm-option '{item}' asks for GPUs",
                                     "give GPUs per job with --slurm-gpus-per-job N (each job then sees exactly "
                                     "its own GPUs; without it a job sees none)")
            out[key] = value.strip()
        return out

    def for_ray_cluster(self, cpus: float, gpus: float, where: str) -> SweepConfig:
        """--gpus-per-job and --cpus-per-job for a Ray cluster of `cpus` CPUs and `gpus` GPUs (`where`
        names it): left out, a job gets one GPU where there are GPUs, and the CPUs are split between
        the jobs that run at once. Resolved once, when the sweep starts, and recorded with it."""
        g = self.gpus_per_job if self.gpus_per_job is not None else (1.0 if gpus >= 1 else 0.0)
        if g > gpus:  # Ray would wait for ever for a node that has them
            raise HeadplastError(f"--gpus-per-job {g:g}: {where} has {gpus:g} GPU(s), so no job could start",
                                 f"give --gpus-per-job 0 (CPUs only) or at most {gpus:g}, or join a cluster "
                                 "with GPUs (--ray-address)")
        c = self.cpus_per_job or (max(1, math.floor(cpus * g / gpus + 1e-9)) if g else 1)
        if c > cpus:
            raise HeadplastError(f"--cpus-per-job {c}: {where} has {cpus:g} CPU(s), so no job could start",
                                 f"give --cpus-per-job {int(cpus)} or fewer, or join a bigger cluster (--ray-address)")
        return replace(self, gpus_per_job=float(g), cpus_per_job=int(c))

    def threads(self) -> int | None:
        """The torch threads of each job."""
        if self.engine == "slurm":
            return self.slurm_cpus_per_job or self.cpus_per_job or 1
        return self.cpus_per_job or (1 if self.engine == "ray" else None)
