"""The matcher against a direct reference implementation (`window in processed_example`), spans, windows."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.decontam.matcher import NgramMatcher, make_matcher, prepare_items, sample_windows
from core.decontam.normalize import offset_map, process, process_reference, raw_span

# Mixed case, digits, symbols, whitespace, non-ASCII letters and symbols, a lone surrogate, an expanding casefold.
ALPHABET = "abAB01 _-.,\n\té€ßİΩω½👍K\ud800"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=80), st.booleans())
def test_process_equals_the_character_definition_and_offsets_are_exact(text, casefold):
    processed = process(text, casefold)
    assert processed == process_reference(text, casefold)
    omap = offset_map(text)
    assert len(omap) == len(processed)
    for s in range(len(processed)):
        e = min(len(processed), s + 7)
        a, b = raw_span(omap, s, e)
        assert process(text[a:b], casefold) == processed[s:e]


def _mutate(rng: random.Random, text: str) -> str:
    """Insert whitespace/punctuation between characters (processing removes them again)."""
    out = []
    for ch in text:
        out.append(ch)
        if rng.random() < 0.2:
            out.append(rng.choice([" ", "\n", "  ", ",", "(", "_", "€", "½"]))
    return "".join(out)


@st.composite
def corpora(draw):
    rng = random.Random(draw(st.integers(0, 2**32)))
    alpha = "abAB0é_ Ω"
    questions = [draw(st.text(alphabet=alpha + "cdefgh", min_size=0, max_size=90)) for _ in range(draw(st.integers(1, 3)))]
    rows = []
    for r in range(draw(st.integers(1, 6))):
        segs = []
        for f in range(draw(st.integers(1, 2))):
            text = draw(st.text(alphabet=alpha, max_size=40))
            if questions and rng.random() < 0.6:
                q = rng.choice(questions)
                a = rng.randrange(len(q) + 1)
                b = rng.randrange(a, len(q) + 1)
                text += _mutate(rng, q[a:b]) + draw(st.text(alphabet=alpha, max_size=20))
            segs.append((f"f{f}", text))
        rows.append((r, segs))
    return questions, rows


def _reference(items, rows, mode: str, window: int, casefold: bool) -> set:
    """Literally `window in processed_example` for every example and window (exhaustive: every window,
    merged into maximal runs on each alignment)."""
    out = set()
    for row, segs in rows:
        for fname, raw in segs:
            t = process_reference(raw, casefold)
            tmap = offset_map(raw)
            for i, item in enumerate(items):
                q = item.processed
                if not q:
                    continue
                if mode == "sampled":
                    for w, (s, e) in enumerate(item.windows):
                        pos = t.find(q[s:e])
                        if q[s:e] in t and (s, e) not in item.windows[:w]:
                            out.add((row, fname, i, w, raw_span(item.omap, s, e), raw_span(tmap, pos, pos + e - s)))
                    continue
                m = min(window, len(q))
                by_diag: dict[int, list[int]] = {}
                for s in range(len(q) - m + 1):
                    pos = t.find(q[s:s + m])
                    while pos >= 0:
                        by_diag.setdefault(pos - s, []).append(s)
                        pos = t.find(q[s:s + m], pos + 1)
                for d, starts in by_diag.items():
                    starts.sort()
                    run = [starts[0]]
                    for s in [*starts[1:], None]:
                        if s is not None and s == run[-1] + 1:
                            run.append(s)
                            continue
                        a, b = run[0], run[-1] + m
                        out.add((row, fname, i, -1, raw_span(item.omap, a, b), raw_span(tmap, a + d, b + d)))
                        if s is not None:
                            run = [s]
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpora(), st.sampled_from(["sampled", "exhaustive"]), st.sampled_from([10, 20, 24, 45]), st.booleans())
def test_fast_matcher_agrees_with_literal_substring_reference(corpus, mode, window, casefold):
    questions, rows = corpus
    items = prepare_items([("b", f"t{i}", q) for i, q in enumerate(questions)], mode=mode, seed=1,
                          window=window, casefold=casefold)
    matcher = make_matcher(items, mode=mode, window=window, casefold=casefold)
    got = {h[:6] for h in matcher.scan(rows)}
    assert got == _reference(items, rows, mode, window, casefold)
    raw = {(r, f): t for r, segs in rows for f, t in segs}
    for row, fname, i, _w, (ea, eb), (ta, tb), text in matcher.scan(rows):
        # both raw spans process to the matched string, as long as a window or the whole question
        assert process(items[i].question[ea:eb], casefold) == process(raw[(row, fname)][ta:tb], casefold) == text
        assert len(text) >= min(window, len(items[i].processed))


def test_windows_are_reproducible_from_seed_and_task_id_and_distinct():
    text = "x" * 10 + "".join(chr(97 + i % 26) for i in range(200))
    a = sample_windows(text, seed=3, benchmark="humaneval", task_id="HumanEval/1")
    assert a == sample_windows(text, seed=3, benchmark="humaneval", task_id="HumanEval/1")
    assert a != sample_windows(text, seed=4, benchmark="humaneval", task_id="HumanEval/1")
    assert a != sample_windows(text, seed=3, benchmark="humaneval", task_id="HumanEval/2")
    assert len(a) == len(set(a)) == 3 and all(e - s == 50 for s, e in a)
    assert sample_windows("short", seed=0, benchmark="b", task_id="t") == [(0, 5)]
    assert sample_windows("", seed=0, benchmark="b", task_id="t") == []


def test_window_longer_than_gram_path_finds_match_spanning_batch_of_many_segments():
    question = "Return the sum of all even Fibonacci numbers below the given limit n, please."
    items = prepare_items([("b", "t", question)], mode="sampled", seed=0, window=50, casefold=False)
    matcher = make_matcher(items, mode="sampled", window=50, casefold=False)
    rows = [(i, [("text", f"filler row {i} " * 30)]) for i in range(300)]
    rows[137] = (137, [("text", "x = 1\n# " + question.replace(" ", "\n  ") + "\n")])
    hits = matcher.scan(rows)
    assert {h[0] for h in hits} == {137} and len(hits) == 3


def test_ngram13_matches_verbatim_question_and_reports_word_spans():
    question = "Write a function that takes a list of integers and returns the largest product of three of them."
    items = prepare_items([("b", "t", question)], mode="ngram13", seed=0, window=50, casefold=False)
    matcher = NgramMatcher(items)
    raw = "intro text. " + question.upper() + " trailing"
    hits = matcher.scan([(0, [("text", raw)]), (1, [("text", "a list of integers and returns")])])
    assert len(hits) == 1
    row, _, _, _, (ea, eb), (ta, tb), text = hits[0]
    assert row == 0 and question[ea:eb].lower() == raw[ta:tb].lower()
    assert (ea, eb) == (0, len(question) - 1)  # the final "." is not a word
    assert text.split() == question.lower().rstrip(".").split()
