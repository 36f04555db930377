import importlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kr_mini_llm import _C, ops
from kr_mini_llm.ops.linear_cross_entropy import (
    _linear_cross_entropy_and_grad_fallback,
    _linear_cross_entropy_backward_fallback,
    _linear_cross_entropy_fallback,
    default_chunk_size,
)

from .utils import num_threads, randn

lib = torch.ops.kr_mini_llm
lce_module = importlib.import_module("kr_mini_llm.ops.linear_cross_entropy")  # ops re-exports the function under its name
IGNORE = -100

# Max-norm relative tolerance of a result in `dtype` against the float64 reference on the same
# (rounded) inputs: max|actual - ref| <= tol * max|ref|. Loose enough for bf16 rounding of the
# outputs and of softmax - onehot, tight enough that a wrong row, term or scale fails.
REL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2.5e-2}


def check(actual, ref, dtype, what):
    assert actual.shape == ref.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(ref.shape)}"
    a, r = actual.double(), ref.double()
    assert torch.isfinite(a).all(), f"{what}: non-finite values"
    if r.numel() == 0:
        return
    err = (a - r).abs().max().item()
    mag = r.abs().max().item()
    assert err <= REL[dtype] * mag, f"{what} ({dtype}): max err {err:.3e} > {REL[dtype]:.1e} * max|ref| {mag:.3e}"


def make(N, C, V, dtype, ignore_every=0, seed=0, ignore_index=IGNORE):
    g = torch.Generator().manual_seed(seed)
    h = randn(N, C, dtype=dtype, generator=g)
    # logits of a few units, as in a trained LM head
    w = (torch.randn(V, C, dtype=torch.float64, generator=g) * (2.0 / C**0.5)).to(dtype)
    t = torch.randint(0, V, (N,), generator=g)
    if ignore_every:
        t[::ignore_every] = ignore_index
    return h, w, t


def reference_grads(h, w, t, reduction, grad_out, ignore_index=IGNORE):
    h64 = h.detach().double().clone().requires_grad_(True)
    w64 = w.detach().double().clone().requires_grad_(True)
    out = ops.linear_cross_entropy_reference(h64, w64, t, ignore_index, reduction)
    gh, gw = torch.autograd.grad(out, (h64, w64), grad_out.double())
    return out.detach(), gh, gw


def rounded_logits_loss(h, w, t, reduction, dtype, ignore_index=IGNORE):
    """The float64 loss of the logits rounded to `dtype`: where bf16/fp16 dot products are native,
    the GEMM returns the logits in that dtype (as F.linear does; elsewhere it widens to fp32)."""
    logits = (h.double() @ w.double().t()).to(dtype).double()
    return torch.nn.functional.cross_entropy(logits, t, ignore_index=ignore_index, reduction=reduction)


class RecordOps(TorchDispatchMode):
    """Records the kr_mini_llm ops that run under it."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "kr_mini_llm":
            self.names.append(func._opname)
        return func(*args, **(kwargs or {}))


# (N, C, V, chunk_size): length 1, odd and prime sizes, chunks that do not divide N.
SHAPES = [(1, 32, 7, None), (1, 37, 1001, 1), (5, 37, 1001, 2), (13, 64, 257, 4), (31, 33, 129, 31),
          (70, 96, 1001, 16), (29, 128, 3, 64)]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, C, V, chunk", SHAPES)
def test_forward_backward_match_float64_reference(N, C, V, chunk, dtype, reduction):
    h, w, t = make(N, C, V, dtype, ignore_every=5 if N > 2 else 0, seed=N * V + C)
    g = torch.Generator().manual_seed(N + C)
    grad_out = torch.randn(t.shape, generator=g) if reduction == "none" else torch.tensor(1.7)
    ref, gh64, gw64 = reference_grads(h, w, t, reduction, grad_out)
    hl, wl = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    with RecordOps() as rec:
        out = ops.linear_cross_entropy(hl, wl, t, reduction=reduction, chunk_size=chunk)
        out.backward(grad_out.to(out.dtype))
    expect = (["linear_cross_entropy", "linear_cross_entropy_backward"] if reduction == "none"
              else ["linear_cross_entropy_and_grad"])
    assert rec.names == expect
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert out.dtype == acc and hl.grad.dtype == dtype and wl.grad.dtype == dtype
    # logits kept in the dtype by the native kernel, unless it multiplies in fp32; the fallback's are fp32
    rounded = (dtype in (torch.bfloat16, torch.float16) and _C.vnni_tile_gemm(dtype == torch.float16)
               and lce_module.gemm_dtype(h) == dtype and ops.backend_report("cpu")["linear_cross_entropy"] == "native")
    ref_loss = rounded_logits_loss(h, w, t, reduction, dtype) if rounded else ref
    check(out, ref_loss, dtype if dtype != torch.bfloat16 else torch.float16, "loss")
    check(hl.grad, gh64, dtype, "grad_hidden")
    check(wl.grad, gw64, dtype, "grad_weight")
    # Without gradients the same values come from the forward op alone.
    with torch.no_grad(), RecordOps() as rec:
        out2 = ops.linear_cross_entropy(h, w, t, reduction=reduction, chunk_size=chunk)
    assert rec.names == ["linear_cross_entropy"]
    check(out2, ref_loss, dtype if dtype != torch.bfloat16 else torch.float16, "loss (no grad)")


def test_batched_hidden_and_targets():
    h, w, t = make(2 * 7, 40, 301, torch.float32, ignore_every=3)
    h3, t2 = h.reshape(2, 7, 40), t.reshape(2, 7)
    none = ops.linear_cross_entropy(h3, w, t2, reduction="none", chunk_size=5)
    assert none.shape == (2, 7)
    check(none, ops.linear_cross_entropy_reference(h3.double(), w.double(), t2, reduction="none"),
          torch.float32, "losses")
    hl = h3.clone().requires_grad_(True)
    ops.linear_cross_entropy(hl, w, t2).backward()
    _, gh64, _ = reference_grads(h3, w, t2, "mean", torch.tensor(1.0))
    check(hl.grad, gh64, torch.float32, "grad_hidden")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_every_target_ignored_gives_zero_loss_and_zero_grads(reduction):
    h, w, t = make(9, 24, 50, torch.float32)
    t[:] = IGNORE
    hl, wl = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    out = ops.linear_cross_entropy(hl, wl, t, reduction=reduction, chunk_size=4)
    out.sum().backward()
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.equal(hl.grad, torch.zeros_like(h)) and torch.equal(wl.grad, torch.zeros_like(w))
    ref = ops.linear_cross_entropy_reference(h, w, t, reduction=reduction)
    assert torch.equal(ref, torch.zeros_like(ref))
    with torch.no_grad():
        assert torch.equal(ops.linear_cross_entropy(h, w, t, reduction=reduction), out.detach())


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batch(reduction):
    h, w, t = make(0, 8, 13, torch.float32)
    hl, wl = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    out = ops.linear_cross_entropy(hl, wl, t, reduction=reduction)
    out.sum().backward()
    assert out.shape == ((0,) if reduction == "none" else ()) and torch.equal(out.sum(), torch.tensor(0.0))
    assert hl.grad.shape == (0, 8) and torch.equal(wl.grad, torch.zeros_like(w))


def test_ignore_index_inside_vocab_and_mean_over_non_ignored():
    h, w, t = make(20, 16, 11, torch.float64)
    t[::3] = 4  # class 4 doubles as the ignore index
    out = ops.linear_cross_entropy(h, w, t, ignore_index=4)
    losses = ops.linear_cross_entropy(h, w, t, ignore_index=4, reduction="none")
    ref = torch.nn.functional.cross_entropy(h @ w.T, t, ignore_index=4)
    check(out, ref, torch.float64, "mean loss")
    assert torch.equal(losses[t == 4], torch.zeros(int((t == 4).sum()), dtype=torch.float64))
    check(out, losses.sum() / (t != 4).sum(), torch.float64, "mean over non-ignored")


@pytest.mark.parametrize("h_grad, w_grad", [(True, False), (False, True)])
def test_only_the_gradients_asked_for(h_grad, w_grad):
    h, w, t = make(17, 32, 99, torch.float32, ignore_every=6)
    hl, wl = h.clone().requires_grad_(h_grad), w.clone().requires_grad_(w_grad)
    with RecordOps() as rec:
        ops.linear_cross_entropy(hl, wl, t, reduction="sum", chunk_size=5).backward()
    assert rec.names == ["linear_cross_entropy_and_grad"]
    _, gh64, gw64 = reference_grads(h, w, t, "sum", torch.tensor(1.0))
    assert (hl.grad is not None) == h_grad and (wl.grad is not None) == w_grad
    if h_grad:
        check(hl.grad, gh64, torch.float32, "grad_hidden")
    else:
        check(wl.grad, gw64, torch.float32, "grad_weight")
    _, gh, gw = lib.linear_cross_entropy_and_grad(h, w, t, IGNORE, 5, False, h_grad, w_grad)
    assert (gh.numel() == 0) != h_grad and (gw.numel() == 0) != w_grad


def test_non_contiguous_inputs():
    h, w, t = make(12, 20, 33, torch.float64)
    hn = h.T.contiguous().T
    wn = w.T.contiguous().T
    tn = torch.stack([t, t], 1)[:, 0]
    assert not hn.is_contiguous() and not wn.is_contiguous() and not tn.is_contiguous()
    check(ops.linear_cross_entropy(hn, wn, tn, reduction="none"),
          ops.linear_cross_entropy_reference(h, w, t, reduction="none"), torch.float64, "losses")


def test_lse_output_is_logsumexp():
    h, w, t = make(10, 16, 77, torch.float32, ignore_every=3)
    losses, lse = lib.linear_cross_entropy(h, w, t, IGNORE, 3)
    check(lse, torch.logsumexp(h.double() @ w.double().T, 1), torch.float32, "lse")


def test_gradcheck_general_path():
    h, w, t = make(7, 5, 11, torch.float64, ignore_every=3)
    h.requires_grad_(True)
    w.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: ops.linear_cross_entropy(a, b, t, reduction="none", chunk_size=3), (h, w))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradcheck_fused_path(reduction):
    h, w, t = make(6, 4, 9, torch.float64, ignore_every=4)
    h.requires_grad_(True)
    w.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: ops.linear_cross_entropy(a, b, t, reduction=reduction, chunk_size=4), (h, w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    h, w, t = make(9, 24, 37, dtype, ignore_every=4)
    hg, wg = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    torch.library.opcheck(lib.linear_cross_entropy.default, (hg, wg, t, IGNORE, 4))
    _, lse = lib.linear_cross_entropy(h, w, t, IGNORE, 4)
    torch.library.opcheck(lib.linear_cross_entropy_backward.default,
                          (torch.randn(9), h, w, t, lse, IGNORE, 4))
    torch.library.opcheck(lib.linear_cross_entropy_and_grad.default, (hg, wg, t, IGNORE, 4, True, True, True))
    torch.library.opcheck(lib.linear_cross_entropy_and_grad.default, (h, w, t, IGNORE, 4, False, False, False))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_results_on_one_and_two_threads(dtype):
    h, w, t = make(300, 64, 1001, dtype, ignore_every=7)

    def run():
        hl, wl = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
        mean = ops.linear_cross_entropy(hl, wl, t, chunk_size=64)
        mean.backward()
        hn, wn = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
        none = ops.linear_cross_entropy(hn, wn, t, reduction="none", chunk_size=64)
        none.backward(torch.linspace(-1, 1, 300))
        return [mean, hl.grad, wl.grad, none, hn.grad, wn.grad]

    with num_threads(1):
        one = run()
    with num_threads(2):
        two = run()
    # Chunks run in order; what remains is the GEMM library (MKL, oneDNN), which at some ISA
    # levels (MKL at AVX2) splits a GEMM's inner dimension over threads: equal to rounding
    # (one unit of the dtype's last place), bitwise where the library does not split.
    for i, (a, b) in enumerate(zip(one, two)):
        ulp = 1e-6 if dtype == torch.float32 or i in (0, 3) else 8e-3  # losses are fp32
        torch.testing.assert_close(a, b, rtol=0, atol=ulp * a.abs().max().item(), msg=f"output {i}")


def test_reference_fallback_kernels_match_autograd():
    """The kernels used on backends without a native one (CUDA/MPS today)."""
    h, w, t = make(23, 19, 61, torch.float64, ignore_every=4)
    gl = torch.randn(23, dtype=torch.float64)
    ref, gh64, gw64 = reference_grads(h, w, t, "none", gl)
    losses, lse = _linear_cross_entropy_fallback(h, w, t, IGNORE, 5)
    check(losses, ref, torch.float64, "losses")
    check(lse, torch.logsumexp(h @ w.T, 1), torch.float64, "lse")
    gh, gw = _linear_cross_entropy_backward_fallback(gl, h, w, t, lse, IGNORE, 5)
    check(gh, gh64, torch.float64, "grad_hidden")
    check(gw, gw64, torch.float64, "grad_weight")
    for mean in (True, False):
        red = "mean" if mean else "sum"
        ref, gh64, gw64 = reference_grads(h, w, t, red, torch.tensor(1.0))
        loss, gh, gw = _linear_cross_entropy_and_grad_fallback(h, w, t, IGNORE, 5, mean, True, True)
        check(loss, ref, torch.float64, red)
        check(gh, gh64, torch.float64, "grad_hidden " + red)
        check(gw, gw64, torch.float64, "grad_weight " + red)
    loss, gh, gw = _linear_cross_entropy_and_grad_fallback(h, w, t, IGNORE, 5, True, False, False)
    assert gh.numel() == 0 and gw.numel() == 0
    with pytest.raises(ValueError, match=r"targets must be class indices in \[0, V\) = \[0, 61\)"):
        _linear_cross_entropy_fallback(h, w, torch.full_like(t, 61), IGNORE, 5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_compile_fullgraph(reduction, dtype):
    h, w, t = make(2 * 9, 32, 70, dtype, ignore_every=5)
    h, t = h.reshape(2, 9, 32), t.reshape(2, 9)
    scale = torch.linspace(0.5, 2, 18).reshape(2, 9)

    def f(a, b):
        out = ops.linear_cross_entropy(a, b, t, reduction=reduction, chunk_size=4)
        return out if reduction == "mean" else (out * scale).sum()

    hc, wc = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    torch.compile(f, fullgraph=True, backend="aot_eager")(hc, wc).backward()
    he, we = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    f(he, we).backward()
    torch.testing.assert_close(hc.grad, he.grad)
    torch.testing.assert_close(wc.grad, we.grad)


def test_default_chunk_size():
    assert default_chunk_size(1, 32000) == 1
    assert default_chunk_size(8192, 32000) == 1024  # N / 8
    assert default_chunk_size(1000, 32000) == 262  # ~32 MB of fp32 logits
    assert default_chunk_size(10**6, 10) == 4096
    assert default_chunk_size(10**4, 10**7) == 1250
    assert default_chunk_size(100, 10**9) == 16


# ---- bad input: every message names the op, the argument and what was expected ----

def _call(op, h, w, t, ignore_index=IGNORE, chunk=4):
    if op == "linear_cross_entropy":
        return lib.linear_cross_entropy(h, w, t, ignore_index, chunk)
    if op == "linear_cross_entropy_backward":
        n = h.shape[0] if h.dim() else 1
        return lib.linear_cross_entropy_backward(torch.ones(n), h, w, t, torch.zeros(n), ignore_index, chunk)
    return lib.linear_cross_entropy_and_grad(h, w, t, ignore_index, chunk, True, True, True)


OP_NAMES = ["linear_cross_entropy", "linear_cross_entropy_backward", "linear_cross_entropy_and_grad"]
H, W, T = torch.randn(4, 8), torch.randn(10, 8), torch.tensor([0, 9, IGNORE, 3])


@pytest.mark.parametrize("op", OP_NAMES)
@pytest.mark.parametrize("h, w, t, exc, match", [
    (H, W, torch.tensor([0, 10, 1, 2]), ValueError, r"targets must be class indices in \[0, V\) = \[0, 10\) or "
     r"ignore_index \(-100\), got targets\[1\] = 10"),
    (H, W, torch.tensor([0, 1, -1, 2]), ValueError, r"got targets\[2\] = -1"),
    (H, W, torch.tensor([0, 1, 2, 1 << 40]), ValueError, r"got targets\[3\] = 1099511627776"),
    (H.reshape(2, 2, 8), W, T, ValueError, r"hidden must be 2-D \[N, C\], got shape \[2, 2, 8\]"),
    (H, W.reshape(-1), T, ValueError, r"weight must be \[V, C\] with C = 8"),
    (H, torch.randn(10, 7), T, ValueError, r"weight must be \[V, C\] with C = 8 to match hidden \[4, 8\], got \[10, 7\]"),
    (H, W, T[:3], ValueError, r"targets must be \[N\] = \[4\] to match hidden \[4, 8\], got \[3\]"),
    (H, W, T.float(), TypeError, "targets must be int64 class indices, got Float"),
    (H, W, T.int(), TypeError, "targets must be int64 class indices, got Int"),
    (H, W.double(), T, TypeError, r"hidden \(Float\) and weight \(Double\) must have the same dtype"),
    (H.int(), W.int(), T, TypeError, "hidden must be float32, bfloat16, float16 or float64"),
    (H, torch.randn(0, 8), T, ValueError, r"weight must have at least one row \(V >= 1\)"),
])
def test_bad_input_is_a_clear_error(op, h, w, t, exc, match):
    with pytest.raises(exc, match=f"{op}: .*{match}"):
        _call(op, h, w, t)


@pytest.mark.parametrize("op", OP_NAMES)
def test_bad_chunk_size(op):
    with pytest.raises(ValueError, match=f"{op}: chunk_size must be >= 1, got 0"):
        _call(op, H, W, T, chunk=0)


def test_backward_rejects_wrong_lse_and_grad_losses():
    with pytest.raises(ValueError, match=r"lse must be the \[N\] = \[4\] Float tensor saved by the forward"):
        lib.linear_cross_entropy_backward(torch.ones(4), H, W, T, torch.zeros(4, dtype=torch.float64), IGNORE, 4)
    with pytest.raises(ValueError, match=r"grad_losses must be \[N\] = \[4\], got \[3\]"):
        lib.linear_cross_entropy_backward(torch.ones(3), H, W, T, torch.zeros(4), IGNORE, 4)


def test_public_function_errors():
    with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum', 'none'\), got 'avg'"):
        ops.linear_cross_entropy(H, W, T, reduction="avg")
    with pytest.raises(ValueError, match=r"targets must have shape hidden.shape\[:-1\] = \(2, 2\), got \(4,\)"):
        ops.linear_cross_entropy(H.reshape(2, 2, 8), W, T)
    with pytest.raises(ValueError, match=r"targets\[1\] = 10"):
        ops.linear_cross_entropy(H, W, torch.tensor([0, 10, 1, 2]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_fp32_weight_with_low_precision_hidden(dtype, reduction):
    """Autocast's form: bf16/fp16 hidden, the fp32 master weight. The weight is cast once inside,
    and its gradient comes back in fp32 (more exact than a bf16 gradient cast up)."""
    N, C, V = 45, 72, 1001
    h, w, t = make(N, C, V, dtype, ignore_every=4, seed=11)
    w32 = w.float()
    grad_out = torch.randn(N) if reduction == "none" else torch.tensor(1.0)
    ref, gh64, gw64 = reference_grads(h, w32.to(dtype), t, reduction, grad_out)
    hl, wl = h.clone().requires_grad_(True), w32.clone().requires_grad_(True)
    out = ops.linear_cross_entropy(hl, wl, t, reduction=reduction, chunk_size=16)
    out.backward(grad_out)
    assert hl.grad.dtype == dtype and wl.grad.dtype == torch.float32
    check(hl.grad, gh64, dtype, "grad_hidden")
    check(wl.grad, gw64, dtype, "grad_weight")  # bounded by softmax - onehot, which is in the dtype
    # The same numbers as the weight given in the dtype, up to that dtype's rounding of the gradient.
    hl2, wl2 = h.clone().requires_grad_(True), w32.to(dtype).requires_grad_(True)
    ops.linear_cross_entropy(hl2, wl2, t, reduction=reduction, chunk_size=16).backward(grad_out)
    torch.testing.assert_close(hl.grad, hl2.grad, rtol=0, atol=0)
    torch.testing.assert_close(wl.grad.to(dtype), wl2.grad, rtol=0, atol=0)


def test_mixed_dtypes_other_than_accumulation_are_refused():
    h, w, t = make(4, 8, 11, torch.bfloat16)
    with pytest.raises(TypeError, match=r"hidden \(BFloat16\) and weight \(Half\) must have the same dtype, "
                                        r"or weight the accumulation dtype Float"):
        ops.linear_cross_entropy(h, w.half(), t)
    with pytest.raises(TypeError, match=r"hidden \(Float\) and weight \(BFloat16\) must have the same dtype"):
        ops.linear_cross_entropy(h.float(), w, t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unit_and_scaled_loss_gradients_agree(dtype):
    """loss.backward() hands the forward's gradients on as they are, another incoming gradient scales
    them; a retained graph run twice gives twice the gradients (accumulating .grad in place does
    not change what the op saved)."""
    h, w, t = make(37, 40, 301, dtype, ignore_every=6, seed=5)

    def grads(scale, runs=1):
        hl, wl = h.clone().requires_grad_(True), w.float().clone().requires_grad_(True)
        loss = ops.linear_cross_entropy(hl, wl, t)
        for _ in range(runs):
            (loss if scale is None else loss * scale).backward(retain_graph=runs > 1)
        return hl.grad, wl.grad

    gh1, gw1 = grads(None)
    gh2, gw2 = grads(2.0)
    torch.testing.assert_close(gh2, (gh1.float() * 2).to(gh1.dtype), rtol=0, atol=0)
    torch.testing.assert_close(gw2, gw1 * 2, rtol=0, atol=0)
    gh3, gw3 = grads(None, runs=2)
    torch.testing.assert_close(gw3, gw1 * 2, rtol=0, atol=0)
    torch.testing.assert_close(gh3, (gh1.float() * 2).to(gh1.dtype), rtol=0, atol=0)


@pytest.mark.parametrize("pays", [True, False])
@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float32])
def test_bf16_multiplies_in_fp32_where_bf16_gemms_do_not_pay(monkeypatch, pays, weight_dtype):
    """bf16 hidden on a CPU whose bf16 GEMMs are no faster than fp32 ones (device.bf16_matmuls_pay,
    injected here) runs the kernels in fp32 on the widened inputs; elsewhere in bf16. Either way the
    gradients come back in the inputs' dtypes."""
    monkeypatch.setattr(lce_module, "_bf16_gemms_pay", lambda: pays)
    N, C, V = 37, 40, 301
    h, w, t = make(N, C, V, torch.bfloat16, ignore_every=6, seed=3)
    w = w.to(weight_dtype)
    hl, wl = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    loss = ops.linear_cross_entropy(hl, wl, t, chunk_size=16)
    loss.backward()
    assert hl.grad.dtype == torch.bfloat16 and wl.grad.dtype == weight_dtype
    gemm = torch.bfloat16 if pays else torch.float32
    assert lce_module.gemm_dtype(h) == gemm
    want_loss, want_gh, want_gw = lib.linear_cross_entropy_and_grad(
        h.to(gemm), w if pays else w.float(), t, IGNORE, 16, True, True, True)
    torch.testing.assert_close(loss, want_loss, rtol=0, atol=0)
    torch.testing.assert_close(hl.grad, want_gh.to(torch.bfloat16), rtol=0, atol=0)
    torch.testing.assert_close(wl.grad, want_gw.to(weight_dtype), rtol=0, atol=0)
    _, gh64, gw64 = reference_grads(h, w, t, "mean", torch.tensor(1.0))
    check(hl.grad, gh64, torch.bfloat16, "grad_hidden")
    check(wl.grad, gw64, torch.bfloat16, "grad_weight")


def test_gemm_dtype_changes_only_bf16_on_the_cpu(monkeypatch):
    monkeypatch.setattr(lce_module, "_bf16_gemms_pay", lambda: False)
    for dtype in (torch.float64, torch.float32, torch.float16):
        assert lce_module.gemm_dtype(torch.zeros(2, 3, dtype=dtype)) == dtype
    assert lce_module.gemm_dtype(torch.zeros(2, 3, dtype=torch.bfloat16)) == torch.float32
    with pytest.raises(TypeError, match=r"hidden \(BFloat16\) and weight \(Half\) must have the same dtype"):
        h, w, t = make(4, 8, 11, torch.bfloat16)
        ops.linear_cross_entropy(h, w.half(), t)  # still refused on the fp32 route
