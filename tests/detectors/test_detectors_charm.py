"""CHARM detector: learns a signal planted in the edges of synthetic attention graphs, stays at
chance on shuffled labels, and runs end to end on the tiny run."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from hallugraph.detectors import all_detectors, get_detector
from hallugraph.detectors.charm import Charm
from hallugraph.detectors.charm_net import GraphArrays
from hallugraph.features import FeatureTable
from hallugraph.features.charm import NODE_ANSWER, NODE_META, NODE_PROMPT

FAST = dict(epochs=25, n_seeds=1)


@pytest.fixture(autouse=True)
def one_thread():
    """Small graphs on a busy machine: one torch thread is several times faster than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def synthetic_graphs(n, *, A=8, P=8, K=4, F=8, D=8, seed=0, shuffle=False, p_pos=0.5):
    """Random CHARM graphs (the layout of :mod:`hallugraph.features.charm`: ``A * K`` edge
    rows). On hallucinated graphs the prompt -> answer edges carry less weight in attention
    feature 3 (less looking back at the prompt); node features are pure noise, so the signal
    reaches the readout (over answer nodes) only through edge-aware message passing."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < p_pos).astype(np.int64)
    nodes = np.zeros((n, P + A, NODE_META + F + D), np.float32)
    edges = np.zeros((n, A * K, 2 + F), np.uint8)
    for i in range(n):
        n_p, n_a = rng.integers(2, P + 1), rng.integers(2, A + 1)
        nodes[i, :n_p, 0] = NODE_PROMPT
        nodes[i, P : P + n_a, 0] = NODE_ANSWER
        nodes[i, :n_p, 1] = rng.random(n_p) < 0.5
        real = np.r_[np.arange(n_p), P + np.arange(n_a)]
        nodes[i, real, NODE_META:] = rng.normal(size=(len(real), F + D))
        row = 0
        for a in range(n_a):
            cands = np.r_[np.arange(n_p), P + np.arange(a)]
            src = np.sort(rng.choice(cands, size=min(K, len(cands)), replace=False))
            sc = rng.uniform(0.05, 0.6, size=(len(src), F))
            sc[rng.random(sc.shape) < 0.3] = 0.0
            prompt = src < P
            sc[prompt, 3] = np.clip(sc[prompt, 3] + 0.3 * (0.5 - y[i]) + 0.15, 0.05, 1.0)
            rows = slice(row, row + len(src))
            edges[i, rows, 0], edges[i, rows, 1] = src + 1, P + a + 1
            edges[i, rows, 2:] = np.rint(255 * sc)
            row += len(src)
    if shuffle:
        y = rng.permutation(y)
    return nodes.astype(np.float16), edges, y


@pytest.fixture()
def graph_table(tiny_run, monkeypatch):
    """A FeatureTable whose CHARM statistics are given arrays (by row index)."""
    arrays = {}

    def fake_stat(self, name):
        return arrays[name][self._index[:, 1]]

    monkeypatch.setattr(FeatureTable, "stat", fake_stat)

    def make(nodes, edges):
        arrays.update(charm_nodes=nodes, charm_graph=edges)
        table = FeatureTable.from_run(tiny_run)
        n = len(nodes)
        table._index = np.stack([np.zeros(n, np.int64), np.arange(n)], 1)
        return table

    return make


def test_registered_with_its_metadata():
    cls = all_detectors()["charm"]
    assert cls.family == "graph" and set(cls.stats) == {"charm_graph", "charm_nodes"}
    assert "CHARM" in cls.paper and cls.supervised
    det = get_detector("charm")
    assert (det.hidden, det.layers, det.epochs, det.patience) == (64, 2, 75, 20)
    # the reference's seeds are separate detectors (mean +- std of their metrics), not an
    # ensemble: one network per fit by default
    assert det.n_seeds == 1


def test_prepared_graphs_give_the_batches_bit_for_bit():
    """Training gathers batches from graphs converted once (chunks of 7 here): the same tensors
    as converting each batch from the stored arrays."""
    nodes, edges, _ = synthetic_graphs(30, seed=3)
    G = GraphArrays(nodes, edges)
    mean, std = G.node_stats()
    P = G.prepare(mean, std, chunk=7)
    rng = np.random.default_rng(0)
    for idx in (np.arange(30), rng.permutation(30)[:11], np.array([29]), np.array([4, 4, 0])):
        want, got = G.batch(idx, mean, std), P.batch(idx)
        assert want.keys() == got.keys() and got["num_graphs"] == len(idx)
        for k in want:
            if k != "num_graphs":
                assert want[k].dtype == got[k].dtype, k
                assert torch.equal(want[k], got[k]), k


def test_batch_builds_the_disjoint_union():
    nodes, edges, _ = synthetic_graphs(3, seed=5)
    G = GraphArrays(nodes, edges)
    assert G.shape == (16, 32, 8, 8)
    mean, std = G.node_stats()
    g = G.batch(np.array([2, 0]), mean, std)
    real = [np.flatnonzero(nodes[i, :, 0] > 0) for i in (2, 0)]  # slots kept, in order
    n0 = len(real[0])
    assert g["x_att"].shape == (n0 + len(real[1]), 3 + 8) and g["x_act"].shape[1] == 8
    kinds = np.concatenate([nodes[i, r, 0] for i, r in zip((2, 0), real, strict=True)])
    np.testing.assert_array_equal(g["x_att"][:, 0].numpy(), kinds == 1)
    np.testing.assert_array_equal(g["pool"].numpy(), np.flatnonzero(kinds == 2))
    np.testing.assert_array_equal(g["pool_batch"].numpy(), np.flatnonzero(kinds == 2) >= n0)
    # edges of graph 2 first, node slots mapped to the batch's node indices
    src, dst = g["edge_index"].numpy()
    want = []
    for gi, (i, r) in enumerate(zip((2, 0), real, strict=True)):
        pos = {slot: n + gi * n0 for n, slot in enumerate(r)}
        for e in edges[i][edges[i, :, 1] > 0]:
            want.append((pos[e[0] - 1], pos[e[1] - 1], e[2:] / 255))
    np.testing.assert_array_equal(src, [w[0] for w in want])
    np.testing.assert_array_equal(dst, [w[1] for w in want])
    attr = g["edge_attr"].numpy()
    np.testing.assert_allclose(attr[:, :-2], np.array([w[2] for w in want]), rtol=1e-6)
    np.testing.assert_array_equal(attr[:, -2], kinds[src] == 1)  # prompt -> answer mark
    np.testing.assert_array_equal(attr[:, -1], kinds[src] == 2)


def test_conv_is_the_mean_of_edge_messages():
    """One CHARM convolution against a hand-written loop: mean over incoming edges of
    MLP([x_j, e_ji]), then MLP([x_i, m_i]); nodes without incoming edges get m = 0."""
    from hallugraph.detectors.charm_net import charm_model_class

    torch.manual_seed(0)
    net = charm_model_class()(3, 0, 2, 4, 1, 0.0)
    conv = net.convs[0]
    x, e = torch.randn(4, 4), torch.randn(3, 4)
    edge_index = torch.tensor([[0, 1, 0], [2, 2, 3]])  # 0 -> 2, 1 -> 2, 0 -> 3
    out = conv(x, edge_index, e)
    w = torch.cat([conv.msg_x.weight, conv.msg_e.weight], dim=1)

    def msg(j, k):
        return conv.msg_out(torch.cat([x[j], e[k]]) @ w.T + conv.msg_x.bias)

    m = torch.zeros(4, 4)
    m[2] = (msg(0, 0) + msg(1, 1)) / 2
    m[3] = msg(0, 2)
    want = conv.up_mlp(torch.cat([x, m], dim=1))
    torch.testing.assert_close(out, want)


def test_learns_the_planted_signal(graph_table):
    nodes, edges, y = synthetic_graphs(400, seed=1)
    X = graph_table(nodes, edges)
    tr, te = np.arange(300), np.arange(300, 400)
    det = get_detector("charm", **FAST)
    assert det.fit(X[tr], y[tr]) is det
    p = det.predict_proba(X[te])
    assert p.shape == (100,) and ((p >= 0) & (p <= 1)).all()
    assert roc_auc_score(y[te], p) >= 0.95
    assert det.score(X[te], y[te]) == pytest.approx(roc_auc_score(y[te], p))
    assert det.fit_seconds_ > 0 and len(det.history_) == 1
    assert det.history_[0]["best_epoch"] >= 0  # early stopping on a validation split


def test_is_at_chance_on_shuffled_labels(graph_table):
    aucs = []
    for seed in (11, 12, 13):
        nodes, edges, y = synthetic_graphs(360, seed=seed, shuffle=True)
        X = graph_table(nodes, edges)
        tr, te = np.arange(240), np.arange(240, 360)
        det = get_detector("charm", epochs=15, n_seeds=1, seed=seed).fit(X[tr], y[tr])
        aucs.append(det.score(X[te], y[te]))
    assert abs(np.mean(aucs) - 0.5) < 0.12, aucs
    assert all(abs(a - 0.5) < 0.25 for a in aucs), aucs


def test_one_class_gives_a_constant(graph_table):
    nodes, edges, _ = synthetic_graphs(30, seed=3)
    X = graph_table(nodes, edges)
    det = get_detector("charm").fit(X, np.zeros(30, np.int64))
    np.testing.assert_array_equal(det.predict_proba(X), 0.0)


def test_fits_and_predicts_on_the_tiny_run_deterministically(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    X = FeatureTable.from_run(run)
    det = get_detector("charm", epochs=10).fit(X, X.labels)
    p = det.predict_proba(X)
    assert p.shape == (24,) and np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    assert len(det.models_) == 1 and [h["seed"] for h in det.history_] == [0]
    again = get_detector("charm", epochs=10).fit(X, X.labels).predict_proba(X)
    np.testing.assert_allclose(again, p, rtol=1e-6)
    # n_seeds > 1: the mean of the networks' probabilities, seeds seed, seed + 1, ...
    three = get_detector("charm", epochs=10, n_seeds=3).fit(X, X.labels)
    assert len(three.models_) == 3 and [h["seed"] for h in three.history_] == [0, 1, 2]
    prepared = GraphArrays.from_table(X).prepare(three.mean_, three.std_)
    batches = Charm._batches(prepared, np.arange(24))
    one = [expit(Charm._logits(m, batches).astype(np.float64)) for m in three.models_]
    np.testing.assert_allclose(three.predict_proba(X), np.mean(one, axis=0), rtol=1e-5)
    np.testing.assert_allclose(one[0], p, rtol=1e-5)  # its first network is the one-seed fit
    np.testing.assert_allclose(again, p, rtol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        det.predict_proba(_reshaped(X))


def _reshaped(X):
    """A table whose graphs have another shape (another model)."""

    class Other:
        def stat(self, name):
            a = X.stat(name)
            return a[:, :-1] if name == "charm_graph" else a[:, 1:]

    return Other()
