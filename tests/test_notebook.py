"""The notebooks run top to bottom."""

from __future__ import annotations

import os
import re

import nbformat
import pytest
from conftest import REPO
from nbclient import NotebookClient


def _execute(name: str, tmp_path, monkeypatch) -> str:
  monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
  try:
    NotebookClient(
      nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
  except Exception as e:  # noqa: BLE001
    pytest.fail(f"{name} failed: {e}")
  return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
  outputs = _execute("quickstart.ipynb", tmp_path, monkeypatch)
  assert "mnist_cnn: 693,962 parameters" in outputs
  assert "'accuracy'" in outputs


# ~38 s (13 whole runs); tests/test_optim.py trains every optimiser and the quickstart notebook test runs a
# notebook end to end by default.
@pytest.mark.benchmark
def test_optimizers_notebook_trains_with_every_optimizer_and_plots_every_schedule(tmp_path, monkeypatch):
  from zoo import list_optimizers, list_schedules

  outputs = _execute("optimizers.ipynb", tmp_path, monkeypatch)
  accuracies = dict(re.findall(r"^(\w+)\s+test accuracy ([0-9.]+)$", outputs, re.MULTILINE))
  assert sorted(accuracies) == list_optimizers()
  assert all(float(a) > 0.8 for a in accuracies.values()), accuracies  # Every one of them learns.
  assert f"schedules plotted: {len(list_schedules())}" in outputs
