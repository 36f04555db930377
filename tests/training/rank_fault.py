"""scripts/train.py with one rank broken, for the failure tests (run under torchrun).

KR_FAULT_RANK=r and either KR_FAULT_ARGS="--set data.tokens=/broken" (extra arguments for that
rank only) or KR_FAULT_HANG_AT_STEP=n (that rank stops answering before step n).
"""
import os
import runpy
import shlex
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train.py"

if os.environ.get("RANK") == os.environ.get("KR_FAULT_RANK"):
    sys.argv += shlex.split(os.environ.get("KR_FAULT_ARGS", ""))
    hang_at = int(os.environ.get("KR_FAULT_HANG_AT_STEP", 0))
    if hang_at:
        from kr_mini_llm.training import trainer

        real_step = trainer.Trainer._train_step

        def step(self):
            if self.step + 1 >= hang_at:
                time.sleep(3600)
            return real_step(self)

        trainer.Trainer._train_step = step
sys.argv[0] = str(SCRIPT)
runpy.run_path(str(SCRIPT), run_name="__main__")
