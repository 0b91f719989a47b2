"""Named registries (models, optimisers, schedules, datasets, tasks) with close-match errors."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class ZooError(Exception):
  """An error caused by the user's input (a name, an override, a file).

  The command-line faces print its message as one paragraph, without a traceback, and exit nonzero.
  """


class UnknownNameError(ZooError, KeyError):
  """A name that is not in a registry."""

  def __str__(self) -> str:  # KeyError would quote the message.
    return str(self.args[0])


def close_matches(name: str, candidates: list[str], n: int = 5) -> list[str]:
  """The candidates that look most like `name`, best first."""
  matches = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
  # Substring matches help for family names ("resnet" -> "resnet18", ...).
  matches += [c for c in sorted(candidates) if name and name.lower() in c.lower() and c not in matches]
  return matches[:n]


class Registry(Generic[T]):
  """A mapping from names to objects, filled by a decorator.

  >>> models = Registry("model")
  >>> @models.register
  ... def mlp(**kw): ...
  >>> models.get("mpl")  # raises UnknownNameError: unknown model 'mpl'; did you mean: mlp?
  """

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, T] = {}

  def register(self, obj: T | None = None, *, name: str | None = None) -> Any:
    """Registers `obj` under `name` (default: its `__name__`): `@register` or `@register(name=...)`."""

    def add(o: T) -> T:
      key = name or o.__name__  # type: ignore[attr-defined]
      if key in self._entries:
        raise ValueError(f"{self.kind} {key!r} is already registered")
      self._entries[key] = o
      return o

    return add if obj is None else add(obj)

  def get(self, name: str) -> T:
    try:
      return self._entries[name]
    except KeyError:
      raise UnknownNameError(self.unknown_message(name)) from None

  def unknown_message(self, name: str) -> str:
    names = sorted(self._entries)
    matches = close_matches(name, names)
    hint = f"did you mean: {', '.join(matches)}?" if matches else f"known: {', '.join(names)}"
    return f"unknown {self.kind} {name!r}; {hint} (`python -m zoo list` lists them all)"

  def list(self, pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern (`*` if none), sorted."""
    pattern = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
    return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

  def __contains__(self, name: object) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(sorted(self._entries))

  def __len__(self) -> int:
    return len(self._entries)

  def items(self) -> list[tuple[str, T]]:
    return sorted(self._entries.items())


def call_with_checked_kwargs(kind: str, name: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
  """Calls `fn(**kwargs)`, turning an unexpected keyword into a ZooError that lists the accepted ones."""
  import inspect

  try:
    params = inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return fn(**kwargs)
  if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
    accepted = [p for p, v in params.items() if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
    for key in kwargs:
      if key not in accepted:
        matches = close_matches(key, accepted)
        hint = (
          f"did you mean: {', '.join(matches)}?"
          if matches
          else (f"accepted: {', '.join(accepted)}" if accepted else "it takes no options")
        )
        raise ZooError(f"{kind} {name!r} takes no argument {key!r}; {hint}")
  return fn(**kwargs)
