"""Online methods on your own model, prompts and judge: prompt datasets, Hugging Face reward models
(scored as transformers scores them), reward / preference functions, and SELM / SPPO jobs end to
end on files the tests make."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT, load_config

from jaxpref.config import ConfigError
from jaxpref.data.preference import BadRowError
from jaxpref.data.prompts import draw, encode_prompts, split_prompt_data
from jaxpref.judges import (
    CountingJudge,
    FunctionJudge,
    HostJudge,
    PairwiseFunctionJudge,
    TextView,
    load_hf_reward_model,
)
from jaxpref.judges.base import preference_matrix

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CHARS = list(" abcdefghijklmnopqrstuvwxyz.,!?':\nABCDEFGHIJKLMNOPQRSTUVWXYZ")
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


def char_tokenizer(*, reverse: bool = False, bos: bool = True, chat: bool = True):
    """A character-level fast tokenizer (``reverse``: the same characters, other ids)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = CHARS[::-1] if reverse else CHARS
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{c: i + 4 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    if chat:
        out.chat_template = CHAT_TEMPLATE
    return out


TINY_HF = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, pad_token_id=0,
               bos_token_id=1, eos_token_id=2)


def make_reward_model(folder, arch: str, tokenizer, seed: int = 0):
    """A random-init ``*ForSequenceClassification`` (num_labels=1) saved by transformers."""
    torch.manual_seed(seed)
    if arch == "llama":
        config = transformers.LlamaConfig(vocab_size=len(tokenizer), num_labels=1, **TINY_HF)
        model = transformers.LlamaForSequenceClassification(config)
    else:
        config = transformers.Qwen2Config(vocab_size=len(tokenizer), num_labels=1, **TINY_HF)
        model = transformers.Qwen2ForSequenceClassification(config)
    with torch.no_grad():  # a score head far from zero, so that scores differ between texts
        model.score.weight.normal_(0.0, 1.0)
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def make_policy(folder, tokenizer, seed: int = 1):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True, **TINY_HF)
    transformers.LlamaForCausalLM(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)


PROMPTS = ["the movie was", "I think the hotel", "a", "Honestly, the food at this place"]
COMPLETIONS = [" great!", " was not good at all.", " bad", " is wonderful, I loved it"]


def transformers_scores(model, tokenizer, texts):
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits[:, 0].double().numpy()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_hf_reward_model_scores_equal_transformers(tmp_path, arch):
    tok = char_tokenizer(bos=arch == "llama")
    reference = make_reward_model(tmp_path / "rm", arch, tok)
    judge = load_hf_reward_model(str(tmp_path / "rm"), batch_size=4)
    ours = judge.score_texts(PROMPTS, COMPLETIONS)
    # The reference tokenizes as a transformers user does: AutoTokenizer on the saved folder (for a
    # qwen2 config transformers picks its own Qwen2Tokenizer class, which splits text differently).
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "rm")
    theirs = transformers_scores(reference, tok, [p + c for p, c in zip(PROMPTS, COMPLETIONS)])
    assert ours.shape == (4,) and np.ptp(theirs) > 1e-3  # mixed lengths, distinct scores
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)
    # Chat-message prompts go through the reward model's own chat template, as TRL renders them.
    messages = [[{"role": "user", "content": p}] for p in PROMPTS]
    texts = [tok.apply_chat_template(m + [{"role": "assistant", "content": c}], tokenize=False)
             for m, c in zip(messages, COMPLETIONS)]
    batch = tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        chat_theirs = reference(**batch).logits[:, 0].double().numpy()
    np.testing.assert_allclose(judge.score_texts(messages, COMPLETIONS), chat_theirs, atol=1e-4, rtol=1e-4)


def test_reward_model_judge_re_tokenizes_policy_samples(tmp_path):
    """Policy token ids -> text -> the judge's ids: equal to scoring the text directly."""
    from jaxpref.judges.reward_model import RetokenizedJudge, same_vocabulary

    judge_tok, policy_tok = char_tokenizer(), char_tokenizer(reverse=True)
    make_reward_model(tmp_path / "rm", "llama", judge_tok)
    rm = load_hf_reward_model(str(tmp_path / "rm"), batch_size=4)
    assert not same_vocabulary(judge_tok, policy_tok) and same_vocabulary(judge_tok, char_tokenizer())
    prompt_ids = [policy_tok(p)["input_ids"] for p in PROMPTS]
    response_ids = [policy_tok(c, add_special_tokens=False)["input_ids"] + [policy_tok.eos_token_id] for c in
                    COMPLETIONS]
    view = TextView(policy_tok, policy_tok.eos_token_id, {tuple(i): p for i, p in zip(prompt_ids, PROMPTS)})
    got = RetokenizedJudge(rm, view).rewards(prompt_ids, response_ids)
    np.testing.assert_allclose(got, rm.score_texts(PROMPTS, COMPLETIONS), atol=1e-6)


def test_jaxpref_reward_model_folder_loads_in_transformers(tmp_path):
    """What configs/reward_model.py writes is a transformers sequence classifier with the same scores."""
    import jax

    from jaxpref.infer.scoring import sequence_scores
    from jaxpref.models import init_model
    from jaxpref.models.reward import init_reward_model, read_reward_model, write_reward_model

    tok = char_tokenizer()
    lm_model, lm_params = init_model({"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64,
                                      "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "pad_token_id": 0,
                                      "tie_word_embeddings": True, "max_position_embeddings": 64}, seed=3)
    model, params = init_reward_model(lm_params, lm_model.config)
    params["score"]["kernel"] = jax.random.normal(jax.random.PRNGKey(0), params["score"]["kernel"].shape)
    write_reward_model(tmp_path / "rm", model, params, tokenizer=tok)
    reference = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "rm")).eval()
    texts = [p + c for p, c in zip(PROMPTS, COMPLETIONS)]
    ids = [tok(t)["input_ids"] for t in texts]
    ours = sequence_scores(model, params, ids, pad_id=0, batch_size=4)
    np.testing.assert_allclose(ours, transformers_scores(reference, tok, texts), atol=1e-4, rtol=1e-4)
    again, params_again = read_reward_model(tmp_path / "rm")
    np.testing.assert_allclose(sequence_scores(again, params_again, ids, pad_id=0, batch_size=4), ours, atol=1e-6)


def test_reward_model_folder_errors_name_the_problem(tmp_path):
    from jaxpref.models.reward import read_reward_model

    with pytest.raises(FileNotFoundError, match="config.json"):
        read_reward_model(tmp_path)
    make_policy(tmp_path / "lm", char_tokenizer())
    with pytest.raises(ValueError, match="ForSequenceClassification"):
        read_reward_model(tmp_path / "lm")


# --- prompt datasets ----------------------------------------------------------------------------


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_prompt_datasets_text_chat_bad_rows_and_truncation(tmp_path):
    tok = char_tokenizer()
    text = encode_prompts([{"prompt": "abc"}, {"prompt": "a much longer prompt"}], tok, max_prompt_length=8)
    assert text.ids[0] == [1] + tok("abc", add_special_tokens=False)["input_ids"]  # BOS + characters
    assert text.ids[1] == tok("a much longer prompt")["input_ids"][-8:] and text.report.truncated_prompt == 1
    assert text.raw == ["abc", "a much longer prompt"]
    chat = encode_prompts([{"prompt": [{"role": "user", "content": "hi"}]}], tok, max_prompt_length=64)
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert chat.ids[0] == tok(rendered, add_special_tokens=False)["input_ids"]
    assert chat.raw == [[{"role": "user", "content": "hi"}]]
    rows = [{"prompt": "ok"}, {"prompt": "  "}, {"prompt": 3}, {"other": "x"}]
    with pytest.raises(BadRowError, match=r"row 1: field 'prompt': empty_prompt"):
        encode_prompts(rows, tok, max_prompt_length=8, source_name="p.jsonl")
    dropped = encode_prompts(rows, tok, max_prompt_length=8, on_bad_row="drop")
    assert len(dropped) == 1 and dropped.report.dropped == {"empty_prompt": 1, "not_a_string": 1, "missing_field": 1}
    with pytest.raises(ValueError, match="missing column 'prompt'"):
        encode_prompts([{"text": "x"}], tok, max_prompt_length=8)
    # Held-out prompts: the folder's test split, else the last eval_fraction of the rows.
    write_jsonl(tmp_path / "split" / "train.jsonl", [{"prompt": f"p{i}"} for i in range(10)])
    write_jsonl(tmp_path / "split" / "test.jsonl", [{"prompt": "q"}, {"prompt": "r"}])
    data = split_prompt_data(str(tmp_path / "split"), tok, max_prompt_length=8)
    assert len(data.train) == 10 and data.eval.raw == ["q", "r"] and "[test]" in data.eval_from
    flat = write_jsonl(tmp_path / "flat.jsonl", [{"prompt": f"p{i}"} for i in range(20)])
    data = split_prompt_data(flat, tok, max_prompt_length=8, eval_fraction=0.1)
    assert data.train.raw == [f"p{i}" for i in range(18)] and data.eval.raw == ["p18", "p19"]


def test_prompt_draws_cover_the_pool_before_repeating():
    first = draw(10, seed=3, start=0, n=6)
    second = draw(10, seed=3, start=6, n=6)
    assert sorted(np.concatenate([first, second[:4]])) == list(range(10))  # one full pass, then a new one
    np.testing.assert_array_equal(draw(10, seed=3, start=6, n=6), second)  # deterministic (resume)
    assert not np.array_equal(draw(10, seed=4, start=0, n=6), first)


# --- function judges --------------------------------------------------------------------------


def count_a(prompts, completions):
    return [float(c.count("a")) for c in completions]


def length(prompts, completions):
    return [float(len(c)) for c in completions]


def prefer_shorter(prompts, a, b):
    return [1.0 if len(x) < len(y) else 0.0 if len(x) > len(y) else 0.5 for x, y in zip(a, b)]


def test_function_judges_sum_weighted_rewards_and_compare(tmp_path):
    tok = char_tokenizer()
    view = TextView(tok, tok.eos_token_id)
    prompts = [tok(p)["input_ids"] for p in PROMPTS[:3]]
    responses = [tok(c, add_special_tokens=False)["input_ids"] + [2, 5, 6] for c in COMPLETIONS[:3]]  # text ends at EOS
    judge = CountingJudge(HostJudge(FunctionJudge([f"{__name__}:count_a", f"{__name__}:length"], [2.0, 0.5], view,
                                                  temperature=0.5)))
    want = np.array([2 * c.count("a") + 0.5 * len(c) for c in COMPLETIONS[:3]])
    np.testing.assert_allclose(judge.rewards(prompts, responses), want)
    p = judge.prob(prompts, responses, responses[::-1])
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-(want - want[::-1]) / 0.5)))
    assert judge.pointwise and judge.calls == 3 + 6
    pairwise = CountingJudge(HostJudge(PairwiseFunctionJudge(f"{__name__}:prefer_shorter", view)))
    assert not pairwise.pointwise
    np.testing.assert_allclose(pairwise.prob(prompts, responses, responses[::-1]), [0.0, 0.5, 1.0])  # " bad" wins
    with pytest.raises(TypeError, match="pairwise only"):
        pairwise.rewards(prompts, responses)
    # SPPO's K x K matrix: a pointwise judge scores each sample once, a pairwise one each pair.
    k_responses = [[responses[0], responses[1], responses[2]]]
    mat = preference_matrix(judge, prompts[:1], k_responses)
    np.testing.assert_allclose(mat[0] + mat[0].T, np.ones((3, 3)))
    assert judge.calls == 9 + 3
    mat = preference_matrix(pairwise, prompts[:1], k_responses)
    assert mat[0, 2, 0] == 1.0 and pairwise.calls == 3 + 3  # K (K - 1) / 2 comparisons
    # A file path works as a module; bad specs and bad outputs name what is wrong.
    (tmp_path / "rewards.py").write_text("def bad(prompts, completions):\n    return [1.0]\n")
    bad = FunctionJudge([f"{tmp_path / 'rewards.py'}:bad"], [1.0], view)
    with pytest.raises(ValueError, match="returned 1 values for 3 completions"):
        bad.rewards(prompts, responses)
    from jaxpref.judges import import_callable

    with pytest.raises(ValueError, match="config.judge.function: .* is not 'package.module:callable'"):
        import_callable("no_colon")
    with pytest.raises(ValueError, match="has no 'nope'"):
        import_callable(f"{__name__}:nope")


def test_vader_reward_function_is_the_sentiment_oracle_and_prompt_files_match(tmp_path):
    pytest.importorskip("vaderSentiment")
    from jaxpref.tasks.sentiment import all_prompts, prompt_split, vader_reward, write_prompt_files

    texts = [" I loved it, wonderful!", " terrible and sad.", " a table"]
    scores = vader_reward(["x"] * 3, texts)
    assert scores[0] > 0.5 and scores[1] < -0.5 and scores[2] == 0.0
    counts = write_prompt_files(str(tmp_path))
    for name in ("train", "test"):
        shipped = open(os.path.join(ROOT, "examples", "sentiment_prompts", f"{name}.jsonl")).read()
        assert shipped == (tmp_path / f"{name}.jsonl").read_text(), f"examples/sentiment_prompts/{name}.jsonl is stale"
    train, held = prompt_split()
    assert counts == {"train": len(train), "test": len(held)} and len(train) + len(held) == len(all_prompts())


# --- jobs end to end -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_files(tmp_path_factory):
    """A tiny HF policy and two reward models with another tokenizer, and a prompt folder."""
    root = tmp_path_factory.mktemp("own")
    make_policy(root / "policy", char_tokenizer(reverse=True))
    make_reward_model(root / "rm_llama", "llama", char_tokenizer())
    make_reward_model(root / "rm_qwen2", "qwen2", char_tokenizer(bos=False), seed=5)
    words = ["the movie", "my trip", "this book", "the food", "our hotel", "a song", "the game", "that show"]
    write_jsonl(root / "prompts" / "train.jsonl", [{"prompt": f"Tell me about {w}:"} for w in words] +
                [{"prompt": [{"role": "user", "content": f"Review {w}."}]} for w in words])
    write_jsonl(root / "prompts" / "test.jsonl", [{"prompt": f"What about {w}?"} for w in words])
    (root / "rewards.py").write_text("def exclaim(prompts, completions):\n"
                                     "    return [c.count('!') - 0.1 * c.count(' ') for c in completions]\n")
    return root


SMALL_SIZES = {"num_prompts": 8, "num_steps": 2, "batch_size": 4, "sampling.batch_size": 8,
               "sampling.max_new_tokens": 6, "eval.num_prompts": 8, "eval.round_prompts": 8, "eval.batch_size": 8,
               "eval.max_new_tokens": 6, "data.max_prompt_length": 48, "data.max_length": 64, "log_every": 1,
               "checkpoint_every": 2}
SMALL = [f"--config.{k}={v}" for k, v in SMALL_SIZES.items()]


def run_main(args, workdir):
    out = subprocess.run([sys.executable, "-m", "jaxpref.main", *args, f"--workdir={workdir}", *SMALL], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads((workdir / "summary.json").read_text())


@pytest.mark.parametrize("judge", ["reward_model", "function"])
def test_selm_on_own_model_prompts_and_judge_from_the_command_line(own_files, tmp_path, judge):
    args = ["--config=configs/selm.py", "--config.model.name=hf", f"--config.model.path={own_files / 'policy'}",
            f"--config.data.prompts={own_files / 'prompts'}", f"--config.judge.kind={judge}",
            "--config.selm.rounds=2"]
    args += [f"--config.judge.path={own_files / 'rm_llama'}"] if judge == "reward_model" else \
        [f"--config.judge.function={own_files / 'rewards.py'}:exclaim"]
    summary = run_main(args, tmp_path / "run")
    assert summary["judge"] == judge
    assert summary["judge_calls"] == 2 * 8 * 4  # 2 online rounds x 8 prompts x 4 samples, each scored once
    assert [r["judge_calls"] for r in summary["rounds"]] == [32, 32]
    assert 0.0 <= summary["win_rate_vs_sft"] <= 1.0 and np.isfinite(summary["kl_vs_sft"])
    assert summary["num_prompts"] == 8 and "mean_reward" in summary


def test_sppo_with_a_qwen2_reward_model_and_a_pairwise_function(own_files, tmp_path):
    from helpers import set_field

    from jaxpref.main import run

    def cfg_with(**overrides):
        cfg = load_config("sppo")
        base = {"model.name": "hf", "model.path": str(own_files / "policy"), "data.prompts": str(own_files / "prompts"),
                "sppo.iterations": 1, "sppo.num_samples": 3}
        for k, v in {**SMALL_SIZES, **base, **overrides}.items():
            set_field(cfg, k, v)
        return cfg

    rm = cfg_with(**{"judge.kind": "reward_model", "judge.path": str(own_files / "rm_qwen2")})
    out = run(rm, str(tmp_path / "a"))
    assert out["judge_calls"] == 8 * 3 and out["iterations"][0]["judge_calls"] == 24
    pairwise = cfg_with(**{"judge.kind": "pairwise_function", "judge.function": f"{__name__}:prefer_shorter"})
    out = run(pairwise, str(tmp_path / "b"))
    assert out["judge_calls"] == 8 * 3  # K (K - 1) / 2 = 3 comparisons per prompt
    assert "mean_reward" not in out and 0.0 <= out["win_rate_vs_sft"] <= 1.0  # preferences only
    with pytest.raises(ConfigError, match="config.judge.kind: 'oracle' needs a built-in task"):
        run(cfg_with(**{"judge.kind": "oracle"}), str(tmp_path / "c"))


@pytest.mark.parametrize("method, extra", [
    ("rso", {"rso.num_samples": 4, "rso.num_accept": 2}),
    ("active_dpo", {"active.acquisitions": 2, "active.labels_per_step": 4, "active.pool_size": 8,
                    "active.num_samples": 3, "active.entropy_pool_factor": 1, "active.epochs": 1,
                    "active.strategies": "random,hybrid"}),
])
def test_rso_and_active_dpo_draw_your_prompts_and_ask_your_function(own_files, tmp_path, method, extra):
    from helpers import set_field

    from jaxpref.main import run

    cfg = load_config(method)
    base = {"model.name": "hf", "model.path": str(own_files / "policy"), "data.prompts": str(own_files / "prompts"),
            "judge.kind": "function", "judge.function": f"{own_files / 'rewards.py'}:exclaim"}
    for k, v in {**SMALL_SIZES, **base, **extra}.items():
        set_field(cfg, k, v)
    out = run(cfg, str(tmp_path / method))
    assert out["judge"] == "function" and out["judge_calls"] > 0
    assert out["num_prompts"] == 8 and 0.0 <= out["win_rate_vs_sft"] <= 1.0 and "mean_reward" in out
