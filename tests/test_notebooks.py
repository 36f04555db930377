"""The notebooks in notebooks/: committed without outputs, using the Python API only, and executed end
to end (the corpus download makes that one a network test)."""
import ast
import json
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "tiny_korean_model.ipynb"
HANGUL = re.compile("[\uac00-\ud7a3]")


def _notebooks():
    paths = sorted((REPO / "notebooks").glob("*.ipynb"))
    assert NOTEBOOK in paths
    return paths


def test_notebooks_are_committed_without_outputs():
    for path in _notebooks():
        nb = json.loads(path.read_text(encoding="utf-8"))
        for i, cell in enumerate(nb["cells"]):
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, (
                    f"{path.name}, cell {i}: clear the outputs before committing (JupyterLab: Edit > Clear Outputs "
                    "of All Cells, or jupyter nbconvert --clear-output --inplace)")


def test_notebooks_use_the_python_api_not_shell_commands():
    for path in _notebooks():
        nb = json.loads(path.read_text(encoding="utf-8"))
        for i, cell in enumerate(nb["cells"]):
            if cell["cell_type"] != "code":
                continue
            source = "".join(cell["source"])
            lines = [line.strip() for line in source.splitlines()]
            assert not any(line.startswith(("!", "%%bash", "%%sh", "%%script", "%system")) for line in lines), (
                f"{path.name}, cell {i}: a shell command")
            assert "subprocess" not in source and "os.system" not in source, f"{path.name}, cell {i}"


def _cell(nb, tag: str):
    cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"one cell tagged {tag!r} expected, found {len(cells)}"
    return cells[0]


def _text(cell) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def _images(cell) -> list:
    return [o for o in cell.outputs if o.output_type == "display_data" and "image/png" in o.data]


@pytest.mark.network
@pytest.mark.skipif(shutil.which("apt-get") is None, reason="the corpus comes from Debian packages: needs apt-get")
def test_tiny_korean_model_notebook_runs_end_to_end(tmp_path, monkeypatch):
    """Runs every cell in a fresh kernel with the repository as its directory and a temporary work
    directory (~2 minutes with the download, on 2 cores), then checks what the cells showed and wrote."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from kr_mini_llm.model import TransformerConfig

    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("KR_MINI_LLM_NOTEBOOK_DIR", str(tmp_path))
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(REPO)}})
    client.execute()  # a failing cell raises CellExecutionError with its traceback

    # the work went to the work directory
    for split in ("train", "valid", "test"):
        assert (tmp_path / "data" / "processed" / f"{split}.txt").stat().st_size > 0
    assert (tmp_path / "models" / "tokenizer.model").is_file()

    # parameter counts: the config's own count equals the built model's, and the variant is smaller
    text = _text(_cell(nb, "parameter-count"))
    tiny, small = (int(n.replace(",", "")) for n in
                   re.search(r"model_tiny: ([\d,]+) parameters; the smaller variant: ([\d,]+)", text).groups())
    assert tiny == TransformerConfig.from_yaml(REPO / "configs" / "model_tiny.yaml").num_parameters
    assert small < tiny
    from_config, counted = re.search(r"config\.num_parameters = ([\d,]+), sum\(p\.numel\(\)\) = ([\d,]+)", text).groups()
    assert from_config == counted == f"{small:,}"

    # the loss fell by over a nat (train) and half a nat (validation)
    rows = [json.loads(line) for line in (tmp_path / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in rows if "loss" in r]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(train) >= 10 and len(val) >= 2
    assert train[-1] < train[0] - 1.0, train
    assert val[-1] < val[0] - 0.5, val
    assert len(_images(_cell(nb, "loss-curve"))) == 1

    # one heat-map image per layer of the trained model
    assert len(_images(_cell(nb, "attention"))) == 2
    assert sorted(p.name for p in (tmp_path / "attention").glob("*.png")) == ["layer_00.png", "layer_01.png"]

    # generation: a greedy and a sampled continuation of each prompt, non-empty, the samples in Korean
    lines = re.findall(r"^(.+?) \| (greedy|sampled) +-> (.*)$", _text(_cell(nb, "generate")), re.M)
    assert [kind for _, kind, _ in lines] == ["greedy", "sampled"] * 2
    for prompt, kind, continuation in lines:
        continuation = ast.literal_eval(continuation)
        assert HANGUL.search(prompt) and continuation.strip(), (prompt, kind, continuation)
        if kind == "sampled":
            assert len(HANGUL.findall(continuation)) >= 5, (prompt, continuation)
