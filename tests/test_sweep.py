"""`headplast sweep` on the real engines: local, Ray (a local Ray instance), SLURM (a SLURM that is
up, or the one-node cluster of deploy/slurm/local-cluster.sh, which these tests start only when
HEADPLAST_TEST_START_SLURM=1 is set and we are root: it installs packages with apt).

Each engine's results are compared bit for bit with the local engine's. A tiny model, 2 seeds x
(FFT + LoRA r4): 4 run jobs and one cross-run job.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

import pytest
from unittest.mock import ANY

from headplast.cli.main import main
from headplast.steps.pipeline import PipelineConfig
from headplast.steps.sweep_jobs import model_roots, plan
from headplast.errors import HeadplastError
from headplast.train.config import TrainConfig
from outputs import results
from tiny import tiny_model_dir

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--max-train-samples", "48", "--num-epochs", "1", "--batch-size", "8", "--eval-size", "24",
         "--max-length", "48", "--learning-rate", "3e-3", "--probe-epochs", "20", "--n-boot", "300", "--n-perm", "200"]
RUNS = {"FFT_SST-2_seed1", "LoRA_r4_SST-2_seed1", "FFT_SST-2_seed2", "LoRA_r4_SST-2_seed2"}
ALL = RUNS | {"cross-run_SST-2"}


def _args(model, root, *extra):
    return ["sweep", "--model", str(model), "--ranks", "4", "--seeds", "1", "2", *SMALL, "--cpus-per-job", "1",
            "--output-root", str(root), *extra]


def _env():
    return {**os.environ, "TQDM_DISABLE": "1"}


def _states(root: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in (root / "_sweep" / "jobs").glob("*/state.json")}


def _status(root: Path, capsys) -> dict:
    """{job: status} as `headplast sweep --status` prints them."""
    assert main(["sweep", "--status", "--output-root", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    return {ln.split()[1]: ln.split()[0] for ln in lines if ln.split() and ln.split()[0] in
            ("done", "running", "pending", "failed")}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model_dir("roberta", tmp_path_factory.mktemp("tiny") / "m", init=0.3)


@pytest.fixture(scope="module")
def local_ref(tiny, tmp_path_factory):
    """The local engine's results: the reference for the other engines."""
    root = tmp_path_factory.mktemp("local") / "out"
    assert main(_args(tiny, root)) == 0
    return root


def test_plan_one_job_per_run_and_one_cross_run_job_per_task(tmp_path):
    cfg = PipelineConfig(train=TrainConfig(output_root=str(tmp_path)), tasks=("SST-2", "RTE"), seeds=(1, 2),
                         ranks=(4, 8))
    jobs = plan(cfg)
    names = [j.name for j in jobs]
    assert len(names) == len(set(names)) == 2 * (2 * 3 + 1)
    assert names[:4] == ["FFT_SST-2_seed1", "LoRA_r4_SST-2_seed1", "LoRA_r8_SST-2_seed1", "FFT_SST-2_seed2"]
    assert "cross-run_RTE" in names and all(Path(j.root) == tmp_path.resolve() for j in jobs)
    # several models: one output root each, job names say which
    roots = model_roots(tmp_path, ("org/bert-base", "/models/roberta-base/"))
    assert roots == {"org/bert-base": tmp_path / "bert-base", "/models/roberta-base/": tmp_path / "roberta-base"}
    jobs = plan(cfg, ("org/bert-base", "other/roberta-base"))
    assert jobs[0].name == "bert-base__FFT_SST-2_seed1" and jobs[0].pipeline.train.model == "org/bert-base"
    assert jobs[0].run_dir == tmp_path.resolve() / "bert-base" / "FFT" / "SST-2" / "seed1"
    with pytest.raises(HeadplastError, match="same folder name"):
        model_roots(tmp_path, ("a/bert", "b/bert"))


@pytest.mark.slow
def test_local_sweep_reruns_only_what_is_missing_or_failed(local_ref, tiny, tmp_path, capsys):
    capsys.readouterr()
    assert _status(local_ref, capsys) == dict.fromkeys(ALL, "done")
    root = tmp_path / "out"
    shutil.copytree(local_ref, root)
    root_args = _args(tiny, root)
    # copied elsewhere: the same results, nothing to redo
    assert main(root_args) == 0 and "5 jobs (4 runs): 0 to do, 5 done" in capsys.readouterr().out

    # one run's measurement altered: that job fails (never silently overwritten), the others are untouched
    bad = root / "LoRA" / "SST-2" / "seed2_r4" / "importance_post.jsonl"
    bad.write_text(bad.read_text().replace("0.", "0.9", 1))
    assert main(root_args) == 1
    out = capsys.readouterr().out
    assert "2 to do" in out and "failed   LoRA_r4_SST-2_seed2" in out and "altered" in out
    st = _status(root, capsys)
    assert st.pop("LoRA_r4_SST-2_seed2") == "failed" and st.pop("cross-run_SST-2") in ("failed", "pending")
    assert set(st.values()) == {"done"}
    log = _states(root)["LoRA_r4_SST-2_seed2"]["log"]
    assert "HeadplastError" in Path(log).read_text()

    # the run removed: only it (and the cross-run job) is redone, and the results are the local ones again
    shutil.rmtree(bad.parent)
    assert main(root_args) == 0
    out = capsys.readouterr().out
    assert "2 to do" in out and "##### job LoRA_r4_SST-2_seed2" in out and "##### job FFT_SST-2_seed1" not in out
    ra, rb = results(local_ref), results(root)
    assert len(ra) > 30 and [k for k in ra if ra[k] != rb.get(k)] == [] and ra.keys() == rb.keys()


def _kill_running_job(root: Path, proc, deadline: float) -> str:
    """kill -9 the worker process of the first job that has finished training; returns its name."""
    while time.time() < deadline and proc.poll() is None:
        for name, st in _states(root).items():
            log = Path(st.get("log") or "/nonexistent")
            if st.get("status") == "running" and log.exists() and "--- train" in log.read_text():
                os.kill(int(st["pid"]), signal.SIGKILL)
                return name
        time.sleep(0.2)
    raise AssertionError("no job was seen running")


@pytest.mark.slow
@pytest.mark.ray
def test_ray_sweep_survives_kill_9_and_matches_local(local_ref, tiny, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    root = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "headplast", *_args(tiny, root, "--engine", "ray")],
                            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = _kill_running_job(root, proc, time.time() + 300)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-4000:]
    assert _states(root)[killed]["attempt"] == 2  # Ray ran it again after its worker died
    assert "totals: 5 done, 0 running, 0 pending, 0 failed" in out
    ra, rb = results(local_ref), results(root)
    assert [k for k in ra if ra[k] != rb.get(k)] == [] and ra.keys() == rb.keys()
    # theta0 built once per seed even though FFT and LoRA of a seed started together
    for s in (1, 2):
        info = [json.loads((d / "ckpt_init" / "theta0.json").read_text())
                for d in (root / "FFT" / "SST-2" / f"seed{s}", root / "LoRA" / "SST-2" / f"seed{s}_r4")]
        assert info[0] == info[1]
    assert not list(root.rglob(".*.lock"))


START_SLURM = "HEADPLAST_TEST_START_SLURM"


@cache
def _slurm_reason() -> str | None:
    """Why SLURM cannot be used here (None: it is up, started by us if asked to). Starting the local
    one installs packages with apt and starts daemons: never a side effect of running the tests,
    only with HEADPLAST_TEST_START_SLURM=1 (CI sets it)."""
    if shutil.which("sinfo") and subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0:
        return None
    if os.environ.get(START_SLURM) != "1":
        return (f"no SLURM is up; set {START_SLURM}=1 to let the tests start the local one as root "
                "(deploy/slurm/local-cluster.sh start: apt-get install + daemons), or start it yourself")
    if os.geteuid() != 0:
        return "not root, so the local SLURM (deploy/slurm/local-cluster.sh start) cannot be started"
    r = subprocess.run(["bash", str(REPO / "deploy" / "slurm" / "local-cluster.sh"), "start"],
                       capture_output=True, text=True)
    return None if r.returncode == 0 else f"the local SLURM did not start: {(r.stderr or r.stdout)[-500:]}"


@pytest.fixture(scope="session")
def slurm_up():
    """A SLURM to submit to, or the test skips saying why (session-scoped: before any module
    fixture, so a skipped test computes nothing first)."""
    pytest.importorskip("submitit", reason="submitit is not installed: pip install -e '.[slurm]'")
    reason = _slurm_reason()
    if reason:
        print(f"SKIPPED SLURM test: {reason}")
        pytest.skip(reason)


@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_sweep_resubmits_only_the_cancelled_job(slurm_up, local_ref, tiny, tmp_path, capsys):
    from headplast.sweep.slurm_engine import queue

    root = tmp_path / "out"
    args = _args(tiny, root, "--engine", "slurm")
    assert main(args) == 0  # submits and returns
    out = capsys.readouterr().out
    assert "submitted 4 run jobs as array" in out and "submitted cross-run_SST-2 as job" in out
    victim = _states(root)["LoRA_r4_SST-2_seed2"]["engine_id"]  # the last array task: waits for a free core
    subprocess.run(["scancel", victim], check=True)
    ids = {st["engine_id"] for st in _states(root).values()}
    deadline = time.time() + 600
    while time.time() < deadline and set(queue() or {}) & ids:
        time.sleep(1)
    st = _status(root, capsys)
    assert st.pop("LoRA_r4_SST-2_seed2") == "failed" and st.pop("cross-run_SST-2") == "failed"
    assert set(st.values()) == {"done"}

    assert main([*args, "--wait"]) == 0
    out = capsys.readouterr().out
    assert "2 to do" in out and "submitted 1 run jobs as array" in out
    assert "totals: 5 done, 0 running, 0 pending, 0 failed" in out
    ra, rb = results(local_ref), results(root)
    assert [k for k in ra if ra[k] != rb.get(k)] == [] and ra.keys() == rb.keys()


@pytest.mark.parametrize("args, env, problem", [
    pytest.param(["--engine", "slurm", "--slurm-option", "qos"], {}, "--slurm-option 'qos' is not NAME=VALUE",
                 marks=pytest.mark.slurm),
    pytest.param(["--engine", "ray", "--ray-address", "127.0.0.1:1"], {},
                 "nothing answers at --ray-address 127.0.0.1:1", marks=pytest.mark.ray),
    (["--cpus-per-job", "0"], {}, "--cpus-per-job must be a finite number > 0"),
    ([], {"WORLD_SIZE": "2"}, "started as one of 2 processes"),
    (["--gpus-per-job", "1.5"], {}, "--gpus-per-job 1.5: Ray shares a GPU only below 1 GPU per job"),
    pytest.param(["--engine", "slurm", "--slurm-option", "gres=gpu:a100:2"], {},
                 "--slurm-option 'gres=gpu:a100:2' asks for GPUs", marks=pytest.mark.slurm),
    pytest.param(["--engine", "slurm", "--slurm-option", "gpus-per-node=2"], {},
                 "--slurm-option 'gpus-per-node=2' asks for GPUs", marks=pytest.mark.slurm),
    pytest.param(["--engine", "ray", "--gpus-per-job", "2"], {}, "--gpus-per-job 2: this machine has 1 GPU(s)",
                 marks=pytest.mark.ray),
    pytest.param(["--engine", "ray", "--cpus-per-job", "9"], {}, "--cpus-per-job 9: this machine has 8 CPU(s)",
                 marks=pytest.mark.ray),
])
def test_sweep_refuses_bad_settings_before_any_job(args, env, problem, tmp_path, capsys, monkeypatch):
    if "ray" in args:
        pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
        from headplast.sweep import ray_engine
        monkeypatch.setattr(ray_engine, "hardware", lambda: (8, 1))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(["sweep", "--output-root", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert problem in err and "fix: " in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written


# ---- GPUs: the defaults, and what a job given GPUs (or none) sees. No GPU is needed: Ray is
# started with GPUs it only counts, and SLURM's parameters are checked as submitit renders them.

@pytest.mark.ray
def test_ray_gpu_defaults_one_gpu_per_job_and_the_cpus_split(monkeypatch, capsys):
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    from headplast.sweep import ray_engine
    from headplast.sweep.config import SweepConfig

    def resolved(cpus, gpus, **kw):
        monkeypatch.setattr(ray_engine, "hardware", lambda: (cpus, gpus))
        cfg = ray_engine.resolve(SweepConfig(engine="ray", **kw))
        return cfg.gpus_per_job, cfg.cpus_per_job

    assert resolved(32, 4) == (1.0, 8)  # one job per GPU, the CPUs shared among the 4 running at once
    assert "ray: 1 GPU and 8 CPUs per job (defaults for this machine: 4 GPUs, 32 CPUs" in capsys.readouterr().out
    assert resolved(32, 4, gpus_per_job=0.5) == (0.5, 4)  # 8 jobs at once
    assert resolved(32, 4, gpus_per_job=2) == (2.0, 16)
    assert resolved(32, 4, cpus_per_job=3) == (1.0, 3)  # given values are kept
    assert resolved(32, 4, gpus_per_job=0) == (0.0, 1)  # CPU jobs: 1 CPU each, as without GPUs
    assert resolved(8, 0) == (0.0, 1)
    assert resolved(3, 8) == (1.0, 1)  # at least one CPU
    assert not ray.is_initialized()  # a local Ray is not started just to count
    with pytest.raises(HeadplastError, match="this machine has 0 GPU"):
        resolved(8, 0, gpus_per_job=1)
    # given values need no resolving: printed only when a default was filled in
    capsys.readouterr()
    resolved(8, 2, gpus_per_job=1, cpus_per_job=2)
    assert "defaults for" not in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.ray
def test_sweep_records_the_resolved_gpu_defaults(tiny, tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    from headplast.sweep import ray_engine

    seen = []
    monkeypatch.setattr(ray_engine, "hardware", lambda: (16, 2))
    monkeypatch.setattr(ray_engine, "run", lambda cfg, todo, jobs: seen.append(cfg))  # no job runs
    root = tmp_path / "out"
    args = ["sweep", "--model", str(tiny), "--ranks", "4", "--seeds", "1", *SMALL, "--output-root", str(root),
            "--engine", "ray"]
    assert main(args) == 1  # nothing ran: pending
    assert (seen[0].gpus_per_job, seen[0].cpus_per_job) == (1.0, 8)
    recorded = json.loads((root / "_sweep" / "sweep.json").read_text())["config"]
    assert (recorded["gpus_per_job"], recorded["cpus_per_job"]) == (1.0, 8)
    # the recorded sweep reads back (--status), with the values it ran with
    capsys.readouterr()
    assert set(_status(root, capsys).values()) == {"pending"}


def test_worker_hides_the_gpus_of_a_job_given_none(monkeypatch):
    from headplast.sweep.worker import hide_gpus

    for gpus, seen in ((0, ""), (0.0, ""), (1, "0,1"), (0.5, "0,1"), (None, "0,1")):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
        hide_gpus(gpus)
        assert os.environ["CUDA_VISIBLE_DEVICES"] == seen, gpus


@pytest.mark.slow
@pytest.mark.ray
def test_ray_task_sees_its_gpus_and_a_task_given_none_sees_none(tmp_path, monkeypatch):
    """A local Ray started by the engine with 2 (counted, not real) GPUs: each run job's task sees
    exactly one GPU id, the cross-run job's task (num_gpus=0) sees CUDA_VISIBLE_DEVICES="" from Ray
    itself (the probe replaces the worker, whose own hiding would mask a failure)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    from headplast.sweep import ray_engine
    from headplast.sweep.config import SweepConfig

    out = tmp_path / "seen"
    out.mkdir()

    def probe(job, jobs, engine, threads, gpus=None):  # nested: Ray ships it by value
        import json as j
        import os as o
        ids = ray.get_runtime_context().get_accelerator_ids()["GPU"]
        (out / f"{job.name}.json").write_text(j.dumps({"env": o.environ.get("CUDA_VISIBLE_DEVICES"), "ids": ids,
                                                        "gpus": gpus, "pid": o.getpid()}))
        return {"job": job.name, "status": "done", "seconds": 0}

    monkeypatch.setattr(ray_engine, "hardware", lambda: (os.cpu_count() or 1, 2))
    monkeypatch.setattr(ray_engine, "work", probe)
    monkeypatch.setattr(ray_engine, "is_done", lambda *a: True)  # the cross-run job starts
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    jobs = plan(PipelineConfig(train=TrainConfig(output_root=str(tmp_path)), tasks=("SST-2",), seeds=(1, 2),
                               ranks=(4,)))
    assert not ray.is_initialized()
    try:
        for gpus in (None, 0.5):  # the default (1 GPU per job), and 2 jobs per GPU
            for p in out.iterdir():
                p.unlink()
            cfg = ray_engine.resolve(SweepConfig(engine="ray", gpus_per_job=gpus))
            ray_engine.run(cfg, jobs, jobs)
            seen = {p.stem: json.loads(p.read_text()) for p in out.iterdir()}
            assert seen.keys() == ALL
            assert seen.pop("cross-run_SST-2") == {"env": "", "ids": [], "gpus": 0, "pid": ANY}
            for name, s in seen.items():
                assert s["env"] in ("0", "1") and s["ids"] == [s["env"]] and s["gpus"] == cfg.gpus_per_job, name
            assert len({s["pid"] for s in seen.values()}) == 4  # a worker that held a GPU runs no other job
    finally:
        ray_engine.close()
    assert not ray.is_initialized()


@pytest.mark.slurm
def test_slurm_parameters_give_gpus_per_task_and_hide_them_otherwise(tmp_path):
    pytest.importorskip("submitit", reason="submitit is not installed: pip install -e '.[slurm]'")
    from submitit.slurm.slurm import _make_sbatch_string

    from headplast.sweep.config import SweepConfig
    from headplast.sweep.slurm_engine import parameters

    cfg = SweepConfig(engine="slurm", slurm_gpus_per_job=2, slurm_option=("qos=high",))
    p = parameters(cfg, 4, 2)
    assert (p["gpus_per_task"], p["ntasks_per_node"], p["cpus_per_task"]) == (2, 1, 4) and "setup" not in p
    script = _make_sbatch_string(command="python -m x", folder=str(tmp_path), **p)  # submitit's own names
    assert "#SBATCH --gpus-per-task=2" in script and "#SBATCH --ntasks-per-node=1" in script
    assert "gpus-per-node" not in script and "CUDA_VISIBLE_DEVICES" not in script and "#SBATCH --qos=high" in script
    # no GPU: none asked for, and none visible to the job (exported before srun, which passes it on)
    script = _make_sbatch_string(command="python -m x", folder=str(tmp_path), **parameters(cfg, 4, 0))
    assert "gpus" not in script
    lines = script.splitlines()
    srun = next(i for i, ln in enumerate(lines) if ln.startswith("srun"))
    assert "export CUDA_VISIBLE_DEVICES=" in lines[:srun]


@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_job_given_no_gpu_sees_none(slurm_up, tmp_path, monkeypatch):
    """On the real SLURM: a job submitted with the parameters of a job given no GPU sees
    CUDA_VISIBLE_DEVICES empty even when the submitting shell had GPUs visible."""
    from headplast.sweep.config import SweepConfig
    from headplast.sweep.slurm_engine import _executor

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # sbatch passes the submitter's environment on

    def env():
        import os as o
        return o.environ.get("CUDA_VISIBLE_DEVICES")

    job = _executor(SweepConfig(engine="slurm", slurm_time=5), str(tmp_path), 1, 0).submit(env)
    assert job.result() == ""
