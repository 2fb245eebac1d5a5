"""Benchmark detectors on labeled runs: grouped splits, metrics with bootstrap CIs, transfer.

:mod:`.protocol` (:func:`evaluate`), :mod:`.bootstrap` (CIs, length-matched AUROC),
:mod:`.report` (table, files, plots), :mod:`.memory`, :mod:`.hypotheses` (the graph-topology
hypothesis test). Splits and plain metrics are :mod:`hallugraph.splits` and
:mod:`hallugraph.metrics` (the detectors use them too).

Protocol (one run = one dataset):

* **Split** (:func:`split_groups`): the traces of a run are split 60/20/20 into train /
  validation / test *by question* (``FeatureTable.groups``), so no question is on two sides,
  approximately stratified by label (each question's share of hallucinated traces), and
  deterministic for a seed.
* **Fit** every detector on the train split only. Detectors that choose hyper-parameters do so
  inside ``fit``, on the train split (the validation split is never shown to ``fit``).
* **Threshold**: the validation split only picks the decision threshold (predict
  "hallucinated" when ``score >= threshold``), the one that maximizes *balanced accuracy* on
  validation (:func:`choose_threshold`; robust to the class imbalance, which differs between
  datasets). The threshold is then applied unchanged to the test split.
* **Metrics on test** (:func:`metrics_with_ci`): AUROC and AUPR (average precision; hallucinated =
  positive class) from the scores, accuracy and F1 at the validation threshold, each with a 95 %
  percentile bootstrap CI over test items (``bootstrap`` resamples, fixed seed, the same
  resamples for every detector of a dataset; resamples with a single class are skipped).
  A metric that is undefined (a test split with one class) is NaN with a note, never a crash.
* **Length-matched AUROC** (:func:`length_matched_auroc`): AUROC over the (hallucinated,
  correct) test pairs whose answers differ by at most ``LENGTH_TOL`` tokens, with its CI over the
  same resamples and the number of pairs: what a detector knows beyond the answer's length.
* **Transfer** (several runs): a detector fitted on run A's train split, with A's validation
  threshold, scores run B's test split: one AUROC [CI] matrix per detector (the diagonal is the
  in-dataset result).

A detector that raises (in ``fit``, ``predict_proba`` or a statistic it needs) gets a row with
its error and the evaluation goes on. One that raises
:class:`~hallugraph.detectors.NotApplicable` (e.g. attribution scores never computed for the run)
is skipped on that run: no row, listed under "skipped" in the config and below the table.

Outputs in ``out_dir`` (default ``RUN/../eval`` of the first run): ``results.md`` (the table),
``results.csv``, ``results.json`` (everything, including splits and transfer),
``transfer.csv`` and one ROC plot per dataset, ``roc_<dataset>.png``.
"""

from hallugraph.evaluation.memory import PeakRSS
from hallugraph.evaluation.protocol import evaluate
from hallugraph.evaluation.report import EvalReport

__all__ = ["EvalReport", "PeakRSS", "evaluate"]
