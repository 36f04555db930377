"""torch.compile on a device without our kernels, proved on the CPU through the switch: rotary and
swiglu enter the graph as element-wise math (no op boundary, no graph break) that Inductor fuses,
a Transformer block traces whole, and the trainer's `compile: true` compiles the whole model."""
import pytest
import torch
from torch._dynamo.utils import counters
from torch._inductor.compile_fx import compile_fx

from kr_mini_llm import TransformerConfig, ops
from kr_mini_llm.model.transformer import Transformer
from kr_mini_llm.training import Trainer, TrainingConfig

from .utils import assert_close, randn


@pytest.fixture
def fallbacks():
    with ops.device_fallbacks():
        yield


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def our_ops(graphs):
    """The kr_mini_llm ops called in the FX graphs, by name."""
    return {str(node.target).split(".")[1] for gm in graphs for node in gm.graph.nodes
            if node.op == "call_function" and str(node.target).startswith("kr_mini_llm.")}


def compiled(fn, backend=compile_fx):
    """fn under torch.compile(fullgraph=True) on `backend` (Inductor, or a backend's name), and the
    graphs Dynamo gave it."""
    graphs = []
    backend = torch._dynamo.lookup_backend(backend)

    def recording(gm, example_inputs):
        graphs.append(gm)
        return backend(gm, example_inputs)

    return torch.compile(fn, fullgraph=True, backend=recording), graphs


def values_and_grads(fn, inputs, grad_out):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    out.backward(grad_out.to(out.dtype))
    return out.detach(), [t.grad for t in leaves]


ROTARY_SHAPE = (2, 9, 3, 32)


def rotary_case(dtype):
    cos, sin = ops.rope_tables(ROTARY_SHAPE[-1], ROTARY_SHAPE[1], 10000.0)
    return (lambda x: ops.rotary(x, cos, sin), lambda x: ops.rotary_reference(x, cos.double(), sin.double()),
            [randn(*ROTARY_SHAPE, dtype=dtype)], randn(*ROTARY_SHAPE))


def swiglu_case(dtype):
    return ops.swiglu, ops.swiglu_reference, [randn(5, 7, 48, dtype=dtype), randn(5, 7, 48, dtype=dtype)], \
        randn(5, 7, 48)


@pytest.mark.parametrize("case", [rotary_case, swiglu_case], ids=["rotary", "swiglu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_elementwise_fallbacks_compile_into_the_graph(fallbacks, case, dtype):
    fn, reference, inputs, grad_out = case(dtype)
    fn_compiled, graphs = compiled(fn)
    out, grads = values_and_grads(fn_compiled, inputs, grad_out)
    want, want_grads = values_and_grads(reference, [t.double() for t in inputs], grad_out)
    assert our_ops(graphs) == set(), "the op's call stayed in the compiled graph"
    assert out.dtype == dtype
    assert_close(out, want, dtype, msg="out")
    for got, ref in zip(grads, want_grads):
        assert got.dtype == dtype
        assert_close(got, ref, dtype, scale=2, msg="grad")


@pytest.mark.native_kernels(reason="compiled, the CPU's native rotary and swiglu stay our ops in the graph: only a "
                                   "native kernel is called as an op (a fallback's math is inlined)")
@pytest.mark.parametrize("case, name", [(rotary_case, "rotary"), (swiglu_case, "swiglu")], ids=["rotary", "swiglu"])
def test_native_kernels_stay_ops_when_compiled(case, name):
    fn, _, inputs, _ = case(torch.float32)
    fn_compiled, graphs = compiled(fn, backend="eager")
    torch.testing.assert_close(fn_compiled(*inputs), fn(*inputs))
    assert our_ops(graphs) == {name}


def tiny_config(**changes):
    return TransformerConfig(**{**dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                                       intermediate_size=128, max_seq_length=64, qk_norm=True), **changes})


def test_transformer_block_traces_whole(fallbacks):
    """One block's forward and backward under fullgraph: no graph break, and of our ops only those
    whose fallbacks are not element-wise (attention, rms_norm) are still called as ops."""
    torch.manual_seed(0)
    model = Transformer(tiny_config())
    block = model.layers[0]
    x = randn(2, 16, 64)
    cos, sin = model.rope_cos[:16], model.rope_sin[:16]
    explanation = torch._dynamo.explain(block)(x, cos, sin)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    block_compiled, graphs = compiled(block, backend="aot_eager")
    go = randn(2, 16, 64)
    out, (gx,) = values_and_grads(lambda a: block_compiled(a, cos, sin), [x], go)
    want, (want_gx,) = values_and_grads(lambda a: block(a, cos, sin), [x], go)
    assert our_ops(graphs) == {"attention", "rms_norm"}
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(gx, want_gx)


def test_trainer_compiles_the_whole_model_through_the_fallbacks(fallbacks, token_data, tmp_path):
    """`compile: true` through the fallbacks: the whole model is one compiled module without a graph
    break, and its first steps' losses are those of the same run uncompiled."""
    tokens, tokenizer = token_data

    def losses(compile_model, name):
        config = TrainingConfig.from_dict({
            "device": "cpu", "seed": 3, "output_dir": str(tmp_path / name),
            "train": {"batch_size": 2, "gradient_accumulation_steps": 1, "max_seq_length": 32, "learning_rate": 1e-3,
                      "warmup_steps": 1, "max_steps": 2, "log_steps": 1, "eval_steps": 100, "eval_batches": 1,
                      "save_steps": 100, "sample_max_new_tokens": 0, "compile_model": compile_model},
            "data": {"tokens": str(tokens), "tokenizer": tokenizer}})
        trainer = Trainer(tiny_config(qk_norm=False), config, show_progress=False)
        if compile_model:
            assert isinstance(trainer.forward, torch._dynamo.eval_frame.OptimizedModule)
            assert trainer.forward._orig_mod is trainer.model
        seen = []
        trainer.task.after_step = lambda run, loss: seen.append(loss)
        trainer.train()
        return seen

    compiled_losses = losses(True, "compiled")
    assert dict(counters["graph_break"]) == {}, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] >= 1
    assert compiled_losses == pytest.approx(losses(False, "eager"), rel=1e-4)
