"""``Scorer``: train a detector on labeled runs, save it, load it, score new answers.

::

    scorer = Scorer.train("lookback_lens", runs=["runs/halueval_tf"])
    scorer.save("detectors/lookback-smollm2")
    scorer = Scorer.load("detectors/lookback-smollm2")       # loads the model once
    v = scorer.score(question=q, answer=a, context=ctx)      # the given answer, teacher-forced
    v.hallucination_score, v.hallucinated, v.threshold

**Training** (:meth:`Scorer.train`) follows :func:`hallugraph.evaluation.evaluate`'s protocol on
each run: the 60/20/20 split by question (:func:`~hallugraph.splits.split_groups`, same seed),
the detector fitted on the train split, the threshold that maximizes balanced accuracy on the
validation split (:func:`~hallugraph.metrics.choose_threshold`), the validation AUROC of that
fit. Then (``refit=True``, the default) the detector is fitted again on train + validation and
keeps that threshold; ``refit=False`` keeps the train-only fit, the very detector of the
benchmark's table. The test split is never used for fitting; its AUROC is reported.

**Scoring** an answer captures its teacher-forced trace with the extraction code, one answer per
model pass (a score never depends on which other answers were scored with it), and computes
only the statistics the detector reads, in memory, with the benchmark path's code
(:mod:`hallugraph.scoring.trace`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hallugraph.io import jsonable
from hallugraph.scoring.bundle import BundleError, load_bundle, save_bundle
from hallugraph.scoring.tokens import TokenScore, token_scores
from hallugraph.scoring.trace import StatTable, assemble, fields_of, trace_statistics
from hallugraph.scoring.training import ScoringError

DEFAULT_MAX_TOKENS = 2048
"""Longest prompt + answer scored by default: the attention maps of one answer take
``layers x heads x S^2`` floats (30 x 9 x 2048^2 x 4 bytes = 4.5 GB for SmolLM2 at 2048)."""


@dataclass
class Verdict:
    """The detector's verdict on one answer."""

    hallucination_score: float
    """In [0, 1]; higher = more likely hallucinated."""
    hallucinated: bool
    """``hallucination_score >= threshold``."""
    threshold: float
    detector: str
    model: str
    answer: str
    tokens: list[TokenScore] | None = field(default=None)
    """Per token (logit baselines) or per span (Lookback Lens): text, character offsets in
    ``answer``, score; ``None`` for detectors without them."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.tokens is None:
            d.pop("tokens")
        return d


def model_fingerprint(model: Any) -> str:
    """Fingerprint of a model's weights: :func:`hallugraph.store.codec.weights_fingerprint` (the one
    run.json's predictive codec records), extended with the output head when it is not tied to
    the embeddings; a blake2b of every parameter for models the codec does not support."""
    import torch

    from hallugraph.store.predictor import weights_fingerprint

    hf = getattr(model, "model", model)  # LoadedModel -> the transformers model
    h = hashlib.blake2b(digest_size=16)
    try:
        h.update(f"codec:{weights_fingerprint(hf)}".encode())
        head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
        emb = hf.get_input_embeddings() if hasattr(hf, "get_input_embeddings") else None
        if head is not None and (emb is None or head.weight is not emb.weight):
            h.update(head.weight.detach().to(torch.float32).cpu().numpy().tobytes())
    except Exception:  # noqa: BLE001 - not a Llama-family model: hash every parameter
        h = hashlib.blake2b(digest_size=16)
        for name, p in sorted(hf.named_parameters()):
            h.update(f"{name}:{tuple(p.shape)}".encode())
            h.update(p.detach().to(torch.float32).cpu().numpy().tobytes())
    return h.hexdigest()


def _check_text(value: Any, name: str, required: bool) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ScoringError(f"{name} is empty: give a non-empty string")
        return None
    if not isinstance(value, str):
        raise ScoringError(f"{name} must be a string, not {type(value).__name__}")
    return value


class Scorer:
    """A trained detector bound to the model whose traces it reads (see the module doc)."""

    def __init__(
        self,
        detector: Any,
        meta: Mapping[str, Any],
        lm: Any = None,
        *,
        device: str | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> None:
        self.detector = detector
        self.meta = dict(meta)
        if "detector" not in self.meta:  # freshly trained: what save_bundle will write
            self.meta["detector"] = {
                "name": detector.name,
                "family": getattr(detector, "family", ""),
                "paper": getattr(detector, "paper", ""),
                "params": jsonable(detector.get_params()),
            }
        self.device = device
        self.max_tokens = int(max_tokens)
        self._lm = None
        self._lock = threading.RLock()
        if lm is not None:
            self._bind(lm)

    # ------------------------------------------------------------------ model

    def _bind(self, lm: Any) -> None:
        want = self.meta["model"].get("fingerprint")
        got = lm.__dict__.get("_hallugraph_fingerprint") or model_fingerprint(lm)
        lm.__dict__["_hallugraph_fingerprint"] = got  # weights are not modified in place
        if want is not None and got != want:
            raise BundleError(
                f"this detector was trained on traces of model {self.meta['model'].get('name')!r}"
                f" (weights fingerprint {want}); the model given has fingerprint {got}. A "
                "detector only reads the model it was trained on: train one for this model"
            )
        self.meta["model"]["fingerprint"] = got
        self._lm = lm

    @property
    def lm(self) -> Any:
        """The model (loaded on first use, once, and checked against the fingerprint)."""
        if self._lm is None:
            from hallugraph.models import load_model

            m = self.meta["model"]
            self._bind(load_model(m["name"], dtype=m.get("dtype", "auto"), device=self.device))
        return self._lm

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])

    @property
    def name(self) -> str:
        return str(self.meta["detector"]["name"])

    @property
    def stats(self) -> list[str]:
        """The statistics the detector reads (only these are computed for a new answer)."""
        return list(self.meta["stats_read"])

    # ------------------------------------------------------------------ train / save / load

    @classmethod
    def train(
        cls,
        detector: str,
        runs: Sequence[str | os.PathLike[str]],
        *,
        params: Mapping[str, Any] | None = None,
        seed: int = 0,
        frac: tuple[float, float, float] = (0.6, 0.2, 0.2),
        refit: bool = True,
        lm: Any = None,
        device: str | None = None,
    ) -> Scorer:
        """Fit ``detector`` (a registered name) on labeled ``runs`` of one model; see the
        module docstring for the protocol. The model is loaded (or ``lm`` used) to record its
        fingerprint."""
        from hallugraph.scoring.training import fit_on_runs

        det, info = fit_on_runs(detector, runs, params=params, seed=seed, frac=frac, refit=refit)
        scorer = cls(det, info, device=device)
        if lm is not None:
            scorer._bind(lm)
        return scorer

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the bundle (``detector.json`` + ``weights.safetensors``) to folder ``path``."""
        if self.meta["model"].get("fingerprint") is None:
            _ = self.lm  # load the model to record its fingerprint
        info = {k: v for k, v in self.meta.items() if k not in ("detector", "weights", "format")}
        info["saved"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        return save_bundle(path, self.detector, info)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        lm: Any = None,
        device: str | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        load_model: bool = True,
    ) -> Scorer:
        """Read a bundle and load its model (or check ``lm`` against its fingerprint);
        ``load_model=False`` defers that to the first score."""
        det, meta = load_bundle(path)
        scorer = cls(det, meta, lm, device=device, max_tokens=max_tokens)
        if lm is not None or load_model:
            scorer.warm_up()
        return scorer

    def warm_up(self) -> None:
        """Load the model and build its decoder (the prompt prefix's rows) by scoring a dummy
        answer, so that the first real request does not pay for it."""
        with self._lock:
            ctx = "Warm-up context." if self.meta["prompt"]["context"] else None
            ex = self._example("Warm-up question?", "Warm-up answer.", ctx, "", False)
            self._capture(self._prepare(ex))

    # ------------------------------------------------------------------ scoring

    def _example(self, question: Any, answer: Any, context: Any, key: str, generate: bool):
        from hallugraph.data import Example

        q = _check_text(question, "question", True)
        a = None if generate else _check_text(answer, "answer", True)
        c = _check_text(context, "context", False)
        wants = self.meta["prompt"]["context"]
        if wants and c is None:
            raise ScoringError(
                f"detector {self.name!r} was trained on answers over a retrieved context: give "
                "the context (field 'context', or --context / --context-file)"
            )
        if not wants and c is not None:
            raise ScoringError(
                f"detector {self.name!r} was trained on answers without a context: its scores "
                "are not defined for an answer over a context; leave 'context' out"
            )
        return Example(id=key, question=q, references=(), context=c, answer=a)

    def _prepare(self, ex: Any, extra_tokens: int = 0) -> Any:
        from hallugraph.extract import prepare

        p = prepare(self.lm, [ex], self.meta["prompt"].get("template"))[0]
        n = len(p.prompt_ids) + (len(p.answer_ids) if p.answer_ids is not None else 0)
        n += extra_tokens
        window = int(getattr(self.lm.model.config, "max_position_embeddings", 0) or 0)
        limit = min(self.max_tokens, window) if window else self.max_tokens
        if n > limit:
            raise ScoringError(
                f"prompt + answer is {n} tokens; this scorer takes at most {limit} (the model's "
                f"context window is {window}, the scorer's max_tokens {self.max_tokens}: "
                "attention maps grow with the square of the length)"
            )
        if p.answer_ids is not None and len(p.answer_ids) < 2:
            raise ScoringError("the answer has no token (only whitespace?)")
        return p

    def _settings(self) -> Any:
        from dataclasses import fields as dc_fields

        from hallugraph.extract import GenerationSettings

        gen = self.meta["prompt"].get("generation") or {}
        known = {f.name for f in dc_fields(GenerationSettings)}
        return GenerationSettings(**{k: v for k, v in gen.items() if k in known})

    def _capture(self, prepared: Any) -> dict[str, Any]:
        from hallugraph.extract import capture_batch

        prefix = self.meta["prompt"].get("prefix_tokens") or []
        trace = capture_batch(self.lm, [prepared], self._settings(), prefix)[0]
        return assemble(trace, fields_of(self.stats), self.meta["model"].get("trace_dtype"))

    def predict_traces(self, traces: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Scores of traces laid out as :class:`~hallugraph.store.TraceStore` returns them
        (the statistics computed in memory, then the detector)."""
        stats = trace_statistics(traces, self.stats, self.meta.get("run_info", {}))
        s = np.asarray(self.detector.predict_proba(StatTable(stats, traces)), dtype=np.float64)
        if s.shape != (len(traces),) or not np.isfinite(s).all():
            raise RuntimeError(f"detector {self.name} returned invalid scores {s!r}")
        return s

    def _verdicts(self, traces: Sequence[Mapping[str, Any]], answers: Sequence[str]):
        scores = self.predict_traces(traces)
        out = []
        for tr, a, s in zip(traces, answers, scores, strict=True):
            toks = token_scores(self.detector, tr, a, self.lm.tokenizer)
            out.append(
                Verdict(
                    hallucination_score=float(s),
                    hallucinated=bool(s >= self.threshold),
                    threshold=self.threshold,
                    detector=self.name,
                    model=str(self.meta["model"].get("name")),
                    answer=a,
                    tokens=toks,
                )
            )
        return out

    def score(self, question: str, answer: str, context: str | None = None) -> Verdict:
        """The verdict on ``answer`` to ``question`` (over ``context``), teacher-forced."""
        return self.score_batch([{"question": question, "answer": answer, "context": context}])[0]

    def check(self, records: Iterable[Mapping[str, Any]]) -> list[Any]:
        """Validate and tokenize every record (no model pass); raises :class:`ScoringError`
        naming the first bad record."""
        prepared = []
        for i, r in enumerate(records):
            if not isinstance(r, Mapping):
                raise ScoringError(f"record {i}: expected an object, not {type(r).__name__}")
            try:
                ex = self._example(r.get("question"), r.get("answer"), r.get("context"), "", False)
                prepared.append(self._prepare(ex))
            except ScoringError as err:
                raise ScoringError(f"record {i}: {err}") from None
        return prepared

    def score_batch(
        self,
        records: Iterable[Mapping[str, Any]],
        batch_size: int = 16,
        progress: bool | None = None,
    ) -> list[Verdict]:
        """Verdicts on records ``{question, answer, context?}``. Every record is checked
        before any is scored; the model runs one answer per pass, the detector on
        ``batch_size`` answers at a time; a progress bar shows on more than one batch."""
        from tqdm.auto import tqdm

        with self._lock:
            prepared = self.check(list(records))
            show = len(prepared) > batch_size if progress is None else progress
            out: list[Verdict] = []
            with tqdm(total=len(prepared), desc="score", unit="ans", disable=not show) as bar:
                for k in range(0, len(prepared), max(1, batch_size)):
                    chunk = prepared[k : k + batch_size]
                    traces = []
                    for p in chunk:
                        traces.append(self._capture(p))
                        bar.update(1)
                    out += self._verdicts(traces, [p.example.answer for p in chunk])
            return out

    def generate(self, question: str, context: str | None = None) -> Verdict:
        """The model answers ``question`` (greedy, the training runs' settings), then its
        answer is scored; ``Verdict.answer`` holds it."""
        with self._lock:
            ex = self._example(question, None, context, "", True)
            p = self._prepare(ex, extra_tokens=self._settings().max_new_tokens)
            trace = self._capture(p)
            return self._verdicts([trace], [trace["generated_answer_clean"]])[0]

    def describe(self) -> dict[str, Any]:
        """The bundle's metadata without the fitted state (``GET /v1/detector``)."""
        meta = {k: v for k, v in self.meta.items() if k != "detector"}
        det = self.meta["detector"]
        meta["detector"] = {k: det[k] for k in ("name", "family", "paper", "params") if k in det}
        meta["threshold"] = self.threshold
        return meta


__all__ = ["Scorer", "ScoringError", "TokenScore", "Verdict", "BundleError", "model_fingerprint"]
