#!/usr/bin/env python3
"""Checks the model configs, the presets and the TransformerConfig methods.

    python3 scripts/test_config.py [--configs DIR]

Prints each config with its exact parameter count and exits non-zero if any check fails.
"""
import argparse
import sys
import tempfile
from pathlib import Path

from kr_mini_llm import ConfigError, TransformerConfig

ROOT = Path(__file__).resolve().parents[1]
FILES = [("Tiny (데모·테스트)", "model_tiny.yaml"), ("Small (레거시)", "model_small.yaml"),
         ("Medium (권장)", "model_medium.yaml"), ("Large (도전)", "model_large.yaml")]
RULE = "=" * 60


def check_files(configs: Path) -> bool:
    print(f"\n{RULE}\n🧪 설정 파일 로드 테스트\n{RULE}")
    ok = True
    for label, name in FILES:
        path = configs / name
        print(f"\n📄 {label}: {path}")
        try:
            c = TransformerConfig.from_yaml(path)
        except (ConfigError, OSError) as e:
            print(f"   ❌ 로드 실패: {e}")
            ok = False
            continue
        print("   ✅ 로드 성공")
        print(f"   - Hidden size: {c.hidden_size}")
        print(f"   - Layers: {c.num_layers}")
        print(f"   - Heads: {c.num_heads} (KV heads: {c.num_kv_heads})")
        print(f"   - Parameters: {c.num_parameters / 1e6:.1f}M ({c.num_parameters:,})")
    return ok


def check_presets(configs: Path) -> bool:
    ok = True
    for name in ("tiny", "small", "medium", "large"):
        preset = getattr(TransformerConfig, name)()
        path = configs / f"model_{name}.yaml"
        try:
            same = not path.exists() or TransformerConfig.from_yaml(path) == preset
        except ConfigError:
            same = False  # already reported by check_files
        if not same:
            print(f"   ❌ preset {name}() differs from {path}")
            ok = False
    return ok


def check_methods() -> bool:
    c = TransformerConfig.medium()
    c.num_layers = 20
    c.dropout = 0.2
    with tempfile.TemporaryDirectory() as d:
        c.save_yaml(Path(d) / "c.yaml")
        same = TransformerConfig.from_yaml(Path(d) / "c.yaml") == c
    return same and TransformerConfig.from_dict(c.to_dict()) == c and c.replace() == c and str(c) != ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=Path, default=ROOT / "configs", help="directory of model_*.yaml")
    args = parser.parse_args()
    print("🚀 " * 30 + "\nkr-mini-llm 설정 테스트\n" + "🚀 " * 30)
    results = [("설정 파일 로드", check_files(args.configs)), ("프리셋", check_presets(args.configs)),
               ("설정 메서드", check_methods())]
    print(f"\n{RULE}\n📊 테스트 결과 요약\n{RULE}")
    for name, ok in results:
        print(f"{'✅ 통과' if ok else '❌ 실패'}: {name}")
    passed = all(ok for _, ok in results)
    print(f"\n{RULE}\n{'🎉 모든 테스트 통과!' if passed else '❌ 실패한 테스트가 있습니다'}\n{RULE}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
