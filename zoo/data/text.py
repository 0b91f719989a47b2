"""Text datasets: Tiny Shakespeare characters and the Stanford Sentiment Treebank (Socher et al., 2013)."""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import re
import typing
import zipfile
import zlib
from collections.abc import Iterator, Sequence

import numpy as np

from zoo.data.datasets import Dataset, register_dataset
from zoo.data.download import fetch
from zoo.registry import ZooError

# --- Tiny Shakespeare ---------------------------------------------------------------------------------------

_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
# sha256 and size from tensorflow_datasets/url_checksums/tiny_shakespeare.txt (shared/data/README.md, sec. 3).
_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
_SHAKESPEARE_SIZE = 1_115_394


@dataclasses.dataclass(frozen=True, eq=False, repr=False)  # eq/hash by identity: fields are arrays.
class CharCorpus:
  """A text as character tokens: token i is the i-th character of `vocab`, sorted by code point.

  `train` and `val` are (N,) int32 token arrays: the first and the last part of the text.
  """

  vocab: str
  train: np.ndarray
  val: np.ndarray

  def __post_init__(self):
    if list(self.vocab) != sorted(set(self.vocab)):
      raise ValueError(f"vocab must be sorted unique characters, got {self.vocab!r}")
    for split in (self.train, self.val):
      if split.dtype != np.int32 or split.ndim != 1:
        raise ValueError(f"splits must be (N,) int32 token arrays, got {split.shape} {split.dtype}")

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)

  @functools.cached_property  # cached_property writes the instance dict directly, so frozen is no obstacle
  def _code_points(self) -> np.ndarray:
    return _code_points(self.vocab)

  def encode(self, text: str) -> np.ndarray:
    """The (len(text),) int32 tokens of `text`; a character outside the vocabulary raises ZooError."""
    codes = _code_points(text)
    # The vocabulary is sorted by code point, so a binary search finds each character's token.
    tokens = np.minimum(np.searchsorted(self._code_points, codes), len(self.vocab) - 1)
    if unknown := sorted(set(text[i] for i in np.flatnonzero(self._code_points[tokens] != codes))):
      raise ZooError(
        f"the text holds {len(unknown)} character(s) outside the corpus's vocabulary of {len(self.vocab)}: "
        f"{', '.join(map(repr, unknown))}"
      )
    return tokens.astype(np.int32)

  def decode(self, tokens: np.ndarray | Sequence[int]) -> str:
    """The text of a 1-d sequence of tokens; a token outside 0..vocab_size-1 raises ZooError."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or (tokens.size and tokens.dtype.kind not in "iu"):
      raise ZooError(f"decode takes a 1-d sequence of integer tokens, got {tokens.shape} {tokens.dtype}")
    if (bad := np.unique(tokens[(tokens < 0) | (tokens >= len(self.vocab))])).size:
      raise ZooError(f"tokens outside 0..{len(self.vocab) - 1} cannot be decoded: {bad[:10].tolist()}")
    return self._code_points[tokens.astype(np.intp)].tobytes().decode("utf-32-le")

  def __repr__(self) -> str:
    return f"CharCorpus(vocab_size={self.vocab_size}, train={len(self.train):,}, val={len(self.val):,})"


def _code_points(text: str) -> np.ndarray:
  return np.frombuffer(text.encode("utf-32-le"), "<u4")


def char_corpus(text: str, val_fraction: float = 0.1) -> CharCorpus:
  """A CharCorpus of `text`: the vocabulary of all its characters; the last `val_fraction` for validation."""
  if not 0 < val_fraction < 1:
    raise ZooError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
  vocab = "".join(sorted(set(text)))
  if not vocab:
    raise ZooError("a character corpus needs a non-empty text")
  corpus = CharCorpus(vocab, np.empty(0, np.int32), np.empty(0, np.int32))
  tokens = corpus.encode(text)
  n_train = int(len(tokens) * (1 - val_fraction))  # as char-rnn and nanoGPT split: int(0.9 * n)
  return CharCorpus(vocab, tokens[:n_train], tokens[n_train:])


def load_tiny_shakespeare(*, data_dir: str | None = None) -> CharCorpus:
  """Tiny Shakespeare (Karpathy's char-rnn): 1,115,394 characters of the plays, a vocabulary of 65.

  Training: the first 90% of the text (1,003,854 characters); validation: the last 10%. The file is read
  from `<data_dir>/tiny_shakespeare/input.txt` or `<data_dir>/input.txt` (data_dir: the argument, else
  $ZOO_DATA_DIR), else the cache, where it is downloaded if absent, and is checked by sha256 first.
  """
  path = fetch(
    "tiny_shakespeare/input.txt",
    [_SHAKESPEARE_URL],
    _SHAKESPEARE_SHA256,
    data_dir=data_dir,
    size=_SHAKESPEARE_SIZE,
  )
  try:
    text = path.read_bytes().decode("utf-8")
  except (OSError, UnicodeDecodeError) as e:
    raise ZooError(f"{path} is not a readable UTF-8 text ({e}); replace it with the official file") from None
  if not text:
    raise ZooError(f"{path} is empty; replace it with the official file")
  return char_corpus(text)


# --- Stanford Sentiment Treebank ----------------------------------------------------------------------------

_SST_URL = "https://nlp.stanford.edu/sentiment/trainDevTestTrees_PTB.zip"
# sha256 and size pinned for this URL in huggingface/datasets datasets/sst/dataset_infos.json (and the same
# sha256 in Flux.jl's src/data/sentiment.jl); shared/data/README.md, section 5.
_SST_SHA256 = "5c613a4f673fc74097d523a2c83f38e0cc462984d847b82c7aaf36b01cbbbfcc"
_SST_SIZE = 789_539
_SST_MEMBERS = {"train": "trees/train.txt", "val": "trees/dev.txt", "test": "trees/test.txt"}
# Sentences per split (Socher et al., 2013): all five classes, then without the neutral ones (SST-2).
_SST_SIZES = {"five": (8544, 1101, 2210), "binary": (6920, 872, 1821)}
NEUTRAL = 2

PAD, UNK = 0, 1  # token ids of "<pad>" and "<unk>"


class Tree(typing.NamedTuple):
  """A sentiment tree node: a label 0 (very negative) .. 4 (very positive) over a word or subtrees.

  A named tuple rather than a dataclass: SST's 11,855 sentences have 443k nodes, and a tuple builds fastest.
  """

  label: int
  children: tuple[Tree, ...] = ()
  word: str | None = None

  def leaves(self) -> list[str]:
    """The words under this node, in order."""
    return [t.word for t in self.nodes() if t.word is not None]

  def nodes(self) -> Iterator[Tree]:
    """This node and every node under it, in pre-order."""
    stack = [self]
    while stack:
      node = stack.pop()
      yield node
      stack.extend(reversed(node.children))


_PTB_TOKEN = re.compile(r"[()]|[^ ()]+")  # Only ASCII spaces separate: SST has words like "2\xa01\\/2".
_LABELS = {str(k): k for k in range(5)}


def parse_tree(text: str, where: str = "tree") -> Tree:
  """Parses one PTB-style tree, `(label word)` or `(label subtree subtree ...)` with labels 0-4.

  Args:
    text: the tree, on one line.
    where: names the tree in error messages, e.g. "train.txt line 12".

  Raises:
    ZooError: the text is not one well-formed tree.
  """
  tokens = _PTB_TOKEN.findall(text)

  def fail(problem: str, i: int) -> typing.NoReturn:
    near = " ".join(tokens[max(0, i - 4) : i + 1])
    raise ZooError(f"{where}: not a sentiment tree: {problem} at token {i + 1} ({near!r}) in {text[:100]!r}")

  def node(i: int) -> tuple[Tree, int]:
    """The subtree whose "(" is tokens[i], and the index after its ")"; IndexError if the text ends early."""
    label = _LABELS.get(tokens[i + 1])
    if label is None:
      fail(f"expected a label 0-4, got {tokens[i + 1]!r}", i + 1)
    i += 2
    if tokens[i] == "(":
      children = []
      while tokens[i] == "(":
        child, i = node(i)
        children.append(child)
      tree = Tree(label, tuple(children))
    elif tokens[i] == ")":
      fail("expected a word or a subtree", i)
    else:
      tree = Tree(label, (), tokens[i])
      i += 1
    if tokens[i] != ")":
      fail("expected ')'", i)
    return tree, i + 1

  if not tokens or tokens[0] != "(":
    fail("expected '('", 0)
  try:
    tree, end = node(0)
  except IndexError:
    fail("the text ends early", len(tokens) - 1)
  except RecursionError:
    raise ZooError(f"{where}: the tree is nested too deeply to be a sentence") from None
  if end != len(tokens):
    fail("text after the end of the tree", end)
  return tree


def read_sst_trees(path: str | os.PathLike) -> dict[str, list[Tree]]:
  """The sentence trees of each split ('train', 'val' = the dev set, 'test') of trainDevTestTrees_PTB.zip.

  The members are read into memory; nothing is extracted.
  """
  trees = {}
  try:
    with zipfile.ZipFile(path) as archive:
      for split, member in _SST_MEMBERS.items():
        text = archive.read(member).decode("utf-8")
        # Split on "\n" only: str.splitlines would also split on the rare control characters of a text.
        lines = [(i, line.rstrip("\r")) for i, line in enumerate(text.split("\n"), 1)]
        trees[split] = [parse_tree(line, f"{path}:{member} line {i}") for i, line in lines if line.strip()]
  # A damaged archive fails in many ways: a bad header or CRC (BadZipFile), a missing member (KeyError), a
  # broken deflate stream (zlib.error, EOFError), flags or methods zipfile cannot read (NotImplementedError,
  # RuntimeError for encryption), a size that does not fit (ValueError, OverflowError).
  except (
    zipfile.BadZipFile,
    KeyError,
    UnicodeDecodeError,
    OSError,
    EOFError,
    zlib.error,
    NotImplementedError,
    RuntimeError,
    ValueError,
    OverflowError,
  ) as e:
    raise ZooError(
      f"{path} could not be read as the SST archive with {', '.join(_SST_MEMBERS.values())} ({e}); "
      "replace it with the official file"
    ) from e
  return trees


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class TokenSplit:
  """Token sequences padded with PAD (0) to a common length T: tokens (N, T), lengths (N,), labels (N,)."""

  tokens: np.ndarray
  lengths: np.ndarray
  labels: np.ndarray

  def __post_init__(self):
    n = len(self.labels)
    if (
      self.tokens.dtype != np.int32
      or self.tokens.ndim != 2
      or len(self.tokens) != n
      or self.lengths.dtype != np.int32
      or self.lengths.shape != (n,)
      or self.labels.dtype != np.int32
      or self.labels.shape != (n,)
    ):
      raise ValueError(
        f"inconsistent split: tokens {self.tokens.shape} {self.tokens.dtype}, lengths "
        f"{self.lengths.shape} {self.lengths.dtype}, labels {self.labels.shape} {self.labels.dtype} "
        "(want (N, T), (N,), (N,) int32)"
      )

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class SentimentTreebank:
  """SST as padded word tokens. Token 0 is "<pad>", 1 is "<unk>" (a word not in the training split)."""

  name: str
  vocab: tuple[str, ...]
  train: TokenSplit
  val: TokenSplit
  test: TokenSplit
  num_classes: int

  @functools.cached_property
  def _index(self) -> dict[str, int]:
    return {word: i for i, word in enumerate(self.vocab)}

  def encode(self, words: Sequence[str]) -> np.ndarray:
    """The (len(words),) int32 tokens of words (lower-cased here as the corpus is); unknown words: UNK."""
    return np.array([self._index.get(w.lower(), UNK) for w in words], np.int32)

  def __repr__(self) -> str:
    return (
      f"SentimentTreebank({self.name!r}, vocab={len(self.vocab):,}, train={self.train.tokens.shape}, "
      f"val={self.val.tokens.shape}, test={self.test.tokens.shape}, num_classes={self.num_classes})"
    )


def sentiment_treebank(
  trees: typing.Mapping[str, Sequence[Tree]],
  *,
  binary: bool = False,
  phrases: bool = False,
  max_len: int | None = None,
  name: str = "sst",
) -> SentimentTreebank:
  """Turns parsed trees into padded token splits (see `load_sst` for the arguments)."""
  if max_len is not None and max_len < 1:
    raise ZooError(f"max_len must be at least 1, got {max_len}")

  def label_of(label: int) -> int | None:
    if not binary:
      return label
    return None if label == NEUTRAL else int(label > NEUTRAL)

  # Each example is a span of its sentence's words: (sentence, start, end, label). A phrase is then a
  # slice of the sentence's tokens, so training on all 319k phrases costs little more than on sentences.
  words: dict[str, list[list[str]]] = {}
  examples: dict[str, list[tuple[int, int, int, int]]] = {}
  for split in _SST_MEMBERS:
    words[split], examples[split] = [], []
    for tree in trees[split]:
      leaves = tree.leaves()
      spans = _spans(tree) if phrases and split == "train" else [(tree.label, 0, len(leaves))]
      kept = [(s, e, label) for tree_label, s, e in spans if (label := label_of(tree_label)) is not None]
      if kept:
        examples[split] += [(len(words[split]), s, e, label) for s, e, label in kept]
        words[split].append([w.lower() for w in leaves])

  # The words of the training sentences used, each sentence counted once; most frequent first, ties in
  # alphabetical order, so that the vocabulary never depends on hash order.
  counts = collections.Counter(w for sentence in words["train"] for w in sentence)
  vocab = ("<pad>", "<unk>", *sorted(counts, key=lambda w: (-counts[w], w)))
  index = {w: i for i, w in enumerate(vocab)}

  def pack(split: str) -> TokenSplit:
    ids = [np.array([index.get(w, UNK) for w in sentence], np.int32) for sentence in words[split]]
    rows = examples[split]
    lengths = np.array([e - s for _, s, e, _ in rows], np.int32)
    width = max_len if max_len is not None else int(lengths.max(initial=0))
    lengths = np.minimum(lengths, width)
    tokens = np.full((len(rows), width), PAD, np.int32)
    for i, (sentence, s, _, _) in enumerate(rows):
      tokens[i, : lengths[i]] = ids[sentence][s : s + lengths[i]]
    return TokenSplit(tokens, lengths, np.array([label for *_, label in rows], np.int32))

  splits = {split: pack(split) for split in _SST_MEMBERS}
  return SentimentTreebank(name, vocab, **splits, num_classes=2 if binary else 5)


def _spans(tree: Tree) -> list[tuple[int, int, int]]:
  """(label, start, end) of every node, its words' positions among the sentence's; the root's first."""
  spans = []
  position = 0

  def visit(node: Tree) -> None:
    nonlocal position
    at = len(spans)
    spans.append(None)
    start = position
    if node.word is not None:
      position += 1
    for child in node.children:
      visit(child)
    spans[at] = (node.label, start, position)

  visit(tree)
  return spans


def load_sst(
  *, data_dir: str | None = None, binary: bool = False, phrases: bool = False, max_len: int | None = None
) -> SentimentTreebank:
  """The Stanford Sentiment Treebank (Socher et al., 2013), sentence level, standard splits.

  Five classes (SST-5: 8,544 / 1,101 / 2,210 sentences; label = the root's 0-4), or with `binary` the
  non-neutral ones (SST-2: 6,920 / 872 / 1,821; 0-1 -> 0, 3-4 -> 1). Words are the trees' leaves, lower-cased;
  the vocabulary is the training split's, most frequent first. `trainDevTestTrees_PTB.zip` is read from
  `<data_dir>/sst/` or `<data_dir>/` (data_dir: the argument, else $ZOO_DATA_DIR), else the cache, where
  it is downloaded if absent, and is checked by sha256 first.

  Args:
    data_dir: a folder of local dataset files.
    binary: SST-2 instead of SST-5.
    phrases: also train on every labelled phrase of the training trees (each node below the root, repeats
      kept; neutral ones dropped with `binary`), as many SST recipes do. Validation and test stay sentences.
    max_len: pad or truncate every split to this many words; by default each split is padded to its
      longest sentence.
  """
  path = fetch("sst/trainDevTestTrees_PTB.zip", [_SST_URL], _SST_SHA256, data_dir=data_dir, size=_SST_SIZE)
  trees = read_sst_trees(path)
  sizes = {
    "five": tuple(len(trees[s]) for s in _SST_MEMBERS),
    "binary": tuple(sum(t.label != NEUTRAL for t in trees[s]) for s in _SST_MEMBERS),
  }
  if sizes != _SST_SIZES:
    raise ZooError(f"{path} gives split sizes {sizes}, not the standard {_SST_SIZES}")
  return sentiment_treebank(
    trees, binary=binary, phrases=phrases, max_len=max_len, name="sst2" if binary else "sst5"
  )


# --- as registered datasets (the trainer's in-memory Dataset) ---------------------------------------------


def token_windows(tokens: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Non-overlapping windows of a token stream: inputs (N, block_size) and the next tokens (N, block_size),
  N = (len(tokens) - 1) // block_size; every token but the last is an input exactly once."""
  n = (len(tokens) - 1) // block_size
  if n < 1:
    raise ZooError(f"a text of {len(tokens)} tokens holds no window of block_size={block_size} + 1 tokens")
  x = tokens[: n * block_size].reshape(n, block_size)
  y = tokens[1 : n * block_size + 1].reshape(n, block_size)
  return np.ascontiguousarray(x, np.int32), np.ascontiguousarray(y, np.int32)


@register_dataset
def tiny_shakespeare(*, data_dir: str | None = None, block_size: int = 128) -> Dataset:
  """Tiny Shakespeare as character windows for a language model (task 'language_model'): the first 90% of
  the text for training, the last 10% as the held-out split (reported as 'test'), each cut into windows of
  `block_size` characters with the next character as the label at every position. num_classes = 65 (the
  vocabulary)."""
  if block_size < 1:
    raise ZooError(f"data.kwargs.block_size must be >= 1, got {block_size}")
  corpus = load_tiny_shakespeare(data_dir=data_dir)
  x_train, y_train = token_windows(corpus.train, block_size)
  x_test, y_test = token_windows(corpus.val, block_size)
  vocab = corpus.vocab
  splits = (x_train, y_train, x_test, y_test)
  return Dataset("tiny_shakespeare", *splits, len(vocab), 0.0, tokens=True, vocab=vocab)


@register_dataset
def sst(
  *, data_dir: str | None = None, binary: bool = False, phrases: bool = False, max_len: int | None = 64
) -> Dataset:
  """The Stanford Sentiment Treebank as padded word ids (0 = padding) for a sequence classifier: 5 classes,
  or 2 with `binary`; the official dev split is the validation split. `max_len` pads (or truncates) every
  split to one length (the longest sentence has 56 words); `phrases` adds the training trees' phrases."""
  bank = load_sst(data_dir=data_dir, binary=binary, phrases=phrases, max_len=max_len)
  split = lambda s: (s.tokens, s.labels)
  return Dataset(
    bank.name,
    *split(bank.train),
    *split(bank.test),
    bank.num_classes,
    0.0,
    tokens=True,
    vocab=bank.vocab,
    x_val=bank.val.tokens,
    y_val=bank.val.labels,
  )
