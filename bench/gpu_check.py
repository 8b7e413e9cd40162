"""One call proves a GPU machine (issue 28): under 8 minutes on one H200, one JSON, one table.

    python bench/gpu_check.py --out gpu_check.json          # on the GPU machine: every phase
    python bench/gpu_check.py --device cpu --tiny --out X   # on a CPU (CI): every phase that applies
    python bench/gpu_check.py --phases A,B                  # a subset

Phases, each check on its own (status passed / failed / skipped, the reason, its numbers, the
last lines of the traceback on a failure); the JSON is rewritten after every check, so a run cut
short still says how far it got:
- A. environment: TF32 state (and exact_fp32 inside), native bf16, the GPUs Trainer would use
  (1), an fp16/bf16-stored checkpoint loads as fp32, the frozen-weights context survives a move.
- B. the same numbers on CUDA as on the CPU, tiny models of every family: FFT and LoRA trained
  in fp32 on both devices from the same theta0 with the same dropout masks (numpy masks, drawn
  on the host: the same draws on both), validation logits and loss to 1e-4 relative; every
  measurement of those runs on CUDA vs on the CPU (1e-4 relative); the engine vs the naive loop
  on the device; the default path (bf16 where native) end to end, train and measure.
- C. speed at the guide's scale: a random DeBERTa-v3-base-shaped model (no hub), RTE up to 256
  tokens: theta0 seconds, FFT and LoRA steady-state seconds per step and peak memory, then
  the measurements at the device's defaults (importance head-examples/s, update effect,
  gradient/Fisher ms per example), the engine next to the naive loop on a slice; a random
  Qwen2.5-0.5B-shaped decoder: the engine vs the naive loop in fp32, and on bf16 weights (its
  agreement with fp32 reported).
- D. engines: a Ray task given one GPU sees one, given none sees none; torchrun on 2 GPUs
  writes the files one process writes (skipped below 2 GPUs).

"Relative" is per field: max |a - b| / max |a| over its heads (or examples); a metric field
(accuracy) may differ by one example's prediction. With --device cpu, B's cross-device
comparisons are skipped (needs CUDA), the rest runs on the CPU, and D's Ray check tells Ray of
one fake GPU and checks the CUDA_VISIBLE_DEVICES each task gets.

Each phase has a time budget (A 30, B 170, C 200, D 50 s on a GPU; --budget scales them):
checks past it are skipped, saying so, and a check running far past it is stopped and fails.
The table is printed at the end; the JSON (--out) and what the checks printed (the same name,
.log) are written as it goes. Exit status: 0 every check passed or was skipped, 1 one failed,
2 no GPU is visible and --device cpu was not given. Random weights make accuracies
meaningless: only agreement and speed are checked.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager, nullcontext, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))  # tests/tiny.py: tiny models of every family

PHASES = {"A": "environment", "B": "same numbers on CUDA as on the CPU", "C": "speed at the guide's scale",
          "D": "engines (Ray, torchrun)"}
# seconds per phase, and for the whole run (an H200 run must stay under 8 minutes, start-up included)
BUDGETS = {"cuda": ({"A": 30, "B": 170, "C": 200, "D": 50}, 450),
           "cpu": ({"A": 60, "B": 150, "C": 150, "D": 90}, 600)}
RTOL = 1e-4
# B: the user's family first, so a budget cut keeps it
FAMILIES = ("deberta-v2:shared", "bert", "roberta", "electra", "distilbert", "mpnet", "deberta-v2", "deberta-v2:conv",
            "llama", "gpt2", "qwen2", "mistral", "gemma")
# --device cpu (CI's time): the default path on one family, the other ablations than zero on one
CPU_FAMILIES = ("deberta-v2:shared",)

DEBERTA_V3_BASE = dict(vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072, hidden_act="gelu", max_position_embeddings=512, type_vocab_size=0,
                       relative_attention=True, position_buckets=256, max_relative_positions=-1,
                       norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"],
                       layer_norm_eps=1e-7, position_biased_input=False)
TINY = dict(DEBERTA_V3_BASE, vocab_size=30528, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            position_buckets=16)
# C: RTE (bundled), the guide's length and batch; a fraction of an epoch (steps) and a bounded eval subset
SIZES = {"full": dict(max_length=256, batch=32, steps=40, train=None, eval=256, probe_epochs=300, naive=32),
         "tiny": dict(max_length=64, batch=8, steps=8, train=64, eval=12, probe_epochs=10, naive=4)}
RTE_TRAIN = 2490
SPEED_FIELDS = ("train_dtype", "dropout_masks", "last_layer_token0", "lean_steps", "tune_allocator", "fused_clip",
                "embedding_rows", "frozen_bf16")


# ---------------------------------------------------------------- the record of checks

class Skip(Exception):
    """The check cannot run here (the reason says why)."""


class Fail(Exception):
    """The check ran and its result is wrong (the reason says how)."""


class TimedOut(BaseException):  # not an Exception: library code catching Exception cannot swallow it
    pass


def expect(ok: bool, reason: str) -> None:
    if not ok:
        raise Fail(reason)


@dataclass
class Result:
    numbers: dict = field(default_factory=dict)
    summary: str = ""


class Checks:
    """Runs checks, records each, rewrites the JSON after every one."""

    def __init__(self, out: Path | None, meta: dict, budgets: dict, total: float, t0: float):
        self.out, self.budgets, self.total, self.t0 = out, budgets, total, t0
        # what the library and its dependencies print during the checks (Trainer's logs, warnings)
        self.log = out.with_suffix(".log") if out else None
        if self.log:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            self.log.write_text("")
        self.report = {**meta, "status": "running", "seconds": 0.0, "phases": {}}
        self.phase: str | None = None
        self.phase_t0 = 0.0

    # phases
    def start_phase(self, key: str) -> None:
        self.phase, self.phase_t0 = key, time.time()
        self.report["phases"][key] = {"title": PHASES[key], "status": "running", "reason": "",
                                      "budget_s": self.budgets[key], "seconds": 0.0, "checks": []}
        self.write()

    def end_phase(self) -> None:
        p = self.report["phases"][self.phase]
        states = [c["status"] for c in p["checks"]]
        p["status"] = "failed" if "failed" in states else "passed" if "passed" in states else "skipped"
        if p["status"] == "skipped" and not p["reason"]:
            p["reason"] = "every check skipped: " + "; ".join(sorted({c["reason"] for c in p["checks"]}))[:500]
        p["seconds"] = round(time.time() - self.phase_t0, 1)
        self.write()

    def skip_phase(self, key: str, reason: str) -> None:
        self.report["phases"][key] = {"title": PHASES[key], "status": "skipped", "reason": reason,
                                      "budget_s": self.budgets[key], "seconds": 0.0, "checks": []}
        self.write()

    # checks
    def left(self) -> tuple[float, float]:
        now = time.time()
        return self.budgets[self.phase] - (now - self.phase_t0), self.total - (now - self.t0)

    def run(self, name: str, fn, *args) -> Result | None:
        """fn(Result, *args) fills Result.numbers as it goes (kept on a failure); raises Skip or Fail."""
        phase_left, total_left = self.left()
        rec = {"name": f"{self.phase}.{name}", "status": "running", "reason": "", "seconds": 0.0}
        self.report["phases"][self.phase]["checks"].append(rec)
        if phase_left <= 0 or total_left <= 0:
            which = f"phase {self.phase}'s {self.budgets[self.phase]} s" if phase_left <= 0 else \
                f"the run's {self.total} s"
            return self._done(rec, "skipped", f"time budget spent ({which})")
        # stopped well past the phase's budget, never past the run's
        limit = max(1.0, min(phase_left + max(15.0, 0.25 * self.budgets[self.phase]), total_left + 10.0))
        self.write()  # killed during the check, the JSON still names it (status running)
        res = Result()
        t = time.time()
        printed = io.StringIO()
        try:
            with alarm(limit), redirect_stdout(printed), redirect_stderr(printed):
                fn(res, *args)
            status, reason = "passed", ""
        except Skip as e:
            status, reason = "skipped", str(e)
        except Fail as e:
            status, reason = "failed", str(e)
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C, SIGTERM (ours, or Ray's while it runs): recorded, stop
            rec["seconds"], rec["numbers"] = round(time.time() - t, 2), _jsonable(res.numbers)
            rec["output_tail"] = printed.getvalue().strip().splitlines()[-20:]
            self._done(rec, "failed", f"interrupted after {time.time() - t:.0f} s: {res.summary or 'no result yet'}")
            raise
        except TimedOut:
            status, reason = "failed", f"stopped after {limit:.0f} s (phase {self.phase}'s budget is " \
                                       f"{self.budgets[self.phase]} s): {res.summary or 'no result yet'}"
        except Exception as e:  # noqa: BLE001 -- recorded, with its traceback
            status, reason = "failed", f"{type(e).__name__}: {str(e).strip()[:600]}"
            rec["traceback"] = traceback.format_exc().strip().splitlines()[-14:]
        rec["seconds"] = round(time.time() - t, 2)
        output = printed.getvalue()
        if self.log and output:
            with open(self.log, "a") as f:
                f.write(f"==== {rec['name']}\n{output}\n")
        if status == "failed" and output.strip():
            rec["output_tail"] = output.strip().splitlines()[-20:]
        rec["numbers"] = _jsonable(res.numbers)
        rec["summary"] = res.summary
        return self._done(rec, status, reason, res)

    def _done(self, rec: dict, status: str, reason: str, res: Result | None = None) -> Result | None:
        rec["status"], rec["reason"] = status, reason
        self.write()
        line = f"{rec['name']:<34} {status:<7} {rec['seconds']:7.1f}s  {reason or rec.get('summary', '')}"
        print(line[:240], flush=True)
        return res if status == "passed" else None

    def failed(self) -> bool:
        return any(c["status"] == "failed" for p in self.report["phases"].values() for c in p["checks"])

    def finish(self) -> int:
        self.report["status"] = "failed" if self.failed() else "passed"
        self.write()
        return 1 if self.failed() else 0

    def write(self) -> None:
        self.report["seconds"] = round(time.time() - self.t0, 1)
        if self.out is None:
            return
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(self.report, indent=1, default=str))
        os.replace(tmp, self.out)


@contextmanager
def alarm(seconds: float):
    def ring(signum, frame):
        raise TimedOut()

    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:  # numpy / torch scalars
        return _jsonable(x.item())
    return x if isinstance(x, (str, int, float, bool, type(None))) else str(x)


def table(report: dict) -> str:
    rows = [("check", "status", "secs", "result")]
    for key, p in report["phases"].items():
        rows.append((f"{key}: {p['title']}", p["status"], f"{p['seconds']:.0f}", p["reason"]))
        for c in p["checks"]:
            rows.append(("  " + c["name"], c["status"], f"{c['seconds']:.1f}", c["reason"] or c.get("summary", "")))
    w = max(len(r[0]) for r in rows)
    lines = [f"{a:<{w}}  {b:<7} {c:>6}  {d}"[:w + 200] for a, b, c, d in rows]
    cut = sum(c["reason"].startswith("time budget spent") for p in report["phases"].values() for c in p["checks"])
    counts = {k: sum(c["status"] == k for p in report["phases"].values() for c in p["checks"])
              for k in ("passed", "failed", "skipped")}
    lines.append(f"{report['status'].upper()} in {report['seconds']:.0f} s on "
                 f"{report['device'].get('name', report['device']['device'])}: "
                 + ", ".join(f"{v} {k}" for k, v in counts.items())
                 + (f" ({cut} of them for time: raise --budget or run --phases)" if cut else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------- shared helpers

def read_token(value: bool | None, fn):
    """fn with the engine's last layer for the read token only forced on or off (None: the library's
    rule, which keeps it off on GPUs until measured here: headplast.measure.replay.READ_TOKEN)."""
    def run():
        from headplast.measure import replay

        replay.READ_TOKEN = value
        try:
            return fn()
        finally:
            replay.READ_TOKEN = None
    return run


def rel_diff(a, b) -> float:
    """max |a - b| / max(|a|, |b|) over the finite entries (NaN where the other is NaN too);
    inf when the shapes or the NaN positions differ."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or (np.isnan(a) != np.isnan(b)).any():
        return math.inf
    keep = ~np.isnan(a)
    a, b = a[keep], b[keep]
    if a.size == 0:
        return 0.0
    d = float(np.abs(a - b).max())
    scale = float(max(np.abs(a).max(), np.abs(b).max()))
    return 0.0 if d == 0 else d / scale if scale > 0 else math.inf


def _leaves(rows: list, into: dict, prefix: str = "") -> None:
    """Numeric values of jsonl rows grouped by key (lists flattened); strings kept as they are."""
    for r in rows:
        for k, v in (r.items() if isinstance(r, dict) else enumerate(r)):
            key = f"{prefix}{k}"
            if isinstance(v, (dict, list)):
                _leaves([v], into, key + ".")
            else:
                into.setdefault(key, []).append(float("nan") if v is None else v)


def compare_outputs(a: Path, b: Path, files, n_examples: int) -> dict:
    """{file:field: relative difference} between the files of two measured runs. Fields of a
    metric (accuracy) may differ by one example's prediction (a near-tie): they are compared
    as |a - b| <= 1/N instead."""
    import numpy as np

    out = {}
    for f in files:
        pa, pb = a / f, b / f
        if not pa.exists() or not pb.exists():
            out[f] = f"missing in {'the first' if not pa.exists() else 'the second'}"
            continue
        if f.endswith(".npy"):
            out[f] = rel_diff(np.load(pa), np.load(pb))
            continue
        ga, gb = {}, {}
        _leaves([json.loads(x) for x in pa.read_text().splitlines() if x.strip()], ga)
        _leaves([json.loads(x) for x in pb.read_text().splitlines() if x.strip()], gb)
        for k in sorted(set(ga) | set(gb)):
            va, vb = ga.get(k), gb.get(k)
            if va is None or vb is None or len(va) != len(vb):
                out[f"{f}:{k}"] = "different rows"
            elif any(isinstance(v, str) for v in va + vb):
                out[f"{f}:{k}"] = 0.0 if va == vb else "different text"
            elif "metric" in k:
                d = float(np.nanmax(np.abs(np.asarray(va, float) - np.asarray(vb, float)))) if va else 0.0
                out[f"{f}:{k}"] = 0.0 if d <= 1.0 / n_examples + 1e-9 else math.inf
            else:
                out[f"{f}:{k}"] = rel_diff(va, vb)
    return out


def worst(diffs: dict) -> tuple[str, float | str]:
    bad = [(k, v) for k, v in diffs.items() if isinstance(v, str)]
    if bad:
        return bad[0]
    nums = {k: v for k, v in diffs.items() if not k.endswith((":layer", ":head", ":ablation"))} or diffs
    k = max(nums, key=lambda k: nums[k]) if nums else "-"
    return k, nums.get(k, 0.0)


def train_config(**kw):
    """TrainConfig(**kw), failing with the name of a field the library does not have yet."""
    from headplast.train.config import TrainConfig

    missing = sorted(set(kw) - set(TrainConfig.__dataclass_fields__))
    if missing:
        raise Fail(f"TrainConfig has no field {', '.join(missing)} (issue 28: headplast/train/config.py)")
    return TrainConfig(**kw)


def measure_config(**kw):
    from headplast.measure.config import MeasureConfig

    return MeasureConfig(progress=False, **kw)


@contextmanager
def torch_dropout_calls():
    """Counts the calls of torch's own dropout (F.dropout, SDPA's dropout_p) with p > 0 inside:
    none when every mask comes from the numpy generator."""
    import collections

    import torch
    from torch.nn import functional as F

    calls = collections.Counter()

    def counted(f, name):
        def call(*a, **k):
            if name == "scaled_dot_product_attention":
                p, training = k.get("dropout_p", a[4] if len(a) > 4 else 0.0), True
            else:
                p, training = k.get("p", a[1] if len(a) > 1 else 0.5), k.get("training", a[2] if len(a) > 2 else True)
            if p and training:
                calls[name] += 1
            return f(*a, **k)
        return call

    saved = [(F, "dropout"), (F, "scaled_dot_product_attention"), (torch, "dropout")]
    saved = [(m, n, getattr(m, n)) for m, n in saved]
    for m, n, f in saved:
        setattr(m, n, counted(f, n))
    try:
        yield calls
    finally:
        for m, n, f in saved:
            setattr(m, n, f)


def library(module: str, name: str):
    """An attribute of the library, or a failure saying it is missing."""
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise Fail(f"{module}.{name} is missing ({e})") from None


def sync(dev: str) -> None:
    if dev.startswith("cuda"):
        import torch
        torch.cuda.synchronize()


class Peak:
    """Peak GPU memory (MiB) between start() and read(); None on the CPU."""

    def __init__(self, dev: str):
        self.cuda = dev.startswith("cuda")

    def start(self) -> None:
        if self.cuda:
            import torch
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def read(self) -> float | None:
        if not self.cuda:
            return None
        import torch
        torch.cuda.synchronize()
        return round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)


def exact():
    """IEEE fp32 products inside (library: headplast.arch.device.exact_fp32)."""
    return library("headplast.arch.device", "exact_fp32")()


def rte(tok, n: int, max_length: int, split: str = "validation"):
    from headplast.data import get_task, load_split
    from headplast.data.subset import draw_indices
    from headplast.data.tokenize import encode

    task = get_task("RTE")
    ex = load_split(task, split)
    return task, encode(tok, ex.subset(draw_indices(len(ex), n)), max_length)


def read_run(run: Path) -> dict:
    return json.loads((Path(run) / "run_config.json").read_text())


def find_keys(d, want) -> dict:
    """{dotted key: value} of every key of a nested dict for which want(key) is true."""
    out = {}

    def walk(x, prefix):
        if isinstance(x, dict):
            for k, v in x.items():
                if want(str(k)) and not isinstance(v, dict):
                    out[prefix + str(k)] = v
                walk(v, prefix + str(k) + ".")
    walk(d, "")
    return out


# ---------------------------------------------------------------- the session

class Session:
    def __init__(self, a, root: Path):
        self.a, self.root = a, root
        self.dev = a.device  # "cuda" or "cpu"
        self.cuda = self.dev == "cuda"
        # the second device of B's comparisons: CUDA on a GPU machine; --cross-device cpu runs
        # them CPU against CPU (checks this script on a machine without a GPU)
        self.other = "cuda" if self.cuda else a.cross_device
        self.tiny_dirs: dict[str, Path] = {}
        self.state: dict = {}

    def tiny_dir(self, arch: str) -> Path:
        from tiny import tiny_model_dir

        if arch not in self.tiny_dirs:  # init 0.3: heads that matter (importance well above rounding)
            self.tiny_dirs[arch] = tiny_model_dir(arch, self.root / "tiny" / arch.replace(":", "-"), init=0.3)
        return self.tiny_dirs[arch]

    def gpus(self) -> int:
        import torch
        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    # ------------------------------------------------------------ A
    def phase_a(self, ck: Checks) -> None:
        ck.run("tf32", self.a_tf32)
        ck.run("bf16", self.a_bf16)
        ck.run("trainer_gpus", self.a_trainer_gpus)
        ck.run("half_checkpoint_loads_fp32", self.a_half_checkpoint)
        ck.run("frozen_weights_move", self.a_frozen_move)

    def a_tf32(self, r: Result) -> None:
        import torch

        state = library("headplast.arch.device", "precision_state")
        override = library("headplast.arch.device", "TF32_OVERRIDE")
        before = state()
        r.numbers.update(outside=before, env={k: os.environ.get(k) for k in (override, "NVIDIA_TF32_OVERRIDE")})
        if os.environ.get(override, "") not in ("", "0", "false", "False") and self.cuda:
            raise Fail(f"{override}={os.environ[override]} is set: cuBLAS computes fp32 in TF32 and measuring is "
                       f"refused; unset it (env -u {override})")
        with exact() as inside:
            r.numbers["inside_exact_fp32"] = inside
            x = torch.randn(256, 256, device=self.dev, generator=None)
            err = (x @ x - (x.double() @ x.double()).float()).abs().max().item() / (x.double() @ x.double()).abs().max().item()
        after = state()  # before the next check, which sets the global precision itself
        # a caller's set_float32_matmul_precision('high') beside exact_fp32's per-backend 'ieee' must not
        # leave a mixed state (torch >= 2.9 then raises at each cuBLAS call)
        torch.set_float32_matmul_precision("high")
        try:
            with exact():
                mixed_ok = bool((x @ x).isfinite().all())
        finally:
            torch.set_float32_matmul_precision(before.get("float32_matmul_precision") or "highest")
        r.numbers["matmul_rel_err_inside"] = err
        if self.cuda:
            expect(inside.get("attention") == "sdpa math kernel", f"attention inside exact_fp32: {inside.get('attention')}")
        expect(mixed_ok, "a product inside exact_fp32 after set_float32_matmul_precision('high') was not finite")
        r.numbers["after"] = after
        expect(all(v in ("ieee", "highest", None) for k, v in inside.items()
                   if k not in (override, "attention", "half_reductions")), f"inside exact_fp32 the state is {inside}, not IEEE")
        # bf16/fp16 products (--dtype bfloat16) accumulate in fp32 throughout while measuring
        expect(inside.get("half_reductions") == "fp32", f"inside exact_fp32 half_reductions is {inside.get('half_reductions')}")
        expect(after == before, f"exact_fp32 did not restore the state: {before} -> {after}")
        expect(err < 1e-5, f"an fp32 product inside exact_fp32 is off by {err:.1e} relative (TF32 is 1e-3)")
        r.summary = f"outside: {', '.join(f'{k}={v}' for k, v in before.items() if v is not None)}; " \
                    f"inside exact_fp32 rel err {err:.1e}"

    def a_bf16(self, r: Result) -> None:
        import torch

        native = library("headplast.arch.device", "native_bf16")(self.dev)
        r.numbers["native_bf16"] = native
        if self.cuda:
            cap = torch.cuda.get_device_capability()
            r.numbers["capability"] = f"{cap[0]}.{cap[1]}"
            expect(native == (cap[0] >= 8), f"native_bf16 says {native} on compute capability {cap[0]}.{cap[1]}")
        # the rates a choice of dtype rests on
        n = 4096 if self.cuda else 512
        for name, dt, ctx in (("fp32_exact", torch.float32, exact), ("bf16", torch.bfloat16, nullcontext)):
            x = torch.randn(n, n, device=self.dev).to(dt)
            with ctx():
                x @ x
                sync(self.dev)
                t, reps = time.perf_counter(), 0
                while time.perf_counter() - t < 0.3:
                    x @ x
                    reps += 1
                    sync(self.dev)
                r.numbers[f"{name}_tflops"] = round(2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12, 2)
        r.summary = f"native bf16 {native}; matmul {n}: fp32 {r.numbers['fp32_exact_tflops']} TFLOP/s, " \
                    f"bf16 {r.numbers['bf16_tflops']} TFLOP/s"

    def a_trainer_gpus(self, r: Result) -> None:
        from headplast.steps.train_step import resolved_config
        from headplast.train.fit import training_args

        want = 1 if self.cuda else 0
        devices = [self.dev] + ([None] if self.cuda else [])
        for d in devices:
            cfg, _ = resolved_config(train_config(task="RTE", model=str(self.tiny_dir("bert")), device=d))
            with tempfile.TemporaryDirectory() as tmp:
                args = training_args(cfg, tmp)
                r.numbers[f"device={d}"] = {"n_gpu": args.n_gpu, "args_device": str(args.device)}
                expect(args.n_gpu == want, f"Trainer would use {args.n_gpu} GPUs with device={d} (want {want}); "
                                           f"{self.gpus()} visible")
        r.numbers["visible_gpus"] = self.gpus()
        r.summary = f"Trainer uses {want} GPU(s) of {self.gpus()} visible"

    def a_half_checkpoint(self, r: Result) -> None:
        import torch

        from headplast.arch.loading import load_model
        from tiny import tiny_model

        stored_dtype = library("headplast.arch.loading", "stored_dtype")
        for dt in (torch.float16, torch.bfloat16):
            name = str(dt).removeprefix("torch.")
            d = self.root / f"ckpt_{name}"
            tiny_model("bert", init=0.3).to(dt).save_pretrained(d)
            ref = {k: v.float() for k, v in tiny_model("bert", init=0.3).to(dt).state_dict().items()}
            stored = stored_dtype(str(d))
            model = load_model(str(d))
            dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
            sd = model.state_dict()
            diff = max((sd[k].float() - v).abs().max().item() for k, v in ref.items() if k in sd)
            r.numbers[name] = {"stored_dtype": stored, "loaded_dtypes": dtypes, "max_abs_diff": diff}
            expect(stored == name, f"stored_dtype says {stored} for a {name} checkpoint")
            expect(dtypes == ["float32"], f"a {name}-stored checkpoint loads as {dtypes}, not float32")
            expect(diff == 0.0, f"a {name}-stored checkpoint loads with values off by {diff} (not its own values)")
        r.summary = "float16 and bfloat16 checkpoints: stored dtype read, loaded as float32, same values"

    def a_frozen_move(self, r: Result) -> None:
        """frozen_linears_in, then the model moved inside the block (Trainer moves it to the GPU
        after fine_tune entered the block): on exit every parameter on one device, one dtype,
        the frozen weights their original fp32 values."""
        import torch

        from tiny import tiny_model

        frozen_linears_in = library("headplast.train.speed", "frozen_linears_in")
        moves = ([("cpu->cuda", "cpu", "cuda"), ("cuda->cpu", "cuda", "cpu")] if self.cuda else []) + \
            [("float32->float64", torch.float64, None)]
        for name, a, b in moves:
            model = tiny_model("bert", init=0.3)
            if isinstance(a, str):
                model.to(a)
            for n, p in model.named_parameters():
                p.requires_grad_(n.startswith("classifier"))
            orig = {n: p.detach().clone().cpu().double() for n, p in model.named_parameters()}
            with frozen_linears_in(model, torch.bfloat16):
                held = sorted({str(p.dtype) for p in model.parameters() if not p.requires_grad and p.dim() == 2})
                model.to(b) if b is not None else model.to(a)
            devices = sorted({str(p.device) for p in model.parameters()})
            dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
            diff = max((p.detach().cpu().double() - orig[n]).abs().max().item() for n, p in model.named_parameters())
            r.numbers[name] = {"inside": held, "devices": devices, "dtypes": dtypes, "max_abs_diff_to_original": diff}
            expect(len(devices) == 1, f"{name}: parameters on {devices} after the block")
            expect(len(dtypes) == 1, f"{name}: parameters in {dtypes} after the block")
            if isinstance(a, str):  # a device move keeps fp32: the original values, not their bf16 rounding
                expect(dtypes == ["float32"] and diff == 0.0,
                       f"{name}: frozen weights are {dtypes}, off their originals by {diff}")
        r.summary = "; ".join(f"{k}: {v['devices'][0]} {v['dtypes'][0]}, diff {v['max_abs_diff_to_original']:.0e}"
                              for k, v in r.numbers.items())

    # ------------------------------------------------------------ B
    def phase_b(self, ck: Checks) -> None:
        cross = self.other is not None
        families = self.a.families.split(",") if self.a.families else FAMILIES
        if not cross:
            ck.run("cross_device", self.b_cross_needs_cuda, families)
        for fam in families:
            ck.run(f"{fam}.engine_vs_naive", self.b_naive, fam)
            if cross:
                for m in ("fft", "lora"):
                    ck.run(f"{fam}.{m}.train_{self.other}_vs_cpu", self.b_train, fam, m)
                for m in ("fft", "lora"):
                    ck.run(f"{fam}.{m}.measure_{self.other}_vs_cpu", self.b_measure, fam, m)
            if self.cuda or fam in CPU_FAMILIES:
                ck.run(f"{fam}.default_path", self.b_default, fam)

    def b_cross_needs_cuda(self, r: Result, families) -> None:
        raise Skip(f"needs CUDA (--device cpu): FFT and LoRA trained in fp32 on both devices and every measurement "
                   f"compared, {len(families)} families")

    def b_naive(self, r: Result, fam: str) -> None:
        """Importance by the engine and by one forward pass per head, on the device, in IEEE fp32."""
        from headplast.arch import get_adapter
        from headplast.arch.loading import load_model, load_tokenizer
        from headplast.measure.ablation import ablation_importance
        from headplast.measure.naive import naive_importance

        d = self.tiny_dir(fam)
        tok = load_tokenizer(str(d))
        task, enc = rte(tok, 8, 40)
        model = load_model(str(d), num_labels=2).eval().to(self.dev)
        ad = get_adapter(model)
        model.config.pad_token_id = tok.pad_token_id  # decoders read the last token before the padding
        worst_all = 0.0
        ablations = ("zero", "mean", "resample") if self.cuda or fam in CPU_FAMILIES else ("zero",)
        for ablation in ablations:
            with exact():
                eng = ablation_importance(model, ad, enc, task, tok.pad_token_id, batch_size=4, ablation=ablation,
                                          progress=False)
                nai = naive_importance(model, ad, enc, task, tok.pad_token_id, batch_size=4, ablation=ablation)
            diffs = {f: rel_diff(getattr(eng, f), getattr(nai, f)) for f in ("importance", "kl", "losses")}
            diffs["metric_delta_abs"] = float(abs(eng.metric_delta - nai.metric_delta).max())
            r.numbers[ablation] = diffs
            worst_all = max(worst_all, *(v for k, v in diffs.items() if k != "metric_delta_abs"))
            expect(max(diffs["importance"], diffs["kl"], diffs["losses"]) <= RTOL,
                   f"{ablation}: engine vs naive differ by {diffs} (relative; tolerance {RTOL})")
            expect(diffs["metric_delta_abs"] <= 1 / len(enc) + 1e-9, f"{ablation}: metric_delta differs: {diffs}")
        r.summary = f"{', '.join(ablations)} on {self.dev}: max rel diff {worst_all:.1e}"

    def _cpu_run(self, fam: str, method: str) -> Path:
        """The fp32, numpy-masks run of B, trained on the CPU through the train step."""
        from headplast.steps.train_step import run_train
        from tiny import tiny_run_kwargs

        key = ("cpu_run", fam, method)
        if key not in self.state:
            root = self.root / "B" / fam.replace(":", "-") / "cpu"
            # the guide's learning rates, not the tiny runs' 5e-3: AdamW's first steps move each weight by
            # about lr whatever its gradient's size, so a gradient at rounding level could move it by 2 lr
            kw = {**tiny_run_kwargs(self.tiny_dir(fam), root), "learning_rate": None}
            cfg = train_config(**kw, method=method, train_dtype="float32", dropout_masks="numpy", device="cpu")
            run = run_train(cfg).path
            # the other device measures its own copy (own root: nothing shared with the CPU's)
            copy = self.root / "B" / fam.replace(":", "-") / f"{self.other}-{method}" / run.relative_to(root)
            shutil.copytree(run, copy)
            self.state[key] = (cfg, run, copy)
        return self.state[key]

    def b_train(self, r: Result, fam: str, method: str) -> None:
        """FFT or LoRA in fp32 from the same theta0 on both devices, numpy dropout masks (drawn on
        the host, the same on both), IEEE fp32: training loss, validation logits and loss."""
        import numpy as np
        import torch

        from headplast.arch import get_adapter
        from headplast.arch.loading import load_model, load_tokenizer
        from headplast.data.prepare import prepare_from_config
        from headplast.steps.train_step import resolved_config
        from headplast.train.evaluate import predict_logits
        from headplast.train.fit import fine_tune, trainable_model

        cfg, run, _ = self._cpu_run(fam, method)
        cfg, _ = resolved_config(cfg)
        data = prepare_from_config(cfg)
        tok = load_tokenizer(str(run / "ckpt_init"))
        out = {}
        for d in ("cpu", self.other):
            model = load_model(str(run / "ckpt_init"))
            model, _ = trainable_model(model, get_adapter(model), cfg)
            c = replace(cfg, device=d)
            with exact(), torch_dropout_calls() as drawn:
                res = fine_tune(model, tok, data.train, c)
            with exact():
                logits = predict_logits(model, tok, data.validation, c.max_length)
            r.numbers[f"torch_dropout_calls_{d}"] = dict(drawn)
            expect(not drawn, f"on {d}, dropout drew from torch's generator ({dict(drawn)}): the numpy masks do not "
                              "cover every dropout, so the devices' masks differ")
            where = next(model.parameters()).device.type
            expect(where == torch.device(d).type, f"fine_tune with device={d} trained on {where}")
            z = logits - logits.max(1, keepdims=True)
            nll = -(z[np.arange(len(z)), data.validation.labels] - np.log(np.exp(z).sum(1)))
            out[d] = {"train_loss": float(res.training_loss), "val_loss": float(nll.mean()), "logits": logits,
                      "steps": int(res.global_step),
                      "weights": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}}
        a, b = out["cpu"], out[self.other]
        diffs = {"train_loss": rel_diff(a["train_loss"], b["train_loss"]), "val_loss": rel_diff(a["val_loss"], b["val_loss"]),
                 "val_logits": rel_diff(a["logits"], b["logits"])}
        r.numbers.update(dropout="numpy masks on both devices (drawn on the host: the same draws)", steps=a["steps"],
                         learning_rate=cfg.learning_rate,
                         train_loss={"cpu": a["train_loss"], self.other: b["train_loss"]},
                         val_loss={"cpu": a["val_loss"], self.other: b["val_loss"]}, rel_diff=diffs,
                         trained_weights_rel_diff=max((rel_diff(w, b["weights"].get(n)) if n in b["weights"] else math.inf
                                                       for n, w in a["weights"].items()), default=0.0))
        expect(a["steps"] == b["steps"], f"{a['steps']} steps on the CPU, {b['steps']} on {self.other}")
        k, v = worst(diffs)
        expect(v <= RTOL, f"{k} differs by {v:.2e} relative (tolerance {RTOL}): {diffs}")
        r.summary = f"{a['steps']} steps fp32, numpy masks: worst {k} {v:.1e}"

    def b_measure(self, r: Result, fam: str, method: str) -> None:
        """Every measurement of the CPU-trained run, on the CPU and on the other device."""
        from headplast.measure import registry
        from headplast.steps.measure_step import run_measure

        key = ("cpu_run", fam, method)
        if key not in self.state:
            raise Skip(f"its run was not trained (see B.{fam}.{method}.train_...)")
        cfg, run, copy = self.state[key]
        mc = {d: measure_config(device=d) for d in ("cpu", self.other)}
        t = time.time()
        run_measure(run, mc["cpu"])
        r.numbers["cpu_seconds"] = round(time.time() - t, 2)
        t = time.time()
        run_measure(copy, mc[self.other])
        r.numbers[f"{self.other}_seconds"] = round(time.time() - t, 2)
        files = [f for m in registry.enabled(mc["cpu"]) for f in m.outputs]
        diffs = compare_outputs(run, copy, files, cfg.eval_size or 12)
        r.numbers["rel_diff"] = diffs
        k, v = worst(diffs)
        expect(not isinstance(v, str), f"{k}: {v}")
        expect(v <= RTOL, f"{k} differs by {v:.2e} relative (tolerance {RTOL})")
        r.summary = f"{len(files)} files, {len(diffs)} fields: worst {k} {v:.1e}"

    def b_default(self, r: Result, fam: str) -> None:
        """The default path on this device, FFT and LoRA: train step, measure step, what is recorded."""
        import numpy as np

        from headplast.measure import registry
        from headplast.steps.measure_step import run_measure
        from headplast.steps.train_step import run_train
        from headplast.train.config import TrainConfig
        from tiny import tiny_run_kwargs

        native = library("headplast.arch.device", "native_bf16")(self.dev)
        want_dtype = "bfloat16" if native else "float32"
        root = self.root / "B" / fam.replace(":", "-") / "default"
        for method in ("fft", "lora"):
            t = time.time()
            run = run_train(train_config(**tiny_run_kwargs(self.tiny_dir(fam), root), method=method)).path
            train_s = time.time() - t
            t = time.time()
            out = run_measure(run, measure_config())
            measure_s = time.time() - t
            rc = read_run(run)
            speed = rc.get("speed") or {}
            want_speed = [k for k in SPEED_FIELDS if k in TrainConfig.__dataclass_fields__]
            device = (rc.get("device") or {}).get("type")
            stored = (rc.get("model") or {}).get("stored_dtype")
            r.numbers[method] = {"train_s": round(train_s, 2), "measure_s": round(measure_s, 2), "speed": speed,
                                 "device": rc.get("device"), "model": rc.get("model"), "timings": out.timings,
                                 "status": rc.get("status")}
            self.state.setdefault("default_runs", []).append(run)
            expect(rc.get("status") == "complete", f"{method}: run_config status {rc.get('status')}")
            unresolved = [k for k in want_speed if speed.get(k) is None]
            expect(not unresolved, f"{method}: run_config.json's 'speed' records no resolved {unresolved}")
            expect(speed.get("train_dtype") == want_dtype,
                   f"{method}: trained in {speed.get('train_dtype')}, want {want_dtype} (native bf16: {native})")
            expect(device == self.dev, f"{method}: run_config.json records device {rc.get('device')}, want {self.dev}")
            expect(stored == "float32", f"{method}: run_config.json records stored dtype {stored!r} (the tiny "
                                        "checkpoint is float32)")
            compute = json.loads((run / "measure_meta.json").read_text()).get("compute") or {}
            r.numbers[method]["measure_compute"] = compute
            prec = {k: v for k, v in (compute.get("precision") or {}).items() if v is not None and "OVERRIDE" not in k}
            expect(compute.get("type") == self.dev, f"{method}: measure_meta.json records compute {compute}")
            expect(prec and all(v in ("ieee", "highest") for k, v in prec.items()
                                if k not in ("attention", "half_reductions")),
                   f"{method}: measured with fp32 precision {prec}, not IEEE")
            expect(prec.get("half_reductions") == "fp32", f"{method}: bf16/fp16 products measured with "
                                                          f"{prec.get('half_reductions')} reductions, not fp32")
            for m in registry.required():
                rows = [json.loads(x) for x in (run / m.file).read_text().splitlines() if x.strip()]
                vals = np.asarray([[row[f] for f in m.fields if f != "kl"] for row in rows], dtype=float)
                expect(len(rows) == 8 and np.isfinite(vals).all(), f"{method}: {m.file} has {len(rows)} rows, "
                                                                     f"finite: {np.isfinite(vals).all()}")
        sp = r.numbers["fft"]["speed"]
        r.summary = f"FFT+LoRA {want_dtype}, {sp.get('dropout_masks')} masks on {self.dev}: train {r.numbers['fft']['train_s']}+" \
                    f"{r.numbers['lora']['train_s']} s, measure {r.numbers['fft']['measure_s']}+" \
                    f"{r.numbers['lora']['measure_s']} s"

    # ------------------------------------------------------------ C
    def phase_c(self, ck: Checks) -> None:
        ck.run("model", self.c_model)  # most wanted first: a budget cut drops the last
        for m in ("fft", "lora"):
            ck.run(f"{m}.train", self.c_train, m)
        ck.run("fft.measure", self.c_measure, "fft")
        ck.run("engine_vs_naive", self.c_naive)
        ck.run("lora.measure", self.c_measure, "lora")
        ck.run("decoder_engine", self.c_decoder)

    def c_decoder(self, r: Result) -> None:
        """A random Qwen2.5-0.5B-shaped decoder (grouped-query attention, 24 x 14 heads): importance by
        the engine vs the naive loop in fp32 (must agree), and the engine on bf16 weights (its
        agreement with fp32 reported, not required: bf16 is not the exact default)."""
        import numpy as np
        import torch
        from transformers import Qwen2Config, Qwen2ForSequenceClassification

        from headplast.arch import get_adapter
        from headplast.data import get_task
        from headplast.data.tokenize import Encoded
        from headplast.measure.ablation import ablation_importance
        from headplast.measure.naive import naive_importance

        shape = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                     intermediate_size=4864, vocab_size=151936) if not self.a.tiny else \
            dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=64, vocab_size=200)
        torch.manual_seed(0)
        model = Qwen2ForSequenceClassification(Qwen2Config(**shape, num_labels=2, pad_token_id=0)).eval().to(self.dev)
        ad, task = get_adapter(model), get_task("SST-2")
        n = 32 if not self.a.tiny else 4
        rng = np.random.default_rng(0)
        lens = rng.integers(16, 33, n)
        enc = Encoded([{"input_ids": rng.integers(1, shape["vocab_size"], t).tolist(), "attention_mask": [1] * t}
                       for t in lens], rng.integers(0, 2, n))
        def engine(dtype, forced=None):
            return read_token(forced, lambda: ablation_importance(model.to(dtype), ad, enc, task, 0, batch_size=n,
                                                                  progress=False))
        runs = (("engine", engine(torch.float32)),
                ("engine_full_last", engine(torch.float32, False)),
                ("engine_read_token", engine(torch.float32, True)),
                ("naive", lambda: naive_importance(model.float(), ad, enc, task, 0, batch_size=n)),
                ("engine_bf16", engine(torch.bfloat16)),
                ("engine_bf16_read_token", engine(torch.bfloat16, True)))
        res = self.timed_importance(r, runs)
        sec = {k: r.numbers[k]["seconds"] for k in res}
        r.numbers.update(examples=n, parameters=sum(p.numel() for p in model.parameters()),
                         speedup=round(sec["naive"] / sec["engine"], 2),
                         rel_diff=rel_diff(res["engine"], res["naive"]),
                         read_token_rel_diff=rel_diff(res["engine_read_token"], res["engine_full_last"]),
                         read_token_speedup=round(sec["engine_full_last"] / sec["engine_read_token"], 2),
                         bf16_rel_diff=rel_diff(res["engine_bf16"], res["engine"]),
                         bf16_read_token_rel_diff=rel_diff(res["engine_bf16_read_token"], res["engine"]))
        expect(r.numbers["rel_diff"] <= RTOL, f"engine vs naive differ by {r.numbers['rel_diff']:.2e} relative")
        expect(r.numbers["read_token_rel_diff"] <= RTOL,
               f"the read-token last layer differs from the full one by {r.numbers['read_token_rel_diff']:.2e}")
        r.summary = (f"{r.numbers['parameters'] / 1e6:.0f}M, {n} ex: engine {r.numbers['speedup']}x the naive loop "
                     f"(rel diff {r.numbers['rel_diff']:.1e}); read-token last layer {r.numbers['read_token_speedup']}x "
                     f"(rel diff {r.numbers['read_token_rel_diff']:.1e}); bf16 weights vs fp32: "
                     f"{r.numbers['bf16_rel_diff']:.1e} (read-token: {r.numbers['bf16_read_token_rel_diff']:.1e})")

    def c_model(self, r: Result) -> None:
        """A random DeBERTa-v3-base-shaped classifier (seeded) and the embedded tokenizer."""
        import torch
        from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

        from headplast.arch.loading import load_tokenizer, resolve_model

        tok = load_tokenizer(resolve_model(None))
        cfg = DebertaV2Config(**(TINY if self.a.tiny else DEBERTA_V3_BASE), num_labels=2, pad_token_id=tok.pad_token_id)
        torch.manual_seed(0)
        model = DebertaV2ForSequenceClassification(cfg)
        dest = self.root / "C" / "model"
        model.save_pretrained(dest)
        tok.save_pretrained(dest)
        self.state["c_model"] = dest
        r.numbers.update(parameters=sum(p.numel() for p in model.parameters()), layers=cfg.num_hidden_layers,
                         heads=cfg.num_attention_heads, hidden=cfg.hidden_size, vocab=cfg.vocab_size,
                         sizes=SIZES["tiny" if self.a.tiny else "full"])
        r.summary = f"{r.numbers['parameters'] / 1e6:.0f}M parameters, {cfg.num_hidden_layers}x" \
                    f"{cfg.num_attention_heads} heads, hidden {cfg.hidden_size}"

    def c_train(self, r: Result, method: str) -> None:
        """The train step at the device's defaults. Seconds per step from the start times of the
        training forward passes: the device is synchronised at the first and at the start of the
        steady state (after the first quarter), not at every step (training itself does not wait
        for the GPU at every step); steady state = (last start - its start) / steps between."""
        import math as _math
        import statistics

        import torch

        from headplast.steps.train_step import run_train

        if "c_model" not in self.state:
            raise Skip("no model (C.model failed)")
        s = SIZES["tiny" if self.a.tiny else "full"]
        n_train = s["train"] or RTE_TRAIN
        epochs = min(1.0, s["steps"] * s["batch"] / n_train)
        expected = _math.ceil(epochs * _math.ceil(n_train / s["batch"]))
        warm = max(1, expected // 4)  # index of the forward pass the steady state starts at
        cfg = train_config(task="RTE", method=method, model=str(self.state["c_model"]),
                           output_root=str(self.root / "C" / "runs"), max_length=s["max_length"],
                           batch_size=s["batch"], num_epochs=epochs, max_train_samples=s["train"],
                           eval_source="validation", eval_size=s["eval"], probe_epochs=s["probe_epochs"],
                           device=self.dev)
        starts: list[float] = []
        peak = Peak(self.dev)

        def on_forward(module, args):
            if module.training and torch.is_grad_enabled():
                if len(starts) in (0, warm):
                    sync(self.dev)
                if not starts:
                    peak.start()  # training's peak, not theta0's
                starts.append(time.perf_counter())
                r.summary = f"{len(starts)} steps"

        from headplast.train import fit

        real = fit._make_trainer

        def timed(model, *a, **kw):  # one hook on the model Trainer trains (a global hook slows every module)
            model.register_forward_pre_hook(on_forward)
            return real(model, *a, **kw)

        t = time.time()
        fit._make_trainer = timed
        try:
            run = run_train(cfg).path
        finally:
            fit._make_trainer = real
        total = time.time() - t
        rc = read_run(run)
        self.state[f"c_run_{method}"] = run
        steps = [b - a for a, b in zip(starts, starts[1:])]
        steady = steps[warm:]
        r.numbers.update(steps=rc.get("train_steps"), forwards_timed=len(starts), train_seconds=rc["seconds"]["train"],
                         step_total_seconds=round(total, 2), theta0_seconds=rc["theta0"].get("seconds"),
                         first_step_s=steps[0] if steps else None, steady_from_step=warm,
                         steady_s_per_step=(starts[-1] - starts[warm]) / len(steady) if steady else None,
                         steady_median_interval_s=statistics.median(steady) if steady else None,
                         peak_gpu_mib=peak.read(), train_dtype=(rc.get("speed") or rc["config"]).get("train_dtype"),
                         speed=rc.get("speed"), device=rc.get("device"), trainable=rc["trainable"].get("trainable"),
                         batch=s["batch"], max_length=s["max_length"], train_examples=rc["data"]["train_size"])
        expect(len(steady) >= 2, f"timed {len(starts)} training forward passes: too few for a steady state")
        n = r.numbers
        theta0 = f"theta0 {n['theta0_seconds']:.1f} s, " if method == "fft" else ""
        mem = f", peak {n['peak_gpu_mib'] / 1024:.1f} GiB" if n["peak_gpu_mib"] else ""
        r.summary = f"{theta0}{n['train_dtype']}: {n['steady_s_per_step']:.3f} s/step " \
                    f"({s['batch'] / n['steady_s_per_step']:.0f} ex/s) over {len(steady)} steps{mem}"

    def c_measure(self, r: Result, method: str) -> None:
        """Every measurement of the run at the device's defaults (MeasureConfig(device=...))."""
        from headplast.steps.measure_step import run_measure

        run = self.state.get(f"c_run_{method}")
        if run is None:
            raise Skip(f"no {method} run (C.{method}.train failed or was skipped)")
        cfg = measure_config(device=self.dev)
        peak = Peak(self.dev)
        peak.start()
        t = time.time()
        out = run_measure(run, cfg)
        total = time.time() - t
        meta = json.loads((run / "measure_meta.json").read_text())
        rc = read_run(run)
        N = rc["config"]["eval_size"]
        model = json.loads((self.state["c_model"] / "config.json").read_text())
        LH = model["num_hidden_layers"] * model["num_attention_heads"]
        tm = out.timings
        sec = {k: v for k, v in tm.items() if isinstance(v, (int, float))}
        r.numbers.update(timings=tm, total_seconds=round(total, 2), peak_gpu_mib=peak.read(), examples=N,
                         heads=LH, settings={k: meta.get("settings", {}).get(k) for k in (
                             "max_tokens", "batch_size", "grad_batch_size", "dtype", "device")},
                         compute=meta.get("compute"))
        imp = "importance_pre" if "importance_pre" in sec else "importance_post"
        if imp in sec:
            r.numbers["importance_head_examples_per_s"] = round(LH * N / sec[imp], 1)
        if "update_effect" in sec:  # both directions: 2 * L * H * N patched passes
            r.numbers["update_effect_head_examples_per_s"] = round(2 * LH * N / sec["update_effect"], 1)
        grad = [k for k in sec if k.startswith("gradfisher")]
        if grad:
            r.numbers["gradfisher_ms_per_example"] = round(1000 * sec[grad[0]] / N, 2)
        expect(sec, f"nothing was computed: {tm}")
        n = r.numbers
        mem = f", peak {n['peak_gpu_mib'] / 1024:.1f} GiB" if n["peak_gpu_mib"] else ""
        gf = [v for k, v in tm.items() if k.startswith("gradfisher")]
        gf = f"{n['gradfisher_ms_per_example']} ms/ex" if "gradfisher_ms_per_example" in n else (gf or ["-"])[0]
        r.summary = (f"{N} ex: importance {n.get('importance_head_examples_per_s', '-')} head-ex/s ({imp}), "
                     f"effect {sec.get('update_effect', '-')} s, grad/Fisher {gf}, total {total:.1f} s{mem}")

    def timed_importance(self, r: Result, runs) -> dict:
        """{name: importance} of each (name, function) in IEEE fp32, its seconds and peak GPU memory in r."""
        res, peak = {}, Peak(self.dev)
        for name, fn in runs:
            with exact():
                peak.start()
                t = time.perf_counter()
                res[name] = fn().importance
                sync(self.dev)
                r.numbers[name] = {"seconds": round(time.perf_counter() - t, 3), "peak_gpu_mib": peak.read()}
        return res

    def c_naive(self, r: Result) -> None:
        """Importance at theta0 on a slice: the naive reference (one pass per head) vs the engine."""
        import numpy as np

        from headplast.arch import get_adapter
        from headplast.data.tokenize import Encoded
        from headplast.measure.ablation import ablation_importance
        from headplast.measure.naive import naive_importance
        from headplast.steps.measure_step import MeasureContext

        run = self.state.get("c_run_fft")
        if run is None:
            raise Skip("no FFT run (C.fft.train failed or was skipped)")
        n = SIZES["tiny" if self.a.tiny else "full"]["naive"]
        ctx = MeasureContext(Path(run), measure_config(device=self.dev))
        enc = Encoded(ctx.enc.features[:n], ctx.enc.labels[:n])
        model = ctx.model("theta0")
        ad = get_adapter(model)
        kw = {k: v for k, v in (("max_tokens", ctx.cfg.max_tokens), ("batch_size", ctx.cfg.batch_size)) if v}
        def engine():
            return ablation_importance(model, ad, enc, ctx.task, ctx.pad_id, progress=False, **kw)
        res = self.timed_importance(r, (
            ("engine", engine),
            ("engine_token0", read_token(True, engine)),  # the last layer for token 0 only, forced on
            ("naive", lambda: naive_importance(model, ad, enc, ctx.task, ctx.pad_id, batch_size=32))))
        r.numbers["examples"] = n
        r.numbers["speedup"] = round(r.numbers["naive"]["seconds"] / r.numbers["engine"]["seconds"], 2)
        r.numbers["token0_speedup"] = round(r.numbers["engine"]["seconds"] / r.numbers["engine_token0"]["seconds"], 2)
        r.numbers["token0_rel_diff"] = rel_diff(res["engine_token0"], res["engine"])
        r.numbers["rel_diff"] = rel_diff(res["engine"], res["naive"])
        r.numbers["max_abs_diff"] = float(np.abs(res["engine"] - res["naive"]).max())
        expect(r.numbers["rel_diff"] <= RTOL, f"engine vs naive differ by {r.numbers['rel_diff']:.2e} relative")
        expect(r.numbers["token0_rel_diff"] <= RTOL,
               f"the token-0 last layer differs from the full one by {r.numbers['token0_rel_diff']:.2e} relative")
        r.summary = (f"{n} examples: engine {r.numbers['speedup']}x the naive loop, rel diff {r.numbers['rel_diff']:.1e}; "
                     f"token-0 last layer {r.numbers['token0_speedup']}x (rel diff {r.numbers['token0_rel_diff']:.1e})")

    # ------------------------------------------------------------ D
    def phase_d(self, ck: Checks) -> None:
        ck.run("ray", self.d_ray)
        ck.run("torchrun_2_gpus", self.d_torchrun)

    def d_ray(self, r: Result) -> None:
        """Tasks with the options of the library's Ray engine (headplast/sweep/ray_engine.py): one
        given a GPU sees exactly one, one given none sees none. Without a GPU, Ray is told of one
        (num_gpus=1) and only what it sets in CUDA_VISIBLE_DEVICES is checked."""
        try:
            import ray
        except ImportError:
            raise Skip("Ray is not installed (pip install 'headplast[ray]')") from None
        if ray.is_initialized():
            raise Skip("Ray is already running in this process")
        real = self.cuda
        gpus = self.gpus() if real else 1

        def probe(count: bool, gpus: float) -> dict:
            """In the task, as the engine's worker starts a job: what Ray set, then what the job sees
            after headplast.sweep.worker.hide_gpus (where the library has it)."""
            out = {"ray_set": os.environ.get("CUDA_VISIBLE_DEVICES")}
            try:
                from headplast.sweep.worker import hide_gpus
            except ImportError:
                out["hide_gpus"] = "missing: headplast.sweep.worker.hide_gpus"
            else:
                hide_gpus(gpus)
                out["hide_gpus"] = "applied"
            out["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES")
            if count:
                import torch
                out["torch_gpus"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
            return out

        try:
            one, none = self._ray_tasks(r, ray, real, gpus, probe)
        finally:
            ray.shutdown()
            signal.signal(signal.SIGTERM, _interrupt)  # Ray's handler, installed by ray.init, is gone with it
        r.numbers.update(one_gpu=one, no_gpu=none)
        self._ray_verdict(r, one, none, real)

    def _ray_tasks(self, r: Result, ray, real: bool, gpus: int, probe) -> tuple[dict, dict]:
        t = time.time()
        # Ray refuses a GPU CUDA_VISIBLE_DEVICES hides (--device cpu hides them all): told of a fake one, it
        # starts from an environment without it, as on a machine without a GPU
        hidden = None if real else os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        try:  # the engine's environment for its tasks, where it has one
            from headplast.sweep import ray_engine
            hide = dict(getattr(ray_engine, "HIDE_UNASSIGNED_GPUS", {}))
        except ImportError:
            hide = {}
        try:
            ray.init(num_cpus=1, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
                     object_store_memory=100 * 2 ** 20, logging_level="ERROR",
                     runtime_env={"env_vars": {"TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false", **hide}})
        finally:
            if hidden is not None:
                os.environ["CUDA_VISIBLE_DEVICES"] = hidden
        r.numbers["ray"] = {"version": ray.__version__, "start_s": round(time.time() - t, 1),
                            "cluster_gpus": ray.cluster_resources().get("GPU", 0), "fake_gpu": not real,
                            "engine_env": hide}
        task = ray.remote(probe)
        one = ray.get(task.options(num_cpus=1, num_gpus=1, max_retries=0, retry_exceptions=False).remote(real, 1),
                      timeout=120)
        none = ray.get(task.options(num_cpus=1, num_gpus=0, max_retries=0, retry_exceptions=False).remote(real, 0),
                       timeout=120)
        return one, none

    def _ray_verdict(self, r: Result, one: dict, none: dict, real: bool) -> None:
        ids = [x for x in (one["CUDA_VISIBLE_DEVICES"] or "").split(",") if x.strip()]
        expect(len(ids) == 1, f"a task given one GPU has CUDA_VISIBLE_DEVICES={one['CUDA_VISIBLE_DEVICES']!r}")
        expect(none["CUDA_VISIBLE_DEVICES"] == "",
               f"a job given no GPU has CUDA_VISIBLE_DEVICES={none['CUDA_VISIBLE_DEVICES']!r}"
               + (": it sees every GPU (Ray leaves it alone at num_gpus=0)" if none["CUDA_VISIBLE_DEVICES"] is None
                  else "") + f"; worker.hide_gpus: {none['hide_gpus']}")
        if real:
            expect(one.get("torch_gpus") == 1, f"a task given one GPU sees {one.get('torch_gpus')} in torch")
            expect(none.get("torch_gpus") == 0, f"a task given no GPU sees {none.get('torch_gpus')} in torch")
        what = "torch and CUDA_VISIBLE_DEVICES" if real else "CUDA_VISIBLE_DEVICES (Ray told of 1 fake GPU)"
        r.summary = f"one GPU -> {one['CUDA_VISIBLE_DEVICES']!r}, none -> {none['CUDA_VISIBLE_DEVICES']!r} " \
                    f"(Ray set {none['ray_set']!r}, then worker.hide_gpus): {what}"

    def d_torchrun(self, r: Result) -> None:
        """`torchrun --nproc-per-node 2 -m headplast measure RUN` writes the files one process writes."""
        from headplast.measure import registry
        from headplast.steps.measure_step import run_measure
        from headplast.steps.train_step import run_train
        from tiny import tiny_run_kwargs

        cpu = self.a.torchrun_cpu
        if not cpu and self.gpus() < 2:
            raise Skip(f"needs 2 GPUs, {self.gpus()} visible")
        dev = "cpu" if cpu else "cuda"
        root = self.root / "D" / "one"
        run = run_train(train_config(**tiny_run_kwargs(self.tiny_dir("deberta-v2:shared"), root), method="lora")).path
        copy = self.root / "D" / "two" / run.relative_to(root)
        shutil.copytree(run, copy)
        run_measure(run, measure_config(device=dev))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "headplast", "measure", str(copy), "--device", dev, "--no-progress"]
        env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180, env=env)
        r.numbers["torchrun"] = {"exit": p.returncode, "stdout": p.stdout[-800:], "stderr": p.stderr[-1500:]}
        expect(p.returncode == 0, f"torchrun exited {p.returncode}: {p.stderr.strip()[-300:]}")
        files = [f for m in registry.enabled(measure_config()) for f in m.outputs]
        diffs = compare_outputs(run, copy, files, 12)
        r.numbers["rel_diff"] = diffs
        k, v = worst(diffs)
        expect(not isinstance(v, str), f"{k}: {v}")
        expect(v <= RTOL, f"{k} differs by {v:.2e} relative between 1 and 2 processes")
        r.summary = f"2 processes on {dev}: {len(files)} files as 1 process writes them (worst {k} {v:.1e})"


# ---------------------------------------------------------------- main

def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _provenance() -> dict:
    try:
        from headplast.store.provenance import provenance
        return provenance()
    except Exception as e:  # noqa: BLE001 -- a record, not a check
        return {"error": f"{type(e).__name__}: {e}"}


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cuda (default: the machine's first GPU) or cpu (CI: every phase that applies)")
    p.add_argument("--tiny", action="store_true", help="phase C on a 2-layer model and a few examples")
    p.add_argument("--phases", default="A,B,C,D", help="comma-separated subset of A,B,C,D")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "gpu_check.json"), help="the JSON report")
    p.add_argument("--root", default=None, help="where models and runs go (default: a temporary folder)")
    p.add_argument("--families", default=None, help=f"phase B's families, comma-separated (default: all: "
                   f"{','.join(FAMILIES)})")
    p.add_argument("--budget", type=float, default=None, help="seconds for the whole run, each phase's budget scaled with it "
                   "(default: 450 on a GPU: A 30, B 170, C 200, D 50)")
    # checks of this script on a machine without a GPU: B's comparisons CPU against CPU, torchrun on 2 CPUs
    p.add_argument("--cross-device", default=None, choices=("cpu",), help=argparse.SUPPRESS)
    p.add_argument("--torchrun-cpu", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.phases = [x.strip().upper() for x in a.phases.split(",") if x.strip()]
    bad = [x for x in a.phases if x not in PHASES]
    if bad:
        p.error(f"--phases: unknown {bad}; use some of {','.join(PHASES)}")
    return a


def main(argv=None) -> int:
    t0 = time.time()
    a = parse(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: no waiting on a hub a GPU box cannot reach
    if a.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch: everything on the CPU
    if a.device == "cpu" and a.tiny:
        # CI's check of the script, not a benchmark: one thread, as OpenMP's waiting threads make a
        # busy shared machine several times slower (2 cores, 3 other jobs: 107 s with 2, 18 s with 1)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no GPU is visible (torch.cuda.is_available() is False), so there is nothing to check "
              "here; run it on a machine with a GPU, or `python bench/gpu_check.py --device cpu --tiny` to run "
              "what applies on the CPU", file=sys.stderr)
        return 2
    budgets, total = BUDGETS[a.device]
    if a.budget:  # every phase's share scaled with it
        budgets, total = {k: v * a.budget / total for k, v in budgets.items()}, a.budget
    try:
        from headplast.arch.device import describe
        dev_info = describe(torch.device(a.device))
    except Exception as e:  # noqa: BLE001 -- the environment check reports it
        dev_info = {"device": a.device, "describe_error": str(e)}
    meta = {"script": "bench/gpu_check.py", "argv": sys.argv[1:], "device": dev_info, "tiny": a.tiny,
            "versions": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                         **{p: _version(p) for p in ("transformers", "peft", "accelerate", "datasets", "ray")}},
            "host": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "node": platform.node()},
            "provenance": _provenance(),
            "budgets_s": {**budgets, "total": total}, "rtol": RTOL}
    ck = Checks(Path(a.out) if a.out else None, meta, budgets, total, t0)
    signal.signal(signal.SIGTERM, _interrupt)  # a timeout's kill: the JSON still says how far it got
    print(f"gpu_check on {dev_info.get('name', a.device)}: phases {','.join(a.phases)}; budget {total:.0f} s",
          flush=True)
    with (nullcontext(a.root) if a.root else tempfile.TemporaryDirectory(prefix="gpu_check-")) as root:
        Path(root).mkdir(parents=True, exist_ok=True)
        s = Session(a, Path(root))
        try:
            for key in PHASES:
                if key not in a.phases:
                    ck.skip_phase(key, f"not requested (--phases {','.join(a.phases)})")
                    continue
                ck.start_phase(key)
                try:
                    getattr(s, f"phase_{key.lower()}")(ck)
                except Exception as e:  # noqa: BLE001 -- a bug of this script: recorded, the next phase runs
                    ck.report["phases"][key]["checks"].append(
                        {"name": f"{key}.script", "status": "failed", "reason": f"{type(e).__name__}: {e}",
                         "seconds": 0.0, "traceback": traceback.format_exc().strip().splitlines()[-14:]})
                finally:
                    ck.end_phase()
        except (KeyboardInterrupt, SystemExit):
            ck.report["interrupted"] = True
            print("interrupted", file=sys.stderr)
    ck.report["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    rc = ck.finish()
    if rc == 0 and ck.report.get("interrupted"):
        rc = 1
    print()
    print(table(ck.report))
    if a.out:
        print(f"report: {a.out}; what the checks printed: {ck.log}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
