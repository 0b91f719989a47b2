"""Planetoid citation graphs Cora, CiteSeer and PubMed (Yang et al., 2016) with the public GCN split."""

from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
import typing

import numpy as np
import scipy.sparse

from zoo.data.datasets import Dataset, register_dataset
from zoo.data.download import fetch
from zoo.data.pickles import NUMPY_ARRAY_GLOBALS, AllowListUnpickler, load_pickle
from zoo.registry import ZooError


@dataclasses.dataclass(frozen=True, eq=False, repr=False)  # eq/hash by identity: fields are arrays.
class Graph:
  """One graph for full-batch node classification.

  `features` are the raw bag-of-words (CiteSeer, Cora: 0/1) or TF-IDF (PubMed) rows, (N, F) float32;
  normalising them is the model's or task's choice (`row_normalize`). `edges` (E, 2) int32 holds every
  undirected edge in both directions, sorted, without duplicates or self loops. `labels` (N,) int32 is -1
  for a node without a label (CiteSeer's nodes missing from the test features); no mask selects such a node.
  """

  name: str
  features: np.ndarray
  edges: np.ndarray
  labels: np.ndarray
  train_mask: np.ndarray
  val_mask: np.ndarray
  test_mask: np.ndarray
  num_classes: int

  def __post_init__(self):
    n = len(self.features)
    masks = (self.train_mask, self.val_mask, self.test_mask)
    if (
      self.features.dtype != np.float32
      or self.features.ndim != 2
      or self.edges.dtype != np.int32
      or self.edges.ndim != 2
      or self.edges.shape[1] != 2
      or self.labels.dtype != np.int32
      or self.labels.shape != (n,)
      or any(m.dtype != np.bool_ or m.shape != (n,) for m in masks)
    ):
      raise ValueError(
        f"graph {self.name!r}: inconsistent arrays: features {self.features.shape} {self.features.dtype}, "
        f"edges {self.edges.shape} {self.edges.dtype}, labels {self.labels.shape} {self.labels.dtype}, "
        f"masks {[(m.shape, str(m.dtype)) for m in masks]} (want (N, F) float32, (E, 2) int32, (N,) int32, "
        "(N,) bool)"
      )

  @property
  def num_nodes(self) -> int:
    return len(self.features)

  @property
  def num_features(self) -> int:
    return self.features.shape[1]

  def __repr__(self) -> str:
    return (
      f"Graph({self.name!r}, nodes={self.num_nodes}, features={self.num_features}, "
      f"directed_edges={len(self.edges)}, classes={self.num_classes}, train/val/test="
      f"{int(self.train_mask.sum())}/{int(self.val_mask.sum())}/{int(self.test_mask.sum())})"
    )


def row_normalize(features: np.ndarray) -> np.ndarray:
  """Each row divided by its sum, as Kipf & Welling preprocess features; an all-zero row stays zero."""
  features = np.asarray(features, np.float32)
  sums = features.sum(axis=1, keepdims=True)
  return np.divide(features, sums, out=np.zeros_like(features), where=sums != 0)


# --- the files ----------------------------------------------------------------------------------------------

NAMES = ("cora", "citeseer", "pubmed")
PARTS = ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index")
_URL = "https://github.com/kimiyoung/planetoid/raw/master/data/ind.{name}.{part}"

# The authors publish no checksums. Cora and CiteSeer: sha256 and size of the files in kimiyoung/planetoid @
# af6abf468a772cc055bec88c52e4d6f51b7c37e3 (data/), whose git blob ids equal both that tree's and
# tkipf/gcn's (shared/data/README.md, section 4).
_CHECKSUMS: dict[str, dict[str, tuple[str, int]]] = {
  "cora": {
    "x": ("23cfa55d91c6f624233f5eb7b6e3f141f1bd2b2ae39608a63cf5d084bb27baab", 22_119),
    "y": ("94465c14eb53e04ca262198dcbb2521ee8af60fb3f3d546cd6ca24a511b0e7d1", 4_054),
    "tx": ("b9afbaa4a400df991f6f02ef677e1e44da55ffc04801fd02f9e673987829226a", 148_025),
    "ty": ("41f5ac76596a1699cc33f53084a2419e92961c42bb75f36fc38e616d348532ad", 28_135),
    "allx": ("9419ba2f26f5c35243db64aba110e0f35a04851609e0dc5433450676ca6b8543", 257_305),
    "ally": ("2b998f5cc7fedc86e7f97ca2498f47a1ffc1462c29e2d578b23bf3f62b6e7d71", 47_959),
    "graph": ("58f13302f39dde8852dad6fe6d15b89b077b6d7f837626bce671ef80344b383d", 59_847),
    "test.index": ("297ce89af2b51a6a194181c7dbe1796c6a1cf9cd9349a88383b1b1e227867875", 5_000),
  },
  "citeseer": {
    "x": ("d20de19150741e555de0ed037195630fc194114ebc7fd72ced62810148aa22f6", 31_087),
    "y": ("8ba87e515d8e3ee3cf52f6d2c5b86aa73f11ecad825a808455209ec26cd54924", 3_014),
    "tx": ("539a8906a2da97628d212f2fdd668c109a8b3f0d36574b59e5d3fd5b5303da21", 260_321),
    "ty": ("55e5bd1ba1e733a04598753ad1a8d57957f4b8f89e74519f41f4f4938767e4ce", 24_135),
    "allx": ("2ac30345d95c9ec933a817ee0bdd6a5f077f8c184a20e696910192d534414668", 595_021),
    "ally": ("f704b2d986dde6c2669934de1f3ae5696a6cf9455c0f6b2646a2d135ea0a1c95", 55_623),
    "graph": ("d79a4ef9d3e7169aee8946145f6b7306e35bc79bffad26346cfb94e10e9912a7", 61_987),
    "test.index": ("2af990671580b6b2df5d158d1038f8292e30c9cd821b5453f399659b25b723d4", 5_000),
  },
  # PubMed is not staged here (its allx is over the snapshot size limit), so these could not be checked
  # against the files themselves. sha256 and size: the git-lfs pointers of the same files in
  # D61-IA/FisherGCN @ 140cb297acb89ece53947026224e5e85a8dc7312 (data/ind.pubmed.*), whose pointers for
  # CiteSeer give exactly the values above; the same sha256s are pinned for kimiyoung/planetoid's files by
  # third-party loaders (e.g. skygazer42/sky-vgl vgl/data/public.py).
  "pubmed": {
    "x": ("fbe9cb5c47200d1b7769a26e579be3b7130b556831f9d850e77c4c74f2599b33", 23_172),
    "y": ("e6c807633307a07ed659249006536a147c7999c797f11a2560752990181b41b3", 854),
    "tx": ("4eb5f5d0f30f26497eb0ac6ac9719d09c67e284f1ed0385c93f3ef27a671da3d", 405_505),
    "ty": ("ee2e0d4819d9fbcc403689c3bf2e49face401b605932f093bc58ab6461130fdd", 12_135),
    "allx": ("508e538e2abdccdd54c4d3e9f49d638b4af7107d85845f66ddea5a5152658b7e", 7_578_385),
    "ally": ("0c37bbe3b5014ec365e9d393cf4791925e5ed94fb194305d74f064a8d7b50f0e", 224_739),
    "graph": ("5b89f0036ca22909471f1e6558eb42fa06e0c730a577bde5b058b40638f81dc9", 471_808),
    "test.index": ("b101d421688bbaecbd82e8a18f1e282378d6830f3a37666f28ebc47f844341b5", 6_000),
  },
}


class _Expected(typing.NamedTuple):
  nodes: int
  features: int
  classes: int
  directed_edges: int | None  # None: not verified against the files, so not enforced


# Nodes, features and classes: Kipf & Welling (2017), Table 1. Its edge counts (Cora 5,429, CiteSeer 4,732,
# PubMed 44,338) are half the entries of the files' adjacency lists, which list every citation from both
# ends and keep duplicate and (CiteSeer: 124) self citations. Without those, the files give 5,278 and 4,552
# undirected edges, i.e. 10,556 and 9,104 directed ones: checked here on the staged files, and the counts
# in PyTorch Geometric's Planetoid table. Its PubMed count (88,648) could not be checked here.
_EXPECTED = {
  "cora": _Expected(2708, 1433, 7, 10_556),
  "citeseer": _Expected(3327, 3703, 6, 9_104),
  "pubmed": _Expected(19717, 500, 3, None),
}

NUM_VAL = 500  # Kipf & Welling's validation set: the 500 nodes after the training nodes


def load_planetoid(
  name: typing.Literal["cora", "citeseer", "pubmed"], *, data_dir: str | None = None
) -> Graph:
  """A Planetoid citation graph with the public split of Yang et al. (2016) as Kipf & Welling use it.

  Train: the first 20 labelled nodes per class (the file's `y`, nodes `0 .. len(y) - 1`); validation: the
  next 500 nodes; test: the 1,000 nodes in `ind.<name>.test.index`. The eight `ind.<name>.*` files are read
  from `<data_dir>/planetoid/` or `<data_dir>/` (data_dir: the argument, else $ZOO_DATA_DIR), else the
  cache, where they are downloaded if absent; each is checked by sha256 before it is read, and the pickles
  are read by an unpickler that builds only the numpy/scipy types they hold.

  Args:
    name: 'cora', 'citeseer' or 'pubmed'.
    data_dir: a folder of local dataset files.
  """
  if name not in NAMES:
    raise ZooError(f"unknown Planetoid graph {name!r}; the graphs are: {', '.join(NAMES)}")
  paths = {}
  for part in PARTS:
    sha256, size = _CHECKSUMS[name][part]
    url = _URL.format(name=name, part=part)
    paths[part] = fetch(f"planetoid/ind.{name}.{part}", [url], sha256, data_dir=data_dir, size=size)
  graph = read_planetoid(paths, name)
  _check_counts(graph, _EXPECTED[name], paths["graph"].parent)
  return graph


def _check_counts(graph: Graph, expected: _Expected, where: pathlib.Path) -> None:
  got = _Expected(graph.num_nodes, graph.num_features, graph.num_classes, len(graph.edges))
  if expected.directed_edges is None:
    got = got._replace(directed_edges=None)
  if got != expected:
    raise ZooError(
      f"the {graph.name} files in {where} give {got} but the published graph has {expected}; "
      "replace them with the official files"
    )


def read_planetoid(paths: typing.Mapping[str, str | os.PathLike], name: str) -> Graph:
  """Builds a Graph from Planetoid files in the original format (no checksums: `load_planetoid` checks them).

  Args:
    paths: the path of each of `PARTS` ('x', 'y', 'tx', 'ty', 'allx', 'ally', 'graph', 'test.index').
    name: the graph's name.
  """
  paths = {part: pathlib.Path(paths[part]) for part in PARTS}
  x, tx, allx = (_load_matrix(paths[p]) for p in ("x", "tx", "allx"))
  y, ty, ally = (_load_one_hot(paths[p]) for p in ("y", "ty", "ally"))
  adjacency = _load_adjacency(paths["graph"])
  test_index = _read_index(paths["test.index"])

  def fail(problem: str) -> typing.NoReturn:
    raise ZooError(f"the Planetoid files ind.{name}.* in {paths['x'].parent} do not fit together: {problem}")

  num_classes = y.shape[1]
  if x.shape[1] != allx.shape[1] or tx.shape[1] != allx.shape[1]:
    fail(f"x, tx and allx have {x.shape[1]}, {tx.shape[1]} and {allx.shape[1]} features")
  if ty.shape[1] != num_classes or ally.shape[1] != num_classes:
    fail(f"y, ty and ally have {num_classes}, {ty.shape[1]} and {ally.shape[1]} classes")
  if x.shape[0] != len(y) or tx.shape[0] != len(ty) or allx.shape[0] != len(ally):
    fail(
      f"x/y, tx/ty, allx/ally have {x.shape[0]}/{len(y)}, {tx.shape[0]}/{len(ty)}, "
      f"{allx.shape[0]}/{len(ally)} rows"
    )
  if len(test_index) != tx.shape[0] or len(np.unique(test_index)) != len(test_index):
    fail(
      f"{paths['test.index']} has {len(test_index)} entries ({len(np.unique(test_index))} distinct) "
      f"for {tx.shape[0]} rows of tx"
    )
  # Planetoid numbers the test nodes after all of allx's; the train (x, y) and validation nodes come first.
  num_known = allx.shape[0]
  if len(y) + NUM_VAL > num_known or (len(test_index) and test_index.min() < num_known):
    fail(
      f"{len(y)} train + {NUM_VAL} validation nodes need as many rows in allx ({num_known}), and the "
      "test nodes must come after them"
    )
  if (x != allx[: len(y)]).nnz or not np.array_equal(y, ally[: len(y)]):
    fail("the training nodes (x, y) are not the first rows of allx, ally")

  # CiteSeer's test.index skips some numbers between its smallest and largest entry: nodes in the graph
  # that have no test features. Kipf's gcn/utils.py gives them zero features and no label; so do we, by
  # placing every known row at its node number in an array as long as the largest node number.
  n = int(test_index.max()) + 1 if len(test_index) else num_known
  if n - num_known > 2 * len(test_index):  # CiteSeer skips 15 of 1,015; a wild number would exhaust memory.
    fail(f"test.index names node {n - 1}, leaving more nodes without features than it has entries")
  features = np.zeros((n, allx.shape[1]), np.float32)
  features[:num_known] = allx.toarray()
  features[test_index] = tx.toarray()  # row i of tx is node test_index[i]
  labels = np.full(n, -1, np.int32)
  labels[:num_known] = _labels(ally)
  labels[test_index] = _labels(ty)

  train_mask, val_mask, test_mask = (np.zeros(n, bool) for _ in range(3))
  train_mask[: len(y)] = True
  val_mask[len(y) : len(y) + NUM_VAL] = True
  test_mask[test_index] = True
  if (labels[train_mask | val_mask | test_mask] < 0).any():
    fail("some train, validation or test node has no label (an all-zero row of y, ally or ty)")

  edges = _edges(adjacency, n, fail)
  return Graph(name, features, edges, labels, train_mask, val_mask, test_mask, num_classes)


def _labels(one_hot: np.ndarray) -> np.ndarray:
  return np.where(one_hot.any(axis=1), one_hot.argmax(axis=1), -1).astype(np.int32)


def _edges(
  adjacency: dict[int, list[int]], n: int, fail: typing.Callable[[str], typing.NoReturn]
) -> np.ndarray:
  """The (E, 2) int32 edges of the undirected graph, both directions, sorted, no duplicates or self loops."""
  src = np.repeat(
    np.fromiter(adjacency.keys(), np.int64, len(adjacency)), [len(v) for v in adjacency.values()]
  )
  dst = np.fromiter((d for v in adjacency.values() for d in v), np.int64, len(src))
  if len(src) and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= n):
    fail(f"the graph names nodes outside 0..{n - 1}")
  # A node pair as one number u * n + v: np.unique then both removes duplicates and sorts by (u, v).
  keep = src != dst
  pairs = np.unique(np.concatenate([src[keep] * n + dst[keep], dst[keep] * n + src[keep]]))
  return np.stack([pairs // n, pairs % n], axis=1).astype(np.int32)


# --- the restricted unpickler -------------------------------------------------------------------------------

# These files need only the globals below (found with pickletools.genops over all of Cora's and CiteSeer's
# files): numpy arrays and dtypes, scipy CSR matrices (pickled by scipy < 1.8 as `scipy.sparse.csr`, by
# newer ones as `_csr`) and the graph's defaultdict(list).
_ALLOWED_GLOBALS: dict[tuple[str, str], typing.Any] = {
  **NUMPY_ARRAY_GLOBALS,
  ("scipy.sparse.csr", "csr_matrix"): scipy.sparse.csr_matrix,
  ("scipy.sparse._csr", "csr_matrix"): scipy.sparse.csr_matrix,
  ("collections", "defaultdict"): collections.defaultdict,
  ("__builtin__", "list"): list,  # Python 2's name, which the files use
  ("builtins", "list"): list,
}


class RestrictedUnpickler(AllowListUnpickler):
  """Reads the Python 2 pickles of Planetoid, refusing every global but those the files need."""

  def __init__(self, file: typing.BinaryIO, path: str | os.PathLike):
    # latin1 turns Python 2 byte strings into str one byte per character, which numpy's array state
    # accepts as the raw buffer.
    super().__init__(file, path, _ALLOWED_GLOBALS, "Planetoid", encoding="latin1")


def restricted_load(path: str | os.PathLike) -> typing.Any:
  """Unpickles a Planetoid file with `RestrictedUnpickler`'s allow-list; a refused global, a broken pickle
  or an unreadable file: ZooError naming it."""
  try:
    data = pathlib.Path(path).read_bytes()
  except OSError as e:
    raise ZooError(f"cannot read the Planetoid file {path}: {e.strerror or e}") from None
  return load_pickle(data, path, _ALLOWED_GLOBALS, "Planetoid", encoding="latin1")


def _load_matrix(path: pathlib.Path) -> scipy.sparse.csr_matrix:
  m = restricted_load(path)
  if not isinstance(m, scipy.sparse.csr_matrix):
    raise ZooError(f"{path} holds a {type(m).__name__}, not the CSR feature matrix of a Planetoid file")
  try:
    # The arrays came from the file: check shape, indices and values before anything uses them. A pickle
    # can build a csr_matrix with any attributes (or none), so anything may fail here.
    m.check_format(full_check=True)
    ok = m.ndim == 2 and m.dtype.kind in "biuf"
  except Exception as e:
    raise ZooError(f"{path} holds a broken CSR matrix ({type(e).__name__}: {e})") from None
  if not ok:
    raise ZooError(f"{path} holds a CSR matrix of {m.dtype} values, not the numeric features of Planetoid")
  return m


def _load_one_hot(path: pathlib.Path) -> np.ndarray:
  y = restricted_load(path)
  if (
    not isinstance(y, np.ndarray)
    or y.ndim != 2
    or y.dtype.kind not in "iub"
    or not np.isin(y, (0, 1)).all()
    or (y.sum(axis=1) > 1).any()
  ):
    raise ZooError(f"{path} does not hold one-hot labels (an (N, C) array of 0/1, at most one 1 per row)")
  return y


def _load_adjacency(path: pathlib.Path) -> dict[int, list[int]]:
  graph = restricted_load(path)
  if not isinstance(graph, dict) or not all(
    type(k) is int and isinstance(v, list) and all(type(u) is int for u in v) for k, v in graph.items()
  ):
    raise ZooError(f"{path} does not hold an adjacency list (a dict from node numbers to lists of them)")
  return graph


def _read_index(path: pathlib.Path) -> np.ndarray:
  values = []
  for i, line in enumerate(path.read_text(encoding="ascii", errors="replace").splitlines(), 1):
    if not line.strip():
      continue
    try:
      values.append(int(line))
    except ValueError:
      raise ZooError(f"{path}, line {i}: expected a node number, got {line[:40]!r}") from None
  return np.asarray(values, np.int64)


def node_dataset(graph: Graph, *, normalize_features: bool = True) -> Dataset:
  """A graph as a node-classification Dataset: inputs are node ids (int32), labels their classes, and the
  graph ({"features": (N, F) float32, "edges": (E, 2) int32}) is the shared context the model is given
  with each batch. Splits: the graph's train / validation / test masks (the public split). Features are
  row-normalised (Kipf & Welling) unless `normalize_features=False`."""
  ids = lambda mask: np.flatnonzero(mask).astype(np.int32)
  train, val, test = ids(graph.train_mask), ids(graph.val_mask), ids(graph.test_mask)
  labels = graph.labels.astype(np.int32)
  features = row_normalize(graph.features) if normalize_features else np.asarray(graph.features, np.float32)
  context = {"features": features, "edges": graph.edges.astype(np.int32)}
  return Dataset(
    graph.name, train, labels[train], test, labels[test], graph.num_classes, 1.0,
    x_val=val, y_val=labels[val], context=context,
  )  # fmt: skip


def _register(name: str) -> None:
  def loader(*, data_dir: str | None = None, normalize_features: bool = True) -> Dataset:
    return node_dataset(load_planetoid(name, data_dir=data_dir), normalize_features=normalize_features)

  loader.__name__ = name
  loader.__doc__ = (
    f"Planetoid {name.capitalize()} for full-batch node classification (`load_planetoid`, `node_dataset`): "
    "inputs are node ids into the graph that the model receives whole; the public split, validation incl."
  )
  register_dataset(loader)


for _name in ("cora", "citeseer", "pubmed"):
  _register(_name)
