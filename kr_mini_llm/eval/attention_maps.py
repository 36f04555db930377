"""Attention weights of a prompt, per layer and head, drawn as heat maps with the prompt's
tokens on both axes (scripts/visualize_attention.py).

The weights come from the reference attention path (kr_mini_llm.ops.attention's pure-PyTorch
scores + softmax): the fused kernel never forms the T x T matrix. The model runs once with a
recording op set that computes softmax(q k^T / sqrt(d)) for each layer and otherwise behaves
as the reference ops.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

from ..io.atomic import atomic_write
from ..errors import KrMiniLlmError

__all__ = ["attention_weights", "find_korean_font", "plot_attention", "FontNotFoundError", "token_labels"]

# Korean fonts, best first: Debian/Ubuntu fonts-nanum, Noto CJK, macOS and Windows system fonts.
KOREAN_FONTS = ("NanumGothic", "NanumBarunGothic", "NanumSquare", "Noto Sans CJK KR", "Noto Sans KR",
                "Apple SD Gothic Neo", "AppleGothic", "Malgun Gothic")


class FontNotFoundError(KrMiniLlmError, RuntimeError):
    """No font with Hangul glyphs is installed."""


@torch.no_grad()
def attention_weights(model, ids: list[int]) -> list[torch.Tensor]:
    """Per layer, the attention probabilities [num_heads, T, T] (float32) of the prompt `ids`."""
    from ..model.op_set import op_set
    from ..ops.attention import _scores, attention_reference

    ref = op_set("reference")
    maps: list[torch.Tensor] = []

    def recording_attention(q, k, v, causal=True, scale=None):
        s = _scores(q, k, causal, scale)                     # [B, Hkv, G, Tq, Tk]
        B, Hkv, G, Tq, Tk = s.shape
        maps.append(torch.softmax(s, dim=-1).reshape(B, Hkv * G, Tq, Tk)[0].float().cpu())
        return attention_reference(q, k, v, causal, scale)

    recorder = SimpleNamespace(**{**vars(ref), "attention": recording_attention})
    saved = [(m, m.ops) for m in model.modules() if hasattr(m, "ops")]
    was_training = model.training
    try:
        for m, _ in saved:
            m.ops = recorder
        model.eval()
        model(torch.tensor([ids], device=next(model.parameters()).device))
    finally:
        for m, ops in saved:
            m.ops = ops
        model.train(was_training)
    return maps


def token_labels(tokenizer, ids: list[int]) -> list[str]:
    """Readable labels: the piece with SentencePiece's "▁" (a space) shown as "_", byte-fallback
    pieces merged back into the characters they spell (each shown on its first byte, "·" on the rest)."""
    labels, i = [], 0
    while i < len(ids):
        piece = tokenizer.id_to_piece(ids[i])
        if piece.startswith("<0x") and piece.endswith(">"):
            # a run of byte pieces: each character on the token of its first byte, "·" on the others
            j = i
            while j < len(ids) and tokenizer.id_to_piece(ids[j]).startswith("<0x"):
                j += 1
            raw = bytes(int(tokenizer.id_to_piece(t)[3:5], 16) for t in ids[i:j])
            run = ["·"] * (j - i)
            k = 0
            while k < len(raw):
                n = next((n for n in (1, 2, 3, 4) if k + n <= len(raw) and _decodes(raw[k:k + n])), 1)
                run[k] = raw[k:k + n].decode("utf-8", "replace")
                k += n
            labels += run
            i = j
            continue
        labels.append(piece.replace("\u2581", "_"))
        i += 1
    return labels


def _decodes(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def find_korean_font() -> str:
    """The file of an installed font with Hangul glyphs, or FontNotFoundError naming what to install."""
    from matplotlib import font_manager

    by_name = {f.name: f.fname for f in font_manager.fontManager.ttflist}
    for name in KOREAN_FONTS:
        if name in by_name:
            return by_name[name]
    # fonts installed after matplotlib built its cache: by file name, in the same order
    files = {Path(f).stem.lower().replace(" ", "").replace("-", ""): f for f in font_manager.findSystemFonts()}
    for name in KOREAN_FONTS:
        key = name.lower().replace(" ", "")
        match = sorted(f for stem, f in files.items() if stem.startswith(key))
        if match:
            return match[0]
    raise FontNotFoundError(
        "no Korean font found, so Hangul labels cannot be drawn. Install one: Debian/Ubuntu `sudo apt-get install "
        "fonts-nanum` (scripts/install_system_deps.sh --test does it), Fedora `sudo dnf install google-noto-sans-cjk-fonts`, "
        "macOS has Apple SD Gothic Neo; or pass --font /path/to/font.ttf")


def plot_attention(maps: list[torch.Tensor], labels: list[str], out_dir: str | os.PathLike, layers=None, heads=None,
                   font: str | None = None, title: str = "") -> list[Path]:
    """One PNG per layer (a grid of its heads), written to out_dir/layer_LL.png; with a single head
    chosen, one map per layer. Returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    prop = font_manager.FontProperties(fname=font or find_korean_font())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    T = len(labels)
    layers = range(len(maps)) if layers is None else layers
    paths = []
    for layer in layers:
        hs = list(range(maps[layer].shape[0])) if heads is None else list(heads)
        cols = min(4, len(hs))
        rows = -(-len(hs) // cols)
        size = max(3.0, 0.28 * T + 1.5)
        fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
        for ax in axes.flat[len(hs):]:
            ax.axis("off")
        for ax, h in zip(axes.flat, hs):
            ax.imshow(maps[layer][h].numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_xticks(range(T))
            ax.set_yticks(range(T))
            ax.set_xticklabels(labels, fontproperties=prop, rotation=90, fontsize=8)
            ax.set_yticklabels(labels, fontproperties=prop, fontsize=8)
            ax.set_title(f"layer {layer}, head {h}", fontsize=10)
            ax.set_xlabel("key (attended to)", fontsize=8)
            ax.set_ylabel("query", fontsize=8)
        if title:
            fig.suptitle(title, fontproperties=prop)
        with warnings.catch_warnings():   # a glyph the font lacks (an emoji) is drawn as a box
            warnings.filterwarnings("ignore", message="Glyph .* missing from font")
            fig.tight_layout()
            path = out / (f"layer_{layer:02d}.png" if heads is None or len(hs) > 1 else f"layer_{layer:02d}_head_{hs[0]:02d}.png")
            atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
        plt.close(fig)
        paths.append(path)
    return paths
