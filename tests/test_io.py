import json
import math

import numpy as np
import pytest

from hallugraph import io


def test_atomic_write_replaces_and_leaves_no_tmp(tmp_path):
    p = tmp_path / "a.json"
    io.atomic_write_json(p, {"x": np.float32(1.5), "y": [np.int64(2)], "z": math.nan})
    assert json.loads(p.read_text()) == {"x": 1.5, "y": [2], "z": None}
    io.atomic_write_text(p, "new\n")
    assert p.read_text() == "new\n"
    assert list(tmp_path.iterdir()) == [p]


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "a.txt"
    io.atomic_write_text(p, "old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", boom)
    with pytest.raises(OSError):
        io.atomic_write_text(p, "new")
    assert p.read_text() == "old"
    assert list(tmp_path.iterdir()) == [p]


def test_clean_tmp(tmp_path):
    (tmp_path / ".x.json.1.0.tmp").write_text("partial")
    (tmp_path / "keep.json").write_text("{}")
    removed = io.clean_tmp(tmp_path)
    assert [r.name for r in removed] == [".x.json.1.0.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]


def test_atomic_write_safetensors_round_trip_and_no_tmp(tmp_path):
    from safetensors.numpy import load_file

    p = tmp_path / "a.safetensors"
    arrays = {"x": np.arange(6, dtype=np.float16).reshape(2, 3), "y": np.array([1, 2])}
    io.atomic_write_safetensors(p, arrays, {"k": "v"})
    back = load_file(str(p))
    assert set(back) == {"x", "y"} and np.array_equal(back["x"], arrays["x"])
    assert list(tmp_path.iterdir()) == [p]


def test_save_png_writes_a_png_atomically_in_a_new_folder(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    try:
        ax.plot([0, 1], [1, 0])
        p = io.save_png(fig, tmp_path / "new" / "f.png", dpi=50)
        assert p == tmp_path / "new" / "f.png"
        old = p.read_bytes()
        assert old[:8] == b"\x89PNG\r\n\x1a\n"
        assert list(p.parent.iterdir()) == [p]

        def boom(*a, **k):
            raise OSError("disk full")

        monkeypatch.setattr(io.os, "replace", boom)  # a failed write keeps the old figure
        with pytest.raises(OSError):
            io.save_png(fig, p, dpi=80)
        assert p.read_bytes() == old and list(p.parent.iterdir()) == [p]
    finally:
        plt.close(fig)
