"""Data: batch types and collation (``batches``), loading, validation and tokenization of
preference / SFT datasets (``preference``), deterministic resumable batching (``stream``) and a
round's training set (``training_set``)."""

from jaxpref.data.preference import (
    BadRowError,
    Columns,
    DataReport,
    check_json_file,
    encode_pairs,
    encode_unpaired,
    load_and_encode,
    load_preference_dataset,
)
from jaxpref.data.stream import BatchStream
from jaxpref.data.training_set import TrainingSet

__all__ = [
    "BadRowError",
    "BatchStream",
    "Columns",
    "TrainingSet",
    "DataReport",
    "check_json_file",
    "encode_pairs",
    "encode_unpaired",
    "load_and_encode",
    "load_preference_dataset",
]
