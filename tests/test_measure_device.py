"""The measure step on the device it runs on: its sizes, its key and its exact fp32 (no GPU needed)."""

from types import SimpleNamespace

import pytest
import torch

from headplast.measure.ablation import IMPORTANCE_PRE
from headplast.measure.config import MeasureConfig
from headplast.measure.geometry import UPDATE_GEOMETRY
from headplast.measure.gradfisher import GRADFISHER
from headplast.steps.measure_step import _key
from headplast.store import records

HASHES = {"theta0": "a" * 16, "theta1": "b" * 16, "eval": {"subset": "c", "indices": "d", "max_length": 40}}


def _ctx(device: str, **cfg):
    needs = lambda m: {n: HASHES[n] for n in m.needs}  # noqa: E731
    return SimpleNamespace(cfg=MeasureConfig(**cfg).for_device(device), device=torch.device(device),
                           needs_hashes=needs)


def test_sizes_come_from_the_device_unless_given():
    assert (MeasureConfig().for_device("cpu").max_tokens, MeasureConfig().for_device("cpu").batch_size) == (4096, 32)
    gpu = MeasureConfig().for_device(torch.device("cuda", 1))
    assert (gpu.max_tokens, gpu.batch_size) == (1 << 16, 64)
    given = MeasureConfig(max_tokens=300, batch_size=4)
    assert given.for_device("cuda") == given == given.for_device("cpu")
    assert MeasureConfig(max_tokens=300).for_device("cuda").batch_size == 64


@pytest.mark.parametrize("m", [IMPORTANCE_PRE, GRADFISHER])
def test_key_names_device_and_precision_except_the_legacy_cpu_fp32_case(m):
    cpu = _key(m, _ctx("cpu"))
    # what the key was before devices were recorded: settings and hashes alone
    assert cpu == records.step_key(m.name, {**({"ablation": "zero"} if "ablation" in m.settings else {}),
                                            "dtype": "float32"}, {n: HASHES[n] for n in m.needs}, m.version)
    assert _key(m, _ctx("cpu", max_tokens=7, batch_size=3)) == cpu  # sizes do not change results
    gpu = _key(m, _ctx("cuda:0"))
    assert gpu != cpu and gpu == _key(m, _ctx("cuda:3"))  # the device type, not which GPU
    assert len({cpu, gpu, _key(m, _ctx("cpu", dtype="bfloat16")), _key(m, _ctx("cuda", dtype="bfloat16"))}) == 4


def test_measurements_of_fp32_cpu_weights_keep_their_key_on_a_gpu():
    """Geometry is computed from theta0/theta1 in fp32 on the CPU whatever the device."""
    assert not UPDATE_GEOMETRY.on_device and IMPORTANCE_PRE.on_device
    assert _key(UPDATE_GEOMETRY, _ctx("cuda")) == _key(UPDATE_GEOMETRY, _ctx("cpu"))
