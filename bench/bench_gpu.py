"""Alias of phase C of bench/gpu_check.py (speed at the guide's scale), which replaced this script.

    python bench/bench_gpu.py [--device cpu --tiny] [--out FILE]   =   python bench/gpu_check.py --phases C ...

bench/gpu_check.py runs every check of a GPU machine (environment, the same numbers on CUDA as
on the CPU, speed, engines) in under 8 minutes on an H200; see its docstring.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["--phases", "C", *sys.argv[1:]]))
