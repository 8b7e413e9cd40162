import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HEADPLAST_NO_HUB", "1")  # tests never touch the network
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

from tiny import ARCHS, tiny_model_dir, tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tok(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def rte():
    from headplast.data import get_task, load_split

    task = get_task("RTE")
    return task, load_split(task, "validation")


@pytest.fixture(scope="session")
def enc_small(tok, rte):
    """11 RTE examples of mixed lengths, truncated to 48 tokens."""
    from headplast.data.tokenize import encode

    task, val = rte
    enc = encode(tok, val.subset(range(0, 55, 5)), 48)  # every one 48 tokens: cut to 48, 45, ..., 18
    for i, f in enumerate(enc.features):  # (keeping the final [SEP]), so batches carry padding
        n = 48 - 3 * i
        enc.features[i] = {k: v[:n - 1] + v[-1:] for k, v in f.items()}
    return enc


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {a: tiny_model_dir(a, root / a) for a in ARCHS}


def pytest_addoption(parser):
    parser.addoption("--reverse-order", action="store_true",
                     help="run the collected tests in reverse order (tests must not depend on their order)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--reverse-order"):
        items.reverse()
