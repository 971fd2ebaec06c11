"""The pure helpers of the instruction-data recipes (harness.core.instructions): ROUGE-L against
hand-computed values and against the ``rouge_score`` package, Self-Instruct's filters, parsers.

    .venv/bin/pytest tests/test_instructions.py -q
"""

from __future__ import annotations

import random

import pytest

from harness.core.instructions import (
    RougePool,
    clean_generated_line,
    histogram,
    instance_problem,
    instance_verdicts,
    instruction_problem,
    lcs_length,
    looks_like_classification,
    normalise_input,
    parse_labels,
    parse_yes_no,
    rouge_l,
    rouge_tokens,
)


@pytest.mark.parametrize("cand, ref, expected", [
    # LCS "the cat on the mat" = 5 of 6 tokens each way: P = R = F = 5/6
    ("the cat sat on the mat", "the cat is on the mat", 5 / 6),
    # LCS "b d" = 2: P = 2/4, R = 2/2, F = 2 * 0.5 * 1 / 1.5 = 2/3
    ("a b c d", "b d", 2 / 3),
    # order matters: LCS of "a b c" and "c b a" is one token, P = R = 1/3
    ("a b c", "c b a", 1 / 3),
    # repeated tokens: LCS "a b" = 2, P = 2/4, R = 2/3, F = 2PR/(P+R) = 4/7
    ("a a a b", "a b b", 4 / 7),
    # case and punctuation are not tokens
    ("Hello, World!", "hello world", 1.0),
    ("x y", "z", 0.0),
    ("", "a b", 0.0),
    ("!!!", "a", 0.0),
])
def test_rouge_l_matches_hand_computed_values(cand, ref, expected):
    assert rouge_l(cand, ref) == pytest.approx(expected, abs=1e-12)
    assert rouge_l(ref, cand) == pytest.approx(expected, abs=1e-12)  # the F-measure is symmetric


def test_lcs_and_tokens():
    assert rouge_tokens("Don't STOP-me now, 42x!") == ["don", "t", "stop", "me", "now", "42x"]
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # the textbook example
    assert lcs_length([], ["a"]) == 0


def test_rouge_l_agrees_with_the_rouge_score_package():
    """Parity with Google's rouge_score (RougeScorer(['rougeL'], use_stemmer=False)), which
    Self-Instruct used, on random texts with case, punctuation, digits and repeats."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rng = random.Random(7)
    vocab = ["the", "The", "cat", "dog,", "sat", "on", "mat.", "a", "word", "42", "x-y", "Name", "list", "of", "é", "!"]
    for _ in range(300):
        a = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 12)))
        b = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 12)))
        ref = scorer.score(b, a)["rougeL"].fmeasure
        assert rouge_l(a, b) == pytest.approx(ref, abs=1e-12), (a, b)


def test_rouge_pool_finds_the_nearest_text():
    pool = RougePool(["Name a fruit.", "Sort the numbers from small to large."])
    assert pool.nearest("Sort these numbers from small to large.") == (pytest.approx(rouge_l(
        "Sort these numbers from small to large.", "Sort the numbers from small to large.")), 1)
    assert RougePool().nearest("anything") == (0.0, None)
    pool.add("Name a fruit please.")
    assert pool.nearest("name a fruit please")[1] == 2 and len(pool) == 3


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("Sort these.", "too_short"),
    ("Draw a cat with a hat.", "keyword"),
    ("Make a picture of your home town.", "keyword"),
    ("Go to the shop and buy some milk.", "keyword"),  # a two-word phrase
    ("Write a program that sorts the numbers.", "write_a_program"),
    ("- list three fruits you like", "starts_with_punctuation"),
    ("Écris une phrase courte ici.", "non_ascii_start"),
    (" ".join(["word"] * 151), "too_long"),
    ("Give the mapping of each word to its length.", None),  # "map" only as a whole word
    ("Name three fruits that are red.", None),
])
def test_instruction_filters(text, reason):
    assert instruction_problem(text) == reason


def test_length_bounds_are_parameters():
    assert instruction_problem("Double it now.", min_words=3) is None
    assert instruction_problem("Double it now.") == "too_short"  # the paper's default: more than 3 words
    assert instruction_problem("one two three four five", max_words=4) == "too_long"


def test_instance_filters():
    assert instance_problem("kite", "") == "empty_output"
    assert instance_problem("kite ", "kite") == "output_repeats_input"
    assert instance_problem("kite", "KITE") is None  # an upper-casing task's right answer
    assert instance_problem("", "kite") is None
    assert instance_problem("a", " ".join(["w"] * 151)) == "output_too_long"
    pairs = [("a", "1"), ("A ", "1"), ("b", "2"), ("b", "3"), ("c", "4")]
    assert instance_verdicts(pairs) == ["kept", "duplicate", "conflicting", "conflicting", "kept"]


def test_parsers_of_generated_text():
    assert clean_generated_line("Task 9: Name a fruit.\nTask 10: Another") == "Name a fruit."
    assert clean_generated_line("\n  9. Count the words  ") == "Count the words"
    assert clean_generated_line("Input: melon", "input") == "melon"
    assert normalise_input("none") == "" and normalise_input("Input: N/A") == "" and normalise_input("7\nmore") == "7"
    assert parse_yes_no("Yes.") is True and parse_yes_no("Answer: no, it is not") is False
    assert parse_yes_no("yesterday") is None and parse_yes_no("maybe") is None and parse_yes_no("") is None
    assert parse_labels("positive, negative or neutral") == ["positive", "negative", "neutral"]
    assert parse_labels("Answers: yes / no / Yes") == ["yes", "no"]
    assert looks_like_classification("Is this review positive or negative?")
    assert looks_like_classification("Does the second sentence follow from the first? Reply yes or no.")
    assert not looks_like_classification("Write a short poem about the sea.")


def test_histogram_bins():
    h = histogram([0.0, 0.05, 0.1, 0.95, 1.0], [0.0, 0.1, 0.5, 1.0])
    assert [b["n"] for b in h] == [2, 1, 2]  # the last bin is closed: 1.0 counts
