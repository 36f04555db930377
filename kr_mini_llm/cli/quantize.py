"""Save a model's weights packed for CPU inference (int4, int8 or bf16); the Generator loads the result.

    python scripts/quantize.py --model checkpoints/demo --dtype int8 --output models/demo-int8
    python scripts/quantize.py --model checkpoints/demo --dtype int8 --group_size 128 --output models/demo-int8-g128
    python scripts/quantize.py --model checkpoints/demo --dtype int4 --output models/demo-int4
    python scripts/generate.py --model models/demo-int8 --prompt "대한민국의 수도는"

int8 is symmetric: q = round(w / scale) in [-127, 127] with one fp32 scale per output channel (the
default) or per group of --group_size consecutive inputs (it must divide every layer's input size).
int4 is llama.cpp's Q4_0 (q in [-8, 7], scale = the group's largest-magnitude weight / -8, stored in
fp16) per group of --group_size inputs (a multiple of 32; default 32), packed two per byte;
a layer whose input size the group does not divide stays int8 per output channel (said once).
The scheme is recorded in OUTPUT/inference.json; RMSNorm weights stay fp32.
"""
import argparse
from pathlib import Path

from ..errors import KrMiniLlmError
from ..io.outputs import add_overwrite_flag, claim_output
from .command import command


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def build_parser(prog=None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint directory or training output directory")
    p.add_argument("--dtype", required=True, choices=["int4", "int8", "bf16"])
    p.add_argument("--group_size", type=int, default=None,
                   help="int8: inputs per scale (e.g. 32, 64, 128); default: one scale per output channel. "
                        "int4: a multiple of 32; default 32")
    p.add_argument("--output", required=True, help="directory to create (an existing one only with --overwrite)")
    add_overwrite_flag(p)
    return p


@command(FileNotFoundError, ValueError)
def main(argv=None, prog=None) -> int:
    args = build_parser(prog).parse_args(argv)

    from ..inference.decode_model import DecodeModel
    from ..inference.packed import INT4_GROUP_SIZE
    from ..inference.saved import save_inference_model
    from ..io import layout
    from ..checkpoint import load_model

    if args.group_size is not None and args.dtype == "bf16":
        raise KrMiniLlmError("--group_size applies to --dtype int8 and int4 only")
    claim_output(args.output, overwrite=args.overwrite, inputs=[args.model])
    model, ckpt = load_model(args.model)
    packed = DecodeModel.from_transformer(model, args.dtype, args.group_size)
    tok = ckpt / layout.TOKENIZER
    out = save_inference_model(packed, args.output, tok if tok.exists() else None, args.group_size, str(ckpt))
    src = (ckpt / layout.MODEL_WEIGHTS).stat().st_size
    dst = (out / layout.MODEL_WEIGHTS).stat().st_size
    scheme = ""
    if args.dtype == "int8":
        scheme = "per output channel" if args.group_size is None else f"per group of {args.group_size} inputs"
    elif args.dtype == "int4":
        scheme = f"per group of {args.group_size or INT4_GROUP_SIZE} inputs"
        if packed.int8_layers:
            scheme += f" ({len(packed.int8_layers)} layers int8 per output channel: input size not a multiple)"
    print(f"{out}: {args.dtype} {scheme}".rstrip() + f"; model.safetensors {dst / 2**20:,.1f} MiB "
          f"(from {src / 2**20:,.1f} MiB, {dst / src:.2f}x); directory {dir_size(out) / 2**20:,.1f} MiB")
    return 0
