"""Per-layer skip transcoders for a Llama-style model, trained on the CPU and saved in
circuit-tracer 0.5.0's on-disk format.

A transcoder of layer ``i`` reads the MLP's input (``post_attention_layernorm``'s output,
circuit-tracer's ``mlp.hook_in``) and predicts the MLP's output (``mlp.hook_out``)::

    ŷ = JumpReLU_θ(x W_encᵀ + b_enc) W_dec + b_dec + x W_skipᵀ

Modules: :mod:`.corpus` (offline training / held-out text, tokenized and cached),
:mod:`.model` (one layer: closed-form skip, BatchTopK sparse part, export), :mod:`.train`
(the loop, presets), :mod:`.checkpoint` (resume state), :mod:`.evaluate` (FVU / L0 / dead
on the exported form),
:mod:`.io` (the on-disk format), :mod:`.run` (train → export → evaluate → manifest; the CLI's),
:mod:`.legacy` (the previous dense trainer, kept as the speed baseline).

Train with ``hallugraph transcoders train --preset smollm2-135m-2h-v3``; load the set with
:func:`hallugraph.attribution.tracer.load_replacement_model`. See docs/TRANSCODERS.md.
"""

from hallugraph.attribution.transcoders.corpus import (
    TRIVIAQA_START,
    build_corpus,
    eval_texts,
    halueval_train_questions,
)
from hallugraph.attribution.transcoders.evaluate import evaluate_set, format_table, summary
from hallugraph.attribution.transcoders.io import (
    default_set_dir,
    load_set,
    random_transcoder_set,
    write_transcoder_set,
)
from hallugraph.attribution.transcoders.model import (
    SkipFit,
    SkipTranscoder,
    exported_forward,
    fit_skip,
)
from hallugraph.attribution.transcoders.run import eval_set, train_set
from hallugraph.attribution.transcoders.train import PRESETS, TrainConfig, train

__all__ = [
    "PRESETS",
    "TRIVIAQA_START",
    "SkipFit",
    "SkipTranscoder",
    "TrainConfig",
    "build_corpus",
    "default_set_dir",
    "eval_set",
    "eval_texts",
    "evaluate_set",
    "exported_forward",
    "fit_skip",
    "format_table",
    "halueval_train_questions",
    "load_set",
    "random_transcoder_set",
    "summary",
    "train",
    "train_set",
    "write_transcoder_set",
]
