"""Extraction on a local Ray (2 CPUs, no dashboard) with the tiny random Llama: the same run as
in one process, whatever the workers do (die in the middle of a unit, lose their driver)."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tiny_models import TOY_QUESTIONS, make_tiny_lm

ray = pytest.importorskip(
    "ray", reason="Ray is not installed (the `distributed` extra: pip install -e '.[distributed]')"
)

from hallugraph.data import Example  # noqa: E402
from hallugraph.extract import GenerationSettings  # noqa: E402
from hallugraph.pipeline import run_extract  # noqa: E402
from hallugraph.store import TraceStore  # noqa: E402

TESTS = Path(__file__).resolve().parents[1]
SRC = TESTS.parent / "src"
EXAMPLES = [
    Example(id=f"q{i}", question=q, references=("Paris",)) for i, q in enumerate(TOY_QUESTIONS[:10])
]
KW = dict(
    model="tiny",
    dataset="toy",
    progress=False,
    examples=EXAMPLES,
    shard_size=3,
    settings=GenerationSettings(max_new_tokens=4, batch_size=2),
)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module: workers import hallugraph and tiny_models from here, and
    this module's functions travel by value. Ray's memory monitor is off: it counts the whole
    machine's memory, which other jobs on a shared machine fill."""
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)])}},
    )
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_lm):
    """The reference: the same runs in this process (raw tensors kept, and pruned)."""
    out = tmp_path_factory.mktemp("single")
    run_extract(out=out / "kept", lm=tiny_lm, **KW)
    run_extract(out=out / "lean", lm=tiny_lm, keep_tensors=False, **KW)
    return out


def assert_same_run(a: Path, b: Path, tensors: bool = True) -> None:
    """Same manifest rows (ids, order, tokens, checksums of every tensor), same tensors bit for
    bit, same statistics caches; nothing left over; ``hallugraph verify`` passes."""
    from hallugraph.features import all_statistics, compute_stats
    from hallugraph.features.verify import verify_run

    rows = [TraceStore(d).rows for d in (a, b)]
    assert rows[0] == rows[1]
    assert [r["index"] for r in rows[1]] == list(range(len(rows[1])))
    assert len({r["question_id"] for r in rows[1]}) == len(rows[1])
    if tensors:
        for x, y in zip(TraceStore(a), TraceStore(b), strict=True):
            assert x["tokens"] == y["tokens"]
            for f in ("hidden_states", "attentions"):
                np.testing.assert_array_equal(x[f].view(np.uint16), y[f].view(np.uint16))
    names = all_statistics()
    sa, sb = (compute_stats(d, names, progress=False) for d in (a, b))
    for n in names:
        np.testing.assert_array_equal(sa[n], sb[n])
    for d in (a, b):
        assert verify_run(d).ok, verify_run(d).render()
    assert sorted(p.name for p in (b / "shards").iterdir()) == sorted(
        p.name for p in (a / "shards").iterdir()
    )


def test_two_workers_make_the_single_process_run(local_ray, single, tmp_path):
    s = run_extract(out=tmp_path / "kept", workers=2, lm_factory=make_tiny_lm, **KW)
    assert s.processed == s.total == len(EXAMPLES) and s.units == (4, 4)
    assert_same_run(single / "kept", tmp_path / "kept")
    # --keep-tensors no: the workers compute the statistics of their units before pruning
    run_extract(out=tmp_path / "lean", workers=2, lm_factory=make_tiny_lm, keep_tensors=False, **KW)
    assert not list((tmp_path / "lean" / "shards").glob("*.safetensors"))
    assert_same_run(single / "lean", tmp_path / "lean", tensors=False)


def _dies_once_in_unit(marker: str):
    """A worker's model whose process exits (os._exit) while extracting q4, the first time."""
    import hallugraph.pipeline.worker as w

    real = w.capture_batch

    def capture(lm, batch, gs, prefix=()):
        if any(p.example.id == "q4" for p in batch) and not os.path.exists(marker):
            Path(marker).write_text(str(os.getpid()))
            os._exit(1)
        return real(lm, batch, gs, prefix)

    w.capture_batch = capture
    return make_tiny_lm()


def test_a_worker_killed_in_the_middle_of_a_unit_is_retried(local_ray, tiny_lm, tmp_path):
    # one trace per shard: unit 1 (q3 q4 q5) has written q3's shard when its worker dies on q4
    kw = dict(KW, max_shard_mb=1e-6, settings=GenerationSettings(max_new_tokens=4, batch_size=1))
    run_extract(out=tmp_path / "ref", lm=tiny_lm, **kw)
    marker = tmp_path / "died"
    factory = functools.partial(_dies_once_in_unit, str(marker))
    s = run_extract(out=tmp_path / "ray", workers=2, lm_factory=factory, **kw)
    assert marker.exists()  # a worker did die, in the middle of unit 1
    assert s.total == len(EXAMPLES) and s.errors == 0
    assert_same_run(tmp_path / "ref", tmp_path / "ray")


DRIVER = """
import os, sys, time
sys.path[:0] = [{src!r}, {tests!r}]
from tiny_models import make_tiny_lm
import hallugraph.pipeline.worker as w
from hallugraph.pipeline import run_extract
from hallugraph.extract import GenerationSettings
from hallugraph.data import Example

def slow_lm():  # each batch takes 0.5 s more: the driver is killed while units are running
    real = w.capture_batch
    def capture(lm, batch, gs, prefix=()):
        time.sleep(0.5)
        return real(lm, batch, gs, prefix)
    w.capture_batch = capture
    return make_tiny_lm()

import ray
ray.init(address={address!r}, runtime_env={{"env_vars": {{"PYTHONPATH": {path!r}}}}})
exs = [Example(id=i, question=q, references=("Paris",)) for i, q in {questions!r}]
run_extract(model="tiny", dataset="toy", out={out!r}, progress=False, examples=exs, shard_size=3,
            settings=GenerationSettings(max_new_tokens=4, batch_size=2), workers=2,
            lm_factory=slow_lm)
"""


def test_driver_killed_after_some_parts_then_rerun_gives_the_same_run(local_ray, single, tmp_path):
    out = tmp_path / "run"
    script = DRIVER.format(
        src=str(SRC),
        tests=str(TESTS),
        questions=[(e.id, e.question) for e in EXAMPLES],
        out=str(out),
        address=local_ray,
        path=os.pathsep.join([str(SRC), str(TESTS)]),
    )
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(list((out / "units").glob("unit_*.json"))) < 2:
            assert proc.poll() is None, "the driver ended before it could be killed"
            assert time.monotonic() < deadline, "no part file after 240 s"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    parts = list((out / "units").glob("unit_*.json"))
    assert 2 <= len(parts) < 4  # killed part-way
    kept = sum(len(json.loads(p.read_text())["rows"]) for p in parts)
    s = run_extract(out=out, workers=2, lm_factory=make_tiny_lm, **KW)
    assert s.units == (4, 4) and s.total == len(EXAMPLES)
    assert s.processed <= len(EXAMPLES) - kept  # the units done before the kill are kept
    assert_same_run(single / "kept", out)


def _fails_on_unit_2():
    """A worker whose writes of unit 2's part file fail (a full disk, say)."""
    import hallugraph.pipeline.worker as w

    real = w.write_part

    def write_part(run_dir, unit, *a):
        if unit.index == 2:
            raise OSError(28, "No space left on device")
        return real(run_dir, unit, *a)

    w.write_part = write_part
    return make_tiny_lm()


def test_an_error_in_a_unit_names_it_and_keeps_the_others(local_ray, single, tmp_path):
    from hallugraph.store import StoreError

    with pytest.raises(StoreError, match=r"unit 2 .*No space left on device.*re-run"):
        run_extract(out=tmp_path, workers=2, lm_factory=_fails_on_unit_2, **KW)
    parts = sorted(p.name for p in (tmp_path / "units").glob("unit_*"))
    assert parts[:2] == ["unit_00000.json", "unit_00001.json"] and "unit_00002.json" not in parts
    published = len(TraceStore(tmp_path))  # the units done are published (unit 3 if it ran)
    assert published == sum(
        len(json.loads((tmp_path / "units" / p).read_text())["rows"]) for p in parts
    )
    s = run_extract(out=tmp_path, workers=2, lm_factory=make_tiny_lm, **KW)
    assert s.processed == len(EXAMPLES) - published and s.total == len(EXAMPLES)
    assert_same_run(single / "kept", tmp_path)


class _StartEnv:
    """A worker object that reports the environment its process was started with."""

    def start_env(self) -> dict[str, str]:
        raw = Path("/proc/self/environ").read_bytes().split(b"\0")
        return dict(x.decode().split("=", 1) for x in raw if b"=" in x)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and glibc")
def test_workers_start_with_the_fixed_mmap_threshold(local_ray, monkeypatch):
    """The driver (pytest) was started without ``MALLOC_MMAP_THRESHOLD_``: the actors must be
    started with it (read before their ``main``, it bounds what their imports allocate), and
    with the user's own value where one is set; 0 leaves glibc's default."""
    from hallugraph.config import MALLOC_ENV, glibc
    from hallugraph.extract.distributed import RayPool

    if glibc() is None:
        pytest.skip("not glibc")
    monkeypatch.delenv(MALLOC_ENV, raising=False)
    monkeypatch.delenv("HALLUGRAPH_MMAP_THRESHOLD", raising=False)
    with RayPool(_StartEnv, 1) as pool:
        env = pool.call_one("start_env")
    assert env.get(MALLOC_ENV) == "131072"
    assert env.get("PYTHONPATH"), "the job's own env_vars are kept"
    monkeypatch.setenv("HALLUGRAPH_MMAP_THRESHOLD", "262144")
    with RayPool(_StartEnv, 1) as pool:
        assert pool.call_one("start_env").get(MALLOC_ENV) == "262144"
    monkeypatch.setenv("HALLUGRAPH_MMAP_THRESHOLD", "0")
    with RayPool(_StartEnv, 1) as pool:
        assert MALLOC_ENV not in pool.call_one("start_env")
