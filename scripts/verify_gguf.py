#!/usr/bin/env python3
"""Check a GGUF export against our own model with llama.cpp itself: the prompt token ids, and the
greedy continuation of each prompt (llama.cpp from scripts/build_llama_cpp.sh).

    python scripts/verify_gguf.py --model checkpoints/demo --gguf exports/demo-f32.gguf
    python scripts/verify_gguf.py --model checkpoints/demo --gguf exports/demo-q8_0.gguf --prompt "오늘 날씨가"

Prints, per prompt, how many of the greedy tokens agree before the first difference, then how many
prompts agree on all of them. Exit status 1 when some prompt's ids differ (tokenizer mismatch).
"""
import argparse
import sys

import torch

from kr_mini_llm.cli.command import command
from kr_mini_llm.errors import KrMiniLlmError
from kr_mini_llm.export import llama_cpp, load_for_export
from kr_mini_llm.inference import Generator

PROMPTS = ["대한민국의 수도는", "오늘 아침에는", "한국어 문장을 만들어 보면", "서울에서 부산까지",
           "옛날 옛적에 한 마을에"]


@command()
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the checkpoint the GGUF was exported from")
    p.add_argument("--adapter-path", help="the adapters fused into the GGUF, if any")
    p.add_argument("--gguf", required=True)
    p.add_argument("--prompt", action="append", help="a prompt (repeatable; default: five Korean prompts)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    args = p.parse_args(argv)
    reason = llama_cpp.missing_reason()
    if reason:
        raise KrMiniLlmError(reason)
    model, tok = load_for_export(args.model, args.adapter_path)
    gen = Generator(model, tok, device="cpu")
    n, full, ids_ok = args.max_new_tokens, 0, True
    prompts = args.prompt or PROMPTS
    for prompt in prompts:
        ids = [tok.bos_id] + tok.encode(prompt)        # as Generator.generate builds it
        theirs_ids = llama_cpp.tokenize(args.gguf, prompt, add_bos=True)
        ids_ok &= theirs_ids == ids
        with torch.inference_mode():
            ours = [s[0] for s in gen.generate_ids([ids], n, temperature=0.0, stop_at_eos=False)]
        theirs = llama_cpp.greedy(args.gguf, ids, n)
        same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), n)
        full += same == n
        print(f"{prompt!r}: prompt ids {'equal' if theirs_ids == ids else f'DIFFER {theirs_ids} vs {ids}'}; "
              f"{same}/{n} greedy tokens equal before the first difference")
        if same < n:
            print(f"  ours:      {tok.decode(ours)!r}\n  llama.cpp: {tok.decode(theirs)!r}")
    print(f"{full}/{len(prompts)} prompts: llama.cpp gives our {n} greedy tokens exactly")
    return 0 if ids_ok else 1


if __name__ == "__main__":
    sys.exit(main())
