"""A seeded hypothesis fuzz of the three mixed ops against the pure-PyTorch reference: values and gradients
over random shapes, layouts, per-sample or shared weights, slot kinds and strides (float64, derandomised)."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dartscc_fast import ops, reference

FUZZ = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
TOL = dict(atol=1e-9, rtol=1e-8)


def _randn(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _maybe_strided(t, transpose):
    # the same values in another memory layout (channels-last-like for 4-d, a transpose for 2-d and 3-d)
    if not transpose or t.dim() < 2:
        return t
    if t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


def _grads(y, inputs, g):
    return torch.autograd.grad(y, inputs, g, allow_unused=True)


def _assert_grads(a, b, inputs):
    for ga, gb, t in zip(a, b, inputs):
        ga = torch.zeros_like(t) if ga is None else ga
        gb = torch.zeros_like(t) if gb is None else gb
        torch.testing.assert_close(ga, gb, **TOL)


@FUZZ
@given(seed=st.integers(0, 2 ** 31 - 1), k=st.integers(1, 5), n=st.integers(1, 4),
       rest=st.lists(st.integers(1, 4), min_size=0, max_size=3), per_sample=st.booleans(), strided=st.booleans())
def test_mixed_sum_matches_the_reference(seed, k, n, rest, per_sample, strided):
    gen = torch.Generator().manual_seed(seed)
    shape = (n, *rest)
    outs = [_maybe_strided(_randn(gen, *shape), strided).requires_grad_() for _ in range(k)]
    w = _randn(gen, *((n, k) if per_sample else (k,))).requires_grad_()
    y = ops.mixed_sum(outs, w)
    r = reference.mixed_sum(outs, w)
    torch.testing.assert_close(y, r, **TOL)
    g = _randn(gen, *shape)
    _assert_grads(_grads(y, outs + [w], g), _grads(r, outs + [w], g), outs + [w])


@FUZZ
@given(seed=st.integers(0, 2 ** 31 - 1), k=st.integers(1, 5), n=st.integers(0, 6),
       rest=st.lists(st.integers(1, 4), min_size=1, max_size=3), per_sample=st.booleans(), one_hot=st.booleans())
def test_hard_mixed_sum_matches_the_reference(seed, k, n, rest, per_sample, one_hot):
    gen = torch.Generator().manual_seed(seed)
    index = torch.randint(0, k, (n,), generator=gen)
    if one_hot and per_sample:  # as hard Gumbel weights are: the drawn op's one-hot
        w = torch.nn.functional.one_hot(index, k).double()
    elif one_hot:  # shared weights: one op drawn for the whole batch
        drawn = int(torch.randint(0, k, (), generator=gen))
        index = torch.full((n,), drawn, dtype=torch.long)
        w = torch.nn.functional.one_hot(torch.tensor(drawn), k).double()
    else:
        w = _randn(gen, *((n, k) if per_sample else (k,)))
    w = w.requires_grad_()
    counts = torch.bincount(index, minlength=k).tolist()
    outs = [_randn(gen, c, *rest).requires_grad_() for c in counts]
    y = ops.hard_mixed_sum(outs, w, index)
    r = reference.hard_mixed_sum(outs, w, index)
    torch.testing.assert_close(y, r, **TOL)
    if n:
        g = _randn(gen, n, *rest)
        _assert_grads(_grads(y, outs + [w], g), _grads(r, outs + [w], g), outs + [w])


SLOTS = ["param", "none", "identity", "max_pool", "avg_pool"]


@FUZZ
@given(seed=st.integers(0, 2 ** 31 - 1), prims=st.lists(st.sampled_from(SLOTS), min_size=1, max_size=5),
       stride=st.sampled_from([1, 2]), n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(1, 6),
       w_=st.integers(1, 6), per_sample=st.booleans(), channels_last=st.booleans(), eval_stats=st.booleans())
def test_mixed_op_free_matches_the_reference(seed, prims, stride, n, c, h, w_, per_sample, channels_last,
                                             eval_stats):
    if stride == 2:  # identity is a stride-1 candidate only (DARTS reduces with FactorizedReduce, a param slot)
        prims = [p if p != "identity" else "none" for p in prims]
    ho, wo = (h - 1) // stride + 1, (w_ - 1) // stride + 1
    n_pool = sum(p.endswith("pool") for p in prims)
    if n_pool and not eval_stats and n * ho * wo < 2:
        eval_stats = True  # batch statistics of a single value are undefined (as in torch's BatchNorm)
    gen = torch.Generator().manual_seed(seed)
    x = _maybe_strided(_randn(gen, n, c, h, w_), channels_last).requires_grad_()
    params = [_maybe_strided(_randn(gen, n, c, ho, wo), channels_last).requires_grad_()
              for p in prims if p == "param"]
    weights = _randn(gen, *((n, len(prims)) if per_sample else (len(prims),))).requires_grad_()
    stats = None
    if eval_stats and n_pool:
        stats = torch.stack([_randn(gen, c), torch.rand(c, generator=gen, dtype=torch.float64) + 0.5])
        stats = stats.expand(n_pool, 2, c).contiguous()
    y, _ = ops.mixed_op_free(x, params, weights, prims, stride, 1e-5, stats)
    r = reference.mixed_op_free(x, params, weights, prims, stride, 1e-5, stats)
    torch.testing.assert_close(y, r, **TOL)
    inputs = [x, *params, weights]
    g = _randn(gen, n, c, ho, wo)
    _assert_grads(_grads(y, inputs, g), _grads(r, inputs, g), inputs)


def test_the_fuzz_can_fail():
    """The oracle is not vacuous: a perturbed weight is caught."""
    gen = torch.Generator().manual_seed(0)
    outs = [_randn(gen, 2, 3) for _ in range(2)]
    w = _randn(gen, 2)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(ops.mixed_sum(outs, w), reference.mixed_sum(outs, w + 1e-6), **TOL)
