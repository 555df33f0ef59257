"""Shared pieces of the benchmarks: model presets, synthetic data, worker processes, memory, reports.

Nothing here imports jax or torch at module level: the parent process of a benchmark only
orchestrates, and every measured framework runs in its own subprocess (``run_worker``), so
that its peak resident memory is its own.

Peak memory is the high-water mark of the process's resident set (``VmHWM`` of
``/proc/self/status``). It belongs to the process's current address space, so unlike
``ru_maxrss`` it does not inherit the parent's footprint across ``fork``/``exec``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

PAD_ID = 0
EOS_ID = 1
FIRST_WORD_ID = 2  # ids >= 2 are ordinary "words"
# English-like words of the benchmarks that tokenize real text (SmolLM2 rows of exact token counts).
WORDS = ("the movie hotel food service staff room was were is and but very really quite not so too great good bad "
         "terrible wonderful awful fine okay amazing boring slow fast friendly rude clean dirty cheap expensive "
         "I we they you it this that my our your their a an of to in on at for with about after before during "
         "think felt liked loved hated enjoyed visited ordered stayed watched read played found said asked told "
         "would could should will can may might must again never always often sometimes maybe perhaps because "
         "when while although however therefore also only just even still already yet soon later today"
         ).split()


@dataclasses.dataclass(frozen=True)
class Preset:
    """A model shape plus the batch it is benchmarked with.

    ``model`` holds ``jaxpref.models.ModelConfig`` fields. Sequences are
    ``prompt (<= prompt_len) + completion (<= completion_len, EOS included)``; every batch has
    one row of full length, so the padded length is always ``prompt_len + completion_len``.
    """

    model: Mapping[str, Any]
    batch_size: int
    prompt_len: int
    completion_len: int
    steps: int
    repeats: int
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.completion_len


_COMMON = dict(pad_token_id=PAD_ID, eos_token_id=EOS_ID, rms_norm_eps=1e-6, max_position_embeddings=2048)

PRESETS: dict[str, Preset] = {
    # ~5.1M params (1.0M of them embedding + LM head).
    "tiny": Preset(
        model=dict(vocab_size=2048, hidden_size=256, intermediate_size=704, num_layers=5, num_heads=4, **_COMMON),
        batch_size=4,
        prompt_len=64,
        completion_len=64,
        steps=6,
        repeats=2,
    ),
    # ~97M params (12.6M of them embedding + LM head): GPT-2-small-like Llama.
    "small": Preset(
        model=dict(vocab_size=8192, hidden_size=768, intermediate_size=2048, num_layers=12, num_heads=12, **_COMMON),
        batch_size=2,
        prompt_len=64,
        completion_len=64,
        steps=4,
        repeats=2,
    ),
    # Llama-3.2-1B shape (1.24B params, tied embeddings, GQA 32/8), bf16 compute: for a GPU/TPU.
    "1b": Preset(
        model=dict(
            vocab_size=128256,
            hidden_size=2048,
            intermediate_size=8192,
            num_layers=16,
            num_heads=32,
            num_kv_heads=8,
            head_dim=64,
            rope_theta=500000.0,
            tie_word_embeddings=True,
            rms_norm_eps=1e-5,
            max_position_embeddings=8192,
            pad_token_id=PAD_ID,
            eos_token_id=EOS_ID,
        ),
        batch_size=4,
        prompt_len=512,
        completion_len=512,
        steps=10,
        repeats=1,
        dtype="bfloat16",
    ),
}


def get_preset(name: str, **overrides: Any) -> Preset:
    """A preset by name, with ``None`` overrides ignored; unknown names raise."""
    if name not in PRESETS:
        raise ValueError(f"unknown size {name!r}; known: {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


def param_count(model: Mapping[str, Any]) -> dict[str, int]:
    """Parameter counts of a Llama config: ``total``, ``embedding`` (lookup table) and ``matmul``.

    ``matmul`` is every weight that takes part in a matrix multiply: the decoder layers and the
    LM head (the tied embedding table counts once as the LM head).
    """
    e, f, layers = model["hidden_size"], model["intermediate_size"], model["num_layers"]
    heads = model["num_heads"]
    kv = model.get("num_kv_heads") or heads
    d = model.get("head_dim") or e // heads
    v = model["vocab_size"]
    per_layer = e * heads * d * 2 + e * kv * d * 2 + 3 * e * f + 2 * e
    decoder = layers * per_layer + e
    tied = model.get("tie_word_embeddings", False)
    total = decoder + v * e * (1 if tied else 2)
    return {"total": total, "embedding": 0 if tied else v * e, "matmul": decoder + v * e}


# ----------------------------------------------------------------------------------- data


def make_pairs(preset: Preset, num_batches: int, *, seed: int = 0) -> list[dict[str, list[int]]]:
    """``num_batches * batch_size`` random preference pairs (token-id lists, no padding).

    Each pair is ``{"prompt", "chosen", "rejected"}``; completions end with ``EOS_ID``. The
    first row of every batch has a full-length prompt and chosen completion, so each batch
    pads to exactly ``preset.seq_len`` however a framework pads (to the batch max or a bucket).
    """
    rng = np.random.default_rng(seed)
    vocab = preset.model["vocab_size"]
    p, c = preset.prompt_len, preset.completion_len

    def words(n: int) -> list[int]:
        return rng.integers(FIRST_WORD_ID, vocab, size=n).tolist()

    pairs = []
    for i in range(num_batches * preset.batch_size):
        first = i % preset.batch_size == 0
        n_prompt = p if first else int(rng.integers(p // 2, p + 1))
        n_chosen = c if first else int(rng.integers(c // 2, c + 1))
        n_rejected = int(rng.integers(c // 2, c + 1))
        pairs.append(
            {
                "prompt": words(n_prompt),
                "chosen": words(n_chosen - 1) + [EOS_ID],
                "rejected": words(n_rejected - 1) + [EOS_ID],
            }
        )
    return pairs


def tokens_per_batch(pairs: Sequence[Mapping[str, Sequence[int]]], batch_size: int) -> list[int]:
    """Non-pad tokens of chosen + rejected sequences (prompt included, twice) of each batch."""
    per_pair = [2 * len(x["prompt"]) + len(x["chosen"]) + len(x["rejected"]) for x in pairs]
    return [sum(per_pair[i : i + batch_size]) for i in range(0, len(per_pair), batch_size)]


def make_prompts(vocab_size: int, batch_size: int, max_len: int, *, seed: int = 0) -> list[list[int]]:
    """Random prompts of ``max_len // 2 .. max_len`` word tokens (the first one full length)."""
    rng = np.random.default_rng(seed)
    lengths = [max_len] + rng.integers(max_len // 2, max_len + 1, size=batch_size - 1).tolist()
    return [rng.integers(FIRST_WORD_ID, vocab_size, size=n).tolist() for n in lengths]


# --------------------------------------------------------------------------- processes


def peak_rss_mb() -> float:
    """High-water resident set of this process in MiB (``VmHWM``; ``ru_maxrss`` as fallback)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


def current_rss_mb() -> float:
    """Resident set of this process now, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_worker(
    script: str | Path, worker: str, spec: Mapping[str, Any], workdir: Path, *, timeout: float = 1200
) -> dict:
    """Runs ``python script --worker NAME --spec S --out O`` and returns the JSON it wrote.

    The child's output goes to ``workdir/<worker>-<n>.log``; on failure the log's tail is raised.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    n = len(list(workdir.glob(f"{worker}-*.log")))
    spec_path, out_path, log_path = (workdir / f"{worker}-{n}.{ext}" for ext in ("spec.json", "out.json", "log"))
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, str(script), "--worker", worker, "--spec", str(spec_path), "--out", str(out_path)]
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False)
    if proc.returncode != 0 or not out_path.exists():
        tail = log_path.read_text()[-4000:]
        raise RuntimeError(f"worker {worker} failed (rc={proc.returncode}); log {log_path}:\n{tail}")
    result = json.loads(out_path.read_text())
    result["process_wall_s"] = time.perf_counter() - start
    return result


def run_alternating(
    script: str | Path, names: Sequence[str], repeats: int, spec_for: Callable[[str], Mapping[str, Any]],
    workdir: Path,
) -> dict[str, list[dict]]:
    """Runs each worker of ``names`` once per repeat, alternating (A B A B ...), each in its own
    process; returns every worker's results by name, in run order."""
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names:
            runs[name].append(run_worker(script, name, spec_for(name), workdir))
            print(f"repeat {r}: {name} done ({runs[name][-1]['process_wall_s']:.0f}s)", flush=True)
    return runs


def worker_main(workers: Mapping[str, Any], argv: Sequence[str]) -> bool:
    """If ``argv`` asks for a worker, runs it (spec in, JSON out) and returns True."""
    if "--worker" not in argv:
        return False
    args = dict(zip(argv[::2], argv[1::2]))
    spec = json.loads(Path(args["--spec"]).read_text())
    result = workers[args["--worker"]](spec)
    Path(args["--out"]).write_text(json.dumps(result))
    return True


# ----------------------------------------------------------------------------- reports


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return float(statistics.median(values))


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on (CPU model, cores, load, library versions)."""
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "trl", "numpy"):
        try:
            from importlib.metadata import version

            versions[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - a missing package is reported as absent
            versions[pkg] = None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15": list(os.getloadavg()),
        "python": platform.python_version(),
        "versions": versions,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-markdown table; floats get 3 significant digits (or 1 decimal when >= 100)."""

    def fmt(x: Any) -> str:
        if isinstance(x, float):
            return f"{x:.1f}" if abs(x) >= 100 else f"{x:.3g}"
        return str(x)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | Path | None, payload: Mapping[str, Any]) -> None:
    """Writes ``payload`` as indented JSON when ``path`` is given."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {path}")
