"""Export a model to GGUF (llama.cpp, Ollama; with a Modelfile beside it) or to a HF directory.

    python scripts/export.py --model checkpoints/demo --format gguf --outtype q8_0 --output exports/demo-q8_0.gguf
    python scripts/export.py --model checkpoints/demo --format gguf --outtype q4_0 --output exports/demo-q4_0.gguf
    python scripts/export.py --model checkpoints/demo --adapter-path adapters/demo --format hf --output exports/demo-hf

--model is a checkpoint or output directory of scripts/train.py (or a HF Llama/Qwen3 directory);
with --adapter-path, the LoRA adapters of scripts/lora.py are fused in first. The output must not
exist yet (--overwrite replaces it) and may not be or hold the input; nothing is written when the
input is wrong.
"""
import argparse

from ..export import FORMATS, export_model
from ..io.outputs import add_overwrite_flag
from .command import command


def build_parser(prog=None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint or output directory (or a HF Llama/Qwen3 directory)")
    p.add_argument("--adapter-path", help="LoRA adapters (adapters.safetensors + adapter_config.json) to fuse in")
    p.add_argument("--format", choices=FORMATS, default="gguf")
    p.add_argument("--outtype", choices=("f32", "f16", "bf16", "q8_0", "q4_0"), default="f32",
                   help="weight type (q8_0, q4_0: GGUF only; 1-D norms stay f32)")
    p.add_argument("--output", required=True, help="the .gguf file, or the HF directory, to create")
    p.add_argument("--tokenizer", help="tokenizer.model when --model holds none")
    p.add_argument("--name", help="model name stored in the GGUF (default: the model directory's name)")
    add_overwrite_flag(p)
    return p


@command()
def main(argv=None, prog=None) -> int:
    args = build_parser(prog).parse_args(argv)
    print(f"Loading {args.model}" + (f" + adapters {args.adapter_path} (fused)" if args.adapter_path else ""))
    r = export_model(args.model, args.output, args.format, args.outtype, args.adapter_path, args.tokenizer,
                     args.name, overwrite=args.overwrite)
    if r.format == "gguf":
        print(f"Wrote {r.path} ({r.arch}, {r.outtype}, {r.path.stat().st_size / 2**20:.1f} MiB) and {r.files[1]}")
        if r.kept_unquantized:
            print(f"  not {r.outtype} ({r.outtype} needs rows that are a multiple of 32): "
                  f"{', '.join(r.kept_unquantized)}")
        print(f"  llama.cpp: llama-completion -m {r.path} -p '대한민국의 수도는' -n 60   (chat: llama-cli -m {r.path})\n"
              f"  Ollama:    ollama create kr-mini -f {r.files[1]} && ollama run kr-mini")
    else:
        print(f"Wrote {r.path}: " + ", ".join(f.name for f in r.files))
    return 0
