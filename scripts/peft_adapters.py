#!/usr/bin/env python3
"""Convert LoRA adapters between kr-mini-llm (scripts/lora.py) and HF PEFT.

    # ours -> PEFT (adapter_model.safetensors + adapter_config.json), for peft on the model of save_hf
    python scripts/peft_adapters.py export --model checkpoints/demo --adapter-path adapters/demo --save-path peft/demo
    # PEFT -> ours (adapters.safetensors + adapter_config.json), for scripts/generate.py / fuse.py
    python scripts/peft_adapters.py import --model hf/llama --peft-path peft/demo --adapter-path adapters/from-peft
"""
import argparse
import sys

from kr_mini_llm.cli.command import command
from kr_mini_llm.lora import load_adapters
from kr_mini_llm.lora.base import load_base_model
from kr_mini_llm.lora.peft import export_peft, peft_to_adapter_dir
from kr_mini_llm.io.outputs import add_overwrite_flag, claim_output


@command(FileNotFoundError, ValueError)
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="our adapters -> PEFT")
    ex.add_argument("--model", required=True, help="the base model the adapters were trained on")
    ex.add_argument("--adapter-path", required=True)
    ex.add_argument("--save-path", required=True)
    ex.add_argument("--base-name", help="base_model_name_or_path to record (default: --model)")
    im = sub.add_parser("import", help="PEFT adapters -> ours")
    im.add_argument("--model", required=True, help="the base model (ours or HF Llama/Qwen3) the adapters belong to")
    im.add_argument("--peft-path", required=True)
    im.add_argument("--adapter-path", required=True)
    for s in (ex, im):
        s.add_argument("--tokenizer", help="tokenizer.model when --model holds none")
        add_overwrite_flag(s)
    args = p.parse_args(argv)
    if args.command == "export":
        claim_output(args.save_path, overwrite=args.overwrite, flag="--save-path",
                     inputs=[args.model, args.adapter_path, args.tokenizer])
    else:
        claim_output(args.adapter_path, overwrite=args.overwrite, flag="--adapter-path",
                     inputs=[args.model, args.peft_path, args.tokenizer])
    base = load_base_model(args.model, args.tokenizer)
    if args.command == "export":
        load_adapters(base.model, args.adapter_path)
        out = export_peft(base.model, args.save_path, args.base_name or str(args.model))
    else:
        out = peft_to_adapter_dir(base, args.peft_path, args.adapter_path)
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
