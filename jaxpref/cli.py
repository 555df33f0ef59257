"""The ``jaxpref`` command: ``jaxpref train``, ``jaxpref generate``, ``jaxpref assets``.

    jaxpref train --config=configs/dpo.py --workdir=runs/dpo      # = python -m jaxpref.main ...
    jaxpref train --config=configs/dpo.py --print_config          # every setting, its value and help
    jaxpref generate --model=runs/dpo/export --prompt="Hello" --max_new_tokens=64
    jaxpref generate --model=model.gguf --prompts_file=prompts.txt --num_samples=2 --output=out.jsonl
    jaxpref assets smollm2                                        # = python -m jaxpref.assets smollm2
"""

from __future__ import annotations

import argparse
import json
import sys

COMMANDS = ("train", "generate", "assets")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip().split("\n\n")[0] + "\n\n" + __doc__.strip().split("\n\n")[1], file=sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            sys.exit(f"error: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}")
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command == "train":
        from jaxpref import main as train

        train.cli(["jaxpref train", *rest])
    elif command == "assets":
        from jaxpref import assets

        assets.main(rest)
    else:
        generate(rest)


def _prompts(args) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts_file:
        with open(args.prompts_file, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if args.prompts_file.endswith(".jsonl"):
                    row = json.loads(line)
                    if not isinstance(row.get("prompt"), str):
                        sys.exit(f"error: {args.prompts_file}: line {lineno}: field 'prompt' must be a string")
                    prompts.append(row["prompt"])
                else:
                    prompts.append(line.rstrip("\n"))
    if not prompts:
        sys.exit("error: give --prompt=TEXT (repeatable) or --prompts_file=FILE (.txt: one per line; .jsonl: 'prompt')")
    return prompts


def generate(argv: list[str]) -> None:
    """``jaxpref generate``: samples completions from a HF folder or a ``.gguf`` file."""
    p = argparse.ArgumentParser(prog="jaxpref generate", description="Sample completions of prompts.")
    p.add_argument("--model", required=True, help="a Hugging Face folder (e.g. an export_dir) or a .gguf file")
    p.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    p.add_argument("--prompts_file", help=".txt (one prompt per line) or .jsonl (a 'prompt' field per row)")
    p.add_argument("--max_new_tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.7, help="0: greedy")
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--num_samples", type=int, default=1, help="completions per prompt")
    p.add_argument("--batch_size", type=int, default=8, help="prompts per sampling batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chat_template", choices=("auto", "yes", "no"), default="auto",
                   help="render each prompt as a user message with the tokenizer's chat template (auto: if it has one)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--output", help="also write {prompt, completion} rows to this .jsonl file")
    args = p.parse_args(argv)
    for name, ok in (("max_new_tokens", args.max_new_tokens >= 1), ("num_samples", args.num_samples >= 1),
                     ("batch_size", args.batch_size >= 1), ("temperature", args.temperature >= 0),
                     ("top_k", args.top_k >= 0), ("top_p", 0 < args.top_p <= 1)):
        if not ok:
            sys.exit(f"error: --{name}={getattr(args, name)} is out of range")
    prompts = _prompts(args)

    import jax.numpy as jnp

    from jaxpref.infer.text import generate_text
    from jaxpref.models import load_pretrained, load_tokenizer
    from jaxpref.runtime.torch_free import keep_torch_out

    keep_torch_out()  # tokenizers only: PyTorch stays out of the process

    try:
        model, params = load_pretrained(args.model, dtype=jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32)
        tokenizer = load_tokenizer(args.model)
    except (OSError, ValueError) as err:
        sys.exit(f"error: --model={args.model}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    template = {"auto": None, "yes": True, "no": False}[args.chat_template]
    texts = generate_text(model, params, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          num_samples=args.num_samples, batch_size=args.batch_size, seed=args.seed,
                          chat_template=template)
    rows = []
    for prompt, out in zip(prompts, texts):
        for i, completion in enumerate([out] if args.num_samples == 1 else out):
            rows.append({"prompt": prompt, "sample": i, "completion": completion})
            print(f"### prompt: {prompt}" + (f" (sample {i + 1})" if args.num_samples > 1 else ""))
            print(completion)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


if __name__ == "__main__":
    main()
