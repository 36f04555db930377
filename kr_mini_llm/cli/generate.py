"""Generate Korean text with a trained kr-mini-llm model (KV cache, streaming).

    python scripts/generate.py --model checkpoints/demo --prompt "오늘 날씨가"
    python scripts/generate.py --model checkpoints/demo --interactive
    python scripts/generate.py --model checkpoints/demo --prompt "..." --temperature 0 --speculative prompt_lookup
"""
import argparse

from ..errors import KrMiniLlmError
from ..inference import Generator
from ..inference.sampling import check_sampling
from ..inference.speculative import check_speculative
from .command import command


def build_parser(prog=None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="checkpoint directory, training output directory, or a scripts/quantize.py directory")
    p.add_argument("--prompt", action="append", help="prompt text (repeat for a batch)")
    p.add_argument("--interactive", action="store_true", help="read prompts from the terminal")
    p.add_argument("--max_new_tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8, help="0 for greedy")
    p.add_argument("--top_k", type=int, default=50, help=">= 1; the vocabulary size or more keeps every token")
    p.add_argument("--top_p", type=float, default=0.95)
    p.add_argument("--repetition_penalty", type=float, default=1.1)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "int8", "int4"], default=None,
                   help="CPU decode weights (default: fp32, or the dtype of a scripts/quantize.py directory)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.model if the checkpoint has none")
    p.add_argument("--no_stream", action="store_true", help="print each answer whole")
    p.add_argument("--adapter-path", "--adapter_path", dest="adapter_path",
                   help="LoRA adapters from scripts/lora.py to apply (unfused)")
    p.add_argument("--chat", action="store_true",
                   help="treat each prompt as a user message in the chat template; print the assistant's answer")
    sp = p.add_argument_group("speculative decoding (docs/speculative.md): same text when greedy, same "
                              "distribution when sampling; several --prompt with --no_stream run as one batch")
    sp.add_argument("--speculative", choices=["prompt_lookup", "draft"], default=None,
                    help="draft tokens from the text so far (prompt_lookup) or from --draft-model, and verify "
                         "them in one forward (default: draft when --draft-model is given, else off)")
    sp.add_argument("--draft-model", "--draft_model", dest="draft_model",
                    help="a smaller model trained with the same tokenizer (any --model form)")
    sp.add_argument("--num-draft-tokens", "--num_draft_tokens", dest="num_draft_tokens", type=int, default=5,
                    help="tokens drafted per verification (>= 1)")
    sp.add_argument("--ngram", type=int, default=3, help="prompt_lookup: the longest suffix matched (>= 1)")
    return p


def generate_kwargs(args) -> dict:
    """The Generator.generate settings the command line gives."""
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                speculative=args.speculative, num_draft_tokens=args.num_draft_tokens, ngram=args.ngram)


def run_one(gen, prompt, args):
    kw = generate_kwargs(args)
    if args.chat:
        print(f"> {prompt}\n{gen.chat(prompt, **kw)}")
        return
    if args.no_stream:
        print(prompt + gen.generate(prompt, **kw))
        return
    print(prompt, end="", flush=True)
    for piece in gen.generate(prompt, stream=True, **kw):
        print(piece, end="", flush=True)
    print()


@command(FileNotFoundError, ValueError)
def main(argv=None, prog=None) -> int:
    args = build_parser(prog).parse_args(argv)
    if not args.prompt and not args.interactive:
        raise KrMiniLlmError("give --prompt TEXT or --interactive")
    if args.speculative is None and args.draft_model:
        args.speculative = "draft"
    check_sampling(args.temperature, args.top_k, args.top_p, args.repetition_penalty)  # before the model loads
    check_speculative(args.speculative, args.num_draft_tokens, args.ngram, args.draft_model is not None)
    if args.draft_model and args.speculative != "draft":
        raise ValueError(f"--draft-model drafts only with --speculative draft, not {args.speculative}")
    gen = Generator.from_pretrained(args.model, device=args.device, tokenizer_path=args.tokenizer,
                                    adapter_path=args.adapter_path, dtype=args.dtype,
                                    draft_model=args.draft_model)
    if args.prompt and len(args.prompt) > 1 and args.no_stream and not args.chat:
        # one batch: each prompt its own row (with --speculative each drafts and verifies on its own)
        for p, text in zip(args.prompt, gen.generate(args.prompt, **generate_kwargs(args))):
            print(p + text)
    else:
        for p in args.prompt or []:
            run_one(gen, p, args)
    if args.interactive:
        print("프롬프트를 입력하세요 (빈 줄 또는 Ctrl-D로 종료).")
        while True:
            try:
                prompt = input("> ")
            except (EOFError, KeyboardInterrupt):
                print()
                break
            if not prompt.strip():
                break
            run_one(gen, prompt, args)
    return 0
