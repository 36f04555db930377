"""Loads the task's data from the JSON Lines file beside this file: no download, any working directory."""
from pathlib import Path

DATA = Path(__file__).resolve().parent / "ko_next_sentence.jsonl"


def load(**kwargs):
    import datasets

    return datasets.load_dataset("json", data_files={"test": str(DATA)})
