"""``wordnet_similarity``: mean pairwise Wu–Palmer similarity of the WordNet synsets of a set's labels.

For natural images labelled by ImageNet class (a WordNet 3.0 noun synset), it scores a top-k set as
semantically coherent when its classes sit close in the noun hierarchy ("terrier" and "retriever" more
than "terrier" and "espresso"), which label purity cannot see. WordNet is read straight from its
``data.noun`` file (Debian's ``wordnet-base`` or NLTK's data): a synset's offset is its byte position
there, so each lookup is one seek, and nothing is loaded whole.

Wu–Palmer follows NLTK's ``wup_similarity``: the subsumer is the common hypernym (instance hypernyms
included) of greatest minimum depth; with depth d = its maximum depth + 1 and NLTK's path lengths l_a, l_b
from each synset to it, wup = 2d / (l_a + l_b + 2d). NLTK's ``shortest_path_distance`` joins two synsets
through any common ancestor, so l_a may go past the subsumer and back down to it when that is shorter
than a's own hypernym path to it. Ties for the subsumer are broken as NLTK breaks them:
the first synset itself if it is one, else the one whose NLTK name (``lemma.n.NN``, the first lemma and its
sense number in ``index.noun``, found by bisection) sorts first. So wup(a, b) may differ from wup(b, a).
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import DirscopeError
from .base import Metric, Pool, register

HYPERNYM_SYMBOLS = ("@", "@i")
WNID = re.compile(r"\bn(\d{8})\b")
INSTALL_HINT = (
    "install Debian's wordnet-base (apt-get install wordnet-base), or NLTK's data (nltk.download('wordnet')), "
    "or set DIRSCOPE_WORDNET to the folder holding data.noun"
)


def wordnet_dirs() -> list[Path]:
    """Where data.noun is looked for, in order."""
    env = os.environ.get("DIRSCOPE_WORDNET")
    nltk_roots = [Path.home() / "nltk_data", Path("/usr/share/nltk_data"), Path("/usr/local/share/nltk_data")]
    return [
        *([Path(env)] if env else []),
        Path("/usr/share/wordnet"),
        *(root / "corpora" / "wordnet" for root in nltk_roots),
    ]


def find_wordnet() -> Path:
    """The data.noun file of the first WordNet found, or one line saying how to get one."""
    for folder in wordnet_dirs():
        if (folder / "data.noun").is_file():
            return folder / "data.noun"
    raise DirscopeError(f"WordNet not found; {INSTALL_HINT}")


class WordNetNouns:
    """The noun hypernym graph of one data.noun file, read synset by synset on demand."""

    def __init__(self, data_noun: str | Path) -> None:
        self.path = Path(data_noun)
        self._hypernyms: dict[int, tuple[int, ...]] = {}
        self._lemmas: dict[int, str] = {}
        self._distances: dict[int, dict[int, int]] = {}
        self._depths: dict[int, tuple[int, int]] = {}

    def hypernyms(self, offset: int) -> tuple[int, ...]:
        """Hypernyms and instance hypernyms of the synset at ``offset``."""
        if offset not in self._hypernyms:
            self._lemmas[offset], self._hypernyms[offset] = self._read(offset)
        return self._hypernyms[offset]

    def _read(self, offset: int) -> tuple[str, tuple[int, ...]]:
        """The synset's first lemma, lowercased as in NLTK's names, and its (instance) hypernyms."""
        with self.path.open("rb") as fh:
            fh.seek(offset)
            fields = fh.readline().decode("utf-8", "replace").split(" | ")[0].split()
        if not fields or fields[0] != f"{offset:08d}":
            raise DirscopeError(f"n{offset:08d} is not a noun synset of WordNet at {self.path}")
        n_words = int(fields[3], 16)
        at = 4 + 2 * n_words
        n_pointers = int(fields[at])
        pointers = [fields[at + 1 + 4 * i : at + 5 + 4 * i] for i in range(n_pointers)]
        return fields[4].lower(), tuple(int(p[1]) for p in pointers if p[0] in HYPERNYM_SYMBOLS and p[2] == "n")

    def name(self, offset: int) -> str:
        """NLTK's name of the synset, ``lemma.n.NN``: its first lemma and that lemma's sense number."""
        self.hypernyms(offset)
        lemma = self._lemmas[offset]
        senses = _senses(str(self.path.with_name("index.noun")), lemma)
        if offset not in senses:
            raise DirscopeError(f"n{offset:08d} is not listed under {lemma!r} in the index.noun beside {self.path}")
        return f"{lemma}.n.{senses.index(offset) + 1:02d}"

    def distances(self, offset: int) -> dict[int, int]:
        """Shortest distance from the synset to itself and to each of its ancestors."""
        if offset in self._distances:
            return self._distances[offset]
        dist = {offset: 0}
        queue = deque([offset])
        while queue:
            node = queue.popleft()
            for parent in self.hypernyms(node):
                if parent not in dist:
                    dist[parent] = dist[node] + 1
                    queue.append(parent)
        self._distances[offset] = dist
        return dist

    def depths(self, offset: int) -> tuple[int, int]:
        """(shortest, longest) hypernym path length from the synset up to a root."""
        if offset not in self._depths:
            parents = [self.depths(p) for p in self.hypernyms(offset)]
            self._depths[offset] = (
                min((d[0] + 1 for d in parents), default=0),
                max((d[1] + 1 for d in parents), default=0),
            )
        return self._depths[offset]

    def wup(self, a: int, b: int) -> float:
        """Wu–Palmer similarity of two noun synsets (0 when they share no hypernym)."""
        da, db = self.distances(a), self.distances(b)
        common = set(da) & set(db)
        if not common:
            return 0.0
        deepest = max(self.depths(s)[0] for s in common)
        tied = [s for s in common if self.depths(s)[0] == deepest]
        subsumer = a if a in tied else tied[0] if len(tied) == 1 else min(tied, key=self.name)
        depth = self.depths(subsumer)[1] + 1
        ds = self.distances(subsumer)
        la, lb = (min(d[s] + ds[s] for s in ds if s in d) for d in (da, db))
        return 2.0 * depth / (la + lb + 2 * depth)


@lru_cache(maxsize=4096)
def _senses(index_noun: str, lemma: str) -> list[int]:
    """The synset offsets of a noun lemma in sense order, from its line of the sorted ``index.noun``."""
    key = lemma.encode()
    try:
        with open(index_noun, "rb") as fh:
            lo, hi = 0, fh.seek(0, 2)
            while lo < hi:  # the first position whose next line's lemma is >= key
                mid = (lo + hi) // 2
                found = _lemma_after(fh, mid)
                if found is not None and found < key:
                    lo = mid + 1
                else:
                    hi = mid
            fh.seek(max(lo - 1, 0))
            if lo > 0:
                fh.readline()
            fields = fh.readline().split()
    except OSError:
        raise DirscopeError(f"cannot read {index_noun} (WordNet's index.noun); {INSTALL_HINT}") from None
    if not fields or fields[0] != key:
        raise DirscopeError(f"{lemma!r} is not in {index_noun}")
    n_synsets = int(fields[2])
    return [int(offset) for offset in fields[-n_synsets:]]


def _lemma_after(fh, position: int) -> bytes | None:
    """The lemma of the first line starting at or after ``position`` (b"" for the licence's indented lines;
    None past the end)."""
    fh.seek(max(position - 1, 0))
    if position > 0:
        fh.readline()  # to the end of the line holding position - 1
    line = fh.readline()
    if not line.strip():
        return None
    return b"" if line.startswith(b" ") else line.split(b" ", 1)[0]


@lru_cache(maxsize=4)
def _nouns(path: str) -> WordNetNouns:
    return WordNetNouns(path)


def synset_offsets(label_names: Sequence[str]) -> list[int]:
    """The noun synset offset of each label name: one holding a WordNet id (``n02124075``,
    ``crane (n02012849)``), or an ImageNet class name; one line naming the first label that is neither."""
    from ..models.imagenet import imagenet_classes

    classes = imagenet_classes()
    by_name: dict[str, str] = {}
    for wnid, name in zip(classes.wnids, classes.names, strict=True):
        by_name.setdefault(name, wnid)  # "crane" and "maillot" name two classes each: the first wins
    offsets = []
    for name in label_names:
        match = WNID.search(name) or WNID.fullmatch(by_name.get(name.strip(), ""))
        if match is None:
            raise DirscopeError(f"label {name!r} is neither a WordNet noun id (n########) nor an ImageNet class name")
        offsets.append(int(match.group(1)))
    return offsets


def label_similarity(label_names: Sequence[str], data_noun: str | Path | None = None) -> np.ndarray:
    """float64 [C, C]: Wu–Palmer similarity between the synsets of every pair of labels."""
    if not label_names:
        raise DirscopeError("the data has no label names to map to WordNet synsets")
    offsets = synset_offsets(label_names)  # first, so digit labels are not told to install WordNet
    nouns = _nouns(str(data_noun or find_wordnet()))
    n = len(offsets)
    sim = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            sim[i, j] = sim[j, i] = nouns.wup(offsets[i], offsets[j])
    return sim


def score(sets: np.ndarray, pool: Pool) -> np.ndarray:
    """Mean of S[label_i, label_j] over the k(k-1)/2 pairs of each set, summed in sorted label order, so sets
    with the same labels in another order score the very same float (ties with the null stay ties)."""
    labels = np.sort(np.asarray(pool["labels"])[sets], axis=1)
    sim = np.asarray(pool["label_similarity"])
    k = sets.shape[1]
    total = np.zeros(sets.shape[0])
    for i in range(k):
        for j in range(i + 1, k):
            total += sim[labels[:, i], labels[:, j]]
    return total / (k * (k - 1) / 2)


METRIC = register(
    Metric(
        name="wordnet_similarity",
        help="mean pairwise Wu–Palmer similarity of the labels' WordNet synsets (higher = more coherent)",
        needs=("labels",),
        constants=("label_similarity",),
        score_sets=score,
        min_k=2,
        null="label_counts",
    )
)
