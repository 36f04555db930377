"""ops.linear: fp32 CPU GEMMs routed per shape to MKL or oneDNN by timing (timings injected here),
checked against float64 on every route, with F.linear wherever routing does not apply."""
import importlib
import itertools

import pytest
import torch
import torch.nn.functional as F

from kr_mini_llm import ops

linear_module = importlib.import_module("kr_mini_llm.ops.linear")  # ops re-exports the function under its name

SHAPES = [((1, 7), 5), ((3, 33), 17), ((2, 9, 64), 48), ((130, 65), 1), ((4, 1, 256), 300)]
ROUTES = list(itertools.product([False, True], repeat=3))


@pytest.fixture
def routes(monkeypatch):
    """Sets what `measure` reports, per kind: oneDNN's speed-up over MKL; clears the route cache."""
    speedups = {}

    def fake_measure(kind, rows, cin, cout):
        return speedups[kind], 1.0  # (MKL seconds, oneDNN seconds)

    monkeypatch.setattr(linear_module, "measure", fake_measure)
    monkeypatch.setattr(linear_module, "_routes", {})
    timed_here(monkeypatch)
    return speedups


def timed_here(monkeypatch):
    """Routing timed as on a CPU where MKL may run narrower vectors than oneDNN (AVX-512)."""
    monkeypatch.setattr(linear_module, "_vector_widths_may_differ", lambda: True)


def reference(x, w, dy):
    x64, w64 = x.double().requires_grad_(True), w.double().requires_grad_(True)
    y = F.linear(x64, w64)
    gx, gw = torch.autograd.grad(y, (x64, w64), dy.double())
    return y, gx, gw


def close(actual, ref, what):
    err = (actual.double() - ref).abs().max().item()
    assert err <= 2e-5 * max(ref.abs().max().item(), 1.0), f"{what}: max err {err:.3e}"


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("xshape, cout", SHAPES)
def test_every_route_matches_float64(routes, route, xshape, cout):
    routes.update({k: (2.0 if on else 1.0) for k, on in zip(linear_module.KINDS, route)})
    g = torch.Generator().manual_seed(sum(xshape) + cout)
    x = torch.randn(*xshape, generator=g)
    w = torch.randn(cout, xshape[-1], generator=g) / xshape[-1] ** 0.5
    dy = torch.randn(*xshape[:-1], cout, generator=g)
    xl, wl = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    y = ops.linear(xl, wl)
    y.backward(dy)
    assert linear_module.linear_route(x.reshape(-1, xshape[-1]).shape[0], xshape[-1], cout) == route
    ref_y, ref_gx, ref_gw = reference(x, w, dy)
    assert y.shape == ref_y.shape and y.dtype == torch.float32
    close(y, ref_y, "y")
    close(xl.grad, ref_gx, "grad x")
    close(wl.grad, ref_gw, "grad weight")


def test_only_the_gradients_asked_for(routes):
    """A frozen weight (LoRA's base layer) gets no weight GEMM; a frozen input no dx GEMM."""
    routes.update(fwd=2.0, dx=2.0, dw=2.0)
    x, w = torch.randn(6, 10), torch.randn(4, 10)
    xl = x.clone().requires_grad_(True)
    ops.linear(xl, w).sum().backward()
    close(xl.grad, reference(x, w, torch.ones(6, 4))[1], "grad x")
    wl = w.clone().requires_grad_(True)
    ops.linear(x, wl).sum().backward()
    close(wl.grad, reference(x, w, torch.ones(6, 4))[2], "grad weight")


@pytest.mark.parametrize("mkl_seconds, onednn", [(1.0, False), (1.14, False), (1.15, True), (3.0, True)])
def test_onednn_only_with_a_clear_lead(routes, mkl_seconds, onednn):
    routes.update(fwd=mkl_seconds, dx=1.0, dw=1.0)
    assert linear_module.linear_route(64, 32, 16) == (onednn, False, False)


def test_each_shape_is_timed_once_per_row_bucket(monkeypatch):
    timed_here(monkeypatch)
    calls = []
    monkeypatch.setattr(linear_module, "measure", lambda kind, *shape: calls.append((kind, shape)) or (1.0, 1.0))
    monkeypatch.setattr(linear_module, "_routes", {})
    for rows in (100, 128, 97):  # one bucket: 128 rows
        linear_module.linear_route(rows, 32, 16)
    assert calls == [(k, (128, 32, 16)) for k in linear_module.KINDS]
    linear_module.linear_route(5000, 32, 16)
    linear_module.linear_route(9000, 32, 16)  # both at the largest timed size
    assert len(calls) == 6 and calls[-1] == ("dw", (2048, 32, 16))


@pytest.mark.parametrize("case", ["bf16", "fp64", "autocast", "empty"])
def test_plain_f_linear_where_routing_does_not_apply(monkeypatch, case):
    def no_timing(*_):
        raise AssertionError("timed a GEMM that is not routed")

    monkeypatch.setattr(linear_module, "measure", no_timing)
    monkeypatch.setattr(linear_module, "_routes", {})
    dtype = {"bf16": torch.bfloat16, "fp64": torch.float64}.get(case, torch.float32)
    x, w = torch.randn(0 if case == "empty" else 5, 8, dtype=dtype), torch.randn(3, 8, dtype=dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast"):
        y, want = ops.linear(x, w), F.linear(x, w)
    assert y.dtype == want.dtype
    torch.testing.assert_close(y, want, rtol=0, atol=0)


def test_wrong_shapes_get_f_linear_s_error():
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        ops.linear(torch.randn(4, 7), torch.randn(3, 8))


def test_torch_compile_takes_f_linear(routes, monkeypatch):
    routes.update(fwd=2.0, dx=2.0, dw=2.0)  # oneDNN would win every GEMM, were it routed

    def not_here(*_):
        raise AssertionError("a compiled graph timed or ran a routed GEMM")

    monkeypatch.setattr(linear_module, "measure", not_here)
    monkeypatch.setattr(linear_module, "_onednn", not_here)
    x, w = torch.randn(2, 5, 12), torch.randn(7, 12)
    xc, wc = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    torch.compile(ops.linear, fullgraph=True, backend="aot_eager")(xc, wc).sum().backward()
    ref_y, ref_gx, ref_gw = reference(x, w, torch.ones(2, 5, 7))
    close(xc.grad, ref_gx, "grad x")
    close(wc.grad, ref_gw, "grad weight")


def test_avx2_cpus_stay_on_mkl_untimed(monkeypatch):
    """At ATen's AVX2 level both libraries run AVX2 code: MKL keeps every GEMM, and nothing is timed
    (a timing beside a busy neighbour would otherwise decide)."""
    linear_module._vector_widths_may_differ.cache_clear()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(linear_module, "_routes", {})

    def no_timing(*_):
        raise AssertionError("timed a GEMM on an AVX2 CPU")

    monkeypatch.setattr(linear_module, "measure", no_timing)
    try:
        assert linear_module.linear_route(1024, 256, 688) == (False, False, False)
        x, w = torch.randn(4, 9, 16), torch.randn(8, 16)
        torch.testing.assert_close(ops.linear(x, w), F.linear(x, w), rtol=0, atol=0)
    finally:
        linear_module._vector_widths_may_differ.cache_clear()


def test_this_machine_is_timed(monkeypatch):
    timed_here(monkeypatch)
    monkeypatch.setattr(linear_module, "_routes", {})  # this test's own routes, not the process's
    mkl, onednn = linear_module.measure("dw", 64, 48, 32)
    assert mkl > 0 and onednn > 0
    state = torch.random.get_rng_state()
    route = linear_module.linear_route(64, 48, 32)
    assert len(route) == 3 and all(isinstance(r, bool) for r in route)
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_model_step_on_onednn_matches_f_linear(routes, monkeypatch, checkpointing):
    """Every projection of a Transformer on oneDNN (forced) gives the loss and gradients of the
    plain F.linear model, with and without gradient checkpointing; LoRA's frozen base as well."""
    from kr_mini_llm import Transformer, TransformerConfig
    from kr_mini_llm.lora import LoRAParameters, apply_lora

    cfg = TransformerConfig(vocab_size=300, hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                            intermediate_size=80, max_seq_length=32)
    torch.manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (2, 17))
    onednn_calls = []
    real_onednn = linear_module._onednn
    monkeypatch.setattr(linear_module, "_onednn", lambda a, b: onednn_calls.append(a.shape) or real_onednn(a, b))

    def step(onednn, lora):
        torch.manual_seed(1)
        model = Transformer(cfg).set_gradient_checkpointing(checkpointing)
        if lora:
            apply_lora(model, cfg.num_layers, LoRAParameters(rank=2))
        routes.update({k: (2.0 if onednn else 1.0) for k in linear_module.KINDS})
        linear_module._routes.clear()
        onednn_calls.clear()
        loss = model(ids[:, :-1], ids[:, 1:])
        loss.backward()
        assert set(linear_module._routes.values()) == {(onednn,) * 3}
        if not onednn:
            assert not onednn_calls
        elif not lora:  # 5 GEMMs a layer (q/k/v as one): forward (twice with checkpointing), dx and dW
            assert len(onednn_calls) == cfg.num_layers * 5 * ((2 if checkpointing else 1) + 2)
        else:  # the frozen base: no dW, and no dx where its input needs none
            assert onednn_calls
        return loss, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    for lora in (False, True):
        (loss_d, grads_d), (loss_m, grads_m) = step(True, lora), step(False, lora)
        torch.testing.assert_close(loss_d, loss_m, rtol=1e-5, atol=1e-6)
        assert grads_d.keys() == grads_m.keys() and grads_d
        for name in grads_d:
            torch.testing.assert_close(grads_d[name], grads_m[name], rtol=1e-4, atol=1e-6, msg=name)
