// The operator schemas of kr_mini_llm: the one place that says what each op takes
// and returns. Kernels register themselves per backend beside their code
// (csrc/ops/*.cpp under CPU); Python adds fake kernels, autograd and the
// pure-PyTorch fallback for backends without a kernel (kr_mini_llm/ops/).
#include <torch/library.h>

TORCH_LIBRARY(kr_mini_llm, m) {
  // y = x / sqrt(mean(x^2) + eps) * weight over the last dim; rstd is saved for backward.
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> (Tensor y, Tensor rstd)");
  m.def("rms_norm_backward(Tensor grad_y, Tensor x, Tensor weight, Tensor rstd)"
        " -> (Tensor grad_x, Tensor grad_weight)");

  // Rotate-half RoPE on x [B, T, H, D] with cos/sin [T, D/2] or [B, T, D/2].
  m.def("rotary(Tensor x, Tensor cos, Tensor sin) -> Tensor");
  m.def("rotary_backward(Tensor grad_out, Tensor cos, Tensor sin) -> Tensor");

  // x * keep / (1 - p), keep a pure function of (seed [0-d int64], element index): the backward is
  // the same op on the gradient with the same seed (ops/dropout.cpp).
  m.def("dropout(Tensor x, Tensor seed, float p) -> Tensor");

  // silu(gate) * up.
  m.def("swiglu(Tensor gate, Tensor up) -> Tensor");
  m.def("swiglu_backward(Tensor grad_out, Tensor gate, Tensor up)"
        " -> (Tensor grad_gate, Tensor grad_up)");

  // Flash attention on [B, T, H, D]; GQA by head groups; lse [B, Hq, T] (fp32) for backward.
  m.def("attention(Tensor q, Tensor k, Tensor v, bool causal, float? scale) -> (Tensor out, Tensor lse)");
  m.def("attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,"
        " bool causal, float? scale) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");

  // KV-cache step: q [B, S, Hq, D] are the last S of cache_lens[b] valid cache rows.
  m.def("decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor cache_lens, float? scale)"
        " -> Tensor");
  // Writes k_new/v_new [B, S, Hkv, D] into rows cache_lens[b] .. cache_lens[b]+S-1.
  m.def("kv_cache_append(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k_new, Tensor v_new,"
        " Tensor cache_lens) -> ()");
  // A block's attention in a decode step, from its fused projection qkv [B, S, (Hq + 2 Hkv) * D]:
  // optional per-head RMSNorm of q and k (weights [D]), RoPE with cos/sin [B, S, D/2], k/v
  // appended to the caches (in their dtype) at rows cache_lens[b].., attention over them.
  // Returns [B, S, Hq * D] in qkv's dtype; cache_lens is not advanced.
  m.def("decode_attention_step(Tensor qkv, Tensor? q_norm, Tensor? k_norm, float eps, Tensor cos,"
        " Tensor sin, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor cache_lens, int num_heads)"
        " -> Tensor");

  // Per-row cross entropy of hidden [N, C] @ weight[V, C]^T, chunked over N so the [N, V]
  // logits never exist at once. losses/lse are [N] in the accumulation dtype.
  m.def("linear_cross_entropy(Tensor hidden, Tensor weight, Tensor targets, int ignore_index,"
        " int chunk_size) -> (Tensor losses, Tensor lse)");
  m.def("linear_cross_entropy_backward(Tensor grad_losses, Tensor hidden, Tensor weight,"
        " Tensor targets, Tensor lse, int ignore_index, int chunk_size)"
        " -> (Tensor grad_hidden, Tensor grad_weight)");
  // The mean (over non-ignored rows; 0 when there are none) or sum of those losses, with its
  // gradients computed in the same chunked pass (3 GEMMs in all, as Liger-Kernel does); the
  // autograd backward only scales them. A gradient that is not asked for comes back as [0].
  m.def("linear_cross_entropy_and_grad(Tensor hidden, Tensor weight, Tensor targets,"
        " int ignore_index, int chunk_size, bool mean, bool need_grad_hidden, bool need_grad_weight)"
        " -> (Tensor loss, Tensor grad_hidden, Tensor grad_weight)");

  // The first index of the largest value of each row of x [..., N] (N >= 1), NaN largest, as
  // torch.argmax(x, -1): greedy decoding's pick over the vocabulary. int64 [...].
  m.def("argmax(Tensor x) -> Tensor");

  // Inference-only (no backward): y = x W^T (+ residual) for the few rows of a decode step,
  // x [..., K] float32/bfloat16, weight [M, K] float32/bfloat16/int8 or uint8 [M, K / 2] (int4,
  // Q4_0's packing); int8 takes symmetric scales [M, G] (float32, G groups of K/G inputs each; G = 1
  // is per output channel), int4 [M, G] float16 (K/G a multiple of 32).
  // fp32 accumulation; y [..., M] in x's dtype.
  m.def("decode_linear(Tensor x, Tensor weight, Tensor? scales=None, Tensor? residual=None) -> Tensor");
  // silu(x Wg^T) * (x Wu^T) for weight = [Wg; Wu] [2I, K] (gate rows, then up rows) -> [..., I].
  m.def("decode_linear_swiglu(Tensor x, Tensor weight, Tensor? scales=None) -> Tensor");
  // One block of a decode step, x [B, S, C] -> x after the block: rms_norm, the q/k/v projection,
  // decode_attention_step (appends to the caches), the o projection and its residual, rms_norm,
  // the gate/up projection with SwiGLU, the down projection and its residual; each weight as
  // decode_linear takes it (its scales for int8 / int4).
  m.def("decode_block(Tensor x, Tensor norm1, Tensor qkv_weight, Tensor? qkv_scales, Tensor? q_norm,"
        " Tensor? k_norm, Tensor cos, Tensor sin, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor cache_lens,"
        " int num_heads, Tensor o_weight, Tensor? o_scales, Tensor norm2, Tensor gate_up_weight,"
        " Tensor? gate_up_scales, Tensor down_weight, Tensor? down_scales, float eps) -> Tensor");
  // decode_block for every layer in one call: per-layer lists (one KV cache pair per layer, all
  // alike), the same x, cos/sin, cache_lens, num_heads and eps; returns x after the last block.
  m.def("decode_stack(Tensor x, Tensor[] norm1, Tensor[] qkv_weight, Tensor?[] qkv_scales, Tensor?[] q_norm,"
        " Tensor?[] k_norm, Tensor cos, Tensor sin, Tensor(a!)[] k_cache, Tensor(b!)[] v_cache, Tensor cache_lens,"
        " int num_heads, Tensor[] o_weight, Tensor?[] o_scales, Tensor[] norm2, Tensor[] gate_up_weight,"
        " Tensor?[] gate_up_scales, Tensor[] down_weight, Tensor?[] down_scales, float eps) -> Tensor");
  // A model's decode step from token ids [B, S] to logits: the rows of embed_weight (dequantised to
  // float32), the rope tables [P, D/2] at positions cache_lens[b] + s, decode_stack, cache_lens += S,
  // then rms_norm with norm and head_weight (of every row, or of the last one when last_only) ->
  // float32 [B, S or 1, vocab]. Weights as decode_linear takes them.
  m.def("decode_forward(Tensor ids, Tensor embed_weight, Tensor? embed_scales, Tensor rope_cos, Tensor rope_sin,"
        " Tensor[] norm1, Tensor[] qkv_weight, Tensor?[] qkv_scales, Tensor?[] q_norm, Tensor?[] k_norm,"
        " Tensor(a!)[] k_cache, Tensor(b!)[] v_cache, Tensor(c!) cache_lens, int num_heads, Tensor[] o_weight,"
        " Tensor?[] o_scales, Tensor[] norm2, Tensor[] gate_up_weight, Tensor?[] gate_up_scales,"
        " Tensor[] down_weight, Tensor?[] down_scales, Tensor norm, Tensor head_weight, Tensor? head_scales,"
        " float eps, bool last_only) -> Tensor");

  // Test-only: c (+)= op(a) @ op(b) through the kernels' GEMM layer (csrc/ops/gemm.h); tiles
  // selects the in-kernel tile GEMM instead of the whole-matrix one; n_cols / k_rows >= 0 (tiles)
  // multiply by b packed whole but use only its first n_cols columns and k_rows rows.
  m.def("gemm_for_tests(Tensor a, Tensor b, Tensor c, bool transpose_a, bool transpose_b,"
        " bool accumulate, bool tiles, int n_cols=-1, int k_rows=-1) -> Tensor");
}
