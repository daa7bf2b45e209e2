"""The tagged task mix that trains and evaluates an Elastic Attention router, built offline from corpus text.

Each task is tagged by how much it suffers when kv heads run sparse attention; the router is trained towards
a share of sparse heads of 0.7 on `sensitive` tasks and 1.0 on `robust` ones:

    kv_retrieval  sensitive  facts " The value of ZK-4821 is 7315." scattered in filler prose, then
                             "\\nQuestion: what is the value of ZK-4821?\\nAnswer:"  →  " 7315"
    multi_hop     sensitive  chains " The red box is kept in the oak chest." + " The oak chest is kept in the
                             tiny vault." scattered (shuffled) in filler, then "\\nQuestion: the red box is
                             kept in something; where is that kept?\\nAnswer: the"  →  " tiny vault"
    continuation  robust     a corpus passage; the answer is its last ≈ seq_len/8 tokens (whole words)
    copy          robust     a passage from the start of a sentence, "\\nRepeat the first sentence:"  →
                             " " + that sentence (its first words when it is over seq_len/4 tokens)

Every example is exactly `seq_len` token ids, no padding: `input_ids = context + answer`, where the answer
ids are `tokenizer(answer)` of the answer text alone and the context concatenates separately tokenized
pieces (filler sentences, facts, question), so lengths are exact whatever BPE would merge across pieces.
The filler is the one elastic part: whole corpus sentences from prose paragraphs (no code, no headings,
nothing indented), the outermost one cut at the token level so that the context fills exactly the room left.
Facts sit at sentence boundaries. One kv fact per 64 tokens of context (2 to 16), and half as many
multi-hop chains (at least 2), so longer contexts hold more distractors. Keys and names are distinct inside
an example and never occur in its filler text: the asked key occurs in the context exactly once.

Determinism: each task draws from its own `random.Random(f"{seed}:{task}:{split}")`, so one task's examples
do not depend on which other tasks are built; the mix is shuffled by a generator seeded the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssa_pretrain.data.documents import iter_documents
from ssa_pretrain.data.prepare import default_corpus
from ssa_pretrain.data.shards import split_of

TASKS: dict[str, str] = {
    "kv_retrieval": "sensitive",
    "multi_hop": "sensitive",
    "continuation": "robust",
    "copy": "robust",
}
"""Task name → tag (`sensitive`: needs full attention on some heads; `robust`: sparse attention suffices)."""

KV_FACT = " The value of {key} is {value}."
KV_QUESTION = "\nQuestion: what is the value of {key}?\nAnswer:"
HOP_FACT = " The {inner} is kept in the {outer}."
HOP_QUESTION = "\nQuestion: the {start} is kept in something; where is that kept?\nAnswer: the"
COPY_INSTRUCTION = "\nRepeat the first sentence:"
ADJECTIVES = ("red", "blue", "green", "amber", "violet", "silver", "copper", "oak", "pine", "marble",
              "velvet", "striped", "dotted", "tiny", "rusty", "painted")  # fmt: skip
CONTAINERS = ("box", "chest", "crate", "drawer", "cabinet", "locker", "basket", "trunk", "vault", "closet",
              "barrel", "cupboard", "satchel", "bin", "case", "jar")  # fmt: skip
NAMES = tuple(f"{a} {c}" for a in ADJECTIVES for c in CONTAINERS)  # 256 multi-hop names

TOKENS_PER_FACT = 64  # one kv fact per 64 tokens of context ...
MIN_FACTS, MAX_FACTS = 2, 16  # ... within these bounds
MIN_FILLER = 16  # tokens of prose at least, so that facts are scattered in text rather than stacked
MIN_WORDS, MAX_WORDS = 4, 80  # a filler sentence: long enough to be prose, short enough to leave room
MAX_DRAWS = 100  # fact draws per example before the corpus is blamed for containing the made-up names

_PARTS = {"all": None, "train": 0, "valid": 1}  # which half of the fact space a split draws its facts from
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"')”’])\s+")
_NOT_PROSE = set("{}[]<>=_`|\\#*")


@dataclass(frozen=True)
class TaskExample:
    """One example: `input_ids[answer_start:] == tokenizer(answer)` ids, the span the loss and the exact-match
    score cover; `input_ids[:answer_start]` is the context."""

    task: str
    tag: str  # "sensitive" | "robust"
    input_ids: list[int]  # exactly seq_len token ids
    answer_start: int
    answer: str  # the answer text (as tokenized on its own)


def corpus_texts(path: str | Path | None = None, limit: int | None = None) -> list[str]:
    """The documents of `path` (a .jsonl / .txt (.xz / .gz) file or a directory of them; default: the bundled
    corpus), in file order, the first `limit` of them when given. Unreadable input raises `DataError`."""
    with contextlib.closing(iter_documents([path if path is not None else default_corpus()])) as docs:
        return list(itertools.islice(docs, limit))


def split_texts(texts: Sequence[str], valid_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, valid) documents, split as the data shards split them: document i is held out when a seeded
    hash of (seed, i) falls below `valid_fraction`. Raises ValueError when either side is empty."""
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    sides: dict[str, list[str]] = {"train": [], "valid": []}
    for i, text in enumerate(texts):
        sides[split_of(i, seed, valid_fraction)].append(text)
    for side, docs in sides.items():
        if not docs:
            raise ValueError(
                f"the {side} split of {len(texts)} documents (valid_fraction {valid_fraction}) is empty; "
                "pass more documents or another valid_fraction"
            )
    return sides["train"], sides["valid"]


def build_task_mix(
    texts: Sequence[str],
    tokenizer: Any,
    seq_len: int,
    examples_per_task: int,
    seed: int,
    tasks: Sequence[str] = tuple(TASKS),
) -> list[TaskExample]:
    """`examples_per_task` examples of each of `tasks`, made from the prose sentences of `texts`, shuffled.

    `tokenizer` is a Hugging Face tokenizer (called as `tokenizer(text, add_special_tokens=False)`). Raises
    ValueError for an unknown task, a `seq_len` too short for a task, or texts with too little prose.
    """
    return _build(texts, tokenizer, seq_len, examples_per_task, seed, tasks, "all")


def build_train_valid(
    texts: Sequence[str],
    tokenizer: Any,
    seq_len: int,
    examples_per_task: int,
    valid_per_task: int,
    seed: int,
    valid_fraction: float = 0.1,
    tasks: Sequence[str] = tuple(TASKS),
) -> tuple[list[TaskExample], list[TaskExample]]:
    """(train, valid) mixes that share no passage, key or fact.

    The documents are split by `split_texts`; each mix is built from its own documents with its own
    generators (the split's name is part of their seeds), and draws its facts from its own half of the fact
    space (by a hash of the kv key, of the multi-hop (inner, outer) pair): no validation key or fact occurs
    in training.
    """
    train_texts, valid_texts = split_texts(texts, valid_fraction, seed)
    return (
        _build(train_texts, tokenizer, seq_len, examples_per_task, seed, tasks, "train"),
        _build(valid_texts, tokenizer, seq_len, valid_per_task, seed, tasks, "valid"),
    )


def _build(
    texts: Sequence[str],
    tokenizer: Any,
    seq_len: int,
    examples_per_task: int,
    seed: int,
    tasks: Sequence[str],
    split: str,
) -> list[TaskExample]:
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks or len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks must be distinct names out of {list(TASKS)}, got {list(tasks)}")
    if examples_per_task < 1 or seq_len < 1:
        raise ValueError(f"examples_per_task and seq_len must be >= 1, got {examples_per_task}, {seq_len}")
    builder = _Builder(texts, tokenizer, seq_len, _PARTS[split])
    examples = []
    for task in tasks:
        builder.check_room(task)
        rng = random.Random(f"{seed}:{task}:{split}")
        examples += [getattr(builder, task)(rng) for _ in range(examples_per_task)]
    random.Random(f"{seed}:mix:{split}").shuffle(examples)
    return examples


def _sentences(text: str) -> list[str]:
    """The prose sentences of a document, whitespace collapsed: paragraphs with an indented line (code,
    quotes, lists) are skipped, and so are sentences with code characters or outside MIN/MAX_WORDS words."""
    out = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = paragraph.strip("\n").split("\n")
        if any(line[:1].isspace() for line in lines):
            continue
        for sentence in _SENTENCE_BREAK.split(" ".join(lines)):
            words = sentence.split()
            if (
                MIN_WORDS <= len(words) <= MAX_WORDS
                and sentence.rstrip("\"')”’")[-1:] in ".!?"
                and (words[0][0].isupper() or words[0][0] in "\"'“‘(")
                and not _NOT_PROSE.intersection(sentence)
            ):
                out.append(" ".join(words))
    return out


def _in_part(fact: str, part: int | None) -> bool:
    """Whether `fact` belongs to half `part` of the fact space (every fact does when `part` is None)."""
    return part is None or hashlib.blake2b(fact.encode(), digest_size=8).digest()[0] % 2 == part


class _Builder:
    """Makes the examples of every task from one pool of sentences (the texts' prose, in order)."""

    def __init__(self, texts: Sequence[str], tokenizer: Any, seq_len: int, part: int | None) -> None:
        self.sentences = [s for text in texts for s in _sentences(text)]
        if not self.sentences:
            raise ValueError(
                f"the {len(texts)} documents hold no prose sentence of {MIN_WORDS}-{MAX_WORDS} words; "
                "pass more text (e.g. corpus_texts())"
            )
        self.tokenizer, self.seq_len, self.part = tokenizer, seq_len, part
        self.facts = min(MAX_FACTS, max(MIN_FACTS, seq_len // TOKENS_PER_FACT))  # kv facts
        self.chains = max(2, self.facts // 2)  # multi-hop chains, of 2 facts each
        self._piece_ids: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def longest(self, texts: list[str]) -> int:
        return max(map(len, self.tokenizer(texts, add_special_tokens=False).input_ids))

    def check_room(self, task: str) -> None:
        """Raise ValueError when seq_len cannot hold `task` with its longest keys or names (every digit is a
        token in our tokenizers, so the letters and names decide), whatever the examples draw."""
        if task == "continuation" and self.seq_len < 16:
            raise self.too_short(task, "its answer is the last seq_len / 8 tokens, at least 2", 16)
        if task == "copy":
            room = len(self.encode(COPY_INSTRUCTION)) + MIN_FILLER  # the answer takes up to seq_len / 4 more
            if self.seq_len - self.seq_len // 4 < room:
                why = f"the instruction and {MIN_FILLER} tokens of passage take {room} tokens"
                raise self.too_short(task, why, -(-4 * room // 3))
        if task in ("kv_retrieval", "multi_hop"):
            if task == "kv_retrieval":
                keys = [f"{a}{b}-0000" for a, b in itertools.product(string.ascii_uppercase, repeat=2)]
                count, answer = self.facts, self.longest([" 0000"])
                fact = self.longest([KV_FACT.format(key=k, value="0000") for k in keys])
                question = self.longest([KV_QUESTION.format(key=k) for k in keys])
            else:
                count, answer = 2 * self.chains, self.longest([" " + n for n in NAMES])
                fact = self.longest([HOP_FACT.format(inner=n, outer=n) for n in NAMES])
                question = self.longest([HOP_QUESTION.format(start=n) for n in NAMES])
            fixed = count * fact + question + answer
            if self.seq_len - fixed < MIN_FILLER:
                why = f"{count} facts, question and answer take up to {fixed} tokens, + {MIN_FILLER} filler"
                raise self.too_short(task, why, fixed + MIN_FILLER)

    def sentence_ids(self, i: int) -> list[int]:
        """Token ids of sentence `i` with its leading space, cached."""
        piece = " " + self.sentences[i]
        if piece not in self._piece_ids:
            self._piece_ids[piece] = self.encode(piece)
        return self._piece_ids[piece]

    def run(self, start: int, budget: int, step: int, task: str) -> tuple[list[list[int]], str]:
        """Sentences `start`, `start + step`, ... until exactly `budget` tokens, the last one taken cut to fit
        (its head when walking back, `step` −1; its tail when walking on, +1). (Token ids per sentence, their
        text), in text order."""
        taken: list[int] = []
        total = 0
        for k in range(len(self.sentences)):
            taken.append((start + k * step) % len(self.sentences))
            total += len(self.sentence_ids(taken[-1]))
            if total >= budget:
                order = taken[::step]  # text order
                pieces = [self.sentence_ids(i) for i in order]
                excess = total - budget
                if step < 0:
                    pieces[0] = pieces[0][excess:]
                else:
                    pieces[-1] = pieces[-1][: len(pieces[-1]) - excess]
                return pieces, " ".join(self.sentences[i] for i in order)
        raise ValueError(
            f"{task}: the texts hold {total} tokens of prose sentences, fewer than the {budget} filler "
            f"tokens an example needs at seq_len {self.seq_len}; pass more text or a shorter seq_len"
        )

    def example(self, task: str, context: list[int], answer: str, answer_ids: list[int]) -> TaskExample:
        input_ids = context + answer_ids
        assert len(input_ids) == self.seq_len, (task, len(input_ids))
        return TaskExample(task, TASKS[task], input_ids, len(context), answer)

    def too_short(self, task: str, why: str, minimum: int) -> ValueError:
        return ValueError(
            f"seq_len {self.seq_len} is too short for {task}: {why}; "
            f"use seq_len >= {minimum} or leave {task} out"
        )

    def scattered(
        self, rng: random.Random, task: str, facts: list[str], question: str, answer: str, names: list[str]
    ) -> TaskExample | None:
        """`facts` (in the given order) at random sentence boundaries of filler, then the question; None when
        one of `names` occurs in the filler text (the caller draws new facts)."""
        fact_ids = [self.encode(f) for f in facts]
        question_ids, answer_ids = self.encode(question), self.encode(answer)
        fixed = sum(map(len, fact_ids)) + len(question_ids) + len(answer_ids)
        if self.seq_len - fixed < MIN_FILLER:  # only where tokens do not add up over words (check_room)
            why = f"{len(facts)} facts, question and answer took {fixed} tokens, + {MIN_FILLER} of filler"
            raise self.too_short(task, why, fixed + MIN_FILLER)
        filler, text = self.run(rng.randrange(len(self.sentences)), self.seq_len - fixed, -1, task)
        if any(name.lower() in text.lower() for name in names):
            return None
        at = sorted(rng.randint(0, len(filler)) for _ in fact_ids)  # boundary b: before filler sentence b
        context: list[int] = []
        for b, sentence in enumerate([*filler, []]):
            context += [t for i, ids in enumerate(fact_ids) if at[i] == b for t in ids] + sentence
        return self.example(task, context + question_ids, answer, answer_ids)

    def drawn(self, task: str, draw: Callable[[], TaskExample | None]) -> TaskExample:
        """The first example `draw()` makes whose names do not occur in its filler."""
        for _ in range(MAX_DRAWS):
            if (example := draw()) is not None:
                return example
        raise ValueError(
            f"{task}: the filler text contained the made-up keys or names in {MAX_DRAWS} draws in a row; "
            "the texts look generated from this task's templates"
        )

    def kv_retrieval(self, rng: random.Random) -> TaskExample:
        def draw() -> TaskExample | None:
            keys: list[str] = []
            while len(keys) < self.facts:
                key = "".join(rng.choices(string.ascii_uppercase, k=2)) + f"-{rng.randrange(1000, 10000)}"
                if key not in keys and _in_part(key, self.part):
                    keys.append(key)
            values = rng.sample(range(1000, 10000), self.facts)
            asked = rng.randrange(self.facts)
            facts = [KV_FACT.format(key=k, value=v) for k, v in zip(keys, values, strict=True)]
            question = KV_QUESTION.format(key=keys[asked])
            return self.scattered(rng, "kv_retrieval", facts, question, f" {values[asked]}", keys)

        return self.drawn("kv_retrieval", draw)

    def multi_hop(self, rng: random.Random) -> TaskExample:
        def draw() -> TaskExample | None:
            chains: list[list[str]] = []
            used: set[str] = set()
            while len(chains) < self.chains:
                chain = rng.sample([n for n in NAMES if n not in used], 3)
                if all(_in_part(f"{a}|{b}", self.part) for a, b in itertools.pairwise(chain)):
                    chains.append(chain)
                    used.update(chain)
            facts = [HOP_FACT.format(inner=a, outer=b) for c in chains for a, b in itertools.pairwise(c)]
            rng.shuffle(facts)  # the second hop may come first
            question = HOP_QUESTION.format(start=chains[0][0])
            return self.scattered(rng, "multi_hop", facts, question, f" {chains[0][2]}", sorted(used))

        return self.drawn("multi_hop", draw)

    def word_prefix(self, words: list[str], limit: int) -> tuple[str, list[int]] | None:
        """(" " + the most of `words` whose ids fit in `limit` tokens, those ids); None when no word fits."""
        lo, hi = 0, len(words)  # invariant: words[:lo] fit (or lo == 0), words[:hi + 1] do not
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(self.encode(" " + " ".join(words[:mid]))) <= limit:
                lo = mid
            else:
                hi = mid - 1
        return (text := " " + " ".join(words[:lo]), self.encode(text)) if lo else None

    def start_and_prefix(
        self, rng: random.Random, task: str, limit: int, sentences: int
    ) -> tuple[int, str, list[int]]:
        """A random sentence index whose words (from up to `sentences` sentences on) start a text of at most
        `limit` tokens, with that text and its ids (the first such sentence from a random one on)."""
        n = len(self.sentences)
        first = rng.randrange(n)
        for i in range(first, first + n):
            words = [w for k in range(sentences) for w in self.sentences[(i + k) % n].split()]
            if (found := self.word_prefix(words, limit)) is not None:
                return i, *found
        raise ValueError(f"seq_len {self.seq_len} is too short for {task}: no word fits in {limit} tokens")

    def continuation(self, rng: random.Random) -> TaskExample:
        target = self.seq_len // 8
        sentences = target // MIN_WORDS + 1  # >= MIN_WORDS words each, >= 1 token a word: room for the answer
        start, answer, answer_ids = self.start_and_prefix(rng, "continuation", target, sentences)
        context, _ = self.run(start - 1, self.seq_len - len(answer_ids), -1, "continuation")
        return self.example("continuation", [t for ids in context for t in ids], answer, answer_ids)

    def copy(self, rng: random.Random) -> TaskExample:
        instruction = self.encode(COPY_INSTRUCTION)
        start, answer, answer_ids = self.start_and_prefix(rng, "copy", self.seq_len // 4, 1)
        passage, _ = self.run(start, self.seq_len - len(instruction) - len(answer_ids), 1, "copy")
        context = [t for ids in passage for t in ids] + instruction
        return self.example("copy", context, answer, answer_ids)
