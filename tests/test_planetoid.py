"""Tests of the Planetoid loader: the public GCN split, the graph's edges, and the restricted unpickler."""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import struct
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

from zoo.data import planetoid
from zoo.data.planetoid import load_planetoid, read_planetoid, restricted_load, row_normalize
from zoo.registry import ZooError

# The globals in the official files, found with pickletools over all sixteen of Cora's and CiteSeer's.
OFFICIAL_GLOBALS = {
  "numpy ndarray",
  "numpy dtype",
  "numpy.core.multiarray _reconstruct",
  "scipy.sparse.csr csr_matrix",
  "collections defaultdict",
  "__builtin__ list",
}


def _staged() -> Path | None:
  d = os.environ.get("ZOO_DATA_DIR")  # tests/conftest.py points it at shared/data when that exists
  return Path(d) if d and (Path(d) / "planetoid" / "ind.citeseer.allx").is_file() else None


STAGED = _staged()
needs_staged = pytest.mark.skipif(STAGED is None, reason="the staged Planetoid files are not here")


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
  """No test downloads or writes to the user's cache."""
  monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))

  def urlopen(url, *args, **kwargs):
    raise OSError(f"no network in tests ({url})")

  monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def _globals_in(data: bytes) -> set[str]:
  return {str(arg) for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


# --- files in the official format, generated ----------------------------------------------------------------


class _Py2Pickler(pickle._Pickler):
  """Pickles as the Python 2 cPickle that wrote the Planetoid files did: strings as BINSTRING, and
  globals under their Python 2 / old numpy and scipy module names."""

  dispatch = pickle._Pickler.dispatch.copy()
  _MODULES = {"numpy._core.multiarray": "numpy.core.multiarray", "scipy.sparse._csr": "scipy.sparse.csr"}

  def _save_str(self, obj):
    data = obj if isinstance(obj, bytes) else obj.encode("latin1")
    if len(data) < 256:
      self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
    else:
      self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
    self.memoize(obj)

  dispatch[bytes] = _save_str
  dispatch[str] = _save_str

  def save_global(self, obj, name=None):
    module = self._MODULES.get(obj.__module__, obj.__module__)
    module = "__builtin__" if module == "builtins" else module
    self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
    self.memoize(obj)


def _py2_pickle(obj) -> bytes:
  out = io.BytesIO()
  _Py2Pickler(out, protocol=2).dump(obj)
  return out.getvalue()


class _Tiny:
  """A small graph in Planetoid's layout, with a CiteSeer-like gap in its test numbering.

  Nodes 0..5 are training nodes (2 per class), 6..505 validation, 506..509 unlabelled-split nodes of allx;
  the test nodes are 510..529 except 515 and 522, which have no features and no label.
  """

  classes, features, num_train, num_known, n = 3, 6, 6, 510, 530
  missing = (515, 522)

  def __init__(self, seed: int = 0):
    rng = np.random.default_rng(seed)
    self.x = (rng.random((self.n, self.features)) < 0.4).astype(np.float32)
    self.x[:, 0] = 1  # every real node has a word
    self.y = rng.integers(0, self.classes, self.n).astype(np.int32)
    self.y[: self.num_train] = [0, 1, 2, 0, 1, 2]
    for m in self.missing:
      self.x[m], self.y[m] = 0, -1
    tests = np.setdiff1d(np.arange(self.num_known, self.n), self.missing)
    self.test_index = rng.permutation(tests)  # the file's order is not sorted, as in the real files
    pairs = [tuple(p) for p in rng.integers(0, self.n, (700, 2))] + [(3, 3), (7, 8), (7, 8), (515, 2)]
    self.adjacency = collections.defaultdict(list)
    for u, v in pairs:  # Mostly from both ends, as Planetoid lists them; (7, 8) twice; one from one end only.
      self.adjacency[int(u)].append(int(v))
      if (u, v) != (515, 2):
        self.adjacency[int(v)].append(int(u))
    self.pairs = pairs

  def one_hot(self, nodes) -> np.ndarray:
    return np.eye(self.classes, dtype=np.int32)[self.y[nodes]]

  def write(self, folder: Path, name: str = "tiny", **replace: bytes) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    train, known = np.arange(self.num_train), np.arange(self.num_known)
    csr = scipy.sparse.csr_matrix
    parts = {
      "x": _py2_pickle(csr(self.x[train])),
      "y": _py2_pickle(self.one_hot(train)),
      "allx": _py2_pickle(csr(self.x[known])),
      "ally": _py2_pickle(self.one_hot(known)),
      "tx": _py2_pickle(csr(self.x[self.test_index])),
      "ty": _py2_pickle(self.one_hot(self.test_index)),
      "graph": _py2_pickle(self.adjacency),
      "test.index": "".join(f"{i}\n" for i in self.test_index).encode(),
      **replace,
    }
    paths = {}
    for part, data in parts.items():
      paths[part] = folder / f"ind.{name}.{part}"
      paths[part].write_bytes(data)
    return paths


@pytest.fixture(scope="module")
def tiny() -> _Tiny:
  return _Tiny()


def test_generated_files_use_exactly_the_official_globals(tiny, tmp_path):
  paths = tiny.write(tmp_path)
  found = set().union(*(_globals_in(paths[p].read_bytes()) for p in planetoid.PARTS if p != "test.index"))
  assert found == OFFICIAL_GLOBALS
  if STAGED:
    real = [STAGED / "planetoid" / f"ind.{n}.{p}" for n in ("cora", "citeseer") for p in planetoid.PARTS]
    assert set().union(*(_globals_in(f.read_bytes()) for f in real if f.suffix != ".index")) == found


def test_read_planetoid_places_every_node_as_the_gcn_loader_does(tiny, tmp_path):
  g = read_planetoid(tiny.write(tmp_path), "tiny")
  np.testing.assert_array_equal(g.features, tiny.x)  # test rows at their node numbers, gaps all zero
  np.testing.assert_array_equal(g.labels, tiny.y)  # -1 for the two nodes in the gap
  assert (g.num_nodes, g.num_features, g.num_classes) == (530, 6, 3)
  np.testing.assert_array_equal(np.flatnonzero(g.train_mask), np.arange(6))
  np.testing.assert_array_equal(np.flatnonzero(g.val_mask), np.arange(6, 506))
  np.testing.assert_array_equal(np.flatnonzero(g.test_mask), np.sort(tiny.test_index))
  assert not g.test_mask[list(tiny.missing)].any()


def test_edges_are_both_directions_sorted_without_duplicates_or_self_loops(tiny, tmp_path):
  g = read_planetoid(tiny.write(tmp_path), "tiny")
  expected = {(u, v) for a, b in tiny.pairs for u, v in ((a, b), (b, a)) if u != v}
  got = [tuple(e) for e in g.edges.tolist()]
  assert got == sorted(expected)  # also: no repeats, (515, 2) listed from one end only is symmetric
  assert g.edges.dtype == np.int32 and g.edges.shape == (len(expected), 2)


@pytest.mark.filterwarnings("ignore:Please import `csr_matrix`:DeprecationWarning")  # plain pickle's import
def test_restricted_unpickler_reads_what_plain_pickle_reads(tiny, tmp_path):
  paths = tiny.write(tmp_path)
  for part in ("x", "ally", "graph"):
    plain = pickle.loads(paths[part].read_bytes(), encoding="latin1")  # our own file: safe to unpickle
    ours = restricted_load(paths[part])
    if scipy.sparse.issparse(plain):
      assert isinstance(ours, scipy.sparse.csr_matrix) and (plain != ours).nnz == 0
    elif isinstance(plain, np.ndarray):
      assert ours.dtype == plain.dtype and np.array_equal(ours, plain)
    else:
      assert ours == plain and isinstance(ours, collections.defaultdict)


# --- the restricted unpickler refuses everything else -------------------------------------------------------


class _Exploit:
  """A pickle that runs a function of the attacker's choice when loaded."""

  def __init__(self, fn, *args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return self.fn, self.args


@pytest.mark.parametrize("how", ["os.system", "eval", "exec", "open"])
def test_a_malicious_pickle_is_refused_and_nothing_runs(how, tiny, tmp_path):
  marker = tmp_path / "pwned"
  payload = {
    "os.system": _Exploit(os.system, f"touch {marker}"),
    "eval": _Exploit(eval, f"open({str(marker)!r}, 'w').write('x')"),
    "exec": _Exploit(exec, f"open({str(marker)!r}, 'w').write('x')"),
    "open": _Exploit(open, str(marker), "w"),  # would create the file just by being called
  }[how]
  data = pickle.dumps(payload, protocol=2)
  (named,) = _globals_in(data)  # e.g. "posix system", "__builtin__ eval" (protocol 2 uses Python 2 names)
  paths = tiny.write(tmp_path / "files", graph=data)
  with pytest.raises(ZooError, match="refused") as e:
    read_planetoid(paths, "tiny")
  assert str(paths["graph"]) in str(e.value) and named.replace(" ", ".") in str(e.value)
  assert not marker.exists()


@pytest.mark.parametrize(
  "module, name",
  [
    ("__builtin__", "eval"),  # a Python 2 name for a builtin that is not allowed
    ("builtins", "getattr"),
    ("numpy", "load"),  # numpy.load(allow_pickle=...) would unpickle without our checks
    ("numpy.core.multiarray", "scalar"),
    ("numpy", "ndarray.__reduce__"),  # a dotted name below an allowed global
    ("collections", "OrderedDict"),
    ("copy_reg", "_reconstructor"),
    ("subprocess", "Popen"),
  ],
)
def test_only_the_exact_globals_the_files_need_are_allowed(module, name, tmp_path):
  path = tmp_path / "ind.tiny.graph"
  path.write_bytes(b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R.")  # GLOBAL, call with ()
  with pytest.raises(ZooError, match="refused") as e:
    restricted_load(path)
  assert f"{module}.{name}" in str(e.value)


def test_a_stack_global_pickle_is_refused_too(tmp_path):
  path = tmp_path / "ind.tiny.x"
  path.write_bytes(pickle.dumps(_Exploit(os.getcwd), protocol=4))  # STACK_GLOBAL, not GLOBAL
  with pytest.raises(ZooError, match="refused"):
    restricted_load(path)


def test_a_broken_pickle_is_a_zoo_error(tiny, tmp_path):
  paths = tiny.write(tmp_path)
  path = tmp_path / "truncated"
  path.write_bytes(paths["allx"].read_bytes()[:100])
  with pytest.raises(ZooError, match="not a readable Planetoid pickle"):
    restricted_load(path)
  with pytest.raises(ZooError, match="CSR feature matrix"):  # a well-formed pickle of the wrong thing
    read_planetoid(tiny.write(tmp_path / "swapped", x=paths["ally"].read_bytes()), "tiny")


def test_inconsistent_files_are_a_zoo_error(tiny, tmp_path):
  short_index = "".join(f"{i}\n" for i in tiny.test_index[:-1]).encode()
  with pytest.raises(ZooError, match="test.index has 17 entries"):
    read_planetoid(tiny.write(tmp_path, **{"test.index": short_index}), "tiny")
  with pytest.raises(ZooError, match="line 2: expected a node number"):
    read_planetoid(tiny.write(tmp_path, **{"test.index": b"510\nfive\n"}), "tiny")


# --- the loader and the real files --------------------------------------------------------------------------


def test_unknown_graph_and_missing_files(tmp_path):
  with pytest.raises(ZooError, match="unknown Planetoid graph 'corra'"):
    load_planetoid("corra")
  # PubMed is not staged: offline, the error says where to put the files.
  with pytest.raises(ZooError, match=r"could not download planetoid/ind\.pubmed\.x.*ZOO_DATA_DIR"):
    load_planetoid("pubmed", data_dir=str(tmp_path))


def test_a_file_with_the_wrong_checksum_is_refused_before_it_is_unpickled(tiny, tmp_path):
  tiny.write(tmp_path / "planetoid", name="cora")  # right names, wrong content
  with pytest.raises(ZooError, match=r"ind\.cora\.x is corrupt"):
    load_planetoid("cora", data_dir=str(tmp_path))


def test_row_normalize():
  f = np.array([[1, 1, 2], [0, 0, 0], [0, 3, 0]], np.float32)
  np.testing.assert_allclose(row_normalize(f), [[0.25, 0.25, 0.5], [0, 0, 0], [0, 1, 0]])
  assert row_normalize(f).dtype == np.float32


def _check_split(g, num_train: int) -> None:
  masks = g.train_mask.astype(int) + g.val_mask + g.test_mask
  assert masks.max() == 1  # disjoint
  assert (g.train_mask.sum(), g.val_mask.sum(), g.test_mask.sum()) == (num_train, 500, 1000)
  # The public split: 20 training nodes per class, the first nodes; then 500 validation nodes.
  np.testing.assert_array_equal(np.bincount(g.labels[g.train_mask]), [20] * g.num_classes)
  assert np.flatnonzero(g.train_mask | g.val_mask).tolist() == list(range(num_train + 500))
  assert (g.labels[masks == 1] >= 0).all()


def _check_edges(g) -> None:
  e = g.edges.astype(np.int64)
  keys = e[:, 0] * g.num_nodes + e[:, 1]
  assert (np.diff(keys) > 0).all()  # sorted, no duplicates
  assert (e[:, 0] != e[:, 1]).all()
  np.testing.assert_array_equal(np.sort(e[:, 1] * g.num_nodes + e[:, 0]), keys)  # symmetric


@needs_staged
def test_cora():
  g = load_planetoid("cora")
  # Kipf & Welling (2017), Table 1: 2,708 nodes, 1,433 features, 7 classes; 5,278 distinct undirected
  # citations (10,556 directed edges, as PyTorch Geometric counts them).
  assert (g.num_nodes, g.num_features, g.num_classes, len(g.edges)) == (2708, 1433, 7, 10556)
  _check_split(g, 140)
  _check_edges(g)
  assert set(np.unique(g.features)) == {0.0, 1.0} and (g.labels >= 0).all()


@needs_staged
def test_citeseer_matches_the_gcn_reference_construction():
  g = load_planetoid("citeseer")
  assert (g.num_nodes, g.num_features, g.num_classes, len(g.edges)) == (3327, 3703, 6, 9104)
  _check_split(g, 120)
  _check_edges(g)
  # Kipf's gcn/utils.py, restated: extend tx/ty over the full test range, stack below allx/ally, then move
  # each sorted-position row to the node number the file gives.
  raw = {p: restricted_load(STAGED / "planetoid" / f"ind.citeseer.{p}") for p in ("tx", "ty", "allx", "ally")}
  order = np.loadtxt(STAGED / "planetoid" / "ind.citeseer.test.index", dtype=np.int64)
  ordered = np.sort(order)
  full = np.arange(ordered.min(), ordered.max() + 1)
  tx = np.zeros((len(full), g.num_features), np.float32)
  tx[ordered - ordered.min()] = raw["tx"].toarray()
  ty = np.zeros((len(full), g.num_classes), np.int32)
  ty[ordered - ordered.min()] = raw["ty"]
  features, labels = np.vstack([raw["allx"].toarray(), tx]), np.vstack([raw["ally"], ty])
  features[order], labels[order] = features[ordered], labels[ordered]
  np.testing.assert_array_equal(g.features, features)
  missing = labels.sum(axis=1) == 0
  assert missing.sum() == 15  # CiteSeer's isolated nodes without test features
  np.testing.assert_array_equal(g.labels, np.where(missing, -1, labels.argmax(axis=1)))
  assert not (g.features[missing].any() or (g.train_mask | g.val_mask | g.test_mask)[missing].any())
