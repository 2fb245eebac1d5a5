"""The prefix-cached decoder's first pass: each sequence's own attention rows, gathered layer by
layer, equal those cut from the padded maps; and the padded maps of every layer are never held
together (issue 16: one long prompt in a batch made the peak memory grow with the run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hallugraph.extract.decoding import PrefixDecoder

TESTS = Path(__file__).resolve().parents[1]


def _reference_own_rows(at: torch.Tensor, key_mask: torch.Tensor, b: int, s: int, p: int):
    """What the decoder stored before issue 16, from the padded maps ``[L, B, heads, n, p+n]``."""
    width = at.shape[3]
    block = at[:, b, :, width - s :][..., key_mask[b]]  # [L, heads, s, p+s]
    r, c = torch.meshgrid(torch.arange(s), torch.arange(p + s), indexing="ij")
    return block[..., c <= r + p]


@torch.inference_mode()
def test_gathered_rows_equal_padded_maps(tiny_lm):
    vocab = tiny_lm.model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, vocab, (6,), generator=g).tolist()
    dec = PrefixDecoder(tiny_lm.model, prefix)
    suffixes = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in (3, 17, 1, 9)]
    seen = {}
    forward = dec._forward

    def both(ids, pos, kv, T, key_mask, rows=None, own=None):
        hs_ref, at = forward(ids, pos, kv.clone(), T, key_mask, rows)
        seen.update(hs_ref=hs_ref, at=at, key_mask=key_mask)
        return forward(ids, pos, kv, T, key_mask, rows, own)

    dec._forward = both
    hs, own, _, _, _ = dec._first_pass(suffixes, 2)
    assert torch.equal(hs, seen["hs_ref"])
    assert len(own) == len(suffixes)
    for b, suffix in enumerate(suffixes):
        ref = _reference_own_rows(seen["at"], seen["key_mask"], b, len(suffix), len(prefix))
        assert own[b].shape == ref.shape
        assert torch.equal(own[b], ref)  # bit-identical: the same cells, only gathered earlier


_PEAK_SCRIPT = """
import json, sys, torch
from tiny_models import make_tiny_lm
from hallugraph.extract.decoding import PrefixDecoder

L, B, P, LONG = {layers}, 8, 8, 400
lm = make_tiny_lm(layers=L)
cfg = lm.model.config
g = torch.Generator().manual_seed(0)
prefix = torch.randint(0, cfg.vocab_size, (P,), generator=g).tolist()
dec = PrefixDecoder(lm.model, prefix)
prompts = [prefix + torch.randint(0, cfg.vocab_size, (5,), generator=g).tolist()] * (B - 1)
prompts.append(prefix + torch.randint(0, cfg.vocab_size, (LONG,), generator=g).tolist())
dec.decode(prompts[:2], 2, [0], 0)  # warm-up: lazy imports, kernels

def status(key):
    with open("/proc/self/status") as fh:
        return next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith(key + ":"))

with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # reset the peak (VmHWM) to the current resident size
before = status("VmRSS")
dec.decode(prompts, 2, [0], 0)
layer = B * cfg.num_attention_heads * LONG * (P + LONG) * 4  # one layer's padded fp32 maps
print(json.dumps({{"peak": status("VmHWM") - before, "layer": layer, "layers": L}}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_first_pass_never_holds_every_layers_padded_maps():
    """A batch of 7 short prompts and one of 400 tokens, on a 24-layer tiny Llama: one layer's
    padded attention maps are 20 MB. Holding those of every layer (then stacked: 51 layers'
    worth measured before the fix) fails; the decoder holds one layer's scores and
    probabilities at a time (about 5 layers' worth measured, allocator slack included)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), *sys.path]))
    env.update(OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT.format(layers=24)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert m["peak"] < m["layers"] / 2 * m["layer"], (
        f"decoding one batch raised the peak by {m['peak'] / 2**20:.0f} MiB, "
        f"{m['peak'] / m['layer']:.1f} layers of padded attention maps "
        f"({m['layer'] / 2**20:.0f} MiB each, {m['layers']} layers)"
    )
