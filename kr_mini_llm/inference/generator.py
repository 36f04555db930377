"""Generator: text in, text out, with the KV cache on the fused decode ops.

    from kr_mini_llm.inference import Generator
    generator = Generator.from_pretrained("checkpoints/tiny")
    print(generator.generate("오늘 날씨가", max_new_tokens=50, temperature=0.8, top_p=0.95))
    for piece in generator.generate("오늘 날씨가", stream=True):
        print(piece, end="", flush=True)
    generator.generate("...", temperature=0, speculative="prompt_lookup")  # see speculative.py
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Iterator

import torch

from ..model import KVCache
from .decode_model import DecodeModel
from .packed import check_dtype
from .sampling import apply_repetition_penalty, check_sampling, sample_next
from .speculative import SpeculativeStats, check_speculative, speculative_ids

log = logging.getLogger(__name__)


class Generator:
    def __init__(self, model, tokenizer, device: torch.device | str | None = None,
                 draft: "Generator | None" = None):
        """`model`: a Transformer (runs as it is), or a DecodeModel (packed fp32/bf16/int8 weights
        on the decode_linear kernels; see from_pretrained). `draft`: a Generator of a smaller model
        with the same tokenizer (same fingerprint), for speculative="draft"."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        if device is None:
            device = model.device if isinstance(model, DecodeModel) else next(model.parameters()).device
        self.device = torch.device(device)
        self.model.to(self.device)
        if draft is not None:
            ours, theirs = getattr(tokenizer, "fingerprint", None), getattr(draft.tokenizer, "fingerprint", None)
            if ours is None or ours != theirs:
                raise ValueError(f"the draft model's tokenizer (fingerprint {theirs}) is not this model's "
                                 f"(fingerprint {ours}): a draft model must be trained with the same tokenizer")
            if draft.device != self.device:
                raise ValueError(f"the draft model runs on {draft.device}, this model on {self.device}: "
                                 "load both on one device")
        self.draft = draft

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None, tokenizer_path: str | None = None,
                        ops_impl: str = "fused", adapter_path: str | Path | None = None,
                        dtype: str | None = None, group_size: int | None = None,
                        draft_model: str | Path | None = None) -> "Generator":
        """A checkpoint directory, an output directory (its latest checkpoint), a sharded (dcp/)
        checkpoint, a HF Llama/Qwen3 directory, or an inference directory of scripts/quantize.py
        (checkpoint.load_model_dir reads them all, with the tokenizer the model was trained with).

        dtype: the weights to decode with, "fp32", "bf16", "int8" or "int4" (int8: symmetric, per
        group of `group_size` inputs, None = per output channel; int4: Q4_0's rule per group of
        `group_size` inputs, a multiple of 32, None = 32). On the CPU the default is "fp32" on the
        packed decode kernels, or the inference directory's own dtype. With adapter_path (LoRA
        adapters of scripts/lora.py, unfused) or on another device, the Transformer runs as it is.

        draft_model: a second model (any of the forms above) for speculative="draft", loaded the
        same way (an inference directory in its own dtype); its tokenizer must be this one's.
        """
        from ..checkpoint import load_model_dir
        from .saved import is_inference_dir, load_inference_model

        if dtype is not None:
            check_dtype(dtype)
        if device is None:
            from ..device import pick_device

            device = pick_device("auto")
        on_cpu = torch.device(device).type == "cpu"
        if is_inference_dir(path) and (not on_cpu or adapter_path is not None):
            raise ValueError(f"{path} holds packed inference weights: they run on the CPU, without adapters")
        model, tokenizer, kind = load_model_dir(path, tokenizer_path, ops_impl=ops_impl,
                                                load_quantized=lambda p: load_inference_model(p, dtype))
        if kind != "quantized":
            if adapter_path is not None:
                from ..lora.adapters import load_adapters

                load_adapters(model, adapter_path)
            packed = on_cpu and adapter_path is None and ops_impl == "fused"
            if dtype not in (None, "fp32") and not packed:
                raise ValueError(f"dtype={dtype!r} runs on the CPU with fused ops and no adapters (fuse LoRA "
                                 "adapters first with scripts/fuse.py); got "
                                 f"device={device}, ops_impl={ops_impl}, adapters={adapter_path is not None}")
            if packed:
                model = DecodeModel.from_transformer(model, dtype or "fp32", group_size)
        draft = None
        if draft_model is not None:
            draft = cls.from_pretrained(draft_model, device, ops_impl=ops_impl, group_size=group_size,
                                        dtype=None if is_inference_dir(draft_model) else dtype)
        return cls(model, tokenizer, device, draft)

    # -- public API ------------------------------------------------------------------------------
    def generate(self, prompt: str | list[str], max_new_tokens: int = 100, temperature: float = 0.8,
                 top_k: int | None = 50, top_p: float | None = 0.95, repetition_penalty: float = 1.0,
                 seed: int | None = None, stream: bool = False, max_length: int | None = None,
                 stop_at_eos: bool = True, speculative: str | None = None, num_draft_tokens: int = 5,
                 ngram: int = 3):
        """Continues `prompt` (a string or a list of strings).

        Returns the generated text (without the prompt): a string, or a list for a list of prompts.
        With stream=True, returns an iterator of text pieces instead (single prompt only).
        `max_length` (an older name) is accepted as an alias of max_new_tokens.
        speculative: None, "prompt_lookup" or "draft" (speculative.py): up to `num_draft_tokens`
        drafted tokens verified per forward (prompt lookup matches the last `ngram` tokens); the
        same text as plain decoding when greedy, the same distribution when sampling.
        """
        if max_length is not None:
            max_new_tokens = max_length
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        check_sampling(temperature, top_k, top_p, repetition_penalty)
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt) if isinstance(prompt, (list, tuple)) else None
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompt must be a string or a non-empty list of strings")
        if stream and not single:
            raise ValueError("stream=True takes a single prompt")
        ids = [[self.tokenizer.bos_id] + self.tokenizer.encode(p) for p in prompts]
        steps = self.generate_ids(ids, max_new_tokens, temperature, top_k, top_p, repetition_penalty,
                                  seed, stop_at_eos, speculative, num_draft_tokens, ngram)
        if stream:
            return self._stream_text(steps)
        outputs = [[] for _ in prompts]
        for step in steps:
            for b, tok in enumerate(step):
                if tok is not None:
                    outputs[b].append(tok)
        texts = [self.tokenizer.decode(o) for o in outputs]
        return texts[0] if single else texts

    def chat(self, messages: str | list, max_new_tokens: int = 100, temperature: float = 0.8,
             top_k: int | None = 50, top_p: float | None = 0.95, repetition_penalty: float = 1.0,
             seed: int | None = None, speculative: str | None = None, num_draft_tokens: int = 5,
             ngram: int = 3) -> str:
        """The assistant's answer to `messages` (a list of {"role", "content"}, or one user string),
        prompted with the chat template of data/chat.py (as SFT data is), up to its <|im_end|>."""
        from ..data.chat import encode_chat

        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        ids, _ = encode_chat(messages, self.tokenizer, add_generation_prompt=True)
        out = []
        for step in self.generate_ids([ids], max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed,
                                      True, speculative, num_draft_tokens, ngram):
            if step[0] is None or step[0] == self.tokenizer.im_end_id:
                break
            out.append(step[0])
        return self.tokenizer.decode(out)

    def generate_ids(self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
                     top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
                     seed: int | None = None, stop_at_eos: bool = True, speculative: str | None = None,
                     num_draft_tokens: int = 5, ngram: int = 3,
                     stats: SpeculativeStats | None = None) -> Iterator[list[int | None]]:
        """Yields, per step, the new token of each sequence (None once a sequence has finished).
        With `speculative`, one step per new token still (every sequence drafts and verifies on its
        own, in one batched forward per round); `stats` (a SpeculativeStats) counts the drafts
        proposed and accepted."""
        check_sampling(temperature, top_k, top_p, repetition_penalty)
        check_speculative(speculative, num_draft_tokens, ngram, self.draft is not None)
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        if speculative is not None:
            return speculative_ids(self, prompts, max_new_tokens, temperature, top_k, top_p,
                                   repetition_penalty, seed, stop_at_eos, speculative, num_draft_tokens,
                                   ngram, stats)
        return self._plain_ids(prompts, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed,
                               stop_at_eos)

    @torch.inference_mode()
    def _plain_ids(self, prompts, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed,
                   stop_at_eos) -> Iterator[list[int | None]]:
        cfg = self.model.config
        ctx = cfg.max_seq_length
        prompts = [self._fit(p, ctx, max_new_tokens) for p in prompts]
        B = len(prompts)
        total = max(len(p) for p in prompts) + max_new_tokens
        cache = KVCache.for_model(cfg, B, min(total, ctx), dtype=self._cache_dtype(), device=self.device)
        gen = torch.Generator(device="cpu")
        gen.manual_seed(seed if seed is not None else random.randrange(2**63))
        seen = torch.zeros(B, cfg.vocab_size, dtype=torch.bool, device=self.device)
        # Prefill: prompts of one length together, else each into its own row of the cache.
        if len({len(p) for p in prompts}) == 1:
            t = torch.tensor(prompts, device=self.device)
            logits = self.model(t, kv_cache=cache, last_logits_only=True)[:, -1]
            seen[torch.arange(B).unsqueeze(1), t] = True
        else:
            last = []
            for b, p in enumerate(prompts):
                t = torch.tensor([p], device=self.device)
                last.append(self.model(t, kv_cache=cache.row(b), last_logits_only=True)[0, -1])
                seen[b, t[0]] = True
            logits = torch.stack(last)
        done = [False] * B
        eos, pieces = self.tokenizer.eos_id, self.tokenizer.vocab_size
        rows = torch.arange(B, device=self.device)
        for _ in range(max_new_tokens):
            if repetition_penalty != 1.0:
                logits = apply_repetition_penalty(logits.float(), seen, repetition_penalty)
            # Only ids the tokenizer can decode: a model may have more embedding rows than pieces.
            nxt = sample_next(_float_cpu(logits, pieces), temperature, top_k, top_p, gen)
            ids = nxt.tolist()  # one conversion per step, not one per sequence
            out = [None if done[b] else ids[b] for b in range(B)]
            if stop_at_eos:
                done = [d or t == eos for d, t in zip(done, ids)]
                out = [None if o == eos else o for o in out]
            yield out
            if all(done):
                return
            if nxt.device != self.device:
                nxt = nxt.to(self.device)
            if repetition_penalty != 1.0:
                seen[rows, nxt] = True
            logits = self.model(nxt.view(B, 1), kv_cache=cache, last_logits_only=True)[:, -1]

    @staticmethod
    def sample_during_training(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
        """The Trainer's `sampler`: a seeded sample from the model as it is; leaves it in train mode."""
        was_training = model.training
        text = Generator(model, tokenizer).generate(prompt, max_new_tokens=max_new_tokens, temperature=0.8,
                                                    top_k=50, top_p=0.95, seed=0)
        model.train(was_training)
        return text

    # -- helpers ---------------------------------------------------------------------------------
    def _fit(self, ids: list[int], ctx: int, max_new_tokens: int) -> list[int]:
        if max_new_tokens >= ctx:
            raise ValueError(f"max_new_tokens ({max_new_tokens}) must be smaller than the model's context "
                             f"length ({ctx})")
        room = ctx - max_new_tokens
        if len(ids) > room:
            log.warning("prompt of %d tokens + %d new tokens exceeds the context of %d: keeping the last %d "
                        "prompt tokens", len(ids), max_new_tokens, ctx, room)
            ids = ids[-room:]
        return ids

    def _cache_dtype(self) -> torch.dtype:
        if isinstance(self.model, DecodeModel):
            return self.model.cache_dtype
        return next(self.model.parameters()).dtype

    def _stream_text(self, steps) -> Iterator[str]:
        # Decode the whole sequence each time and emit the new suffix, so multi-token characters
        # (byte fallback) come out whole.
        tokens: list[int] = []
        emitted = ""
        for step in steps:
            if step[0] is None:
                break
            tokens.append(step[0])
            text = self.tokenizer.decode(tokens)
            if text.endswith("\ufffd"):
                continue
            if len(text) > len(emitted):
                yield text[len(emitted):]
                emitted = text
        text = self.tokenizer.decode(tokens)
        if len(text) > len(emitted):
            yield text[len(emitted):]


def _float_cpu(logits: torch.Tensor, pieces: int) -> torch.Tensor:
    """logits[:, :pieces] as float32 on the CPU, with no call where nothing changes: after a decode step
    has streamed the weights, each call, even one that returns its input, costs tens of microseconds."""
    if logits.shape[-1] != pieces:
        logits = logits[:, :pieces]
    if logits.dtype != torch.float32:
        logits = logits.float()
    return logits if logits.device.type == "cpu" else logits.cpu()
