"""zoo: a JAX/Flax model zoo. Every model is a Linen module; every training step is compiled once."""

from zoo import platform as _platform

_platform.configure_xla_cpu_flags()  # Before JAX starts its backends; see zoo/platform.py.
_platform.enable_compilation_cache()

from zoo.config import Config, apply_overrides, get_config, list_configs  # noqa: E402
from zoo.data import Dataset, list_datasets, load_dataset  # noqa: E402
from zoo.interop import export_run, import_to_workdir, load, load_exported, load_pytorch_weights  # noqa: E402
from zoo.models import create_model, list_models, register_model  # noqa: E402
from zoo.optim import create_optimizer, create_schedule, list_optimizers, list_schedules  # noqa: E402
from zoo.platform import initialize_distributed, select_accelerator  # noqa: E402
from zoo.registry import Registry, UnknownNameError, ZooError  # noqa: E402
from zoo.tasks import create_task, list_tasks  # noqa: E402
from zoo.train import TrainState, build, count_params, train_and_evaluate  # noqa: E402
from zoo.train.lr_finder import find_lr  # noqa: E402

__version__ = "0.1.0"

__all__ = [
  "Config",
  "Dataset",
  "Registry",
  "TrainState",
  "UnknownNameError",
  "ZooError",
  "apply_overrides",
  "build",
  "count_params",
  "create_model",
  "create_optimizer",
  "create_schedule",
  "create_task",
  "export_run",
  "find_lr",
  "import_to_workdir",
  "get_config",
  "list_configs",
  "list_datasets",
  "list_models",
  "list_optimizers",
  "list_schedules",
  "list_tasks",
  "load",
  "load_dataset",
  "load_exported",
  "load_pytorch_weights",
  "register_model",
  "initialize_distributed",
  "select_accelerator",
  "train_and_evaluate",
]
