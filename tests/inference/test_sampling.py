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


# -- every accepted setting gives a token, however extreme ----------------------------------------
from hypothesis import given, settings, strategies as st  # noqa: E402

from kr_mini_llm.inference.sampling import check_sampling  # noqa: E402


@pytest.mark.parametrize("temperature, top_p, penalty", [
    (1e-39, None, 1.0),    # logits / temperature overflowed to inf, inf - inf = NaN
    (1.0, 1e-300, 1.0),    # 1e-300 is 0 in float32: top-p dropped every token
    (1.0, None, 1e-40),    # the penalty pushed seen logits to inf
    (5e-324, 1e-300, 1e-40),
])
def test_extreme_settings_still_give_a_token(temperature, top_p, penalty):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=g) * 30
    seen = torch.zeros(3, 50, dtype=torch.bool)
    seen[:, :25] = True
    penalised = apply_repetition_penalty(logits, seen, penalty)
    assert torch.isfinite(penalised).all()
    out = sample_next(penalised, temperature, None, top_p, g)
    assert out.shape == (3,) and ((0 <= out) & (out < 50)).all()
    if temperature < 1e-30 or (top_p is not None and top_p < 1e-30):
        assert torch.equal(out, penalised.argmax(-1))  # only the top token is left


def test_a_tiny_top_p_keeps_the_top_token():
    logits = torch.tensor([[0.0, 3.0, 1.0]])
    assert torch.isfinite(filter_top_k_top_p(logits, None, 1e-300)).tolist() == [[False, True, False]]


def test_logits_without_a_finite_top_are_a_clear_error():
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="logits are NaN or infinite"):
            sample_next(torch.tensor([[0.0, bad]]), 1.0, None, None, None)


floats_in = lambda lo, hi, **kw: st.floats(lo, hi, allow_nan=False, allow_subnormal=True, **kw)  # noqa: E731


@settings(max_examples=150, deadline=None)
@given(temperature=st.one_of(st.just(0.0), floats_in(0.0, 2.0)),
       top_k=st.one_of(st.none(), st.integers(1, 80)),
       top_p=st.one_of(st.none(), floats_in(0.0, 1.0, exclude_min=True)),
       penalty=floats_in(0.0, 10.0, exclude_min=True),
       frequency=floats_in(-2.0, 2.0), presence=floats_in(-2.0, 2.0),
       scale=st.sampled_from([1e-30, 1.0, 100.0, 1e4]), seed=st.integers(0, 2**32))
def test_every_accepted_setting_gives_a_valid_token(temperature, top_k, top_p, penalty, frequency, presence,
                                                    scale, seed):
    check_sampling(temperature, top_k, top_p, penalty)  # the generator's own check accepts it
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 64, generator=g) * scale
    seen = torch.rand(2, 64, generator=g) < 0.5
    counts = torch.randint(0, 5, (2, 64), generator=g).float()
    logits = apply_frequency_presence_penalty(apply_repetition_penalty(logits, seen, penalty), counts,
                                              frequency, presence)
    out = sample_next(logits, temperature, top_k, top_p, g)
    assert out.dtype == torch.long and ((0 <= out) & (out < 64)).all()
    if top_k is not None:  # the pick is among the k largest (ties at the k-th included)
        kth = logits.topk(min(top_k, 64), -1).values[:, -1]
        assert (logits.gather(-1, out[:, None])[:, 0] >= kth).all()
