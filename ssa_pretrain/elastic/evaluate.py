"""Scoring an elastic model on the tagged task mix: answer loss, exact match and achieved sparsity per tag.

Every example is scored teacher-forced on its answer tokens: the answer loss is their mean cross-entropy,
and an exact match means the arg-max prediction is right at every answer token (what greedy decoding would
produce). Each mode — `full`, `sparse`, `elastic` — scores the same held-out examples; in elastic mode the
routers' choices give Ω (the share of sparse heads) per tag and a layers × heads map of the sparse share per
task.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssa_pretrain.elastic.config import TAGS, ElasticError, TaskDataConfig

MODES = ("full", "sparse", "elastic")


@dataclass
class TaskBatch:
    """Examples as tensors: `ids [N, T]`, `answer [N, T]` (True at answer tokens), `tag [N]` (index into
    TAGS) and each example's task name."""

    ids: torch.Tensor
    answer: torch.Tensor
    tag: torch.Tensor
    tasks: list[str]

    def __len__(self) -> int:
        return len(self.tasks)

    def select(self, index: torch.Tensor) -> TaskBatch:
        return TaskBatch(self.ids[index], self.answer[index], self.tag[index], [self.tasks[i] for i in index])

    def balanced(self, size: int, generator: torch.Generator) -> TaskBatch:
        """`size` random examples, half of each tag (so every step constrains both targets)."""
        picks = []
        for i in range(len(TAGS)):
            pool = (self.tag == i).nonzero().flatten().cpu()
            count = size // len(TAGS) + (i < size % len(TAGS))
            picks.append(pool[torch.randint(len(pool), (count,), generator=generator)])
        return self.select(torch.cat(picks))

    def chunks(self, size: int):
        for start in range(0, len(self), size):
            yield self.select(torch.arange(start, min(start + size, len(self))))


def to_batch(examples, device: torch.device) -> TaskBatch:
    """`TaskExample`s (all of one length) as a `TaskBatch` on `device`."""
    ids = torch.tensor([e.input_ids for e in examples], device=device)
    positions = torch.arange(ids.shape[1], device=device)
    starts = torch.tensor([e.answer_start for e in examples], device=device)
    tag = torch.tensor([TAGS.index(e.tag) for e in examples], device=device)
    return TaskBatch(ids, positions[None] >= starts[:, None], tag, [e.task for e in examples])


def task_mixes(
    data: TaskDataConfig, tokenizer, seed: int, device: torch.device, train_examples: int | None = None
) -> tuple[TaskBatch, TaskBatch]:
    """(training, held-out) task mixes from the corpus with the export's tokenizer: other documents, keys and
    facts (`build_train_valid`); the held-out one does not depend on the number of training examples."""
    from ssa_pretrain.elastic.tasks import build_train_valid, corpus_texts

    try:
        train, valid = build_train_valid(
            corpus_texts(data.corpus), tokenizer, data.seq_len,
            train_examples or data.train_examples_per_task, data.valid_examples_per_task, seed,
        )  # fmt: skip
    except ValueError as err:  # a seq_len too short for a task, a corpus with too little prose
        raise ElasticError(f"data: {err}") from None
    return to_batch(train, device), to_batch(valid, device)


def answer_scores(
    logits: torch.Tensor, ids: torch.Tensor, answer: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean answer cross-entropy `[B]`, exact match `[B]` bool) of next-token `logits [B, T, V]`."""
    target, mask = ids[:, 1:], answer[:, 1:]
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), target, reduction="none")  # [B, T - 1]
    loss = (ce * mask).sum(1) / mask.sum(1)
    exact = ((logits[:, :-1].argmax(-1) == target) | ~mask).all(1)
    return loss, exact


@torch.no_grad()
def evaluate_router(model, data: TaskBatch, batch_size: int, targets: dict[str, float]) -> dict:
    """Scores per mode for every tag and task, Ω per tag and task, the sparse-share map per task.

    Returns:
        {"targets": ..., "tags": {tag: {mode: {"answer_loss", "exact_match"}, "omega"}},
         "tasks": {task: {"tag", mode: {...}, "omega", "head_sparse_share": [layers][kv heads]}}}
    """
    was_training = model.training
    model.eval()
    scores: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    modes = []
    try:
        for mode in MODES:
            model.config.inference_mode = mode
            parts = []
            for chunk in data.chunks(batch_size):
                parts.append(answer_scores(model(chunk.ids, use_cache=False).logits, chunk.ids, chunk.answer))
                if mode == "elastic":
                    modes.append(torch.stack(model.model.last_head_modes).float())  # [L, B, HKV]
            scores[mode] = tuple(torch.cat(x) for x in zip(*parts, strict=True))
    finally:
        model.config.inference_mode = "elastic"
        model.train(was_training)
    head_modes = torch.cat(modes, dim=1)  # [L, N, HKV]

    def summary(picked: torch.Tensor) -> dict:
        out = {m: {"answer_loss": scores[m][0][picked].mean().item(),
                   "exact_match": scores[m][1][picked].float().mean().item()} for m in MODES}  # fmt: skip
        out["omega"] = head_modes[:, picked].mean().item()
        return out

    tasks = list(dict.fromkeys(data.tasks))
    by_task = {}
    for task in tasks:
        picked = torch.tensor([t == task for t in data.tasks], device=data.ids.device)
        tag = TAGS[int(data.tag[picked][0])]
        share = head_modes[:, picked].mean(1)  # [L, HKV]
        by_task[task] = {"tag": tag, **summary(picked), "head_sparse_share": share.tolist()}
    return {
        "targets": dict(targets),
        "examples": len(data),
        "tags": {tag: summary(data.tag == i) for i, tag in enumerate(TAGS) if bool((data.tag == i).any())},
        "tasks": by_task,
    }
