"""`headplast sweep` on the real engines: local, Ray (a local Ray instance), SLURM (the one-node
cluster of deploy/slurm/local-cluster.sh, started here when we are root).

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
from pathlib import Path

import pytest

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


def _slurm_reason() -> str | None:
    """Why SLURM cannot be used here (None: it is up, started by us if needed)."""
    if shutil.which("sinfo") and subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0:
        return None
    if os.geteuid() != 0:
        return "not root, so the local SLURM (deploy/slurm/local-cluster.sh start) cannot be started"
    r = subprocess.run(["bash", str(REPO / "deploy" / "slurm" / "local-cluster.sh"), "start"],
                       capture_output=True, text=True)
    return None if r.returncode == 0 else f"the local SLURM did not start: {(r.stderr or r.stdout)[-500:]}"


@pytest.mark.slow
def test_slurm_sweep_resubmits_only_the_cancelled_job(local_ref, tiny, tmp_path, capsys):
    pytest.importorskip("submitit", reason="submitit is not installed: pip install -e '.[slurm]'")
    reason = _slurm_reason()
    if reason:
        print(f"SKIPPED SLURM test: {reason}")
        pytest.skip(reason)
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
    (["--engine", "slurm", "--slurm-option", "qos"], {}, "--slurm-option 'qos' is not NAME=VALUE"),
    (["--engine", "ray", "--ray-address", "127.0.0.1:1"], {}, "nothing answers at --ray-address 127.0.0.1:1"),
    (["--cpus-per-job", "0"], {}, "--cpus-per-job must be a finite number > 0"),
    ([], {"WORLD_SIZE": "2"}, "started as one of 2 processes"),
])
def test_sweep_refuses_bad_settings_before_any_job(args, env, problem, tmp_path, capsys, monkeypatch):
    if "ray" in args:
        pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(["sweep", "--output-root", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert problem in err and "fix: " in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written
