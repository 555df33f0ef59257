"""Deterministic, resumable batching of tokenized examples.

The batch of global step ``s`` is a pure function of ``(examples, seed, s)``:

- ``epoch = s // steps_per_epoch``, ``position = s % steps_per_epoch``;
- the epoch's order is ``numpy.random.default_rng([seed, epoch]).permutation(N)``;
- the global batch is ``order[position * B : (position + 1) * B]``; the last ``N % B``
  examples of each epoch's order are dropped.

With a token budget (``max_tokens``) an epoch's order is instead cut into consecutive runs of at
most ``max_tokens`` tokens and ``B`` pairs (``token_budget_batches``), one per step, the last
one kept; each global batch is padded to ``B`` slots with one-token filler pairs whose
``pair_weights`` are 0, so a step's shape does not depend on how many pairs fitted.

So a run resumed at step ``s`` sees exactly the data it would have seen without stopping.
With ``process_count = P`` each process collates the contiguous slice ``process_index`` of
size ``B / P`` of every global batch, and all processes pad to the same bucketed length ``T``
(the bucket of the longest row over the whole global batch), so the local batches can be
assembled into one global array (``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np

from jaxpref.data.batches import (
    PairedBatch,
    PairExample,
    UnpairedBatch,
    UnpairedExample,
    bucket_length,
    collate_pairs,
    collate_unpaired,
    packed_sizes,
    pairs_length,
    responses_of,
    unpaired_length,
)

Example = PairExample | UnpairedExample
FILLER = -1  # the global index of a filler slot of a token-budget batch


class TokenBudgetError(ValueError):
    """An example does not fit the token budget (``BatchStream(max_tokens=...)``)."""
ORDERS = ("epochs", "replacement")
Batch = PairedBatch | UnpairedBatch


class BatchStream:
    """Collates ``PairExample``s to ``PairedBatch``es, ``UnpairedExample``s to ``UnpairedBatch``es.

    Args:
      examples: all examples, every one of the same type, identical on every process.
      batch_size: global batch size ``B`` (all processes together).
      pad_id: padding token id.
      buckets: allowed padded lengths ``T`` (see ``jaxpref.data.batches.default_buckets``).
      seed: non-negative shuffling seed.
      process_index, process_count: this process's share, slice ``process_index`` of
        ``process_count`` equal slices of each global batch; ``B`` must divide evenly.
      kl: unpaired examples also get KTO's mismatched KL rows (``collate_unpaired``).
      fixed_packed_sizes: ``(Tp, N)`` for every batch's shared-prompt packing instead of each
        batch's own (``packed_sizes``), so that every step has one shape.
      padding_free: shared-prompt packing puts several pairs per row (``packed_sizes`` then
        gives ``(Tp, N, R)``); ``row_multiple``: ``R`` per process is a multiple of this (the
        process's share of the mesh's batch axes).
      order: ``"epochs"`` (the module docstring) or ``"replacement"``: every global batch is
        ``B`` indices drawn uniformly with replacement, the draws of
        ``numpy.random.default_rng([seed, 7])`` in step order (still a pure function of the step).
      max_tokens: > 0 (pairs, ``"epochs"`` order only): a token budget per global batch
        (``budget_tokens`` of its pairs), ``B`` then only caps the pairs per batch; the slots
        not filled hold filler pairs (index ``FILLER``, weight 0 in ``local_weights``).

    ``batch_at(step)`` arrays are ``[B / process_count, T]`` (``desirable``: ``[B / P]``).
    """

    def __init__(
        self,
        examples: Sequence[Example],
        *,
        batch_size: int,
        pad_id: int,
        buckets: Sequence[int],
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        kl: bool = True,
        fixed_packed_sizes: tuple[int, int] | None = None,
        order: str = "epochs",
        padding_free: bool = False,
        row_multiple: int = 1,
        max_tokens: int = 0,
    ):
        fewest = 1 if order == "replacement" else batch_size  # draws with replacement can repeat rows
        if batch_size < 1 or len(examples) < fewest:
            raise ValueError(
                f"need 1 <= batch_size <= #examples, got {batch_size=} and {len(examples)} examples"
            )
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if not 0 <= process_index < process_count or batch_size % process_count:
            raise ValueError(
                f"need 0 <= process_index < process_count dividing batch_size, got "
                f"{process_index=} {process_count=} {batch_size=}"
            )
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        kind = type(examples[0])
        if kind not in (PairExample, UnpairedExample) or not all(type(e) is kind for e in examples):
            raise TypeError("examples must be all PairExample or all UnpairedExample")
        self._check_fits(examples, buckets)
        self.examples = examples
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.buckets = tuple(buckets)
        self.seed = seed
        self.process_index = process_index
        self.process_count = process_count
        self.kl = kl
        self.fixed_packed_sizes = fixed_packed_sizes
        self.padding_free, self.row_multiple = padding_free and fixed_packed_sizes is None, row_multiple
        self.order = order
        self._draws: np.ndarray = np.zeros((0, batch_size), np.int64)
        if kind is PairExample:
            self._collate, self._length = collate_pairs, pairs_length
        else:
            self._collate = lambda ex, **kw: collate_unpaired(ex, kl=kl, **kw)
            self._length = lambda ex: unpaired_length(ex, max(self.buckets), kl=kl)
        self._paired = kind is PairExample
        self._cached_epoch: tuple[int, np.ndarray] | None = None
        self.max_tokens = max_tokens
        if max_tokens:
            if not self._paired or order != "epochs":
                raise ValueError("a token budget (max_tokens) needs preference pairs in epoch order")
            self._tokens = np.array([budget_tokens(e) for e in examples], np.int64)
            over = np.flatnonzero(self._tokens > max_tokens)
            if over.size:
                i = int(over[0])
                raise TokenBudgetError(f"example {i} has {self._tokens[i]} tokens (prompt + responses), more than "
                                       f"the token budget {max_tokens} of a batch")
            sample = examples[0].sample is not None
            self._filler = PairExample([pad_id], [pad_id], [pad_id], [pad_id] if sample else None)
            self._budget_epochs: list[int] = []  # steps of epochs 0, 1, ... (computed as reached)
            self._budget_cache: tuple[int, list[np.ndarray]] | None = None

    @staticmethod
    def _check_fits(examples: Sequence[Example], buckets: Sequence[int]) -> None:
        """Fails now, not mid-run, when one example is longer than the largest bucket."""
        longest = max(buckets)
        for i, e in enumerate(examples):
            rest = responses_of(e) if isinstance(e, PairExample) else (e.completion,)
            if len(e.prompt) + max(map(len, rest)) > longest:
                raise ValueError(f"example {i} has more tokens than the largest bucket {longest}")

    @property
    def steps_per_epoch(self) -> int:
        """Full global batches per epoch (the remainder is dropped); with a token budget, epoch 0's
        batches (other epochs' counts differ a little)."""
        if self.max_tokens:
            return len(self._budget_batches(0))
        return len(self.examples) // self.batch_size

    def _budget_batches(self, epoch: int) -> list[np.ndarray]:
        if self._budget_cache is None or self._budget_cache[0] != epoch:
            self._budget_cache = (epoch, token_budget_batches(self._tokens, self.epoch_order(epoch), self.max_tokens,
                                                              self.batch_size))
        return self._budget_cache[1]

    def _budget_indices(self, step: int) -> np.ndarray:
        """``[B]`` global indices of ``step`` under the token budget: its run of the epoch's order
        dealt round-robin over the process slices, each slice filled up with ``FILLER``."""
        epoch, first = 0, 0
        while True:
            if epoch == len(self._budget_epochs):
                self._budget_epochs.append(len(self._budget_batches(epoch)))
            if step < first + self._budget_epochs[epoch]:
                break
            first += self._budget_epochs[epoch]
            epoch += 1
        run = self._budget_batches(epoch)[step - first]
        out = np.full((self.process_count, self.local_batch_size), FILLER, np.int64)
        for k in range(self.process_count):
            part = run[k::self.process_count]
            out[k, :len(part)] = part
        return out.reshape(-1)

    @property
    def local_batch_size(self) -> int:
        """Rows of this process's batch: ``batch_size // process_count``."""
        return self.batch_size // self.process_count

    def epoch_order(self, epoch: int) -> np.ndarray:
        """``[N]`` int64 permutation of example indices for ``epoch``."""
        if self._cached_epoch is None or self._cached_epoch[0] != epoch:
            self._cached_epoch = (epoch, epoch_order(len(self.examples), self.seed, epoch))
        return self._cached_epoch[1]

    def global_indices(self, step: int) -> np.ndarray:
        """``[B]`` example indices of the global batch of ``step``."""
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        if self.max_tokens:
            return self._budget_indices(step)
        if self.order == "replacement":
            if step >= len(self._draws):  # the same stream, drawn further: earlier steps unchanged
                total = max(step + 1, 2 * len(self._draws))
                rng = np.random.default_rng([self.seed, 7])
                self._draws = np.stack([rng.integers(0, len(self.examples), self.batch_size) for _ in range(total)])
            return self._draws[step]
        epoch, position = divmod(step, self.steps_per_epoch)
        return self.epoch_order(epoch)[
            position * self.batch_size : (position + 1) * self.batch_size
        ]

    def local_indices(self, step: int) -> np.ndarray:
        """``[B / P]`` indices of the examples in this process's slice of ``step``'s global batch."""
        return self.global_indices(step).reshape(self.process_count, self.local_batch_size)[self.process_index]

    def local_weights(self, step: int) -> np.ndarray | None:
        """``[B / P]`` float32: 1 for this process's real pairs of ``step``, 0 for filler slots;
        None without a token budget (every slot is real)."""
        if not self.max_tokens:
            return None
        return (self.local_indices(step) != FILLER).astype(np.float32)

    def _example(self, i: int) -> Example:
        return self._filler if i == FILLER else self.examples[i]

    def batch_at(self, step: int) -> Batch:
        """This process's collated batch for global ``step``; a pure function of (seed, step)."""
        slices = self.global_indices(step).reshape(self.process_count, self.local_batch_size)
        groups = [[self._example(i) for i in s] for s in slices]
        length = bucket_length(max(self._length(g) for g in groups), self.buckets)
        # A single allowed bucket makes every process pad to the global batch's length.
        return self._collate(groups[self.process_index], pad_id=self.pad_id, buckets=(length,))

    @property
    def first_pair(self) -> int:
        """The global batch index of this process's first example."""
        return self.process_index * self.local_batch_size

    def packed_sizes(self, step: int) -> tuple[int, ...] | None:
        """``batches.packed_sizes`` of global ``step``'s pairs (the same on every process);
        ``None`` for unpaired examples."""
        if not self._paired:
            return None
        if self.fixed_packed_sizes is not None:
            return self.fixed_packed_sizes
        return packed_sizes([self._example(i) for i in self.global_indices(step)], multi=self.padding_free,
                            slices=self.process_count, row_multiple=self.row_multiple)

    def used_indices(self, steps: int) -> np.ndarray:
        """Sorted distinct example indices the first ``steps`` global batches use."""
        used = np.unique(np.concatenate([self.global_indices(s) for s in range(max(steps, 1))]))
        return used[used != FILLER]

    def iterate(self, start_step: int = 0) -> Iterator[Batch]:
        """Endless batches ``batch_at(start_step)``, ``batch_at(start_step + 1)``, ..."""
        for step in itertools.count(start_step):
            yield self.batch_at(step)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """``[n]`` int64: the shuffled example order of ``epoch``."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def budget_tokens(example: PairExample) -> int:
    """The tokens a pair costs in a token budget: its prompt once plus every response."""
    return len(example.prompt) + len(example.chosen) + len(example.rejected) + len(example.sample or ())


def token_budget_batches(tokens: np.ndarray, order: np.ndarray, max_tokens: int, max_pairs: int) -> list[np.ndarray]:
    """``order`` (``[N]`` example indices) cut into consecutive runs, each as long as it can be
    with its ``tokens`` (``[N]`` per example) summing to at most ``max_tokens`` and at most
    ``max_pairs`` examples; every example of ``order`` is in exactly one run, in order."""
    runs, start, total = [], 0, 0
    for j, i in enumerate(order):
        t = int(tokens[i])
        if j > start and (total + t > max_tokens or j - start == max_pairs):
            runs.append(order[start:j])
            start, total = j, 0
        total += t
    runs.append(order[start:])
    return runs
