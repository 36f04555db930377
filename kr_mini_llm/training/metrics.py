"""metrics.jsonl (one JSON object per logged step), optional TensorBoard, and the loss-curve PNG."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..io import layout
from ..io.atomic import atomic_write_text


class MetricsLog:
    """`resume_step` N > 0: a resumed run; the rows of steps up to N are kept, later ones (logged by the
    interrupted run after its last checkpoint) and any torn last line are dropped. 0: a new log."""

    def __init__(self, output_dir: str | Path, tensorboard: bool = False, resume_step: int = 0):
        self.path = Path(output_dir) / layout.METRICS
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step > 0:
            _truncate(self.path, resume_step)
        self._file = open(self.path, "a" if resume_step > 0 else "w", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise RuntimeError("train.tensorboard is on but the tensorboard package is missing: "
                                   "pip install tensorboard") from e
            self._tb = SummaryWriter(str(Path(output_dir) / "tensorboard"))

    def log(self, row: dict) -> None:
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, row["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _truncate(path: Path, last_step: int) -> None:
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= last_step:
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


def read_metrics(path: str | Path) -> list[dict]:
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def plot_loss_curve(metrics_path: str | Path, out_path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return Path(out_path)
