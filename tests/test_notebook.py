"""The quickstart notebook runs top to bottom."""

from __future__ import annotations

import os

import nbformat
import pytest
from conftest import REPO
from nbclient import NotebookClient


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
  monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  nb = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
  try:
    NotebookClient(
      nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
  except Exception as e:  # noqa: BLE001
    pytest.fail(f"notebook failed: {e}")
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
  assert "mnist_cnn: 693,962 parameters" in outputs
  assert "'accuracy'" in outputs
