"""Training and held-out text for the transcoders, tokenized once and cached.

**Training text** (every piece outside the benchmarks' test data):

* ``prompts`` — the formats attribution sees, rendered exactly as the benchmark renders them
  (template + chat template) and followed by an answer:

  - TriviaQA records from index :data:`TRIVIAQA_START` (5000) on, with the reference answer
    (the benchmark runs use the first N ≤ 5000 records);
  - HaluEval-QA questions of the *training* side of the benchmark's seed-0 grouped split of
    ``halueval_qa_tf`` (:func:`halueval_train_questions`: 60 % of the questions), context +
    question followed by the right answer and by each hallucinated answer.

* ``general`` — English prose from Debian packages (``apt-get install python3.11-doc
  dict-gcide``): the Python 3.11 documentation sources (``/usr/share/doc/python3.11/html/
  _sources``, PSF-2.0, ~1.4 M words) and the GNU Collaborative International Dictionary of
  English (``/usr/share/dictd/gcide.dict.dz``, GPL-3+, ~5.4 M words: Webster 1913 definitions
  and quotations). Cut into windows of ``window`` tokens.

Each batch draws from one pool: ``prompt_share`` of the batches from ``prompts`` (cycled in
reshuffled epochs), the rest from ``general``. Sequences of a batch have similar lengths (padding
is small), ``batch_tokens`` tokens at most (padded size).

**Held-out text** (:func:`eval_texts`): HaluEval-QA questions *not* in that training side (context +
question + right answer, then + each hallucinated answer) and TriviaQA records ``[0, 5000)``
(question + reference answer), up to :data:`EVAL_TOKENS` tokens each: none is trained on.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hallugraph.config import cache_dir
from hallugraph.io import atomic_write_bytes
from hallugraph.models import LoadedModel, model_slug
from hallugraph.prompts import render_prompt

__all__ = [
    "GENERAL_SOURCES",
    "EVAL_TOKENS",
    "TRIVIAQA_START",
    "BatchPlan",
    "Corpus",
    "build_corpus",
    "calibration_texts",
    "eval_texts",
    "general_documents",
    "halueval_train_questions",
    "prompt_texts",
]

TRIVIAQA_START = 5000
#: default held-out tokens per set of :func:`eval_texts` (``--eval-tokens`` / ``eval --tokens``)
EVAL_TOKENS = 50_000
#: name -> (path, Debian package, licence)
GENERAL_SOURCES: dict[str, tuple[str, str, str]] = {
    "python_docs": ("/usr/share/doc/python3.11/html/_sources", "python3.11-doc", "PSF-2.0"),
    "gcide": ("/usr/share/dictd/gcide.dict.dz", "dict-gcide", "GPL-3.0-or-later"),
}
_CORPUS_VERSION = 1


def halueval_train_questions(data_dir: str | os.PathLike[str] | None = None, seed: int = 0):
    """HaluEval questions in the training side of the benchmark's grouped split of
    ``halueval_qa_tf`` (:func:`hallugraph.splits.split_groups`, given labels, ``seed``)."""
    return _halueval_sides(data_dir, seed)[0]


def _halueval_sides(data_dir, seed: int = 0):
    from hallugraph.data import load_halueval_qa, load_halueval_qa_teacher_forced
    from hallugraph.splits import split_groups

    tf = load_halueval_qa_teacher_forced(data_dir)
    groups = np.array([ex.meta["group"] for ex in tf])
    labels = np.array([ex.meta["given_label"] for ex in tf])
    train, _, _ = split_groups(groups, seed=seed, labels=labels)
    keep = set(groups[train].tolist())
    exs = load_halueval_qa(data_dir)
    return [ex for ex in exs if ex.id in keep], [ex for ex in exs if ex.id not in keep]


def _with_answer(lm: LoadedModel, ex: Any, answer: str) -> str:
    from hallugraph.prompts import build_prompt

    prompt = render_prompt(lm, build_prompt(ex)[0])
    eos = lm.tokenizer.eos_token if lm.use_chat_template and lm.tokenizer.eos_token else ""
    sep = "" if lm.use_chat_template else " "
    return f"{prompt}{sep}{answer}{eos}"


def prompt_texts(lm: LoadedModel, data_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """The ``prompts`` pool (see the module docstring)."""
    from hallugraph.data import load_triviaqa

    texts = [
        _with_answer(lm, ex, ex.references[0] if ex.references else "")
        for ex in load_triviaqa(data_dir)[TRIVIAQA_START:]
    ]
    for ex in halueval_train_questions(data_dir):
        for answer in (*ex.references[:1], *ex.incorrect):
            texts.append(_with_answer(lm, ex, answer))
    return texts


def eval_texts(
    lm: LoadedModel,
    data_dir: str | os.PathLike[str] | None = None,
    max_per_set: int | None = None,
    *,
    max_tokens: int | None = EVAL_TOKENS,
) -> dict[str, list[str]]:
    """Held-out texts by set: ``halueval_qa`` (context + question + answer) and ``triviaqa``
    (prompt + reference answer), each cut at ``max_per_set`` texts and at the first text that
    reaches ``max_tokens`` tokens (None: no limit).

    HaluEval-QA: the held-out questions with their right answer first, then with their first
    hallucinated answer, then the second (a text repeats its question's context, so this order
    gives the most distinct tokens for a budget). TriviaQA: records from 0 up to
    :data:`TRIVIAQA_START` (the training text starts there)."""
    from hallugraph.data import load_triviaqa

    halu = _halueval_texts(lm, _halueval_sides(data_dir)[1])
    tqa = [
        _with_answer(lm, ex, ex.references[0] if ex.references else "")
        for ex in load_triviaqa(data_dir)[:TRIVIAQA_START]
    ]
    return {
        "halueval_qa": _cut(lm, halu, max_per_set, max_tokens),
        "triviaqa": _cut(lm, tqa, max_per_set, max_tokens),
    }


def calibration_texts(
    lm: LoadedModel,
    data_dir: str | os.PathLike[str] | None = None,
    max_tokens: int | None = 20_000,
) -> list[str]:
    """HaluEval-QA-format text from the *training* side (context + question + answer, in the
    order of :func:`eval_texts`), up to ``max_tokens``: what export calibration reads."""
    return _cut(lm, _halueval_texts(lm, halueval_train_questions(data_dir)), None, max_tokens)


def _halueval_texts(lm: LoadedModel, exs: Sequence[Any]) -> list[str]:
    """Each question with its right answer, then each with its first hallucinated one, ..."""
    answers = [[*ex.references[:1], *ex.incorrect] for ex in exs]
    rounds = max((len(a) for a in answers), default=0)
    return [
        _with_answer(lm, ex, a[j])
        for j in range(rounds)
        for ex, a in zip(exs, answers, strict=True)
        if j < len(a)
    ]


def _cut(lm: LoadedModel, texts: list[str], n: int | None, tokens: int | None) -> list[str]:
    """The first ``n`` texts, up to the one that brings the count of evaluated tokens (all but
    position 0, as :func:`~.train.capture` keeps them) to ``tokens``."""
    texts = texts[:n] if n is not None else texts
    if tokens is None:
        return texts
    add = not lm.use_chat_template
    total = 0
    for i in range(0, len(texts), 256):
        for j, ids in enumerate(
            lm.tokenizer(texts[i : i + 256], add_special_tokens=add)["input_ids"]
        ):
            total += max(len(ids) - 1, 0)
            if total >= tokens:
                return texts[: i + j + 1]
    return texts


_WEBSTER = re.compile(r"\[(?:1913 Webster|PJC|WordNet 1\.5|Century Dict\.|Webster 1913 Suppl\.)\]")


def general_documents(sources: Sequence[str] = tuple(GENERAL_SOURCES)) -> list[str]:
    """The ``general`` pool's documents (see the module docstring)."""
    docs: list[str] = []
    for name in sources:
        if name not in GENERAL_SOURCES:
            raise ValueError(f"unknown text source {name!r}; known: {sorted(GENERAL_SOURCES)}")
        path, package, _ = GENERAL_SOURCES[name]
        if not Path(path).exists():
            raise FileNotFoundError(
                f"{path} is missing: install the Debian package ({package}) with "
                f"`apt-get install {package}`, or leave {name!r} out of the text sources"
            )
        if name == "python_docs":
            for f in sorted(Path(path).rglob("*.txt")):
                docs.append(f.read_text(encoding="utf-8", errors="replace"))
        else:
            with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
                text = _WEBSTER.sub("", fh.read())
            text = re.sub(r"[ \t]+", " ", text)
            text = re.sub(r"\n\s*\n\s*", "\n\n", text)
            step = 200_000  # documents of ~200 kB (the tokenizer's batches)
            docs.extend(text[i : i + step] for i in range(0, len(text), step))
    return docs


@dataclass
class Corpus:
    """Tokenized sequences of two pools (flat ids + offsets)."""

    ids: np.ndarray
    starts: np.ndarray
    """``[n + 1]`` offsets into ``ids``."""
    pool: np.ndarray
    """``[n]`` 0 = prompts, 1 = general."""
    info: dict[str, Any]

    def seq(self, i: int) -> np.ndarray:
        return self.ids[self.starts[i] : self.starts[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)


def _windows(ids: Sequence[int], window: int) -> list[list[int]]:
    return [list(ids[i : i + window]) for i in range(0, len(ids) - 8, window)]


def build_corpus(
    lm: LoadedModel,
    *,
    window: int = 256,
    sources: Sequence[str] = tuple(GENERAL_SOURCES),
    data_dir: str | os.PathLike[str] | None = None,
    cache: bool = True,
) -> Corpus:
    """Tokenize both pools (cached under ``~/.cache/hallugraph/transcoders/corpus``)."""
    from safetensors.numpy import load_file, save

    key = json.dumps(
        {"v": _CORPUS_VERSION, "model": lm.source, "window": window, "sources": list(sources)},
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    path = cache_dir() / "transcoders" / "corpus" / f"{model_slug(lm.name)}-{digest}.safetensors"
    if cache and path.exists():
        t = load_file(str(path))
        meta_path = path.with_suffix(".json")
        info = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        return Corpus(t["ids"], t["starts"], t["pool"], info)
    add_special = not lm.use_chat_template
    tok = lm.tokenizer
    seqs: list[list[int]] = []
    pools: list[int] = []
    counts: dict[str, int] = {}
    for text in prompt_texts(lm, data_dir):
        s = tok(text, add_special_tokens=add_special)["input_ids"][: 4 * window]
        seqs.append(s)
        pools.append(0)
        counts["prompts"] = counts.get("prompts", 0) + len(s)
    docs = general_documents(sources)
    for b in range(0, len(docs), 64):
        enc = tok(docs[b : b + 64], add_special_tokens=False)["input_ids"]
        for ids in enc:
            for w in _windows(ids, window):
                seqs.append(w)
                pools.append(1)
                counts["general"] = counts.get("general", 0) + len(w)
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    starts = np.zeros(len(seqs) + 1, dtype=np.int64)
    starts[1:] = np.cumsum(lengths)
    ids = np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=int(starts[-1]))
    pool = np.array(pools, dtype=np.int8)
    info = {
        "tokens": counts,
        "sequences": {"prompts": int((pool == 0).sum()), "general": int((pool == 1).sum())},
        "window": window,
        "sources": {
            n: {
                "path": GENERAL_SOURCES[n][0],
                "debian": GENERAL_SOURCES[n][1],
                "license": GENERAL_SOURCES[n][2],
            }
            for n in sources
        },
        "distinct_tokens_total": int(starts[-1]),
    }
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, save({"ids": ids, "starts": starts, "pool": pool}))
        atomic_write_bytes(path.with_suffix(".json"), (json.dumps(info, indent=2) + "\n").encode())
    return Corpus(ids, starts, pool, info)


class BatchPlan:
    """Which sequences form training batch ``i`` — a pure function of the corpus, the seed and
    ``i`` (so a resumed run sees the same batches)."""

    def __init__(
        self, corpus: Corpus, batch_tokens: int, prompt_share: float = 0.3, seed: int = 0
    ) -> None:
        if not 0.0 <= prompt_share <= 1.0:
            raise ValueError(f"prompt_share must be in [0, 1], not {prompt_share}")
        self.lengths = corpus.lengths()
        self.batch_tokens = batch_tokens
        self.seed = seed
        self.pools = [np.nonzero(corpus.pool == p)[0] for p in (0, 1)]
        share = prompt_share if len(self.pools[0]) else 0.0
        share = share if len(self.pools[1]) else 1.0
        if not len(self.pools[0]) and not len(self.pools[1]):
            raise ValueError("the corpus is empty")
        self.n_prompt = round(10 * share)  # of every 10 batches
        self._epochs: dict[tuple[int, int], list[np.ndarray]] = {}

    def _epoch(self, pool: int, epoch: int) -> list[np.ndarray]:
        key = (pool, epoch)
        if key not in self._epochs:
            if len(self._epochs) > 4:
                self._epochs.clear()
            rng = np.random.default_rng([self.seed, pool, epoch])
            idx = self.pools[pool][rng.permutation(len(self.pools[pool]))]
            batches: list[np.ndarray] = []
            for c in range(0, len(idx), 1024):  # sort by length within chunks of 1024
                chunk = idx[c : c + 1024]
                chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
                cur: list[int] = []
                longest = 0
                for j in chunk:
                    longest_new = max(longest, int(self.lengths[j]))
                    if cur and longest_new * (len(cur) + 1) > self.batch_tokens:
                        batches.append(np.array(cur))
                        cur, longest_new = [], int(self.lengths[j])
                    cur.append(int(j))
                    longest = longest_new
                if cur:
                    batches.append(np.array(cur))
            order = rng.permutation(len(batches))
            self._epochs[key] = [batches[o] for o in order]
        return self._epochs[key]

    def batch(self, i: int) -> np.ndarray:
        """Sequence indices of batch ``i``."""
        q, m = divmod(i, 10)
        if m < self.n_prompt:
            pool, j = 0, q * self.n_prompt + m
        else:
            pool, j = 1, q * (10 - self.n_prompt) + (m - self.n_prompt)
        n0 = len(self._epoch(pool, 0))  # batches per epoch (later epochs: about as many)
        epoch, j = divmod(j, n0)
        batches = self._epoch(pool, epoch)
        return batches[j % len(batches)]
