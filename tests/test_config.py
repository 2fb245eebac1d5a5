"""``hallugraph.config``: the mmap threshold an extraction asks glibc for (issue 16)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hallugraph.config import MALLOC_ENV, glibc, heap_env, mmap_threshold

linux_glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or glibc() is None, reason="glibc and /proc"
)


def test_the_threshold_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("HALLUGRAPH_MMAP_THRESHOLD", raising=False)
    assert mmap_threshold() == 128 * 1024
    monkeypatch.setenv("HALLUGRAPH_MMAP_THRESHOLD", " 4194304 ")
    assert mmap_threshold() == 4 << 20
    for bad in ("128k", "-1", ""):
        monkeypatch.setenv("HALLUGRAPH_MMAP_THRESHOLD", bad)
        with pytest.raises(ValueError, match="HALLUGRAPH_MMAP_THRESHOLD"):
            mmap_threshold()


@linux_glibc
def test_heap_env_keeps_the_users_value_and_is_empty_for_zero(monkeypatch):
    monkeypatch.delenv("HALLUGRAPH_MMAP_THRESHOLD", raising=False)
    monkeypatch.delenv(MALLOC_ENV, raising=False)
    assert heap_env() == {MALLOC_ENV: "131072"}
    monkeypatch.setenv(MALLOC_ENV, "65536")
    assert heap_env() == {MALLOC_ENV: "65536"}
    monkeypatch.setenv("HALLUGRAPH_MMAP_THRESHOLD", "0")
    assert heap_env() == {}


_SCRIPT = """
import sys
from pathlib import Path
started = [x for x in Path("/proc/self/environ").read_bytes().split(b"\\0") if x]
print(any(x.startswith(b"MALLOC_MMAP_THRESHOLD_=") for x in started), flush=True)
if len(sys.argv) > 1:
    sys.argv[1:] = sys.argv[2:]  # what hallugraph's command line would parse
    from hallugraph.cli import entry
    entry()
from hallugraph.config import restart_with_bounded_heap
restart_with_bounded_heap()
import os, subprocess
probe = "import os; print('MALLOC_MMAP_THRESHOLD_' in os.environ)"
child = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
child = child.stdout.strip()
print("returned", "MALLOC_MMAP_THRESHOLD_" in os.environ, child, flush=True)
"""


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    drop = (MALLOC_ENV, "HALLUGRAPH_MMAP_THRESHOLD")
    base = {k: v for k, v in os.environ.items() if k not in drop}
    return subprocess.run(
        [sys.executable, "-c", _SCRIPT, *args],
        env={**base, "PYTHONPATH": os.pathsep.join(sys.path), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@linux_glibc
def test_restart_starts_the_same_command_again_with_the_variable_once():
    """The variable must be in the environment the process *started* with (glibc reads it
    before ``main``): the same command runs again, once, and then carries on."""
    out = _run()
    assert out.returncode == 0, out.stderr
    # restarted once; then the variable is gone from the environment its children inherit
    # (the evaluation's workers of `hallugraph run` must not pay the threshold's page faults)
    assert out.stdout.split() == ["False", "True", "returned", "False", "False"]
    out = _run(HALLUGRAPH_MMAP_THRESHOLD="0")  # 0: glibc's own threshold, no restart
    assert out.stdout.split() == ["False", "returned", "False", "False"]
    out = _run(MALLOC_MMAP_THRESHOLD_="65536")  # the user's own: kept, for the children too
    assert out.stdout.split() == ["True", "returned", "True", "True"]


@linux_glibc
def test_the_extraction_commands_restart_and_the_others_do_not(tmp_path):
    missing = str(tmp_path / "no-such-run")
    out = _run("cli", "merge", missing)
    assert out.stdout.split() == ["False", "True"] and out.returncode == 2, out
    assert "no-such-run" in out.stderr
    out = _run("cli", "info", missing)
    assert out.stdout.split() == ["False"] and out.returncode == 2, out


def test_a_bad_threshold_is_a_clear_error_before_any_work(tmp_path):
    out = _run("cli", "merge", str(tmp_path), HALLUGRAPH_MMAP_THRESHOLD="lots")
    assert out.returncode == 2
    assert "HALLUGRAPH_MMAP_THRESHOLD" in out.stderr and "'lots'" in out.stderr


_MMAP_SCRIPT = """
import json, sys
from hallugraph.config import bound_heap

def rss():
    with open("/proc/self/status") as fh:
        return next(int(ln.split()[1]) for ln in fh if ln.startswith("VmRSS:"))

bound = bound_heap(int(sys.argv[1]))
warm = b"\\x01" * (8 << 20)
del warm  # glibc's own threshold rises to 8 MiB when a mapped block this size is freed
blocks, pins = [], []
for _ in range(100):  # 200 MiB of 2-MiB blocks (tensor-sized), each followed by a live block
    blocks.append(b"\\x01" * (2 << 20))  # that outlives it: free() cannot shrink the heap
    pins.append(b"\\x01" * (256 << 10))
before = rss()
del blocks
print(json.dumps({"bound": bound, "freed_kB": before - rss()}))
"""


def _freed_by_free(threshold: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _MMAP_SCRIPT, str(threshold)],
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path)),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_bound_heap_keeps_tensor_sized_blocks_out_of_the_heap():
    """Under glibc's own (rising) mmap threshold, tensor-sized blocks come from the heap and stay
    resident when freed; the extraction workers fix the threshold (``bound_heap``, issue 16) so
    that they are mapped and given back by ``free`` itself."""
    bounded = _freed_by_free(1 << 20)
    if not bounded["bound"]:
        pytest.skip("not glibc")
    assert bounded["freed_kB"] > 150 * 1024, bounded
    default = _freed_by_free(0)  # 0: glibc's threshold left alone
    assert not default["bound"] and default["freed_kB"] < 50 * 1024, default
