"""The sweep's own options; every train/measure/analysis option comes from the pipeline's configs."""

from __future__ import annotations

from dataclasses import dataclass, field

from headplast.errors import HeadplastError
from headplast.options import NONNEGATIVE, POSITIVE, opt, option, validate
from headplast.steps.pipeline import PipelineConfig

ENGINES = ("local", "ray", "slurm")


@dataclass(frozen=True)
class SweepConfig:
    pipeline: PipelineConfig = field(default=PipelineConfig(), metadata=opt(cli=False))
    models: tuple[str, ...] = option((), "models to sweep (hub ids or local folders; several: one output folder "
                                     "each under --output-root); default: --model")
    engine: str = option("local", "where jobs run: local (one after another), ray, slurm", choices=ENGINES)
    status: bool = option(False, "print each job's state (done, running, pending, failed) and exit")
    cpus_per_job: int | None = option(None, "CPU cores per job, also its torch threads (default: local: torch's "
                                      "default; ray and slurm: 1). Results are bitwise equal across engines "
                                      "for equal values", **POSITIVE)
    gpus_per_job: float = option(0.0, "ray: GPUs per job (Ray sets CUDA_VISIBLE_DEVICES; 0.5 shares a GPU "
                                 "between two jobs)", **NONNEGATIVE)
    max_retries: int = option(2, "ray: how often a job whose worker process died is retried", **NONNEGATIVE)
    ray_address: str | None = option(None, "ray: join this cluster ('auto', or ray://host:10001); default: "
                                     "start a local Ray sized to this machine")
    slurm_partition: str | None = option(None, "slurm: partition (default: the cluster's default)")
    slurm_time: int = option(120, "slurm: time limit per job in minutes", **POSITIVE)
    slurm_gpus_per_job: int = option(0, "slurm: GPUs per job", **NONNEGATIVE)
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
            out[name.strip().lstrip("-").replace("-", "_")] = value.strip()
        return out

    def threads(self) -> int | None:
        """The torch threads of each job."""
        if self.engine == "slurm":
            return self.slurm_cpus_per_job or self.cpus_per_job or 1
        return self.cpus_per_job or (1 if self.engine == "ray" else None)
