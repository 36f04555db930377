import pytest
import torch

from kr_mini_llm.inference.sampling import (apply_frequency_presence_penalty, apply_repetition_penalty,
                                            filter_top_k_top_p, sample_next)


def test_top_k_keeps_exactly_the_k_largest():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=g)
    out = filter_top_k_top_p(logits, top_k=7, top_p=None)
    kept = torch.isfinite(out)
    assert kept.sum(-1).tolist() == [7] * 4
    top = logits.topk(7, -1).indices
    assert kept.gather(-1, top).all()


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = filter_top_k_top_p(probs.log(), top_k=None, top_p=0.8)
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]
    out = filter_top_k_top_p(probs.log(), top_k=None, top_p=0.81)
    assert torch.isfinite(out).tolist() == [[True, True, True, False]]
    out = filter_top_k_top_p(probs.log(), top_k=None, top_p=0.1)  # the top token always stays
    assert torch.isfinite(out).tolist() == [[True, False, False, False]]


def test_top_p_works_on_unsorted_logits():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    out = filter_top_k_top_p(logits, None, 0.7)
    p = logits.softmax(-1)[0]
    assert p[1] < 0.7 and p[1] + p[3] >= 0.7
    assert torch.isfinite(out).tolist() == [[False, True, False, True]]


def test_sampling_respects_top_k_and_top_p():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 30, generator=g).expand(2000, 30)
    draws = sample_next(logits, temperature=1.0, top_k=5, top_p=None, generator=g)
    assert set(draws.tolist()) <= set(logits[0].topk(5).indices.tolist())
    assert len(set(draws.tolist())) == 5  # all five do come up
    draws = sample_next(logits, temperature=1.0, top_k=None, top_p=0.5, generator=g)
    allowed = torch.isfinite(filter_top_k_top_p(logits[:1], None, 0.5))[0].nonzero().flatten().tolist()
    assert set(draws.tolist()) <= set(allowed)


def test_temperature_zero_is_greedy_and_seed_is_reproducible():
    logits = torch.randn(3, 20)
    assert torch.equal(sample_next(logits, 0.0, None, None, None), logits.argmax(-1))
    a = sample_next(logits, 1.0, None, None, torch.Generator().manual_seed(3))
    b = sample_next(logits, 1.0, None, None, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_repetition_penalty(penalty):
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    out = apply_repetition_penalty(logits, seen, penalty)
    assert torch.allclose(out, torch.tensor([[2.0 / penalty, -2.0 * penalty, 1.0]]))


def test_frequency_and_presence_penalty_follow_openai_formula():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 40, dtype=torch.float64, generator=g)
    counts = torch.randint(0, 4, (3, 40), generator=g).double()
    out = apply_frequency_presence_penalty(logits, counts, 0.7, -0.4)
    expected = torch.empty_like(logits)
    for b in range(3):
        for v in range(40):
            c = counts[b, v].item()
            expected[b, v] = logits[b, v] - 0.7 * c - (-0.4) * (1.0 if c > 0 else 0.0)
    torch.testing.assert_close(out, expected)
    assert apply_frequency_presence_penalty(logits, counts, 0.0, 0.0) is logits
