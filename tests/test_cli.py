"""The command line: clear messages and non-zero exits on bad input; nothing written is lost."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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
        500,
        "float16",
        64,
    )


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
    from hallugraph.datasets import Example
    from hallugraph.extract import GenerationSettings
    from hallugraph.pipeline import run_extract

    exs = [Example(id="a", question="Who?", references=())]
    run_extract(
        model="tiny",
        dataset="toy",
        out=tmp_path,
        lm=tiny_lm,
        progress=False,
        examples=exs,
        settings=GenerationSettings(max_new_tokens=3),
    )
    before = (tmp_path / "manifest.jsonl").read_text()
    with pytest.raises(Exception, match="other arguments"):
        run_extract(
            model="tiny",
            dataset="toy",
            out=tmp_path,
            lm=tiny_lm,
            progress=False,
            examples=exs,
            settings=GenerationSettings(max_new_tokens=4),
        )
    assert (tmp_path / "manifest.jsonl").read_text() == before
