"""Benchmark detectors on labeled runs: cross-validation by question, question-level bootstrap
CIs, paired comparisons, transfer and leave-one-dataset-out.

:mod:`.protocol` (:func:`evaluate`), :mod:`.cv` (folds, one detector's out-of-fold scores),
:mod:`.bootstrap` (question-bootstrap metrics, paired comparison, length-matched AUROC),
:mod:`.transfer` (transfer, leave-one-dataset-out), :mod:`.report` / :mod:`.tables` /
:mod:`.plots` (files), :mod:`.cells` (checkpoints, resume), :mod:`.parallel` (cells computed
by worker processes), :mod:`.memory`,
:mod:`.hypotheses` (the graph-topology hypothesis test).
Folds and plain metrics are :mod:`hallugraph.splits` and :mod:`hallugraph.metrics` (the
detectors use them too).

Protocol (one run = one dataset):

* **Folds** (:func:`~hallugraph.splits.grouped_kfold`): ``repeats`` x ``folds`` (default 3 x 5)
  cross-validation, grouped by question (``FeatureTable.groups``: no question on both sides),
  stratified by label, deterministic for a seed. Every answer is tested once per repeat.
* **Inside each fold**: the training questions are split again, 75 / 25, by question; the
  detector is fitted on the 75 % (detectors that choose hyper-parameters do it inside ``fit``,
  on those rows only) and its decision threshold is the one that maximizes *balanced accuracy*
  on the 25 % (:func:`~hallugraph.metrics.choose_threshold`). The fold's test answers are
  only scored. A fused detector (``fusion``) stacks inside its own ``fit``, so no fold's test
  answers touch its meta-learner.
* **Metrics** (:func:`~.bootstrap.metrics_with_ci`): AUROC and AUPR of the pooled
  out-of-fold scores, accuracy and F1 of the pooled predictions (each at its fold's
  threshold), computed per repeat and averaged; 95 % percentile bootstrap CIs over
  *questions* (all answers of a drawn question come along; ``bootstrap`` resamples, the same
  for every detector of a run). Undefined metrics (one class) are NaN with a note.
* **Length-matched AUROC**: AUROC over (hallucinated, correct) pairs whose answers differ by
  at most ``LENGTH_TOL`` tokens: what a detector knows beyond the answer's length.
* **Paired comparison**: every detector against the run's best single detector, the AUROC
  difference with its paired question-bootstrap CI and two-sided p (same resamples for both).
* **Transfer** (several runs): fitted on *all* of run A, scored on the answers of run B whose
  question (id or text) A does not hold (``halueval_qa`` and ``halueval_qa_tf`` ask the same
  questions). AUROC / AUPR only: a threshold does not transfer.
* **Leave-one-dataset-out**: fitted on all other runs together (without the questions they
  share with the left-out run), scored on the whole left-out run.

A detector that raises (in ``fit``, ``predict_proba`` or a statistic it needs) gets a row with
its error and the evaluation goes on. One that raises
:class:`~hallugraph.detectors.NotApplicable` (e.g. attribution scores never computed for the run)
is skipped on that run: no row, listed under "skipped" in the config and below the table.

Outputs in ``out_dir`` (default ``RUN/../eval`` of the first run): ``results.md`` (the table),
``results.csv``, ``transfer.csv``, ``lodo.csv``, per dataset ``roc_<dataset>.png``,
``length_<dataset>.png`` (AUROC by answer length of the top detectors) and
``fusion_weights_<dataset>.png``, ``scores_<dataset>.json`` (every answer's out-of-fold
scores), and ``results.json`` (everything; ``by_run`` holds per run
and detector the pooled AUROC with its CI and the leave-one-dataset-out AUROC, and the fusion's
paired comparison with the best single detector). ``cells/`` holds one JSON checkpoint per
unit of work (:mod:`.cells`): the same command after an interruption continues where it
stopped and writes the same files.
"""

from hallugraph.evaluation.memory import PeakRSS
from hallugraph.evaluation.protocol import evaluate
from hallugraph.evaluation.report import EvalReport

__all__ = ["EvalReport", "PeakRSS", "evaluate"]
