"""Accelerator selection and the guarded XLA flags."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

from zoo import platform
from zoo.registry import ZooError


def test_unknown_xla_flags_are_never_added(monkeypatch):
  monkeypatch.delenv("ZOO_NO_XLA_FLAGS", raising=False)
  monkeypatch.setenv("XLA_FLAGS", "")
  assert platform.configure_xla_cpu_flags(("--xla_zoo_no_such_flag_anywhere=1",)) == []
  assert os.environ["XLA_FLAGS"] == ""


def test_known_flag_is_added_only_when_the_jaxlib_binary_knows_it(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "")
  name = platform.CPU_XLA_FLAGS[0].lstrip("-").split("=")[0]
  added = platform.configure_xla_cpu_flags()
  assert added == (list(platform.CPU_XLA_FLAGS) if platform._binary_knows(name) else [])
  monkeypatch.setenv("ZOO_NO_XLA_FLAGS", "1")
  monkeypatch.setenv("XLA_FLAGS", "")
  assert platform.configure_xla_cpu_flags() == []


def test_import_zoo_starts_jax_with_the_flags():
  # A fresh process: importing zoo adds the flags and JAX still starts (an unknown flag would abort it).
  code = "import zoo, jax, os; print(jax.numpy.ones(2).sum(), os.environ.get('XLA_FLAGS', ''))"
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith("2.0")


def test_cpu_accelerator_works_and_absent_ones_fail_clearly():
  assert platform.select_accelerator("cpu") == "cpu"
  with pytest.raises(ZooError, match="unknown accelerator 'npu'"):
    platform.select_accelerator("npu")
  # JAX is already running on the CPU in this process: asking for a TPU must fail, not silently use the CPU.
  with pytest.raises(ZooError, match="--accelerator tpu"):
    platform.select_accelerator("tpu")
