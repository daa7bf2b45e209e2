"""The Elastic Attention task mix: exact lengths, the answers at the end and what they should be, determinism,
tags, bad input, disjoint train/validation sets; on a slice of the bundled corpus and a small tokenizer."""

from __future__ import annotations

import itertools
import json
import re

import pytest

from ssa_pretrain.elastic import tasks as T
from ssa_pretrain.elastic.tasks import (
    TASKS,
    build_task_mix,
    build_train_valid,
    corpus_texts,
    split_texts,
)

PER_TASK = 12
MIN_WORDS = T.MIN_WORDS


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """The first 40 documents of the bundled corpus (Genesis 1-40, ≈ 145k characters)."""
    return corpus_texts(limit=40)


@pytest.fixture(scope="module")
def tokenizer(texts, tmp_path_factory):
    """A 512-piece BPE tokenizer trained on `texts`, exported and loaded as an HF export's tokenizer is."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from ssa_pretrain.data.tokenizer import train_tokenizer
    from ssa_pretrain.hf.convert import save_tokenizer

    root = tmp_path_factory.mktemp("tokenizer")
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    train_tokenizer([root / "corpus.jsonl"], root / "spm", vocab_size=512, num_threads=2)
    (root / "hf").mkdir()
    save_tokenizer(root / "spm", root / "hf")
    tok = AutoTokenizer.from_pretrained(root / "hf")
    assert isinstance(tok, PreTrainedTokenizerFast)
    return tok


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


@pytest.fixture(scope="module", params=[256, 515], ids=lambda n: f"len{n}")
def mix(request, texts, tokenizer) -> tuple[int, list[T.TaskExample]]:
    return request.param, build_task_mix(texts, tokenizer, request.param, PER_TASK, seed=0)


def by_task(examples, task: str) -> list[T.TaskExample]:
    return [e for e in examples if e.task == task]


def context_text(tokenizer, example: T.TaskExample) -> str:
    return tokenizer.decode(example.input_ids[: example.answer_start])


def prose(texts) -> str:
    """Every prose sentence of `texts` in order, as the filler and passages are made of."""
    return " ".join(s for t in texts for s in T._sentences(t))


def assert_corpus_stretch(text: str, corpus: str) -> None:
    """`text` (whitespace collapsed, a character cut at either end dropped) is a stretch of `corpus`."""
    assert " ".join(text.split()).strip("\ufffd") in corpus, text


def test_exact_length_tokenized_answer_at_the_end_and_tags(mix, tokenizer):
    seq_len, examples = mix
    assert {t: len(by_task(examples, t)) for t in TASKS} == dict.fromkeys(TASKS, PER_TASK)
    changes = sum(a.task != b.task for a, b in itertools.pairwise(examples))
    assert changes > len(TASKS)  # the mix is shuffled, not grouped by task
    for e in examples:
        assert e.tag == TASKS[e.task]
        assert len(e.input_ids) == seq_len and all(isinstance(t, int) for t in e.input_ids)
        assert 0 < e.answer_start < seq_len
        assert e.input_ids[e.answer_start :] == encode(tokenizer, e.answer), e
        assert tokenizer.decode(e.input_ids[e.answer_start :]) == e.answer


def test_kv_retrieval_asks_a_key_that_occurs_once_and_answers_its_value(mix, tokenizer, texts):
    seq_len, examples = mix
    corpus = prose(texts)
    for e in by_task(examples, "kv_retrieval"):
        context, question = context_text(tokenizer, e).split("\nQuestion: ")
        key = re.fullmatch(r"what is the value of ([A-Z]{2}-\d{4})\?\nAnswer:", question)[1]
        assert context.count(key) == 1, context
        facts = dict(re.findall(r"The value of ([A-Z]{2}-\d{4}) is (\d{4})\.", context))
        assert len(facts) == min(16, max(2, seq_len // 64)), context  # one fact per 64 tokens
        assert " " + facts[key] == e.answer
        filler = re.sub(r" The value of [A-Z]{2}-\d{4} is \d{4}\.", "", context)
        assert len(filler.split()) >= 2 * MIN_WORDS  # filler sentences besides the facts ...
        assert_corpus_stretch(filler, corpus)  # ... that follow each other in the corpus


def test_multi_hop_answer_is_two_hops_from_the_asked_name(mix, tokenizer, texts):
    seq_len, examples = mix
    corpus = prose(texts)
    first_hop_first = []
    for e in by_task(examples, "multi_hop"):
        context, question = context_text(tokenizer, e).split("\nQuestion: ")
        start = re.fullmatch(r"the (.+) is kept in something; where is that kept\?\nAnswer: the", question)[1]
        facts = re.findall(r"The (\w+ \w+) is kept in the (\w+ \w+)\.", context)
        assert len(facts) == 2 * max(2, seq_len // 64 // 2), context
        inner = [a for a, _ in facts]
        assert len(set(inner)) == len(inner)  # every name is kept in one place only
        where = dict(facts)
        assert " " + where[where[start]] == e.answer
        assert context.count(start) == 1
        first_hop_first.append(context.index(f"The {start} is") < context.index(f"The {where[start]} is"))
        assert_corpus_stretch(re.sub(r" The \w+ \w+ is kept in the \w+ \w+\.", "", context), corpus)
    assert any(first_hop_first) and not all(first_hop_first)  # the hops come in either order


def test_names_in_the_corpus_never_occur_in_the_filler(texts, tokenizer):
    """A corpus that mentions a third of the multi-hop names: an example's names occur in its facts only."""
    mentions = " ".join(f"The {name} is old." for name in T.NAMES[::3])
    examples = build_task_mix([*texts[:4], mentions], tokenizer, 512, 32, seed=0, tasks=["multi_hop"])
    assert any("is old." in context_text(tokenizer, e) for e in examples)  # the mentions are in the filler
    for e in examples:
        context = context_text(tokenizer, e).split("\nQuestion: ")[0]
        facts = re.findall(r"The (\w+ \w+) is kept in the (\w+ \w+)\.", context)
        names = [name for fact in facts for name in fact]
        assert all(context.count(name) == names.count(name) for name in names), context


def test_continuation_answers_the_passage_next_eighth(mix, tokenizer, texts):
    seq_len, examples = mix
    corpus = prose(texts)
    for e in by_task(examples, "continuation"):
        assert seq_len // 8 - 8 <= seq_len - e.answer_start <= seq_len // 8
        tail = context_text(tokenizer, e)[-40:]  # the context's end is a whole sentence of the corpus
        assert tail + e.answer in corpus, (tail, e.answer)


def test_copy_answers_the_passage_first_sentence(mix, tokenizer, texts):
    seq_len, examples = mix
    corpus = prose(texts)
    sentences = [s for t in texts for s in T._sentences(t)]
    for e in by_task(examples, "copy"):
        passage, instruction = context_text(tokenizer, e).rsplit("\n", 1)
        assert instruction == "Repeat the first sentence:"
        assert passage.startswith(e.answer)
        assert_corpus_stretch(passage, corpus)
        assert any(s.startswith(e.answer.strip()) for s in sentences)
        assert seq_len - e.answer_start <= seq_len // 4


def test_deterministic_per_seed_and_per_task(texts, tokenizer):
    a = build_task_mix(texts, tokenizer, 256, 4, seed=1)
    assert build_task_mix(texts, tokenizer, 256, 4, seed=1) == a
    other = build_task_mix(texts, tokenizer, 256, 4, seed=2)
    for task in TASKS:
        ids = [e.input_ids for e in by_task(a, task)]
        assert all(x not in ids for x in (e.input_ids for e in by_task(other, task))), task
    # a task's examples do not depend on which other tasks are built
    only = build_task_mix(texts, tokenizer, 256, 4, seed=1, tasks=["copy"])
    assert sorted(e.input_ids for e in only) == sorted(e.input_ids for e in by_task(a, "copy"))


@pytest.mark.parametrize(
    ("task", "seq_len"), [("kv_retrieval", 64), ("multi_hop", 64), ("continuation", 15), ("copy", 32)]
)
def test_too_short_seq_len_raises_and_names_a_length_that_works(texts, tokenizer, task, seq_len):
    with pytest.raises(ValueError, match=f"seq_len {seq_len} is too short for {task}.*use seq_len >= ") as e:
        build_task_mix(texts, tokenizer, seq_len, 1, seed=0, tasks=[task])
    minimum = int(re.search(r"use seq_len >= (\d+)", str(e.value))[1])
    for seed in range(4):  # with any keys or names
        assert len(build_task_mix(texts, tokenizer, minimum, 8, seed=seed, tasks=[task])) == 8


def test_bad_input_raises(texts, tokenizer):
    with pytest.raises(ValueError, match="tasks must be distinct names"):
        build_task_mix(texts, tokenizer, 256, 1, seed=0, tasks=["kv_retrieval", "summary"])
    with pytest.raises(ValueError, match="hold no prose sentence"):
        build_task_mix(["def f(x):\n    return x\n", "# Title"], tokenizer, 256, 1, seed=0)
    few = ["In the beginning God created the heavens and the earth."]
    with pytest.raises(ValueError, match=r"fewer than the \d+ filler tokens"):
        build_task_mix(few, tokenizer, 256, 1, seed=0, tasks=["continuation"])
    with pytest.raises(ValueError, match="valid split of 2 documents"):
        build_train_valid(texts[:2], tokenizer, 256, 1, 1, seed=0, valid_fraction=0.01)


def test_train_and_validation_share_no_passage_key_or_fact(texts, tokenizer):
    train, valid = build_train_valid(texts, tokenizer, 256, 16, 16, seed=0, valid_fraction=0.25)
    assert len(train) == len(valid) == 4 * 16
    assert not {tuple(e.input_ids) for e in train} & {tuple(e.input_ids) for e in valid}

    def keys(examples):
        text = " ".join(tokenizer.decode(e.input_ids) for e in by_task(examples, "kv_retrieval"))
        return set(re.findall(r"[A-Z]{2}-\d{4}", text))

    def facts(examples):
        text = " ".join(tokenizer.decode(e.input_ids) for e in by_task(examples, "multi_hop"))
        return set(re.findall(r"The (\w+ \w+ is kept in the \w+ \w+)\.", text))

    assert keys(train) and keys(valid) and not keys(train) & keys(valid)
    assert facts(train) and facts(valid) and not facts(train) & facts(valid)
    train_texts, valid_texts = split_texts(texts, 0.25, seed=0)
    assert sorted(train_texts + valid_texts) == sorted(texts) and not set(train_texts) & set(valid_texts)
    # passages come from their own split's documents
    for examples, own, other in [(train, train_texts, valid_texts), (valid, valid_texts, train_texts)]:
        own_prose, other_prose = prose(own), prose(other)
        for e in by_task(examples, "continuation") + by_task(examples, "copy"):
            assert e.answer.strip() in own_prose and e.answer.strip() not in other_prose


def test_corpus_texts_reads_a_given_file_or_the_bundled_corpus(tmp_path):
    docs = ["First doc.", "Second doc.\n\nTwo paragraphs.", "Third."]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    assert corpus_texts(path) == docs
    assert corpus_texts(path, limit=2) == docs[:2]
    bundled = corpus_texts(limit=2)
    assert len(bundled) == 2 and bundled[0].startswith("Genesis 1")


def test_train_and_validation_facts_disjoint_where_chance_would_repeat_them(texts, tokenizer):
    """~1,000 multi-hop facts per split out of 256 × 255 pairs: drawn at random, ~16 would be shared."""
    train, valid = build_train_valid(texts, tokenizer, 512, 128, 128, seed=0, tasks=["multi_hop"])

    def facts(examples):
        text = " ".join(tokenizer.decode(e.input_ids) for e in examples)
        return set(re.findall(r"The (\w+ \w+ is kept in the \w+ \w+)\.", text))

    assert len(facts(train)) > 900 and len(facts(valid)) > 900
    assert not facts(train) & facts(valid)


def test_filler_is_prose_sentences():
    doc = (
        "Title Of A Page\n\nThe first sentence is prose. The second one\nruns over two lines! Too short.\n\n"
        "   indented = code, skipped. Another line of it.\n\nUse x = f(y) to call it. Is this prose, then?"
    )
    assert T._sentences(doc) == [
        "The first sentence is prose.",
        "The second one runs over two lines!",
        "Is this prose, then?",
    ]
