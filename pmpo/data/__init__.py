"""Examples, datasets, loaders for files / hub names / built-in tasks, and the paper's train/test split."""

from pmpo.data.demo import BUILTIN_TASKS, arithmetic_task, demo_task
from pmpo.data.examples import Dataset, Example, MultipleChoice, Preference, Supervised
from pmpo.data.loaders import ColumnMap, Kind, load_dataset
from pmpo.data.split import Split, split_dataset, train_size

__all__ = [
    "BUILTIN_TASKS",
    "ColumnMap",
    "Dataset",
    "Example",
    "Kind",
    "MultipleChoice",
    "Preference",
    "Split",
    "Supervised",
    "arithmetic_task",
    "demo_task",
    "load_dataset",
    "split_dataset",
    "train_size",
]
