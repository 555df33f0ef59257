"""Regenerates ``trl_losses.json``: losses, logged rewards and gradients computed by TRL's own code.

    python tests/golden/make_trl_golden.py          # needs torch and trl (pip install -e ".[bench]")

The inputs are fixed random logits (policy and reference) over a small vocabulary for a batch of
pairs with prompts and responses of different lengths (``completion_mask``). Each case runs the
real TRL 1.16 code path on them, with stand-ins only for the models (objects that return the
stored logits or the log-probs TRL's fused LM head would return) and for accelerate (one process):

- ``DPOTrainer._compute_loss`` for every DPO ``loss_type`` and the options ``f_divergence_type``,
  ``ld_alpha``, ``use_weighting`` and combined ``loss_type`` lists with ``loss_weights``;
- ``KTOTrainer._compute_loss`` for ``kto`` and ``apo_zero_unpaired``;
- ``CPOTrainer.get_batch_loss_metrics`` (sigmoid, hinge, ipo, simpo, alphapo) and
  ``ORPOTrainer.get_batch_loss_metrics``.

Per case it stores the batch loss, its gradient with respect to the policy logits, the logged
reward metrics, and (for losses without batch statistics) each pair's loss from a batch of one.
``tests/test_trl_golden.py`` recomputes all of it with jaxpref (no torch needed).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import types

import numpy as np
import torch
import torch.nn.functional as F
import trl
from trl.experimental.cpo import CPOTrainer
from trl.experimental.orpo import ORPOTrainer
from trl.trainer.dpo_trainer import DPOTrainer
from trl.trainer.kto_trainer import KTOTrainer

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trl_losses.json")
B, T, V = 4, 10, 6
SEED = 1216


def make_inputs():
    """Pairs ``[2B, T]`` (chosen rows then rejected rows) with a shared prompt per pair, responses
    of different lengths, right padding; logits ``[2B, T, V]`` for the policy and the reference;
    for KTO, ``B`` mismatched KL rows of their own."""
    rng = np.random.default_rng(SEED)
    ids = rng.integers(1, V, (2 * B, T))
    comp = np.zeros((2 * B, T), np.int64)
    attn = np.zeros((2 * B, T), np.int64)
    prompt_len = rng.integers(2, 4, B)
    for b in range(B):
        for row in (b, B + b):
            end = int(rng.integers(prompt_len[b] + 1, T + 1))
            attn[row, :end] = 1
            comp[row, prompt_len[b]:end] = 1
            ids[row, end:] = 0
        ids[B + b, :prompt_len[b]] = ids[b, :prompt_len[b]]
    policy = rng.normal(0.0, 2.0, (2 * B, T, V))
    ref = policy + rng.normal(0.0, 0.7, (2 * B, T, V))
    kl_ids = np.roll(ids[:B], 1, axis=0)
    kl_comp, kl_attn = np.roll(comp[:B], 1, axis=0), np.roll(attn[:B], 1, axis=0)
    kl_policy = rng.normal(0.0, 2.0, (B, T, V))
    kl_ref = kl_policy + rng.normal(0.0, 0.7, (B, T, V))
    desirable = np.array([True, False, True, False][:B])
    return {"ids": ids, "attention_mask": attn, "completion_mask": comp, "policy_logits": policy.astype(np.float32),
            "ref_logits": ref.astype(np.float32), "kl_ids": kl_ids, "kl_attention_mask": kl_attn,
            "kl_completion_mask": kl_comp, "kl_policy_logits": kl_policy.astype(np.float32),
            "kl_ref_logits": kl_ref.astype(np.float32), "desirable": desirable}


class OneProcess:
    """accelerate's Accelerator for one process on the CPU."""

    device = torch.device("cpu")

    def gather_for_metrics(self, x):
        return x

    gather = gather_for_metrics

    def unwrap_model(self, m):
        return m


class FusedHead(torch.nn.Module):
    """Stands in for a causal LM called with ``fused_lm_head=True``: the per-token log-probs of the
    labels (0 where a label is -100) and the statistics TRL logs, from stored logits."""

    is_gradient_checkpointing = False

    def __init__(self, logits_by_ids):
        super().__init__()
        self.logits_by_ids = logits_by_ids  # id(input_ids tensor) -> [N, T, V] logits

    def forward(self, input_ids, labels=None, **_):
        logits = self.logits_by_ids[id(input_ids)]
        logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
        target = labels[:, 1:]
        mask = target != -100
        token = torch.gather(logp, -1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
        stats = logp.detach()
        return types.SimpleNamespace(
            log_probs=token,
            log_sum_sq_probs=torch.logsumexp(2 * logp, dim=-1),
            entropy=-(stats.exp() * stats).sum(-1),
            mean_logits=logits[:, :-1].detach().mean(-1),
            is_top1=stats.argmax(-1) == target,
            aux_loss=None,
        )


class LogitsModel(torch.nn.Module):
    """Stands in for a causal LM called plainly (CPO, ORPO): returns the stored logits."""

    def __init__(self, logits):
        super().__init__()
        self.stored = logits

    def forward(self, input_ids, **_):
        return types.SimpleNamespace(logits=self.stored)


def _trainer(cls, **attrs):
    """A trainer object without ``__init__`` (which would load models and data): only the
    attributes its loss code reads."""
    t = cls.__new__(cls)
    t.accelerator = OneProcess()
    t._metrics = {"train": collections.defaultdict(list), "eval": collections.defaultdict(list)}
    t._total_train_tokens, t._tp_size = 0, 1
    t.aux_loss_enabled = False
    for k, v in attrs.items():
        setattr(t, k, v)
    return t


def _t(x, dtype=None):
    return torch.tensor(np.asarray(x), dtype=dtype)


def dpo_case(inp, rows, loss_types, weights=None, *, beta=0.1, label_smoothing=0.0, f_divergence_type="reverse_kl",
             f_alpha_divergence_coef=0.5, ld_alpha=None, use_weighting=False, discopop_tau=0.05):
    """``DPOTrainer._compute_loss`` on the pairs ``rows`` (indices into the B pairs)."""
    idx = np.concatenate([rows, np.asarray(rows) + B])
    ids = _t(inp["ids"][idx])
    policy = _t(inp["policy_logits"][idx]).requires_grad_(True)
    ref_ids = ids  # the reference sees the same tensor
    model = FusedHead({id(ids): policy})
    ref_model = FusedHead({id(ref_ids): _t(inp["ref_logits"][idx])})
    args = types.SimpleNamespace(discopop_tau=discopop_tau, gradient_checkpointing_kwargs=None)
    t = _trainer(DPOTrainer, model=model, ref_model=ref_model, args=args, beta=beta, label_smoothing=label_smoothing,
                 loss_types=list(loss_types), loss_weights=list(weights or [1.0] * len(loss_types)),
                 f_divergence_type=f_divergence_type, f_alpha_divergence_coef=f_alpha_divergence_coef,
                 ld_alpha=ld_alpha, use_weighting=use_weighting, precompute_ref_logps=False)
    inputs = {"input_ids": ids, "attention_mask": _t(inp["attention_mask"][idx]),
              "completion_mask": _t(inp["completion_mask"][idx])}
    loss = t._compute_loss(model, inputs, return_outputs=False)
    loss.backward()
    m = t._metrics["train"]
    metrics = {k: m[k][-1] for k in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")}
    return float(loss), policy.grad.numpy(), metrics


def kto_case(inp, loss_type, *, beta=0.1, desirable_weight=1.0, undesirable_weight=1.0):
    """``KTOTrainer._compute_loss`` on the B chosen rows as completions (labelled ``desirable``)
    with the B KL rows."""
    ids, kl_ids = _t(inp["ids"][:B]), _t(inp["kl_ids"])
    policy = _t(inp["policy_logits"][:B]).requires_grad_(True)
    kl_policy = _t(inp["kl_policy_logits"])
    model = FusedHead({id(ids): policy, id(kl_ids): kl_policy})
    ref_model = FusedHead({id(ids): _t(inp["ref_logits"][:B]), id(kl_ids): _t(inp["kl_ref_logits"])})
    args = types.SimpleNamespace(gradient_checkpointing_kwargs=None)
    t = _trainer(KTOTrainer, model=model, ref_model=ref_model, args=args, beta=beta, loss_type=loss_type,
                 desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
                 calculate_KL=loss_type == "kto", precompute_ref_logps=False)
    batch = {"input_ids": ids, "attention_mask": _t(inp["attention_mask"][:B]),
             "completion_mask": _t(inp["completion_mask"][:B]), "KL_input_ids": kl_ids,
             "KL_attention_mask": _t(inp["kl_attention_mask"]), "KL_completion_mask": _t(inp["kl_completion_mask"]),
             "label": _t(inp["desirable"])}
    loss = t._compute_loss(model, batch, return_outputs=False)
    loss.backward()
    m = t._metrics["train"]
    metrics = {k: m[k][-1] for k in ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins")}
    return float(loss), policy.grad.numpy(), metrics


def _pair_batch(inp, rows):
    c, r = np.asarray(rows), np.asarray(rows) + B

    def labels(idx):
        return _t(np.where(inp["completion_mask"][idx] == 1, inp["ids"][idx], -100))

    return {"chosen_input_ids": _t(inp["ids"][c]), "chosen_attention_mask": _t(inp["attention_mask"][c]),
            "chosen_labels": labels(c), "rejected_input_ids": _t(inp["ids"][r]),
            "rejected_attention_mask": _t(inp["attention_mask"][r]), "rejected_labels": labels(r)}


def reference_free_case(inp, rows, cls, **attrs):
    """``CPOTrainer`` / ``ORPOTrainer.get_batch_loss_metrics`` on the pairs ``rows``."""
    idx = np.concatenate([rows, np.asarray(rows) + B])
    policy = _t(inp["policy_logits"][idx]).requires_grad_(True)
    t = _trainer(cls, is_encoder_decoder=False, pad_token_id=0, padding_value=0, label_pad_token_id=-100, **attrs)
    loss, metrics = t.get_batch_loss_metrics(LogitsModel(policy), _pair_batch(inp, rows))
    loss.backward()
    keep = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")
    return float(loss), policy.grad.numpy(), {k: float(metrics[k]) for k in keep}


# name -> (jaxpref loss, loss_weights, jaxpref hparams, TRL call, per-example losses meaningful)
def cases(inp):
    every = list(range(B))
    out = {}

    def dpo(name, jloss, jhp, loss_types, weights=None, per_example=True, **trl_kw):
        out[name] = {"kind": "dpo", "loss": jloss, "loss_weights": ",".join(map(str, weights or [])),
                     "hparams": jhp, "run": lambda rows: dpo_case(inp, rows, loss_types, weights, **trl_kw),
                     "per_example": per_example}

    dpo("sigmoid", "sigmoid", {"beta": 0.1}, ["sigmoid"], beta=0.1)
    dpo("sigmoid_beta0.5", "dpo", {"beta": 0.5}, ["sigmoid"], beta=0.5)
    for f in ("forward_kl", "js_divergence", "alpha_divergence"):
        dpo(f"sigmoid_{f}", "dpo", {"beta": 0.1, "f_divergence_type": f, "f_alpha_divergence_coef": 0.3},
            ["sigmoid"], f_divergence_type=f, f_alpha_divergence_coef=0.3)
    dpo("sigmoid_ld_alpha", "dpo", {"beta": 0.1, "ld_alpha": 0.4}, ["sigmoid"], ld_alpha=0.4)
    dpo("sigmoid_wpo", "dpo", {"beta": 0.1, "use_weighting": True}, ["sigmoid"], use_weighting=True)
    dpo("hinge", "hinge", {"beta": 0.1}, ["hinge"])
    dpo("ipo", "ipo", {"beta": 0.1}, ["ipo"])
    dpo("ipo_js", "ipo", {"beta": 0.1, "f_divergence_type": "js_divergence"}, ["ipo"],
        f_divergence_type="js_divergence")
    dpo("exo_pair", "exo_pair", {"beta": 0.1, "label_smoothing": 1e-3}, ["exo_pair"], label_smoothing=1e-3)
    dpo("nca_pair", "nca_pair", {"beta": 0.1}, ["nca_pair"])
    dpo("robust", "robust", {"beta": 0.1, "label_smoothing": 0.2}, ["robust"], label_smoothing=0.2)
    dpo("bco_pair", "bco_pair", {"beta": 0.1}, ["bco_pair"])
    dpo("sppo_hard", "sppo_hard", {"beta": 0.1}, ["sppo_hard"])
    dpo("aot", "aot", {"beta": 0.1, "label_smoothing": 0.1}, ["aot"], label_smoothing=0.1, per_example=False)
    dpo("aot_unpaired", "aot_unpaired", {"beta": 0.1, "label_smoothing": 0.1}, ["aot_unpaired"],
        label_smoothing=0.1, per_example=False)
    dpo("apo_zero", "apo_zero", {"beta": 0.1}, ["apo_zero"])
    dpo("apo_down", "apo_down", {"beta": 0.1}, ["apo_down"])
    dpo("discopop", "discopop", {"beta": 0.1, "discopop_tau": 0.05}, ["discopop"])
    dpo("sigmoid_norm", "sigmoid_norm", {"beta": 0.5}, ["sigmoid_norm"], beta=0.5)
    dpo("sft", "sigmoid,sft", {"beta": 0.1}, ["sigmoid", "sft"], [0.0, 1.0], per_example=False)
    dpo("rpo", "sigmoid,sft", {"beta": 0.1}, ["sigmoid", "sft"], [1.0, 0.5], per_example=False)
    dpo("mpo_like", "sigmoid,hinge,sft", {"beta": 0.1}, ["sigmoid", "hinge", "sft"], [0.8, 0.2, 1.0],
        per_example=False)

    for name, hp in (("kto", {"beta": 0.2, "desirable_weight": 1.0, "undesirable_weight": 1.5}),
                     ("apo_zero_unpaired", {"beta": 0.2, "desirable_weight": 1.2, "undesirable_weight": 1.0})):
        out[name] = {"kind": "kto", "loss": name, "loss_weights": "", "hparams": hp, "per_example": False,
                     "run": lambda rows, name=name, hp=hp: kto_case(inp, name, **hp)}

    def cpo(name, jloss, jhp, per_example=True, **trl_kw):
        trl_kw = {"beta": 0.1, "label_smoothing": 0.0, "cpo_alpha": 1.0, "simpo_gamma": 0.5, "alpha": 0.0, **trl_kw}
        out[name] = {"kind": "cpo", "loss": jloss, "loss_weights": "", "hparams": jhp, "per_example": per_example,
                     "run": lambda rows: reference_free_case(inp, rows, CPOTrainer, **trl_kw)}

    # CPO's NLL term is a token mean over the batch: per-pair values only without it.
    cpo("cpo_sigmoid", "cpo", {"beta": 0.1, "label_smoothing": 0.1, "cpo_alpha": 1.0}, per_example=False,
        loss_type="sigmoid", label_smoothing=0.1)
    cpo("cpo_hinge", "cpo", {"beta": 0.1, "cpo_alpha": 0.0, "cpo_loss_type": "hinge"}, loss_type="hinge",
        cpo_alpha=0.0)
    cpo("cpo_ipo", "cpo", {"beta": 0.1, "cpo_alpha": 0.0, "cpo_loss_type": "ipo"}, loss_type="ipo", cpo_alpha=0.0)
    cpo("simpo", "simpo", {"beta": 2.0, "simpo_gamma": 0.5, "cpo_alpha": 0.0}, loss_type="simpo", beta=2.0,
        cpo_alpha=0.0)
    cpo("cpo_simpo", "simpo", {"beta": 2.0, "simpo_gamma": 0.8, "cpo_alpha": 0.5}, per_example=False,
        loss_type="simpo", beta=2.0, simpo_gamma=0.8, cpo_alpha=0.5)
    cpo("alphapo", "alphapo", {"beta": 2.0, "simpo_gamma": 0.5, "cpo_alpha": 0.0, "alphapo_alpha": 0.25},
        loss_type="simpo", beta=2.0, cpo_alpha=0.0, alpha=0.25)
    out["orpo"] = {"kind": "cpo", "loss": "orpo", "loss_weights": "", "hparams": {"beta": 0.1}, "per_example": False,
                   "run": lambda rows: reference_free_case(inp, rows, ORPOTrainer, beta=0.1)}
    return out, every


def main():
    torch.manual_seed(0)
    inp = make_inputs()
    table, every = cases(inp)
    golden = {"generator": "tests/golden/make_trl_golden.py", "trl_version": trl.__version__,
              "torch_version": torch.__version__, "sizes": {"B": B, "T": T, "V": V},
              "inputs": {k: np.asarray(v).tolist() for k, v in inp.items()}, "cases": {}}
    for name, case in table.items():
        with contextlib.redirect_stderr(open(os.devnull, "w")):
            loss, grad, metrics = case["run"](every)
            per_example = [case["run"]([b])[0] for b in every] if case["per_example"] else None
        golden["cases"][name] = {"kind": case["kind"], "loss": case["loss"], "loss_weights": case["loss_weights"],
                                 "hparams": case["hparams"], "value": loss, "metrics": metrics,
                                 "per_example": per_example,
                                 "grad_policy_logits": np.round(grad.astype(np.float64), 9).tolist()}
        print(f"{name:22s} loss {loss:+.6f}  " + "  ".join(f"{k.split('/')[-1]} {v:+.4f}" for k, v in metrics.items()))
    with open(OUT, "w") as f:
        json.dump(golden, f, separators=(",", ":"))
    print(f"wrote {OUT} ({os.path.getsize(OUT) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
