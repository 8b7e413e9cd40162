"""The compute device and its numerics, resolved once per process and recorded with the results.

- `compute_device`: what a step computes on: the requested device, else the GPU torchrun /
  accelerate launch gave this process (LOCAL_RANK), else cuda:0 when a GPU is visible, else the CPU.
- `native_bf16`: whether bf16 matrix products run natively (emulated bf16 is slower than fp32,
  and torch.cuda.is_bf16_supported() counts emulation unless told not to).
- `exact_fp32`: IEEE fp32 matrix products while measuring or building theta0. TF32 (CUDA) and
  oneDNN's bf16 math mode (CPU) round fp32 inputs to 10 or 7 mantissa bits; containers turn TF32
  on by environment or by global flags, and the measurements are only exact without it.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext

import torch

from headplast.errors import HeadplastError

# read once by ATen at the first cuBLAS call: forces TF32 whatever the flags say (NGC containers)
TF32_OVERRIDE = "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE"


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether `device` multiplies bf16 matrices natively (not emulated)."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # torch < 2.3 has no including_emulation: compute capability 8.0 (Ampere) or later
            return torch.cuda.get_device_capability(device)[0] >= 8
    checks = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(bool(c()) for c in checks if c is not None)


def launched_rank_device() -> torch.device | None:
    """The GPU of this process under torchrun / accelerate launch (LOCAL_RANK), if any. Where each
    process sees a single GPU (srun --gpus-per-task=1, a launcher setting CUDA_VISIBLE_DEVICES per
    rank) that GPU is cuda:0 whatever LOCAL_RANK says."""
    local = os.environ.get("LOCAL_RANK")
    if local is None or int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not torch.cuda.is_available():
        return None
    count, rank = torch.cuda.device_count(), int(local)
    if count == 1:
        return torch.device("cuda", 0)
    if rank >= count:
        raise HeadplastError(f"LOCAL_RANK={rank} but this process sees {count} GPUs (cuda:0 .. cuda:{count - 1})",
                             "start at most one process per visible GPU (torchrun --nproc-per-node "
                             f"{count}), or give each process one GPU (CUDA_VISIBLE_DEVICES)")
    return torch.device("cuda", rank)


def compute_device(requested: str | None = None) -> torch.device:
    """The device a step computes on. Under torchrun each rank computes on its own LOCAL_RANK GPU,
    whatever `requested` names (every rank gets the same flags); only 'cpu' is kept."""
    ranked = launched_rank_device()
    if ranked is not None and (requested is None or not str(requested).startswith("cpu")):
        return ranked
    if requested:
        try:
            dev = torch.device(requested)
        except RuntimeError as e:
            raise HeadplastError(f"--device {requested}: not a device ({e})", "pass cpu, cuda or cuda:N") from e
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise HeadplastError(f"--device {requested}: no GPU is visible to this process",
                                     "pass --device cpu, or run where a GPU is visible (check CUDA_VISIBLE_DEVICES)")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise HeadplastError(f"--device {requested}: only {torch.cuda.device_count()} GPU(s) are visible",
                                     f"pass --device cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
        return dev if dev.type != "cuda" or dev.index is not None else torch.device("cuda", 0)
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def describe(device: torch.device) -> dict:
    """What a result was computed on (recorded beside it)."""
    device = torch.device(device)
    out = {"device": str(device), "type": device.type}
    if device.type == "cuda":
        idx = device.index or 0
        props = torch.cuda.get_device_properties(idx)
        out.update(name=props.name, capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2 ** 30, 1),
                   visible_gpus=torch.cuda.device_count(), cuda=torch.version.cuda)
    return out


def _new_api() -> bool:
    return hasattr(torch.backends, "fp32_precision")  # torch >= 2.9: per-backend fp32_precision


def _global_precision() -> str | None:
    """torch.get_float32_matmul_precision(), or None where torch >= 2.9 refuses to answer (backends
    set to different precisions through the per-backend API, e.g. oneDNN's bf16 mode alone)."""
    try:
        return torch.get_float32_matmul_precision()
    except RuntimeError:
        return None


def precision_state() -> dict:
    """How fp32 matrix products are computed right now (what the exactness of a result depends on)."""
    b = torch.backends
    if _new_api():  # reading the legacy flags after the new API was used raises: read the new ones only
        state = {"cuda_matmul": b.cuda.matmul.fp32_precision, "cudnn_conv": b.cudnn.conv.fp32_precision,
                 "mkldnn_matmul": b.mkldnn.matmul.fp32_precision}
    else:
        state = {"cuda_matmul": "tf32" if b.cuda.matmul.allow_tf32 else "ieee",
                 "cudnn_conv": "tf32" if b.cudnn.allow_tf32 else "ieee"}
    state["float32_matmul_precision"] = _global_precision()
    # bf16/fp16 matrix products (--dtype bfloat16): cuBLAS may reduce split-K partial sums in bf16
    # ('reduced', torch's default) or keeps fp32 accumulation throughout ('fp32')
    m = b.cuda.matmul
    state["half_reductions"] = ("reduced" if m.allow_bf16_reduced_precision_reduction
                                or m.allow_fp16_reduced_precision_reduction
                                or getattr(m, "allow_fp16_accumulation", False) else "fp32")
    state[TF32_OVERRIDE] = os.environ.get(TF32_OVERRIDE)
    return state


def refuse_tf32_override() -> None:
    """The environment forces TF32 in cuBLAS whatever the flags say: exact measurement is impossible."""
    value = os.environ.get(TF32_OVERRIDE, "")
    if value and value not in ("0", "false", "False") and torch.cuda.is_available():
        raise HeadplastError(f"{TF32_OVERRIDE}={value} is set: cuBLAS then computes every fp32 product in TF32 "
                             "(10-bit mantissa), and the exact measurements would not be exact",
                             f"unset it for headplast: `env -u {TF32_OVERRIDE} headplast ...` (set by some "
                             "containers)")


@contextmanager
def exact_fp32():
    """IEEE fp32 matrix products inside the block (no TF32 on CUDA, no bf16 math mode in oneDNN;
    on CUDA, attention through SDPA's math kernel, whose fp32 is plain fp32; bf16/fp16 products
    accumulate in fp32, without cuBLAS's reduced-precision reductions); the previous settings
    are back afterwards. Yields the state inside, for the record."""
    refuse_tf32_override()
    b = torch.backends
    before_global = _global_precision()  # None: backends set apart through the per-backend API
    if _new_api():
        saved = [(b.cuda.matmul, b.cuda.matmul.fp32_precision), (b.cudnn.conv, b.cudnn.conv.fp32_precision),
                 (b.cudnn.rnn, b.cudnn.rnn.fp32_precision), (b.mkldnn.matmul, b.mkldnn.matmul.fp32_precision),
                 (b.mkldnn.conv, b.mkldnn.conv.fp32_precision)]
    else:
        saved = [(b.cuda.matmul, b.cuda.matmul.allow_tf32), (b.cudnn, b.cudnn.allow_tf32)]
    # the global setting first, then each backend: a global 'high' left beside a backend's 'ieee' is a
    # mixed state that torch >= 2.9 refuses at the next check of the TF32 flags (each cuBLAS call)
    torch.set_float32_matmul_precision("highest")
    for backend, _ in saved:
        if _new_api():
            backend.fp32_precision = "ieee"
        else:
            backend.allow_tf32 = False
    try:
        with _math_attention(), _fp32_half_reductions():
            yield {**precision_state(), "attention": "sdpa math kernel" if torch.cuda.is_available() else "as is"}
    finally:
        if before_global is not None:
            torch.set_float32_matmul_precision(before_global)
        for backend, value in saved:  # then each backend as it was (a mixed state included)
            if _new_api():
                backend.fp32_precision = value
            else:
                backend.allow_tf32 = value


@contextmanager
def _fp32_half_reductions():
    """bf16/fp16 matrix products accumulate in fp32 throughout (no reduced-precision split-K
    reductions in cuBLAS): --dtype bfloat16 is then bf16 weights with fp32 accumulation."""
    m = torch.backends.cuda.matmul
    flags = [f for f in ("allow_bf16_reduced_precision_reduction", "allow_fp16_reduced_precision_reduction",
                         "allow_fp16_accumulation") if hasattr(m, f)]  # the last: torch >= 2.7
    saved = {f: getattr(m, f) for f in flags}
    for f in flags:
        setattr(m, f, False)
    try:
        yield
    finally:
        for f, v in saved.items():
            setattr(m, f, v)


def _math_attention():
    """On CUDA, SDPA's math kernel: the fused fp32 kernels may compute in reduced precision."""
    if not torch.cuda.is_available():
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])
