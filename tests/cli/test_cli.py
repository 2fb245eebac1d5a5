"""The command line: clear messages and non-zero exits on bad input; nothing written is lost."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tiny_models import extract_toy

from hallugraph.cli import build_parser, main


def test_help_via_python_m():
    out = subprocess.run(
        [sys.executable, "-m", "hallugraph", "--help"], capture_output=True, text=True, check=True
    )
    assert "extract" in out.stdout and "run" in out.stdout


def test_extract_defaults_follow_the_seed():
    args = build_parser().parse_args(["extract", "--dataset", "triviaqa", "--out", "x"])
    assert (args.model, args.shard_size, args.dtype, args.max_new_tokens) == (
        "smollm2_135M",
        64,  # the seed's 500 traces per shard: now 64, as a unit of work is held in memory
        "float16",
        64,
    )


def test_run_evaluates_with_every_core(monkeypatch, tmp_path):
    """``hallugraph run`` hands its evaluation to ``--processes`` workers (default: the cores,
    at most 4), not one: the cells run single-threaded since the evaluation became parallel."""
    import hallugraph.evaluation as evaluation
    import hallugraph.models as models
    from hallugraph.cli import commands
    from hallugraph.cli.parser import default_processes

    assert build_parser().parse_args(["run"]).processes == default_processes() >= 1
    seen = {}

    class Report:
        cells = "0 cells"

        def to_markdown(self):
            return ""

        def failed_everywhere(self):
            return []

    def fake_evaluate(runs, names, **kw):
        seen.update(kw, runs=runs)
        return Report()

    monkeypatch.setattr(models, "load_model", lambda *a, **k: object())
    monkeypatch.setattr(commands, "cmd_extract", lambda *a, **k: 0)
    monkeypatch.setattr(commands, "cmd_label", lambda *a, **k: 0)
    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    args = build_parser().parse_args(["run", "--out", str(tmp_path), "--processes", "3"])
    assert commands.cmd_run(args) == 0
    assert seen["processes"] == 3 and len(seen["runs"]) == 3


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["extract", "--dataset", "nosuchset", "--out", "{tmp}/r"], "unknown dataset"),
        (["extract", "--dataset", "{tmp}/missing.jsonl", "--out", "{tmp}/r"], "missing.jsonl"),
        (["info", "{tmp}"], "not a hallugraph run"),
        (
            ["extract", "--dataset", "triviaqa", "--out", "{tmp}/r", "--columns", "bogus=x"],
            "bogus",
        ),
    ],
)
def test_bad_input_exits_nonzero_with_message(tmp_path, capsys, argv, needle):
    rc = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert rc == 2
    assert needle in capsys.readouterr().err


def test_incremental_with_beams_is_refused(tmp_path, capsys):
    bad = tmp_path / "d.jsonl"
    bad.write_text(json.dumps({"question": "q?"}) + "\n")
    rc = main(
        [
            "extract",
            "--dataset",
            str(bad),
            "--out",
            str(tmp_path / "r"),
            "--num-beams",
            "5",
            "--capture",
            "incremental",
        ]
    )
    assert rc == 2 and "greedy" in capsys.readouterr().err


def test_resume_with_changed_arguments_keeps_the_run(tmp_path, capsys, tiny_lm):
    from hallugraph.data import Example
    from hallugraph.extract import GenerationSettings

    exs = [Example(id="a", question="Who?", references=())]
    extract_toy(tiny_lm, tmp_path, exs, GenerationSettings(max_new_tokens=3))
    before = (tmp_path / "manifest.jsonl").read_text()
    with pytest.raises(Exception, match="other arguments"):
        extract_toy(tiny_lm, tmp_path, exs, GenerationSettings(max_new_tokens=4))
    assert (tmp_path / "manifest.jsonl").read_text() == before


# ------------------------------------------------------------- issue 15: damage and exit codes


def _copy(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "stats", ignore_errors=True)
    return run


def _flip(path, n=64):
    import struct

    raw = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", raw[:8])[0]
    for i in range(start + 100, start + 100 + n):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_flipped_shard_fails_stats_evaluate_and_verify_naming_it(tiny_run, tmp_path, capsys):
    """The acceptance check of issue 15, on the tiny run (docs/RELIABILITY.md has the real one)."""
    run = _copy(tiny_run, tmp_path)
    assert main(["verify", str(run)]) == 0
    shard = sorted((run / "shards").glob("*.safetensors"))[1]
    _flip(shard)
    capsys.readouterr()
    assert main(["stats", str(run), "--no-progress"]) == 2
    assert shard.name in capsys.readouterr().err
    argv = ["evaluate", str(run), "--detectors", "saplma_lr,lapeigvals", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "e"), "--bootstrap", "0"]) == 2
    assert shard.name in capsys.readouterr().err
    assert not (tmp_path / "e" / "results.json").exists()
    assert main(["verify", str(run)]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED" in out and shard.name in out and "checksum mismatch" in out


def test_evaluate_exits_nonzero_when_a_requested_detector_failed_everywhere(
    tiny_run, tmp_path, capsys, monkeypatch
):
    import hallugraph.evaluation.protocol as ev
    from hallugraph.detectors import Detector

    class Boom(Detector):
        name = "boom"
        family = "test"

        def fit(self, X, y):
            raise RuntimeError("kaboom")

        def predict_proba(self, X):
            raise AssertionError

    real = ev.all_detectors
    monkeypatch.setattr(ev, "all_detectors", lambda: {**real(), "boom": Boom})
    out = tmp_path / "e"
    argv = ["evaluate", str(tiny_run), "--out", str(out), "--bootstrap", "0", "--no-progress"]
    assert main([*argv, "--detectors", "perplexity,boom"]) == 1
    err = capsys.readouterr().err
    assert "failed on every run: boom" in err
    rows = json.loads((out / "results.json").read_text())["results"]
    assert {r["detector"] for r in rows} == {"perplexity", "boom"}  # the table is still written
    assert main([*argv, "--detectors", "perplexity"]) == 0


def test_info_on_a_lost_shard_exits_nonzero(tiny_run, tmp_path, capsys):
    run = _copy(tiny_run, tmp_path)
    shard = sorted((run / "shards").glob("*.safetensors"))[0]
    shard.unlink()
    assert main(["info", str(run)]) == 2
    err = capsys.readouterr().err
    assert shard.name in err and "missing" in err and "--keep-tensors no" not in err


@pytest.mark.parametrize("n", ["0", "-3"])
def test_num_samples_below_one_is_refused(tmp_path, capsys, n):
    with pytest.raises(SystemExit) as err:
        main(["extract", "--dataset", "triviaqa", "--out", str(tmp_path / "r"), "--num-samples", n])
    assert err.value.code == 2 and "at least 1" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_out_pointing_to_a_file_is_a_message_not_a_traceback(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "q?"}) + "\n")
    assert main(["extract", "--dataset", str(data), "--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err and f.read_text() == "x"


def test_non_utf8_dataset_names_the_file(tmp_path, capsys):
    data = tmp_path / "latin1.jsonl"
    data.write_bytes(b'{"question": "Caf\xe9?"}\n')  # latin-1, not UTF-8
    assert main(["extract", "--dataset", str(data), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "latin1.jsonl" in err and "not UTF-8" in err
