"""The package's layers point only down (import-linter's layers contract in pyproject.toml)."""

import tomllib
from pathlib import Path

import headplast

REPO = Path(__file__).resolve().parents[1]


def _layers() -> list[str]:
    conf = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = conf["contracts"]
    return [p.strip() for layer in contract["layers"] for p in layer.split("|")]


def test_every_package_and_module_is_in_a_layer():
    pkg = Path(headplast.__file__).parent
    units = {p.name for p in pkg.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    units |= {p.stem for p in pkg.glob("*.py") if p.stem not in ("__init__", "__main__")}
    assert units == set(_layers())


def test_layer_contract_holds(capsys):
    from importlinter.cli import lint_imports

    rc = lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True, no_logo=True)
    assert rc == 0, capsys.readouterr().out[-3000:]
