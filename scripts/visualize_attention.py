#!/usr/bin/env python3
"""Heat maps of a model's attention weights for a prompt, per layer and head, with the prompt's
tokens (Hangul readable) on both axes.

    python scripts/visualize_attention.py --model checkpoints/demo --prompt "대한민국의 수도는 서울이다" \\
        [--layer L] [--head H] [--output attention/]

Writes attention/layer_LL.png (all heads of each layer in a grid), or layer_LL_head_HH.png with
--head. The weights come from the reference attention path (the fused kernel never forms them).
Hangul needs a Korean font: fonts-nanum on Debian/Ubuntu (scripts/install_system_deps.sh --test installs
it), or --font FILE.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kr_mini_llm.cli.command import command  # noqa: E402
from kr_mini_llm.io.outputs import add_overwrite_flag, claim_output  # noqa: E402
from kr_mini_llm.eval.attention_maps import (attention_weights, find_korean_font, plot_attention,  # noqa: E402
                                             token_labels)

MAX_TOKENS = 64  # beyond this the tick labels become unreadable


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint or output directory")
    p.add_argument("--prompt", required=True)
    p.add_argument("--layer", type=int, default=None, help="only this layer (0-based; default: all)")
    p.add_argument("--head", type=int, default=None, help="only this head (0-based; default: all)")
    p.add_argument("--output", default="attention", help="directory for the PNG files")
    p.add_argument("--font", default=None, help="a .ttf/.otf/.ttc font file with Hangul (default: found)")
    p.add_argument("--no_bos", action="store_true", help="do not put <s> in front of the prompt")
    add_overwrite_flag(p)
    return p.parse_args(argv)


@command(FileNotFoundError, ValueError)
def main(argv=None) -> int:
    args = parse_args(argv)
    claim_output(args.output, overwrite=args.overwrite, inputs=[args.model])
    font = args.font or find_korean_font()
    if args.font and not Path(args.font).is_file():
        raise FileNotFoundError(f"--font {args.font!r} not found")
    from kr_mini_llm.inference import Generator
    from kr_mini_llm.checkpoint import CheckpointError

    try:
        # ops_impl="reference": the Transformer on the reference ops, whose attention is recorded
        gen = Generator.from_pretrained(args.model, device="cpu", ops_impl="reference")
    except CheckpointError as e:
        raise FileNotFoundError(f"--model {args.model!r}: {e}") from None
    cfg = gen.model.config
    if args.layer is not None and not 0 <= args.layer < cfg.num_layers:
        raise ValueError(f"--layer {args.layer} does not exist: the model has {cfg.num_layers} layers "
                         f"(0 to {cfg.num_layers - 1})")
    if args.head is not None and not 0 <= args.head < cfg.num_heads:
        raise ValueError(f"--head {args.head} does not exist: the model has {cfg.num_heads} heads per layer "
                         f"(0 to {cfg.num_heads - 1})")
    tok = gen.tokenizer
    ids = ([] if args.no_bos else [tok.bos_id]) + tok.encode(args.prompt)
    if not ids:
        raise ValueError("--prompt is empty")
    if len(ids) > MAX_TOKENS:
        raise ValueError(f"--prompt is {len(ids)} tokens; at most {MAX_TOKENS} fit readable labels")
    maps = attention_weights(gen.model, ids)
    paths = plot_attention(maps, token_labels(tok, ids), args.output,
                           layers=None if args.layer is None else [args.layer],
                           heads=None if args.head is None else [args.head], font=font,
                           title=f"{args.prompt}  ({len(ids)} tokens)")
    for p in paths:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
