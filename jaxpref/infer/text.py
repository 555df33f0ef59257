"""Text in, text out: prompts through the chat template, batched sampling, decoding.

    from jaxpref import generate_text
    from jaxpref.models import load_pretrained, load_tokenizer

    model, params = load_pretrained("runs/dpo/export")
    tokenizer = load_tokenizer("runs/dpo/export")
    print(generate_text(model, params, tokenizer, ["Write a haiku about JAX."], max_new_tokens=64))

The sampling itself is ``infer.sampling.sample_responses`` (jitted, KV cache, left-padded
prompts, one compile per prompt length), so the same call runs on a mesh.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax


def encode_prompt(tokenizer, prompt: str, *, chat_template: bool | None = None) -> list[int]:
    """Token ids of ``prompt``: rendered as one user message with the tokenizer's chat template and
    the generation prompt (``chat_template=None``: when the tokenizer has one), else plain text."""
    use_template = getattr(tokenizer, "chat_template", None) is not None if chat_template is None else chat_template
    if use_template:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("chat_template=True, but the tokenizer has no chat template")
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def generate_text(
    model, params, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 128, temperature: float = 0.7,
    top_k: int = 0, top_p: float = 1.0, num_samples: int = 1, batch_size: int = 8, seed: int = 0,
    chat_template: bool | None = None, mesh=None,
) -> list[str] | list[list[str]]:
    """Samples completions of ``prompts`` and decodes them (special tokens removed).

    Returns one string per prompt, or with ``num_samples > 1`` a list of ``num_samples`` strings per
    prompt. ``temperature=0`` is greedy. ``batch_size``: prompts per sampling batch.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string")
    if not prompts:
        return []
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("the tokenizer has no eos_token_id: generation would never stop")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    from jaxpref.infer.sampling import sample_responses

    encoded = [encode_prompt(tokenizer, p, chat_template=chat_template) for p in prompts]
    repeated = [ids for ids in encoded for _ in range(num_samples)]
    responses, _ = sample_responses(model, params, repeated, jax.random.PRNGKey(seed), eos_id=eos_id,
                                    pad_id=pad_id, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                    temperature=temperature, top_k=top_k, top_p=top_p, mesh=mesh,
                                    desc="generating")
    texts = [tokenizer.decode(r, skip_special_tokens=True) for r in responses]
    if num_samples == 1:
        return texts
    return [texts[i * num_samples:(i + 1) * num_samples] for i in range(len(prompts))]
