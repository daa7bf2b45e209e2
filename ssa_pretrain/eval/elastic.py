"""`ssa eval elastic HF_DIR --out DIR`: an elastic export (of `ssa elastic train`) on the held-out task mix.

    ssa eval elastic runs/demo/hf-elastic --out eval/elastic

Scores the held-out examples of every task (by default the ones its training held out: the data section
and seed of the export's router_config.json) in full, sparse and elastic mode: answer loss and exact match
per tag and task against the achieved Ω, the share of heads the routers ran sparse (target per tag beside
it). The PNG is a layers × key/value heads heat map of the sparse share per task: where the routers keep
full attention, and whether that differs between sensitive and robust tasks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ssa_pretrain.elastic.evaluate import MODES
from ssa_pretrain.eval.command import run_evaluation
from ssa_pretrain.eval.errors import EvalError
from ssa_pretrain.eval.options import DEFAULT_LOAD, ElasticOptions, LoadOptions
from ssa_pretrain.eval.output import markdown_table, pyplot


def evaluate_elastic(
    hf_dir: str | Path,
    out: str | Path,
    options: ElasticOptions,
    *,
    overwrite: bool = False,
    load: LoadOptions = DEFAULT_LOAD,
) -> dict:
    """Score, write elastic.json / elastic.md / elastic.png into `out`; returns the report."""
    return run_evaluation(
        "elastic", hf_dir, out, options, overwrite, load, measure_elastic, elastic_markdown, plot_head_modes
    )


def measure_elastic(model: torch.nn.Module, tokenizer: Any, hf_dir: Path, options: ElasticOptions) -> dict:
    """The held-out task mix (as the router trained, or as `options` change it), full, sparse and elastic."""
    from ssa_pretrain.elastic.config import ElasticConfig
    from ssa_pretrain.elastic.evaluate import evaluate_router, task_mixes

    if model.config.router is None:
        raise EvalError(f"{hf_dir}: has no router; train one with `ssa elastic train CONFIG model={hf_dir}`")
    saved = hf_dir / "router_config.json"
    if saved.is_file():
        trained = ElasticConfig.model_validate(json.loads(saved.read_text()))
    else:  # an export without its training record: the defaults
        trained = ElasticConfig(model=str(hf_dir), out=str(hf_dir))
    changes = {
        "seq_len": options.seq_len,
        "valid_examples_per_task": options.examples_per_task,
        "corpus": options.corpus,
    }
    data = trained.data.model_copy(update={k: v for k, v in changes.items() if v is not None})
    _, valid = task_mixes(data, tokenizer, trained.train.seed, model.device, train_examples=1)
    report = evaluate_router(model, valid, options.batch_size, trained.targets)
    report["data"] = data.model_dump(mode="json")
    return report


def elastic_markdown(report: dict) -> str:
    """Per tag and per task: Ω against the target, answer loss and exact match per mode."""
    header = ["", "Ω (target)", *(f"exact {m}" for m in MODES), *(f"loss {m}" for m in MODES)]

    def row(name: str, scores: dict, target) -> list:
        exact = [scores[m]["exact_match"] for m in MODES]
        return [name, f"{scores['omega']:.3f} ({target})", *exact, *(scores[m]["answer_loss"] for m in MODES)]

    targets = report["targets"]
    tags = [row(tag, s, targets[tag]) for tag, s in report["tags"].items()]
    tasks = [row(f"{task} ({s['tag']})", s, targets[s["tag"]]) for task, s in report["tasks"].items()]
    return (
        f"# Elastic attention on {report['examples']} held-out examples\n\n"
        + markdown_table(header, tags)
        + "\n"
        + markdown_table(header, tasks)
    )


def plot_head_modes(report: dict, path: Path) -> None:
    """One heat map per task: sparse share of every (layer, key/value head)."""
    plt = pyplot()
    tasks = list(report["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(2.6 * len(tasks) + 1, 3.2), squeeze=False)
    for i, (ax, task) in enumerate(zip(axes[0], tasks, strict=True)):
        scores = report["tasks"][task]
        share = scores["head_sparse_share"]  # [layers][kv heads]
        image = ax.imshow(share, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_title(f"{task}\n{scores['tag']}, Ω {scores['omega']:.2f}", fontsize=9)
        ax.set_xticks(range(len(share[0])))
        ax.set_yticks(range(len(share)))
        ax.set_xlabel("kv head")
        if i == 0:
            ax.set_ylabel("layer")
    fig.colorbar(image, ax=axes[0].tolist(), label="share run sparse")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
