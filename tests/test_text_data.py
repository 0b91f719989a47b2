"""Tests of the text datasets: Tiny Shakespeare's characters and SST's trees, splits and vocabulary."""

from __future__ import annotations

import io
import os
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

from zoo.data import text
from zoo.data.text import (
  PAD,
  UNK,
  Tree,
  char_corpus,
  load_sst,
  load_tiny_shakespeare,
  parse_tree,
  read_sst_trees,
  sentiment_treebank,
)
from zoo.registry import ZooError


def _staged(relative: str) -> Path | None:
  d = os.environ.get("ZOO_DATA_DIR")  # tests/conftest.py points it at shared/data when that exists
  return Path(d) / relative if d and (Path(d) / relative).is_file() else None


SHAKESPEARE = _staged("tiny_shakespeare/input.txt")
SST = _staged("sst/trainDevTestTrees_PTB.zip")


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
  """No test downloads or writes to the user's cache."""
  monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))

  def urlopen(url, *args, **kwargs):
    raise OSError(f"no network in tests ({url})")

  monkeypatch.setattr(urllib.request, "urlopen", urlopen)


# --- characters ---------------------------------------------------------------------------------------------


def test_char_corpus_round_trip_and_split():
  text = "To be, or not to be — that is the question 🎭\nWhether 'tis nobler…" * 3
  c = char_corpus(text)
  assert c.vocab == "".join(sorted(set(text))) and c.vocab_size == len(set(text))
  n_train = int(len(text) * 0.9)
  assert (len(c.train), len(c.val)) == (n_train, len(text) - n_train)
  assert c.train.dtype == c.val.dtype == np.int32
  assert c.decode(c.train) + c.decode(c.val) == text  # characters beyond the BMP included
  np.testing.assert_array_equal(c.encode(text), np.concatenate([c.train, c.val]))
  assert c.encode("be").tolist() == [c.vocab.index("b"), c.vocab.index("e")]
  assert c.decode([]) == "" and c.encode("").shape == (0,)


def test_char_corpus_rejects_unknown_characters_and_tokens():
  c = char_corpus("abcabc")
  with pytest.raises(ZooError, match=r"2 character\(s\) outside .*'X', 'é'"):
    c.encode("abXéX")
  with pytest.raises(ZooError, match=r"outside 0\.\.2 cannot be decoded: \[-1, 3\]"):
    c.decode([0, 3, -1])
  with pytest.raises(ZooError, match="1-d sequence of integer tokens"):
    c.decode(np.zeros((2, 2), np.int32))
  with pytest.raises(ZooError, match="val_fraction"):
    char_corpus("abc", val_fraction=1.0)


def test_a_wrong_shakespeare_file_is_refused(tmp_path):
  (tmp_path / "tiny_shakespeare").mkdir()
  (tmp_path / "tiny_shakespeare" / "input.txt").write_text("First Citizen:\n")
  with pytest.raises(ZooError, match="input.txt is corrupt"):
    load_tiny_shakespeare(data_dir=str(tmp_path))


@pytest.mark.skipif(SHAKESPEARE is None, reason="the staged Tiny Shakespeare file is not here")
def test_tiny_shakespeare():
  c = load_tiny_shakespeare()
  assert c.vocab == "\n !$&',-.3:;?" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + "abcdefghijklmnopqrstuvwxyz"
  assert (len(c.train), len(c.val)) == (1_003_854, 111_540)  # 90% / 10% of 1,115,394 characters
  assert c.decode(c.train[:14]) == "First Citizen:"
  assert c.decode(c.train) + c.decode(c.val) == SHAKESPEARE.read_text()
  np.testing.assert_array_equal(c.encode(c.decode(c.val)), c.val)


# --- trees --------------------------------------------------------------------------------------------------


def test_parse_nested_tree():
  t = parse_tree("(3 (2 It) (4 (4 (2 's) (4 good)) (2 .)))")
  leaf = lambda label, word: Tree(label, (), word)  # noqa: E731
  assert t == Tree(3, (leaf(2, "It"), Tree(4, (Tree(4, (leaf(2, "'s"), leaf(4, "good"))), leaf(2, ".")))))
  assert t.leaves() == ["It", "'s", "good", "."]
  assert [n.label for n in t.nodes()] == [3, 2, 4, 4, 2, 4, 2]  # pre-order
  assert parse_tree("(1 word)") == Tree(1, (), "word")
  # Only ASCII spaces separate; SST has a no-break space inside "2\xa01\/2". Repeated spaces are fine.
  assert parse_tree("(2  (2 2\xa01\\/2)   (2 hours))").leaves() == ["2\xa01\\/2", "hours"]


@pytest.mark.parametrize(
  "text, problem",
  [
    ("", "expected '\\('"),
    ("2 word)", "expected '\\('"),
    ("(2 word", "ends early"),
    ("(2 (2 a) (2 b)", "ends early"),
    ("(2 word))", "text after the end"),
    ("(2 a) (2 b)", "text after the end"),
    ("(5 word)", "label 0-4, got '5'"),
    ("(x word)", "label 0-4, got 'x'"),
    ("((2 a))", "label 0-4, got '\\('"),
    ("(2 )", "a word or a subtree"),
    ("(2 two words)", "expected '\\)'"),
    ("(2 (2 a) word)", "expected '\\)'"),
  ],
)
def test_malformed_trees_are_zoo_errors_naming_the_line(text, problem):
  with pytest.raises(ZooError, match=f"train.txt line 7: not a sentiment tree: .*{problem}"):
    parse_tree(text, "train.txt line 7")


def test_absurdly_deep_tree_is_a_zoo_error():
  with pytest.raises(ZooError, match="nested too deeply"):
    parse_tree("(2 " * 5000 + "a" + ")" * 5000, "line 1")


# --- SST splits from generated archives ---------------------------------------------------------------------

_TRAIN = [
  "(4 (3 A) (4 (4 great) (2 film)))",  # 4 -> positive
  "(0 (1 (0 Awful) (2 film)) (2 .))",  # 0 -> negative
  "(2 (2 A) (2 film))",  # neutral: dropped by binary
  "(1 (2 The) (1 (1 dull) (2 film)))",  # 1 -> negative
]
_DEV = ["(3 (2 a) (3 good) (2 film))", "(2 (2 Unseen) (2 words))"]
_TEST = ["(4 (4 GREAT))"]


def _archive(path: Path, train=_TRAIN, dev=_DEV, test=_TEST) -> Path:
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("trees/", "")
    for name, lines in (("train", train), ("dev", dev), ("test", test)):
      z.writestr(f"trees/{name}.txt", "".join(line + "\n" for line in lines))
  return path


def test_five_classes(tmp_path):
  sst = sentiment_treebank(read_sst_trees(_archive(tmp_path / "sst.zip")))
  assert sst.num_classes == 5 and (len(sst.train), len(sst.val), len(sst.test)) == (4, 2, 1)
  # Lower-cased, most frequent first (film 4, a 2), then alphabetical.
  assert sst.vocab == ("<pad>", "<unk>", "film", "a", ".", "awful", "dull", "great", "the")
  assert sst.vocab[PAD] == "<pad>" and sst.vocab[UNK] == "<unk>"
  np.testing.assert_array_equal(sst.train.labels, [4, 0, 2, 1])
  assert sst.train.tokens.shape == (4, 3) and sst.train.lengths.tolist() == [3, 3, 2, 3]
  np.testing.assert_array_equal(sst.train.tokens[2], [3, 2, PAD])  # "a film", padded
  # Words not in the training split are <unk>; each split is padded to its own longest sentence.
  np.testing.assert_array_equal(sst.val.tokens, [[3, UNK, 2], [UNK, UNK, PAD]])
  np.testing.assert_array_equal(sst.test.tokens, [[7]])
  np.testing.assert_array_equal(sst.encode(["The", "GREAT", "unseen"]), [8, 7, UNK])
  assert all(s.tokens.dtype == s.lengths.dtype == s.labels.dtype == np.int32 for s in (sst.train, sst.test))


def test_binary_drops_neutral_and_maps_the_rest(tmp_path):
  sst = sentiment_treebank(read_sst_trees(_archive(tmp_path / "sst.zip")), binary=True)
  assert sst.num_classes == 2
  np.testing.assert_array_equal(sst.train.labels, [1, 0, 0])  # 4 -> 1, 0 -> 0, (2 dropped), 1 -> 0
  np.testing.assert_array_equal(sst.val.labels, [1])
  assert "the" in sst.vocab  # the vocabulary is the training split's, after dropping neutral sentences
  assert sst.vocab == ("<pad>", "<unk>", "film", ".", "a", "awful", "dull", "great", "the")


def test_phrases_add_every_labelled_subphrase_to_train_only(tmp_path):
  trees = read_sst_trees(_archive(tmp_path / "sst.zip"))
  sst = sentiment_treebank(trees, phrases=True)
  assert len(sst.train) == sum(len(list(t.nodes())) for t in trees["train"])  # 5 + 5 + 3 + 5 nodes
  assert (len(sst.val), len(sst.test)) == (2, 1)
  phrases = {(" ".join(sst.vocab[t] for t in row[:n]), label) for row, n, label in _rows(sst.train)}
  assert ("awful film", 1) in phrases and ("great film", 4) in phrases and ("dull", 1) in phrases
  assert ("a great film", 4) in phrases  # the sentences themselves are there too
  binary = sentiment_treebank(trees, phrases=True, binary=True)
  labels = [n.label for t in trees["train"] for n in t.nodes() if n.label != 2]
  np.testing.assert_array_equal(np.sort(binary.train.labels), np.sort(np.array(labels) > 2))


def _rows(split):
  return zip(split.tokens, split.lengths, split.labels, strict=True)


def test_max_len_pads_and_truncates(tmp_path):
  sst = sentiment_treebank(read_sst_trees(_archive(tmp_path / "sst.zip")), max_len=2)
  assert sst.train.tokens.shape == (4, 2) and sst.test.tokens.shape == (1, 2)
  assert sst.train.lengths.tolist() == [2, 2, 2, 2] and sst.test.lengths.tolist() == [1]
  np.testing.assert_array_equal(sst.train.tokens[0], [sst.vocab.index("a"), sst.vocab.index("great")])
  with pytest.raises(ZooError, match="max_len"):
    sentiment_treebank(read_sst_trees(tmp_path / "sst.zip"), max_len=0)


def test_bad_archives_are_zoo_errors(tmp_path):
  with pytest.raises(ZooError, match=r"sst\.zip:trees/dev\.txt line 2: not a sentiment tree"):
    read_sst_trees(_archive(tmp_path / "sst.zip", dev=[_DEV[0], "(3 (2 unclosed)"]))
  with zipfile.ZipFile(tmp_path / "partial.zip", "w") as z:
    z.writestr("trees/train.txt", _TRAIN[0])
  with pytest.raises(ZooError, match="could not be read as the SST archive"):
    read_sst_trees(tmp_path / "partial.zip")
  (tmp_path / "text.zip").write_text("not a zip")
  with pytest.raises(ZooError, match="could not be read as the SST archive"):
    read_sst_trees(tmp_path / "text.zip")


def test_a_wrong_sst_archive_is_refused_by_checksum(tmp_path):
  _archive(tmp_path / "trainDevTestTrees_PTB.zip")
  with pytest.raises(ZooError, match="trainDevTestTrees_PTB.zip is corrupt"):
    load_sst(data_dir=str(tmp_path))


# --- the real SST -------------------------------------------------------------------------------------------

needs_sst = pytest.mark.skipif(SST is None, reason="the staged SST archive is not here")


@pytest.fixture(scope="module")
def sst_trees():
  """The real trees, parsed once for this module: load_sst's own parse is replaced by them meanwhile."""
  trees = read_sst_trees(SST)  # the split sizes and label counts checked below would catch a wrong file
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(text, "read_sst_trees", lambda path: trees)
    yield trees


@needs_sst
def test_sst2_standard_splits(sst_trees):
  sst = load_sst(binary=True)  # load_sst also checks the 5-class sizes of the file's trees
  assert sst.name == "sst2" and (len(sst.train), len(sst.val), len(sst.test)) == (6920, 872, 1821)
  np.testing.assert_array_equal(np.bincount(sst.test.labels), [912, 909])


@needs_sst
def test_sst5_standard_splits_and_labels(sst_trees):
  sst = sentiment_treebank(sst_trees)
  assert (len(sst.train), len(sst.val), len(sst.test)) == (8544, 1101, 2210)
  np.testing.assert_array_equal(np.bincount(sst.train.labels), [1092, 2218, 1624, 2322, 1288])
  np.testing.assert_array_equal(sst.train.labels, [t.label for t in sst_trees["train"]])
  first = sst_trees["train"][0].leaves()
  assert first[:3] == ["The", "Rock", "is"] and len(first) == sst.train.lengths[0]
  np.testing.assert_array_equal(sst.train.tokens[0, : len(first)], sst.encode(first))
  assert (sst.train.tokens[0, len(first) :] == PAD).all() and UNK not in sst.train.tokens
  assert sst.train.tokens.shape[1] == sst.train.lengths.max() == 52


@needs_sst
def test_sst_phrases_count_every_node(sst_trees):
  sst = sentiment_treebank(sst_trees, phrases=True)
  with zipfile.ZipFile(SST) as z:
    nodes = io.TextIOWrapper(z.open("trees/train.txt"), encoding="utf-8").read().count("(")
  assert len(sst.train) == nodes == 318_582  # one "(" per node; torchtext's train_subtrees gives 318,582
  assert len(sst.val) == 1101
