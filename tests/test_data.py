"""jaxpref.data: loading, column conventions, exact token ids, bad rows, deterministic batches.

Everything is built here: a WordLevel tokenizer (one token per word), a jinja chat template, and
tiny JSON/JSONL/Parquet/save_to_disk datasets under ``tmp_path``.
"""

import json
import re

import datasets
import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from jaxpref.data import (
    BadRowError,
    BatchStream,
    Columns,
    DataReport,
    check_json_file,
    encode_pairs,
    encode_unpaired,
    load_and_encode,
    load_preference_dataset,
)
from jaxpref.data.batches import (
    PairedBatch,
    PairExample,
    UnpairedBatch,
    UnpairedExample,
    default_buckets,
)

SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>", "<eot>"]
WORDS = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "user", "assistant", ":"]
WORDS += ["what", "color", "is", "the", "sky", "blue", "green", "red"]
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'assistant' %}"
    "{{ raise_exception('the first message must not be the assistant') }}{% endif %}"
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <eot> {% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    vocab = {t: i for i, t in enumerate(SPECIAL + WORDS)}
    inner = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    inner.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    inner.add_special_tokens(SPECIAL)
    return PreTrainedTokenizerFast(
        tokenizer_object=inner,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        chat_template=CHAT_TEMPLATE,
    )


@pytest.fixture(scope="module")
def ids(tok):
    """``ids("<bos> a b")`` -> token ids, one per whitespace-separated token."""
    return lambda text: tok.convert_tokens_to_ids(text.split())


def user(text):
    return [{"role": "user", "content": text}]


def assistant(text):
    return [{"role": "assistant", "content": text}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


PAIRS = [
    {"prompt": "what color is the sky", "chosen": "blue", "rejected": "green red"},
    {"prompt": "a b", "chosen": "c", "rejected": "d e"},
]
UNPAIRED = [
    {"prompt": "a", "completion": "b c", "label": True},
    {"prompt": "d", "completion": "e", "label": False},
]


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def test_load_json_jsonl_parquet_and_save_to_disk(tmp_path):
    (tmp_path / "array.json").write_text(json.dumps(PAIRS, indent=2))
    write_jsonl(tmp_path / "lines.jsonl", PAIRS)
    write_jsonl(tmp_path / "lines.json", PAIRS)  # JSON lines under a .json name
    datasets.Dataset.from_list(PAIRS).to_parquet(str(tmp_path / "p.parquet"))
    datasets.Dataset.from_list(PAIRS).save_to_disk(str(tmp_path / "saved"))
    for name in ["array.json", "lines.jsonl", "lines.json", "p.parquet", "saved"]:
        ds = load_preference_dataset(str(tmp_path / name))
        assert ds.to_list() == PAIRS, name


def test_load_directory_splits_and_saved_dict(tmp_path):
    (tmp_path / "d").mkdir()
    write_jsonl(tmp_path / "d" / "train.jsonl", PAIRS)
    write_jsonl(tmp_path / "d" / "test.jsonl", PAIRS[:1])
    assert len(load_preference_dataset(str(tmp_path / "d"))) == 2
    assert len(load_preference_dataset(str(tmp_path / "d"), split="test")) == 1

    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_list(PAIRS), test=datasets.Dataset.from_list(PAIRS[:1])
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert len(load_preference_dataset(str(tmp_path / "dd"), split="test")) == 1
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_preference_dataset(str(tmp_path / "dd"), split="validation")


def test_load_streaming_encodes_like_in_memory(tmp_path, tok):
    path = write_jsonl(tmp_path / "p.jsonl", PAIRS)
    stream = load_preference_dataset(str(path), streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    kw = {"max_length": 16, "max_prompt_length": 8}
    assert encode_pairs(stream, tok, **kw)[0] == encode_pairs(PAIRS, tok, **kw)[0]


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    good = json.dumps(PAIRS[0])
    path = tmp_path / "bad.jsonl"
    path.write_text(f'{good}\n\n{good}\n{{"prompt": "a", "chosen": }}\n{good}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 4: malformed JSON"):
        load_preference_dataset(str(path))
    path.write_text(f"{good}\n[1, 2]\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 2: expected a JSON object"):
        check_json_file(path)
    doc = tmp_path / "doc.json"
    doc.write_text('[\n  {"prompt": "a"},\n  {"prompt": "b",}\n]\n')
    with pytest.raises(ValueError, match=r"doc\.json: line 3: malformed JSON"):
        load_preference_dataset(str(doc))


def test_missing_path_and_offline_hub(tmp_path, monkeypatch):
    for missing in [tmp_path / "nope.jsonl", tmp_path / "no" / "such" / "dir", "./data.parquet"]:
        with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
            load_preference_dataset(str(missing))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .json"):
        load_preference_dataset(str(tmp_path / "empty"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="'someorg/prefs' is not a local .* offline"):
        load_preference_dataset("someorg/prefs")


# ---------------------------------------------------------------------------------------------
# Column conventions and tokenization
# ---------------------------------------------------------------------------------------------


def test_plain_pairs_exact_tokens(tok, ids):
    examples, report = encode_pairs(
        datasets.Dataset.from_list(PAIRS), tok, max_length=16, max_prompt_length=8
    )
    assert examples == [
        PairExample(ids("<bos> what color is the sky"), ids("blue <eos>"), ids("green red <eos>")),
        PairExample(ids("<bos> a b"), ids("c <eos>"), ids("d e <eos>")),
    ]
    assert report == DataReport(source="<dataset>", kept=2)


def test_conversational_explicit_prompt_applies_chat_template(tok, ids):
    rows = [
        {
            "prompt": user("what color is the sky"),
            "chosen": assistant("blue"),
            "rejected": assistant("red"),
        }
    ]
    (ex,), _ = encode_pairs(
        datasets.Dataset.from_list(rows), tok, max_length=32, max_prompt_length=16
    )
    # The template's BOS only: no second BOS from the tokenizer.
    assert ex.prompt == ids("<bos> user : what color is the sky <eot> assistant :")
    assert ex.chosen == ids("blue <eos>") and ex.rejected == ids("red <eos>")


def test_conversational_implicit_prompt_is_shared_prefix(tmp_path, tok, ids):
    turns = user("a") + assistant("b") + user("what color is the sky")
    rows = [{"chosen": turns + assistant("blue"), "rejected": turns + assistant("green")}]
    path = write_jsonl(tmp_path / "conv.jsonl", rows)
    (ex,), report = load_and_encode(
        str(path), tok, kind="paired", max_length=32, max_prompt_length=24
    )
    assert ex.prompt == ids(
        "<bos> user : a <eot> assistant : b <eot> user : what color is the sky <eot> assistant :"
    )
    assert ex.chosen == ids("blue <eos>") and ex.rejected == ids("green <eos>")
    assert report.kept == 1


def test_unpaired_text_and_conversational(tok, ids):
    examples, _ = encode_unpaired(
        datasets.Dataset.from_list(UNPAIRED), tok, max_length=8, max_prompt_length=4
    )
    assert examples == [
        UnpairedExample(ids("<bos> a"), ids("b c <eos>"), True),
        UnpairedExample(ids("<bos> d"), ids("e <eos>"), False),
    ]
    rows = [
        {"prompt": user("a"), "completion": assistant("b"), "label": 1},
        {"prompt": user("c"), "completion": assistant("d"), "label": 0},
    ]
    examples, _ = encode_unpaired(rows, tok, max_length=16, max_prompt_length=8)
    assert examples == [
        UnpairedExample(ids("<bos> user : a <eot> assistant :"), ids("b <eos>"), True),
        UnpairedExample(ids("<bos> user : c <eot> assistant :"), ids("d <eos>"), False),
    ]


def test_column_overrides(tok, ids):
    rows = [{"question": "a", "good": "b", "bad": "c"}]
    cols = Columns(prompt="question", chosen="good", rejected="bad")
    (ex,), _ = encode_pairs(rows, tok, max_length=8, max_prompt_length=4, columns=cols)
    assert ex == PairExample(ids("<bos> a"), ids("b <eos>"), ids("c <eos>"))
    with pytest.raises(
        ValueError, match=r"data\.jsonl: missing column\(s\) \['prompt', 'chosen', 'rejected'\]"
    ):
        encode_pairs(rows, tok, max_length=8, max_prompt_length=4, source_name="data.jsonl")


# ---------------------------------------------------------------------------------------------
# Truncation
# ---------------------------------------------------------------------------------------------


def test_truncation_policy_exact_tokens(tok, ids):
    rows = [
        # prompt [bos a b c d] keeps its last 3; room 6-3=3: chosen loses "h" and EOS.
        {"prompt": "a b c d", "chosen": "e f g h", "rejected": "e"},
        # prompt fits (3 tokens); rejected fills the room exactly and keeps its EOS.
        {"prompt": "a b", "chosen": "c", "rejected": "d e"},
    ]
    examples, report = encode_pairs(rows, tok, max_length=6, max_prompt_length=3)
    assert examples == [
        PairExample(ids("b c d"), ids("e f g"), ids("e <eos>")),
        PairExample(ids("<bos> a b"), ids("c <eos>"), ids("d e <eos>")),
    ]
    assert (report.kept, report.truncated_prompt, report.truncated_response) == (2, 1, 1)


def test_prompt_longer_than_max_length_is_truncated_not_broken(tok, ids):
    rows = [{"prompt": "a b c d e f g h i j", "completion": "a b", "label": True}]
    (ex,), report = encode_unpaired(rows, tok, max_length=4, max_prompt_length=3)
    assert ex == UnpairedExample(ids("h i j"), ids("a"), True)
    assert (report.truncated_prompt, report.truncated_response) == (1, 1)


def test_bad_limits_rejected(tok):
    for max_length, max_prompt_length in [(4, 4), (4, 0), (4, 5)]:
        with pytest.raises(ValueError, match="max_prompt_length < max_length"):
            encode_pairs(PAIRS, tok, max_length=max_length, max_prompt_length=max_prompt_length)


# ---------------------------------------------------------------------------------------------
# Bad rows
# ---------------------------------------------------------------------------------------------

GOOD_PAIR = {"prompt": "a", "chosen": "b", "rejected": "c"}
GOOD_CONV = {"prompt": user("a"), "chosen": assistant("b"), "rejected": assistant("c")}
GOOD_KTO = {"prompt": "a", "completion": "b", "label": True}

BAD_ROWS = [
    # (kind, good first row, bad row, field, reason)
    ("paired", GOOD_PAIR, {"prompt": "a", "chosen": "b"}, "rejected", "missing_field"),
    (
        "paired",
        GOOD_PAIR,
        {"prompt": "a", "chosen": "b", "rejected": None},
        "rejected",
        "missing_field",
    ),
    ("paired", GOOD_PAIR, {"prompt": 3, "chosen": "b", "rejected": "c"}, "prompt", "not_a_string"),
    (
        "paired",
        GOOD_PAIR,
        {"prompt": "a", "chosen": ["b"], "rejected": "c"},
        "chosen",
        "not_a_string",
    ),
    (
        "paired",
        GOOD_PAIR,
        {"prompt": "a", "chosen": " ", "rejected": "c"},
        "chosen",
        "empty_response",
    ),
    (
        "paired",
        GOOD_PAIR,
        {"prompt": "a", "chosen": "", "rejected": "c"},
        "chosen",
        "empty_response",
    ),
    (
        "paired",
        GOOD_PAIR,
        {"prompt": "a", "chosen": "b", "rejected": "b"},
        "rejected",
        "chosen_equals_rejected",
    ),
    # Different text, identical after truncation to max_length=4 (prompt [bos a]: room 2).
    (
        "paired",
        GOOD_PAIR,
        {"prompt": "a", "chosen": "b c d", "rejected": "b c e"},
        "rejected",
        "chosen_equals_rejected",
    ),
    ("paired", GOOD_CONV, {**GOOD_CONV, "chosen": "b"}, "chosen", "malformed_messages"),
    (
        "paired",
        GOOD_CONV,
        {**GOOD_CONV, "chosen": [{"role": "assistant"}]},
        "chosen",
        "malformed_messages",
    ),
    (
        "paired",
        GOOD_CONV,
        {**GOOD_CONV, "chosen": [{"content": "b"}]},
        "chosen",
        "malformed_messages",
    ),
    (
        "paired",
        GOOD_CONV,
        {**GOOD_CONV, "chosen": assistant("b") * 2},
        "chosen",
        "malformed_messages",
    ),
    ("paired", GOOD_CONV, {**GOOD_CONV, "chosen": user("b")}, "chosen", "malformed_messages"),
    ("paired", GOOD_CONV, {**GOOD_CONV, "prompt": []}, "prompt", "malformed_messages"),
    ("paired", GOOD_CONV, {**GOOD_CONV, "prompt": assistant("a")}, "prompt", "malformed_messages"),
    ("paired", GOOD_CONV, {**GOOD_CONV, "rejected": assistant("")}, "rejected", "empty_response"),
    (
        "paired",
        GOOD_CONV,
        {**GOOD_CONV, "rejected": assistant("b")},
        "rejected",
        "chosen_equals_rejected",
    ),
    ("unpaired", GOOD_KTO, {**GOOD_KTO, "label": 2}, "label", "invalid_label"),
    ("unpaired", GOOD_KTO, {**GOOD_KTO, "label": "yes"}, "label", "invalid_label"),
    ("unpaired", GOOD_KTO, {**GOOD_KTO, "label": 1.0}, "label", "invalid_label"),
    ("unpaired", GOOD_KTO, {**GOOD_KTO, "label": None}, "label", "missing_field"),
    ("unpaired", GOOD_KTO, {**GOOD_KTO, "completion": ""}, "completion", "empty_response"),
]


def _encode(kind, rows, tok, on_bad_row):
    encode = encode_pairs if kind == "paired" else encode_unpaired
    return encode(
        rows,
        tok,
        max_length=4,
        max_prompt_length=2,
        source_name="prefs.jsonl",
        on_bad_row=on_bad_row,
    )


@pytest.mark.parametrize("kind, good, bad, field, reason", BAD_ROWS)
def test_bad_row_error_names_source_row_and_field(tok, kind, good, bad, field, reason):
    with pytest.raises(BadRowError, match=rf"^prefs\.jsonl: row 1: field '{field}': {reason}") as e:
        _encode(kind, [good, bad, good], tok, "error")
    assert (e.value.row, e.value.field, e.value.reason) == (1, field, reason)


@pytest.mark.parametrize("kind, good, bad, field, reason", BAD_ROWS)
def test_bad_row_drop_counts_reason(tok, kind, good, bad, field, reason):
    examples, report = _encode(kind, [good, bad, good], tok, "drop")
    assert len(examples) == report.kept == 2
    assert report.dropped == {reason: 1}
    assert report.total == 3


def test_implicit_prompt_bad_rows(tok):
    turn = user("a")
    rows = [
        {"chosen": turn + assistant("b"), "rejected": turn + assistant("c")},
        {"chosen": assistant("b"), "rejected": assistant("c")},  # no shared prompt
        {
            "chosen": turn + assistant("b"),
            "rejected": turn + assistant("c") + user("d") + assistant("e"),
        },
        {"chosen": turn + assistant("b"), "rejected": turn + assistant("b")},
    ]
    with pytest.raises(
        BadRowError, match="row 1: field 'chosen': malformed_messages: .*share no prompt"
    ):
        encode_pairs(rows, tok, max_length=16, max_prompt_length=8)
    examples, report = encode_pairs(
        rows, tok, max_length=16, max_prompt_length=8, on_bad_row="drop"
    )
    assert len(examples) == 1
    assert report.dropped == {"malformed_messages": 2, "chosen_equals_rejected": 1}


def test_bad_row_in_file_names_the_file(tmp_path, tok):
    path = write_jsonl(
        tmp_path / "prefs.jsonl", [GOOD_PAIR, GOOD_PAIR, {**GOOD_PAIR, "chosen": "c"}]
    )
    with pytest.raises(BadRowError, match=re.escape(f"{path}: row 2: field 'rejected'")):
        load_and_encode(str(path), tok, kind="paired", max_length=8, max_prompt_length=4)


def test_report_summary_and_dict(tok):
    rows = [GOOD_PAIR, {**GOOD_PAIR, "chosen": ""}, {**GOOD_PAIR, "chosen": "a b c d e f"}]
    _, report = encode_pairs(
        rows, tok, max_length=4, max_prompt_length=2, source_name="x", on_bad_row="drop"
    )
    assert report.to_dict() == {
        "source": "x",
        "kept": 2,
        "dropped": {"empty_response": 1},
        "truncated_prompt": 0,
        "truncated_response": 1,
    }
    assert report.summary() == (
        "x: kept 2/3 rows (dropped empty_response=1); truncated prompts 0, responses 1"
    )


def test_load_and_encode_unpaired_parquet(tmp_path, tok, ids):
    datasets.Dataset.from_list(UNPAIRED).to_parquet(str(tmp_path / "kto.parquet"))
    examples, report = load_and_encode(
        str(tmp_path / "kto.parquet"), tok, kind="unpaired", max_length=8, max_prompt_length=4
    )
    assert [e.desirable for e in examples] == [True, False]
    assert report.source.endswith("kto.parquet") and report.kept == 2


# ---------------------------------------------------------------------------------------------
# BatchStream
# ---------------------------------------------------------------------------------------------


def _pairs(n):
    """Example i has prompt [i + 1], so a batch row's first token names its example."""
    return [PairExample([i + 1], [7] * (1 + i % 3), [8] * (1 + i % 2)) for i in range(n)]


def _stream(examples, **kw):
    return BatchStream(examples, batch_size=4, pad_id=0, buckets=default_buckets(32, 4), **kw)


def _rows(batch):
    return (np.asarray(batch[0])[:, 0] - 1).tolist()


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_batch_at_is_pure_function_of_seed_and_step():
    s1, s2 = _stream(_pairs(10), seed=3), _stream(_pairs(10), seed=3)
    assert s1.steps_per_epoch == 2
    for step in [5, 0, 3, 5, 1]:  # any order, repeated
        assert _same(s1.batch_at(step), s2.batch_at(step))
    assert not _same(s1.batch_at(0), _stream(_pairs(10), seed=4).batch_at(0))
    resumed = s2.iterate(start_step=3)
    assert _same(next(resumed), s1.batch_at(3)) and _same(next(resumed), s1.batch_at(4))


def test_each_example_once_per_epoch_and_epochs_differ():
    stream = _stream(_pairs(10), seed=0)
    epochs = [
        [r for s in range(e * 2, e * 2 + 2) for r in _rows(stream.batch_at(s))] for e in range(3)
    ]
    for seen in epochs:
        assert len(seen) == len(set(seen)) == 8  # remainder of 2 dropped
        assert set(seen) <= set(range(10))
    assert epochs[0] != epochs[1] != epochs[2]


def test_batch_contents_and_bucket():
    examples = _pairs(10)
    batch = _stream(examples).batch_at(0)
    assert isinstance(batch, PairedBatch)
    assert batch.chosen_ids.shape == (4, 4)  # longest row 1 + 3 tokens -> bucket 4
    for row, i in enumerate(_rows(batch)):
        n = len(examples[i].chosen)
        assert batch.chosen_ids[row, : 1 + n].tolist() == [i + 1] + [7] * n
        assert batch.chosen_completion_mask[row].tolist() == [0] + [1] * n + [0] * (3 - n)


@pytest.mark.parametrize("unpaired", [False, True])
def test_process_slices_partition_the_global_batch(unpaired):
    examples = _pairs(12)
    if unpaired:
        examples = [UnpairedExample(e.prompt, e.chosen, i % 2 == 0) for i, e in enumerate(examples)]
    whole = _stream(examples, seed=1)
    parts = [_stream(examples, seed=1, process_index=p, process_count=2) for p in range(2)]
    for step in range(5):
        full, halves = whole.batch_at(step), [p.batch_at(step) for p in parts]
        assert all(h[0].shape[0] == 2 for h in halves)
        assert halves[0][0].shape == halves[1][0].shape  # one T for all processes
        np.testing.assert_array_equal(np.concatenate([h[0] for h in halves]), full[0])
        if unpaired:
            assert isinstance(full, UnpairedBatch)
            np.testing.assert_array_equal(
                np.concatenate([h.desirable for h in halves]), full.desirable
            )


def test_stream_argument_errors():
    with pytest.raises(ValueError, match="batch_size <= #examples"):
        _stream(_pairs(3))
    with pytest.raises(ValueError, match="process_count"):
        _stream(_pairs(8), process_index=0, process_count=3)
    with pytest.raises(TypeError, match="all PairExample"):
        _stream(_pairs(4) + [UnpairedExample([1], [2], True)])
    with pytest.raises(ValueError, match="example 0 has more tokens than the largest bucket 4"):
        BatchStream([PairExample([1] * 4, [2], [3])] * 4, batch_size=4, pad_id=0, buckets=[4])
    with pytest.raises(ValueError, match="step must be non-negative"):
        _stream(_pairs(4)).batch_at(-1)


def test_row_indices_and_order_across_tokenizer_chunks(tok, ids, monkeypatch):
    monkeypatch.setattr("jaxpref.data.preference._CHUNK_ROWS", 2)
    rows = [{"prompt": w, "chosen": "b", "rejected": "c"} for w in ["a", "d", "e", "f", "g"]]
    rows[3]["chosen"] = ""
    examples, report = encode_pairs(rows, tok, max_length=8, max_prompt_length=4, on_bad_row="drop")
    assert [e.prompt for e in examples] == [ids(f"<bos> {w}") for w in "adeg"]
    assert report.dropped == {"empty_response": 1}
    with pytest.raises(BadRowError, match="row 3: field 'chosen'"):
        encode_pairs(rows, tok, max_length=8, max_prompt_length=4)


def test_loading_and_encoding_argument_errors(tmp_path, tok):
    (tmp_path / "p.csv").write_text("prompt,chosen,rejected\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_preference_dataset(str(tmp_path / "p.csv"))
    (tmp_path / "mixed").mkdir()
    write_jsonl(tmp_path / "mixed" / "a.jsonl", PAIRS)
    datasets.Dataset.from_list(PAIRS).to_parquet(str(tmp_path / "mixed" / "b.parquet"))
    with pytest.raises(ValueError, match="mixes"):
        load_preference_dataset(str(tmp_path / "mixed"))
    with pytest.raises(ValueError, match="kind must be"):
        load_and_encode(
            str(tmp_path / "mixed"), tok, kind="pairs", max_length=8, max_prompt_length=4
        )
    with pytest.raises(ValueError, match="on_bad_row"):
        encode_pairs(PAIRS, tok, max_length=8, max_prompt_length=4, on_bad_row="skip")
    no_template = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, eos_token="<eos>")
    with pytest.raises(ValueError, match="needs a tokenizer with a chat_template"):
        encode_pairs([GOOD_CONV], no_template, max_length=8, max_prompt_length=4)
    assert encode_unpaired([], tok, max_length=8, max_prompt_length=4) == (
        [],
        DataReport("<dataset>"),
    )
