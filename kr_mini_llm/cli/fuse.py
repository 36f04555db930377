"""Fuse LoRA adapters into their base model (mlx-lm's fuse): a full checkpoint the Generator,
scripts/lora.py --model and, with --export-hf, HF transformers and llama.cpp's converter take.

    python scripts/fuse.py --model checkpoints/demo --adapter-path adapters/demo --save-path models/demo-fused --export-hf
"""
import argparse

from ..export.exporter import write_hf_copy
from ..io.outputs import add_overwrite_flag, claim_output
from ..lora.base import load_base_model
from ..lora.fuse import fuse_to_dir
from .command import command


def build_parser(prog=None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the base model the adapters were trained on")
    p.add_argument("--adapter-path", default="adapters", help="directory with adapters.safetensors + adapter_config.json")
    p.add_argument("--save-path", default="fused_model",
                   help="output directory to create (an existing one only with --overwrite)")
    p.add_argument("--export-hf", action="store_true", help="also write save-path/hf for transformers / llama.cpp")
    p.add_argument("--tokenizer", help="tokenizer.model when --model holds none")
    add_overwrite_flag(p)
    return p


@command(FileNotFoundError, ValueError)
def main(argv=None, prog=None) -> int:
    args = build_parser(prog).parse_args(argv)
    claim_output(args.save_path, overwrite=args.overwrite, flag="--save-path",
                 inputs=[args.model, args.adapter_path, args.tokenizer])
    print(f"Loading pretrained model {args.model}")
    base = load_base_model(args.model, args.tokenizer)
    out = fuse_to_dir(base, args.adapter_path, args.save_path,
                      write_hf=write_hf_copy if args.export_hf else None)
    print(f"Fused {args.adapter_path} into {out}" + (f" (HF copy in {out / 'hf'})" if args.export_hf else ""))
    return 0
