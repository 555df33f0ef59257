"""Preference data: loading, validation, tokenization (``preference``) and batching (``stream``)."""

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

__all__ = [
    "BadRowError",
    "BatchStream",
    "Columns",
    "DataReport",
    "check_json_file",
    "encode_pairs",
    "encode_unpaired",
    "load_and_encode",
    "load_preference_dataset",
]
