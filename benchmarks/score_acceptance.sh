#!/bin/bash
# issue 17 acceptance check, default model (SmolLM2-135M-Instruct), CPU
set -e
cd "$(dirname "$0")/.." && mkdir -p runs/accept && cd runs/accept
export PYTHONPATH="$PWD/../../src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-../../.venv/bin/python}
echo "== $(date -u +%FT%TZ) extract"
$PY -m hallugraph extract --dataset halueval_qa_tf --num-samples 36 --out runs/tf36 --no-progress
echo "== label"
$PY -m hallugraph label runs/tf36
echo "== train"
$PY -m hallugraph train lookback_lens runs/tf36 --out detectors/lookback
echo "== 3 records (the first 3 teacher-forced HaluEval-QA answers)"
$PY - <<'PYEOF'
import json
from hallugraph.data import load_halueval_qa_teacher_forced
with open("in3.jsonl", "w") as f:
    for e in load_halueval_qa_teacher_forced(num_samples=3):
        f.write(json.dumps({"id": e.id, "question": e.question, "answer": e.answer, "context": e.context}) + "\n")
PYEOF
echo "== score"
$PY -m hallugraph score detectors/lookback --input in3.jsonl --output out3.jsonl --no-progress
$PY -c "
import json
for l in open('out3.jsonl'):
    r = json.loads(l); print(r['id'], r['hallucination_score'], r['hallucinated'], r['threshold'])"
PORT=$($PY -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
echo "== serve on port $PORT"
$PY -m hallugraph serve detectors/lookback --port $PORT > serve.log 2>&1 &
SERVER=$!
for i in $(seq 1 600); do curl -sf http://127.0.0.1:$PORT/healthz >/dev/null 2>&1 && break; sleep 1; done
curl -s http://127.0.0.1:$PORT/healthz; echo
head -1 in3.jsonl | $PY -c "import json,sys; r=json.loads(sys.stdin.read()); r.pop('id'); print(json.dumps(r))" > first.json
echo "== POST /v1/score (first record)"
curl -s -X POST http://127.0.0.1:$PORT/v1/score -H 'Content-Type: application/json' --data @first.json | tee served.json; echo
echo "== bad inputs"
curl -s -w ' HTTP %{http_code}\n' -X POST http://127.0.0.1:$PORT/v1/score -H 'Content-Type: application/json' --data '{"question": "q", "answer": ""}'
curl -s -w ' HTTP %{http_code}\n' -X POST http://127.0.0.1:$PORT/v1/score -H 'Content-Type: application/json' --data '{"question": "q", "answer": "a"}'
curl -s -w ' HTTP %{http_code}\n' -X POST http://127.0.0.1:$PORT/v1/score -H 'Content-Type: application/json' --data '{not json'
kill $SERVER
echo "== compare"
$PY -c "
import json
cli = json.loads(open('out3.jsonl').readline())
srv = json.load(open('served.json'))
d = abs(cli['hallucination_score'] - srv['hallucination_score'])
print(f\"CLI {cli['hallucination_score']!r} served {srv['hallucination_score']!r} |diff| {d:.3g}\")
assert d <= 1e-6 and cli['hallucinated'] == srv['hallucinated'] and cli['threshold'] == srv['threshold']
print('acceptance: served score equals the CLI score to 1e-6')
"
echo "== $(date -u +%FT%TZ) done"
