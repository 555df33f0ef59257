"""From token ids back to the text a text judge reads.

``TextView`` turns a prompt's token ids into the prompt as the dataset wrote it (a string or a
list of chat messages: ``data.prompts.PromptData.raw_of``), falling back to decoding the ids with
the policy tokenizer, and a response's token ids into its text: up to (excluding) the first EOS,
special tokens dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class TextView:
    """``prompt(ids) -> str | list[dict]`` and ``completion(ids) -> str`` for a policy tokenizer."""

    def __init__(self, tokenizer: Any, eos_id: int, raw_prompts: dict[tuple[int, ...], Any] | None = None):
        self.tokenizer, self.eos_id, self.raw_prompts = tokenizer, int(eos_id), dict(raw_prompts or {})

    def prompt(self, ids: Sequence[int]) -> Any:
        key = tuple(int(t) for t in ids)
        if key in self.raw_prompts:
            return self.raw_prompts[key]
        return self.tokenizer.decode(list(key), skip_special_tokens=True)

    def completion(self, ids: Sequence[int]) -> str:
        tokens = [int(t) for t in ids]
        if self.eos_id in tokens:
            tokens = tokens[: tokens.index(self.eos_id)]
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def prompts(self, batch) -> list[Any]:
        return [self.prompt(p) for p in batch]

    def completions(self, batch) -> list[str]:
        return [self.completion(r) for r in batch]
