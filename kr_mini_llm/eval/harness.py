"""Our model in EleutherAI's lm-evaluation-harness (`lm-eval`), registered as "kr-mini-llm".

    python scripts/run_lm_eval.py --model kr-mini-llm --model_args pretrained=checkpoints/demo \\
        --tasks ko_next_sentence                      # the project's own offline Korean task
    python scripts/run_lm_eval.py --model kr-mini-llm --model_args pretrained=DIR,batch_size=16 \\
        --tasks kobest_boolq,kobest_copa,haerae,kmmlu  # hub tasks: need the Hugging Face Hub

    import lm_eval, kr_mini_llm.eval.harness        # importing registers the model
    lm_eval.simple_evaluate(model="kr-mini-llm", model_args="pretrained=DIR", tasks=[...])

The harness has no plug-in discovery for models, so `lm_eval` itself does not know the name:
scripts/run_lm_eval.py imports this module and then runs lm_eval's own command line, with
the same arguments.

Token boundaries. Every sequence starts with <s>, as every training document did. A
(context, continuation) pair is encoded as the harness's causal models do it: the whole
string once, the context alone, and the continuation is what follows the context's tokens;
when the context's tokens are not a prefix of the whole (a merge across the boundary) the
continuation is encoded on its own instead, so its score covers exactly its own text.
An empty context is scored after <s> alone.
"""
from __future__ import annotations

import logging
from typing import Iterable

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

__all__ = ["KrMiniLLM"]

log = logging.getLogger(__name__)


def _batches(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@register_model("kr-mini-llm", "kr_mini_llm")
class KrMiniLLM(TemplateLM):
    """pretrained: a checkpoint or output directory (its latest checkpoint). batch_size:
    sequences per forward. max_length: context (default the model's max_seq_length).
    max_gen_toks: default generation budget. device: cpu | cuda | mps (default auto)."""

    def __init__(self, pretrained: str, batch_size: int | str = 8, max_length: int | None = None,
                 max_gen_toks: int = 256, device: str | None = None, ops: str = "fused", **kwargs):
        super().__init__()
        from ..inference import Generator

        if device and device.startswith("cuda") and not torch.cuda.is_available():
            # lm_eval's --device defaults to cuda; like its own HF model, take what this machine has
            log.warning("kr-mini-llm: device %r is not available here; choosing automatically", device)
            device = None
        self.generator = Generator.from_pretrained(pretrained, device=device, ops_impl=ops)
        self.model, self.tokenizer_ = self.generator.model, self.generator.tokenizer
        self._device = self.generator.device
        self._batch_size = 8 if batch_size in (None, "auto") else int(str(batch_size).split(":")[0])
        self._max_length = int(max_length or self.model.config.max_seq_length)
        self.max_gen_toks = int(max_gen_toks)
        self.pretrained = str(pretrained)

    # -- what the harness asks of every model ---------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer_.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tokenizer_.bos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self):
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return f"kr-mini-llm-{self.tokenizer_.fingerprint}"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        ids = self.tokenizer_.encode(string)
        return ([self.prefix_token_id] + ids) if add_special_tokens is not False else ids

    def tok_decode(self, tokens) -> str:
        return self.tokenizer_.decode(tokens)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        from ..data.chat import render_chat

        return render_chat(chat_history, add_generation_prompt=add_generation_prompt)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip())   # trailing spaces belong to the continuation
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tok_encode(context + continuation)
        context_enc = self.tok_encode(context)
        if whole[:len(context_enc)] == context_enc:
            return context_enc, whole[len(context_enc):]
        return context_enc, self.tok_encode(continuation, add_special_tokens=False)

    # -- scoring ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: ((context, continuation), context_ids, continuation_ids) -> (log p, is greedy)."""
        results: list = [(0.0, True) if not r[2] else None for r in requests]   # empty continuation: log 1
        order = sorted((i for i, r in enumerate(requests) if r[2]),          # longest first: less padding
                       key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        for idx in _batches(order, self.batch_size):
            rows, conts = [], []
            for i in idx:
                _, ctx, cont = requests[i]
                seq = (ctx + cont)[-(self.max_length + 1):]   # keep the end, as the harness's models do
                rows.append(seq[:-1])
                conts.append(cont[-len(seq[:-1]):] if len(cont) > len(seq) - 1 else cont)
            T = max(map(len, rows))
            x = torch.full((len(rows), T), self.tokenizer_.pad_id, dtype=torch.long)
            for r, seq in enumerate(rows):
                x[r, :len(seq)] = torch.tensor(seq)
            logits = self.model(x.to(self.device)).float()
            for r, (i, seq, cont) in enumerate(zip(idx, rows, conts)):
                n = len(cont)
                logp = F.log_softmax(logits[r, len(seq) - n:len(seq)], dim=-1)
                target = torch.tensor(cont, device=logp.device)
                score = float(logp.gather(1, target[:, None]).sum())
                results[i] = (score, bool((logp.argmax(-1) == target).all()))
                if requests[i][0] is not None:     # rolling windows are cached as their whole text
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts, in disjoint windows of the model's context, each token
        predicted once (the first after <s>)."""
        windows, owner = [], []
        for n, req in enumerate(requests):
            (text,) = req.args
            for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(text, add_special_tokens=False), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, ctx, cont))
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, (score, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm=True)):
            totals[n] += score
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # -- generation ------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, with do_sample/temperature) continuations, cut at the first `until`
        string; batched over requests with the same generation settings."""
        out: list = [None] * len(requests)
        groups: dict = {}
        for i, req in enumerate(requests):
            context, kw = req.args
            groups.setdefault(repr(sorted((kw or {}).items())), []).append(i)
        for members in groups.values():
            kw = dict(requests[members[0]].args[1] or {})
            until = kw.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kw.pop("max_gen_toks", self.max_gen_toks))
            temperature = float(kw.pop("temperature", 0.0)) if kw.pop("do_sample", False) else 0.0
            top_p = kw.pop("top_p", None)
            seed = kw.pop("seed", 1234)
            for idx in _batches(members, self.batch_size):
                texts = self._generate([requests[i].args[0] for i in idx], until, max_new, temperature, top_p, seed)
                for i, text in zip(idx, texts):
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out

    def _generate(self, contexts, until, max_new, temperature, top_p, seed) -> list[str]:
        room = self.max_length - max_new
        if room < 1:
            raise ValueError(f"max_gen_toks {max_new} leaves no room for a prompt in the context of {self.max_length}")
        prompts = [self.tok_encode(c)[-room:] for c in contexts]
        tokens: list[list[int]] = [[] for _ in contexts]
        done = [False] * len(contexts)
        for step in self.generator.generate_ids(prompts, max_new, temperature=temperature, top_p=top_p, seed=seed):
            for b, tok in enumerate(step):
                if tok is None or done[b]:
                    done[b] = True
                    continue
                tokens[b].append(tok)
                if until and any(u in self.tokenizer_.decode(tokens[b][-64:]) for u in until):
                    done[b] = True
            if all(done):
                break
        texts = [self.tokenizer_.decode(t) for t in tokens]
        for u in until:
            texts = [t.split(u, 1)[0] for t in texts]
        return texts
