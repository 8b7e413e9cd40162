import json
import shutil

import numpy as np
import pytest

from headplast.errors import HeadplastError
from headplast.orchestration.io import read_jsonl
from headplast.orchestration.measure_step import MeasureConfig, run_measure
from headplast.train.config import TrainConfig
from headplast.train.run import run_train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(model_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    kw = dict(model=str(model_dirs["bert"]), output_root=str(root), max_train_samples=32, num_epochs=1,
              batch_size=8, probe_epochs=10, eval_size=12, max_length=40, learning_rate=5e-3)
    fft = run_train(TrainConfig(method="fft", **kw))
    lora = run_train(TrainConfig(method="lora", lora_r=4, lora_alpha=8, **kw))
    return root, fft, lora


def test_measure_fills_run_dirs_and_shares_pre(trained):
    root, fft, lora = trained
    t_lora = run_measure(MeasureConfig(str(lora), progress=False))
    t_fft = run_measure(MeasureConfig(str(fft), progress=False))
    assert isinstance(t_lora["importance_pre"], float)
    assert t_fft["importance_pre"] == "shared" and t_fft["gradfisher_pre"] == "shared"
    for d in (fft, lora):
        for name, field in (("importance_pre.jsonl", "importance"), ("importance_post.jsonl", "importance"),
                            ("gradfisher_pre.jsonl", "fisher"), ("update.jsonl", "U")):
            rows = read_jsonl(d / name, 8, (field,))
            assert all(np.isfinite(r[field]) for r in rows)
        assert np.load(d / "losses_pre.npy").shape == (12, 9)
        sub = json.loads((d / "eval_subset.json").read_text())
        assert sub["size"] == 12 and sub["seed"] == 999 and sub["split"] == "validation"
    assert (fft / "importance_pre.jsonl").read_bytes() == (lora / "importance_pre.jsonl").read_bytes()
    # post differs from pre once trained, and update is non-zero
    assert any(r["U"] > 0 for r in read_jsonl(lora / "update.jsonl"))
    again = run_measure(MeasureConfig(str(fft), progress=False))
    assert set(again.values()) == {"skipped"}


def test_truncated_jsonl_is_detected_and_force_redoes(trained):
    root, fft, lora = trained
    run_measure(MeasureConfig(str(fft), progress=False))
    p = fft / "update.jsonl"
    p.write_text("".join(p.read_text().splitlines(keepends=True)[:3]) + '{"layer": 1, "hea')
    with pytest.raises(HeadplastError, match="malformed|rows"):
        run_measure(MeasureConfig(str(fft), progress=False))
    run_measure(MeasureConfig(str(fft), progress=False, force=True))
    assert len(read_jsonl(p, 8, ("U",))) == 8


def test_different_eval_subset_is_an_error(trained):
    root, fft, lora = trained
    run_measure(MeasureConfig(str(lora), progress=False))
    with pytest.raises(HeadplastError, match="eval subset differs"):
        run_measure(MeasureConfig(str(lora), eval_size=10, progress=False))


def test_missing_checkpoints_name_the_train_command(trained, tmp_path):
    root, fft, lora = trained
    broken = tmp_path / "FFT" / "RTE" / "seed1"
    shutil.copytree(fft, broken)
    shutil.rmtree(broken / "ckpt_final")
    with pytest.raises(HeadplastError) as e:
        run_measure(MeasureConfig(str(broken), progress=False))
    assert "ckpt_final" in str(e.value) and "headplast train --task RTE --method fft --seed 1" in str(e.value)


def test_adapter_from_another_theta0_is_refused(trained, tmp_path):
    from tiny import tiny_model_dir

    root, fft, lora = trained
    other_model = tiny_model_dir("bert", tmp_path / "other_model", seed=5)  # other pretrained weights
    other = run_train(TrainConfig(model=str(other_model), output_root=str(tmp_path), method="lora",
                                  seed=1, lora_r=4, lora_alpha=8, max_train_samples=32, num_epochs=1,
                                  batch_size=8, probe_epochs=10, eval_size=12, max_length=40))
    mixed = tmp_path / "mixed" / "LoRA" / "RTE" / "seed1_r4"
    shutil.copytree(lora, mixed)
    shutil.rmtree(mixed / "ckpt_final")
    shutil.copytree(other / "ckpt_final", mixed / "ckpt_final")
    with pytest.raises(HeadplastError, match="different theta0"):
        run_measure(MeasureConfig(str(mixed), progress=False, force=True))
