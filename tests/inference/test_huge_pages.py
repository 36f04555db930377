"""Inference weights copied onto huge pages: the same values, the same decode, 2 MiB pages where THP allows."""
import mmap
import re
from pathlib import Path

import pytest
import torch

from kr_mini_llm.inference import decode_model, huge_pages
from kr_mini_llm.inference.decode_model import DecodeModel
from kr_mini_llm.inference.huge_pages import HUGE_PAGE, on_huge_pages
from kr_mini_llm.model import KVCache, Transformer, TransformerConfig

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode() -> str:
    """The bracketed THP setting ("always", "madvise", "never"), "none" without THP."""
    if not THP.exists():
        return "none"
    return re.search(r"\[(\w+)\]", THP.read_text()).group(1)


def huge_kb_at(ptr: int) -> int:
    """AnonHugePages of the mapping of this process that holds address ptr."""
    lines = Path("/proc/self/smaps").read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
        if m and int(m.group(1), 16) <= ptr < int(m.group(2), 16):
            for field in lines[i + 1:]:
                if re.match(r"[0-9a-f]+-[0-9a-f]+ ", field):
                    break
                if field.startswith("AnonHugePages:"):
                    return int(field.split()[1])
    raise AssertionError(f"no mapping holds {ptr:#x}")


def test_copies_hold_the_values_in_new_memory():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 77, generator=g)
    b = torch.randint(0, 255, (1000, 3), dtype=torch.uint8, generator=g)
    c = torch.randn(5, generator=g).half()
    keep = [t.clone() for t in (a, b, c)]
    got = on_huge_pages([a, None, b, a, c, torch.empty(0, 4)])
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        assert got is None  # this OS has no such request: the weights stay where they are
        return
    ca, none, cb, ca2, cc, empty = got
    assert none is None and ca2 is ca, "None stays None, a tensor listed twice is copied once"
    for orig, copy, kept in ((a, ca, keep[0]), (b, cb, keep[1]), (c, cc, keep[2])):
        assert copy.dtype == orig.dtype and copy.shape == orig.shape and copy.is_contiguous()
        assert torch.equal(copy, kept) and torch.equal(orig, kept), "copied, and the original left as it was"
        assert copy.data_ptr() != orig.data_ptr() and copy.data_ptr() % 64 == 0
    assert ca.data_ptr() % HUGE_PAGE == 0, "the mapping is used from a 2 MiB boundary"
    assert empty.shape == (0, 4)


def test_a_weight_sized_copy_gets_huge_pages_where_thp_allows():
    w = torch.randn(4 << 20)  # 16 MiB
    got = on_huge_pages([w])
    if got is None:
        assert not hasattr(mmap, "MADV_HUGEPAGE") or thp_mode() in ("never", "none")
        return
    assert torch.equal(got[0], w)
    kb = huge_kb_at(got[0].data_ptr())
    # A madvised fault compacts memory for its huge page when THP's defrag setting says so; other
    # settings may hand out 4 KiB pages on a fragmented machine, so only then is it asserted.
    defrag = re.search(r"\[([\w+]+)\]", (THP.parent / "defrag").read_text()).group(1)
    if thp_mode() in ("always", "madvise") and defrag in ("always", "madvise", "defer+madvise"):
        assert kb >= 2048, f"THP is {thp_mode()!r} (defrag {defrag!r}) but the copy got {kb} kB of huge pages"


class _RefusingMap:
    """An anonymous mapping whose madvise fails, as on a kernel built without THP."""

    def __init__(self, *args, **kwargs):
        pass

    def madvise(self, advice):
        raise OSError(22, "Invalid argument")


def test_a_refused_request_leaves_the_weights_where_they_are(monkeypatch, tmp_path):
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        assert on_huge_pages([torch.ones(3)]) is None
        return
    monkeypatch.setattr(huge_pages.mmap, "mmap", _RefusingMap)
    assert on_huge_pages([torch.ones(3)]) is None
    monkeypatch.undo()
    never = tmp_path / "enabled"
    never.write_text("always madvise [never]\n")
    monkeypatch.setattr(huge_pages, "THP_SETTING", never)
    assert on_huge_pages([torch.ones(3)]) is None, "THP off: no copy made for nothing"
    cfg = TransformerConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                            intermediate_size=64, max_seq_length=16)
    tensors = dict(Transformer(cfg).state_dict())
    dm = DecodeModel(cfg, tensors, "fp32")  # loads on ordinary pages
    assert dm.norm is tensors["norm.weight"], "no copy: the fp32 norm is the tensor it was given"


def test_bad_tensors_are_refused():
    with pytest.raises(ValueError, match="dense CPU tensors"):
        on_huge_pages([torch.randn(4, 6)[:, ::2]])


@pytest.mark.parametrize("dtype", ["fp32", "int8", "int4"])
def test_decode_model_on_huge_pages_decodes_the_same_bits(dtype, monkeypatch):
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=96, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                            intermediate_size=128, max_seq_length=32, tie_word_embeddings=dtype != "int8")
    tensors = dict(Transformer(cfg).eval().state_dict())
    moved = DecodeModel(cfg, tensors, dtype)
    with monkeypatch.context() as m:
        m.setattr(decode_model, "on_huge_pages", lambda tensors: None)
        stayed = DecodeModel(cfg, tensors, dtype)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        for a, b in ((moved.layers[1].down.weight, stayed.layers[1].down.weight), (moved.norm, stayed.norm),
                     (moved.lm_head.weight, stayed.lm_head.weight)):
            assert a.data_ptr() != b.data_ptr() and torch.equal(a, b)
        assert (moved.lm_head is moved.embed) == cfg.tie_word_embeddings
        assert moved._stack_tail[-2][1] is moved.layers[1].down.weight, "decode_stack's lists hold the copies"
    ids = torch.randint(0, 96, (2, 9))
    out = []
    with torch.inference_mode():
        for dm in (moved, stayed):
            cache = KVCache.for_model(cfg, 2, 16, dtype=dm.cache_dtype)
            steps = [dm(ids, kv_cache=cache)] + [dm(ids[:, i:i + 1], kv_cache=cache) for i in range(3)]
            out.append(torch.cat(steps, 1))
    assert torch.equal(out[0], out[1])
    assert all(torch.equal(moved.state_dict()[k], v) for k, v in stayed.state_dict().items())
