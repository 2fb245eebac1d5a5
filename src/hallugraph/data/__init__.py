"""Benchmark data: the built-in benchmarks and custom JSONL/CSV files, as :class:`Example` lists.

:mod:`.example` (the record and file helpers), :mod:`.builtin` (TriviaQA, TruthfulQA,
HaluEval-QA), :mod:`.custom` (your own file with a column mapping; :func:`load_dataset` picks
either). Only the standard library is used.
"""

from hallugraph.data.builtin import (
    DATASETS,
    load_halueval_qa,
    load_halueval_qa_teacher_forced,
    load_triviaqa,
    load_truthfulqa,
)
from hallugraph.data.custom import load_custom, load_dataset, parse_columns
from hallugraph.data.example import FIELDS, DatasetError, Example

__all__ = [
    "DATASETS",
    "FIELDS",
    "DatasetError",
    "Example",
    "load_custom",
    "load_dataset",
    "load_halueval_qa",
    "load_halueval_qa_teacher_forced",
    "load_triviaqa",
    "load_truthfulqa",
    "parse_columns",
]
