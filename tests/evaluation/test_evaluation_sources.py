"""``hallugraph.evaluation.sources``: the code in an evaluation cell's key, per detector."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

_DIGESTS = """
import json
from hallugraph.detectors import all_detectors, get_detector
from hallugraph.evaluation.cells import detector_identity
from hallugraph.evaluation.sources import code_digest, detector_modules

out = {}
for name in ("perplexity", "charm", "lookback_lens", "fusion"):
    ident = detector_identity(name, get_detector(name))
    out[name] = code_digest(detector_modules(ident))["sources"]
print(json.dumps(out))
"""


def _digests(src: Path) -> dict[str, str]:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _DIGESTS],
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_change_in_one_detector_recomputes_its_cells_and_the_fusions_only(tmp_path):
    """The cells' code key holds the evaluation, the statistics, the store reader and the
    detector's own import closure: editing CHARM's module must not recompute the cells of
    the other detectors (hours of CPU in the benchmark table), and must recompute its own
    and a fusion's that has it as a base (the default fusion does not: it must stay);
    editing a statistic or the cross-validation recomputes every cell."""
    import hallugraph

    src = tmp_path / "src"
    shutil.copytree(Path(hallugraph.__file__).parent, src / "hallugraph")
    before = _digests(src)
    assert len(set(before.values())) == 4
    with open(src / "hallugraph/detectors/charm_net.py", "a") as fh:
        fh.write("\n# an edit\n")
    after = _digests(src)
    assert after["charm"] != before["charm"]
    assert {k: after[k] for k in ("perplexity", "lookback_lens", "fusion")} == {
        k: before[k] for k in ("perplexity", "lookback_lens", "fusion")
    }
    with open(src / "hallugraph/detectors/lookback.py", "a") as fh:
        fh.write("\n# an edit\n")
    again = _digests(src)
    assert again["lookback_lens"] != after["lookback_lens"] and again["fusion"] != after["fusion"]
    assert again["perplexity"] == after["perplexity"] and again["charm"] == after["charm"]
    for shared in ("features/logits.py", "evaluation/cv.py", "store/reader.py"):
        with open(src / "hallugraph" / shared, "a") as fh:
            fh.write("\n# an edit\n")
        now = _digests(src)
        assert all(now[k] != again[k] for k in now), shared
        again = now


def test_module_sources_follow_imports_inside_functions_and_relative_ones(tmp_path):
    from hallugraph.evaluation.sources import _imports

    f = tmp_path / "fake.py"
    f.write_text(
        "from .base import Detector\n"
        "from hallugraph.detectors import charm, NotApplicable\n"
        "from hallugraph.features import logits\n"
        "def g():\n    import hallugraph.graphs.graph\n"
    )
    got = dict(_imports(f, "hallugraph.detectors.fake"))
    assert got["hallugraph.detectors.base"] is True
    assert got["hallugraph.detectors.charm"] is True
    assert got["hallugraph.detectors"] is True  # NotApplicable is read from the package
    assert got["hallugraph.features.logits"] is True and got["hallugraph.features"] is False
    assert got["hallugraph.graphs.graph"] is True
