"""Unit tests of the decoding pieces: filters, penalties, the inverse-CDF draw, text tracking."""

from __future__ import annotations

import math

import pytest
import torch

from goushi.errors import GoushiError
from goushi.generation.options import FRESH_SEED_LIMIT, MAX_SAMPLES, SEED_LIMIT, SampleConfig, fresh_seed
from goushi.generation.processors import (
    NgramBan,
    ban_ngrams,
    draw,
    repetition_penalty,
    sort_descending,
    top_k_top_p_min_p,
)
from goushi.generation.text import TextTracker


def survivors(logits: torch.Tensor) -> list[list[int]]:
    return [torch.isfinite(row).nonzero().flatten().tolist() for row in logits]


def test_top_k_keeps_exactly_k_with_ties_broken_by_lower_id():
    logits = torch.tensor([[1.0, 3.0, 3.0, 3.0, 2.0, 3.0]])
    assert survivors(top_k_top_p_min_p(logits, 2, 1.0, 0.0)) == [[1, 2]]
    assert survivors(top_k_top_p_min_p(logits, 1, 1.0, 0.0)) == [[1]]
    assert survivors(top_k_top_p_min_p(logits, 5, 1.0, 0.0)) == [[1, 2, 3, 4, 5]]
    # k >= vocabulary keeps everything
    assert survivors(top_k_top_p_min_p(logits, 6, 1.0, 0.0)) == [list(range(6))]


def test_top_k_exact_count_on_random_rows_with_many_ties():
    g = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 4, (16, 50), generator=g).float()  # heavy ties
    for k in (1, 3, 7, 20):
        out = top_k_top_p_min_p(logits, k, 1.0, 0.0)
        for row, kept in zip(logits, survivors(out), strict=True):
            assert len(kept) == k
            dropped = [i for i in range(50) if i not in kept]
            # every survivor scores >= every dropped token; among equal scores lower ids survive
            assert min(row[kept]) >= max(row[dropped])
            edge = min(row[kept])
            tied_dropped = [i for i in dropped if row[i] == edge]
            if tied_dropped:
                assert max(i for i in kept if row[i] == edge) < min(tied_dropped)


def test_sort_descending_is_torch_stable_sort_bit_for_bit():
    """The filters' sort (numpy's, on keys) gives what torch.sort(descending, stable) gives: values and order, ties
    by lower id, whatever the scores: ties, -inf, +-0.0, NaN, subnormals, several rows."""
    gen = torch.Generator().manual_seed(0)
    nan, inf = float("nan"), float("inf")
    odd = [[0.0, -0.0, 1.0, 1.0, -inf, -1.0, -inf, 0.0, -0.0, 3.0, inf, nan, -nan, 1e-45, -1e-45, nan, 3.0]]
    cases = [torch.randn(4, 6000, generator=gen), torch.tensor(odd), torch.randint(-3, 3, (3, 500), generator=gen).float(),
             torch.randn(2, 700, generator=gen).masked_fill(torch.rand(2, 700, generator=gen) < 0.5, -inf),
             torch.randn(1, 1, generator=gen)]
    for x in cases:
        values, order = sort_descending(x)
        want_values, want_order = torch.sort(x, dim=-1, descending=True, stable=True)
        assert torch.equal(order, want_order) and torch.equal(values.view(torch.int32), want_values.view(torch.int32))


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.1, 0.5, 0.15, 0.25]])
    logits = probs.log()
    assert survivors(top_k_top_p_min_p(logits, 0, 0.45, 0.0)) == [[1]]
    assert survivors(top_k_top_p_min_p(logits, 0, 0.7, 0.0)) == [[1, 3]]
    assert survivors(top_k_top_p_min_p(logits, 0, 0.8, 0.0)) == [[1, 2, 3]]
    assert survivors(top_k_top_p_min_p(logits, 0, 0.95, 0.0)) == [[0, 1, 2, 3]]


def test_top_p_brute_force_on_random_distributions():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(20, 30, generator=g) * 2
    probs = logits.softmax(-1)
    for p in (0.1, 0.33, 0.6, 0.9, 0.99):
        for row, kept in zip(probs, survivors(top_k_top_p_min_p(logits, 0, p, 0.0)), strict=True):
            mass = row[kept].sum().item()
            assert mass >= p - 1e-6  # reaches p
            assert mass - row[kept].min().item() < p  # without its least likely token it would not
            others = [i for i in range(30) if i not in kept]
            assert not others or row[kept].min() >= row[others].max()  # the most likely ones


def test_min_p_and_filters_always_keep_the_best_token():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert survivors(top_k_top_p_min_p(logits, 0, 1.0, 0.4)) == [[0, 1]]  # 0.3 >= 0.4 * 0.5; 0.15 < 0.2
    assert survivors(top_k_top_p_min_p(logits, 0, 1.0, 1.0)) == [[0]]
    assert survivors(top_k_top_p_min_p(logits, 0, 1e-9, 0.0)) == [[0]]


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0, 0.0]])
    seen = torch.tensor([[True, True, False, False, True]])
    out = repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 2.0, -2.0, 0.0]]
    assert repetition_penalty(logits, seen, 1.0) is logits


def test_ngram_ban():
    ban = NgramBan(3, [5, 6, 7, 5])
    assert ban.banned() == set()  # (7, 5) never seen before
    ban.add(6)
    assert ban.banned() == {7}  # 5 6 -> 7 would repeat "5 6 7"
    fork = ban.copy()
    fork.add(8)
    assert ban.banned() == {7} and fork.banned() == set()
    one = NgramBan(1, [3, 4])
    logits = ban_ngrams(torch.zeros(2, 10), [ban, one])
    assert survivors(logits) == [[i for i in range(10) if i != 7], [i for i in range(10) if i not in (3, 4)]]


def test_draw_follows_the_cdf_and_never_picks_impossible_tokens():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0]] * 4)
    u = torch.tensor([0.0, 0.49, 0.5, 0.999999], dtype=torch.float32)
    assert draw(probs, u).tolist() == [1, 1, 3, 3]
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([[0.2, 0.0, 0.8]]).expand(20000, 3)
    picks = draw(probs, torch.rand(20000, generator=g, dtype=torch.float32))
    assert (picks != 1).all()
    assert abs((picks == 2).float().mean().item() - 0.8) < 0.02


# ---- text tracking --------------------------------------------------------------------------------
def pushes(chunks: list[bytes], stop: list[str]) -> tuple[list[str], str, bool]:
    tracker = TextTracker(chunks, stop)
    deltas, stopped = [], False
    for i in range(len(chunks)):
        d, stopped = tracker.push(i)
        deltas.append(d)
        if stopped:
            break
    if not stopped:
        deltas.append(tracker.finish())
    return deltas, tracker.text, stopped


def test_split_characters_are_held_back_until_complete():
    data = "中文".encode()
    deltas, text, _ = pushes([data[:1], data[1:4], data[4:5], data[5:]], [])
    assert deltas == ["", "中", "", "文", ""]
    assert text == "中文"


def test_unfinished_character_at_the_end_is_dropped_not_garbled():
    deltas, text, _ = pushes([b"ok", "中".encode()[:2]], [])
    assert "".join(deltas) == text == "ok"


def test_stop_string_spanning_tokens_is_cut_and_never_shown():
    chunks = [s.encode() for s in ["今天", "很好。", "\n明天"]]
    deltas, text, stopped = pushes(chunks, ["。\n"])
    assert stopped and text == "今天很好"
    assert deltas == ["今天", "很好", ""]  # "。" was held back: it might have started the stop string


def test_held_back_prefix_is_released_when_no_stop_follows():
    chunks = [s.encode() for s in ["a。", "b", "。"]]
    deltas, text, stopped = pushes(chunks, ["。\n", "xyz"])
    assert not stopped and text == "a。b。"
    assert deltas == ["a", "。b", "", "。"]


def test_earliest_stop_string_wins_and_stop_inside_one_token():
    deltas, text, stopped = pushes([b"abcSTOPdefEND"], ["END", "STOP"])
    assert stopped and text == "abc" and deltas == ["abc"]


# ---- options --------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value,needle", [
    ("temperature", -0.1, "--temperature"),
    ("temperature", math.nan, "--temperature"),
    ("top_p", 0.0, "(0, 1]"),
    ("top_p", 1.5, "--top-p"),
    ("top_k", -1, "--top-k"),
    ("top_k", 2.5, "--top-k"),
    ("min_p", 2.0, "--min-p"),
    ("num_beams", 0, "--num-beams"),
    ("repetition_penalty", 0.0, "--repetition-penalty"),
    ("no_repeat_ngram_size", -1, "--no-repeat-ngram-size"),
    ("max_new_tokens", 5000, "[1, 4096]"),
    ("max_new_tokens", 0, "--max-new-tokens"),
    ("min_new_tokens", 300, "--min-new-tokens"),
    ("num_samples", 0, "--num-samples"),
    ("strategy", "nucleus", "greedy, sample, beam"),
    ("seed", -3, "--seed"),
    ("stop", [""], "--stop"),
    ("top_n", -1, "--top-n"),
    ("early_stopping", "yes", "--early-stopping"),
])
def test_bad_options_name_the_option_and_range(field, value, needle):
    with pytest.raises(GoushiError, match=None) as e:
        SampleConfig(**{field: value}).validate()
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_one_seed_range_for_every_caller():
    """Seeds in [0, SEED_LIMIT) pass, and seed + k of the last sample still seeds torch; fresh seeds stay below
    FRESH_SEED_LIMIT, which a page or a JSON client keeps exact (every seed the API and the page took before,
    below 2**62 and 2**31, still passes)."""
    for seed in (0, 2**31 - 1, 2**62 - 1, SEED_LIMIT - 1):
        assert SampleConfig(seed=seed, num_samples=MAX_SAMPLES).validate().seed == seed
    torch.Generator().manual_seed(SEED_LIMIT - 1 + MAX_SAMPLES - 1)
    with pytest.raises(GoushiError, match="--seed"):
        SampleConfig(seed=SEED_LIMIT).validate()
    assert FRESH_SEED_LIMIT <= SEED_LIMIT and float(FRESH_SEED_LIMIT - 1) == FRESH_SEED_LIMIT - 1
    assert all(0 <= fresh_seed() < FRESH_SEED_LIMIT for _ in range(100))


def test_beam_samples_cannot_exceed_beams_and_good_options_pass():
    with pytest.raises(GoushiError, match="--num-samples"):
        SampleConfig(strategy="beam", num_beams=2, num_samples=3).validate()
    cfg = SampleConfig(temperature=0, stop="。", top_k=5, top_p=0.5).validate()
    assert cfg.stop == ["。"] and cfg.is_greedy
