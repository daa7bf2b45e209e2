"""`ssa elastic train CONFIG`: train Elastic Attention's router on a frozen SSA model.

    ssa elastic train configs/elastic/tiny.yaml model=runs/demo/hf out=runs/demo/hf-elastic

The backbone (an export of `ssa convert`, or a training run, converted first) gets a router per layer
(`HeadRouter` of the export's modeling code) and stays frozen: only the routers and the Lagrange multipliers
learn. Each step takes a batch of the tagged task mix, half sparsity-sensitive and half sparsity-robust
examples, in which every layer's router draws a hard full/sparse choice per key/value head (Gumbel-softmax,
straight-through), and minimizes

    answer cross-entropy + Σ_tag λ₁(Ω_tag − t_tag) + λ₂(Ω_tag − t_tag)²

where Ω_tag is the share of sparse heads over the layers, heads and examples of that tag and t_tag its
target; λ₁, λ₂ follow the gradient upward (the min-max of the Lagrangian). The temperature anneals from
`tau_init` to `tau_min` (a cosine over `anneal_fraction` of the steps).

OUT, an export that runs `inference_mode: elastic`, appears complete or not at all: the backbone's weights
and tokenizer, the routers' weights, the current modeling code, `router_metrics.jsonl` (every step: loss, Ω
and λ per tag, temperature) and `router_eval.json` (the held-out examples of every task in full, sparse and
elastic mode: answer loss, exact match, achieved Ω, head modes; see `ssa eval elastic`).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from ssa_pretrain.elastic.config import TAGS, ElasticConfig, ElasticError
from ssa_pretrain.elastic.evaluate import TaskBatch, answer_scores, evaluate_router, task_mixes

BACKBONE_SKIP = ("config.json", "configuration_ssa.py", "modeling_ssa.py")
"""Backbone files the elastic export writes anew (with the router); its weights are skipped too."""


def resolve_backbone(source: str | Path, staging: Path) -> Path:
    """The backbone's HF directory: `source` if it is an export, else `ssa convert` of it into `staging`."""
    source = Path(source)
    if (source / "config.json").is_file():
        return source
    if not source.exists():
        raise ElasticError(f"{source}: no such export, run directory or checkpoint (config: model=...)")
    from ssa_pretrain.hf.convert import convert

    convert(source, staging / "backbone")
    return staging / "backbone"


def load_backbone(hf_dir: Path, cfg: ElasticConfig):
    """The backbone with a seeded new router per layer, frozen but for the routers (fp32), in train mode."""
    from transformers.utils import logging as hf_logging

    from ssa_pretrain.hf.modeling_ssa import SSAForCausalLM

    device = torch.device(cfg.train.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, cfg.train.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    torch.manual_seed(cfg.train.seed)  # the routers' initialization
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report lists every router weight as missing: they are new
    try:
        model = SSAForCausalLM.from_pretrained(
            hf_dir, dtype=dtype, router=cfg.router.model_dump(), inference_mode="elastic"
        ).to(device)
    finally:
        hf_logging.set_verbosity(verbosity)
    size = sum(p.numel() for p in routers(model)[0].parameters())
    print(f"backbone {hf_dir} frozen; a new router per layer, {size:,} parameters each", flush=True)
    for name, param in model.named_parameters():
        param.requires_grad_(".router." in name)
    for router in routers(model):
        router.float()
    return model.train()


def routers(model) -> list[torch.nn.Module]:
    return [layer.self_attn.router for layer in model.model.layers]


def sparse_share(model) -> torch.Tensor:
    """Ω per example `[B]`: the share of sparse heads over layers and key/value heads in the last forward."""
    return torch.stack(model.model.last_head_modes).float().mean((0, 2))


def train_step(
    model, batch: TaskBatch, targets: torch.Tensor, lambdas: torch.Tensor, logit_penalty: float
) -> dict[str, float]:
    """One forward/backward of the Lagrangian (+ the logit-gap penalty); returns the values to log.
    `lambdas [2, tags]` = (λ₁, λ₂)."""
    logits = model(batch.ids, use_cache=False).logits
    loss, _ = answer_scores(logits, batch.ids, batch.answer)
    omega = sparse_share(model)
    row = {"answer_loss": loss.mean().item()}
    lagrangian = loss.mean()
    for i, tag in enumerate(TAGS):
        picked = batch.tag == i
        share = omega[picked].mean()
        gap = share - targets[i]
        lagrangian = lagrangian + lambdas[0, i] * gap + lambdas[1, i] * gap**2
        row[f"omega_{tag}"] = share.item()
        row[f"answer_loss_{tag}"] = loss[picked].mean().item()
    logit_gap = torch.stack(
        [r.last_logits[..., 1] - r.last_logits[..., 0] for r in routers(model)]
    )  # [L, B, HKV]
    row["logit_gap"] = logit_gap.abs().mean().item()
    (lagrangian + logit_penalty * logit_gap.square().mean()).backward()
    return {"loss": lagrangian.item(), **row}


def train_router(cfg: ElasticConfig, overwrite: bool = False) -> dict:
    """Train the routers as the module docstring says; returns the held-out evaluation."""
    from ssa_pretrain.hf.convert import apply_umask, clean_stale_staging, install_directory, staging_path

    out = Path(cfg.out)
    clean_stale_staging(out)
    if out.exists() and not overwrite:
        raise ElasticError(f"{out} exists; pass --overwrite to replace it or choose another out=")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_path(out, "tmp")
    staging.mkdir()
    try:
        hf_dir = resolve_backbone(cfg.model, staging)
        model = load_backbone(hf_dir, cfg)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(hf_dir, trust_remote_code=True)  # names our type
        device = model.device
        train_set, valid_set = task_mixes(cfg.data, tokenizer, cfg.train.seed, device)
        targets = torch.tensor([cfg.targets[t] for t in TAGS], device=device)
        lambdas = torch.zeros(2, len(TAGS), device=device, requires_grad=True)
        params = [p for r in routers(model) for p in r.parameters()]
        optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=0.0)
        ascent = torch.optim.SGD([lambdas], lr=cfg.train.lambda_lr, maximize=True)
        sampler = torch.Generator(device="cpu").manual_seed(cfg.train.seed)  # batches; Gumbel: torch's RNG
        log = []
        start = time.perf_counter()
        for step in range(1, cfg.train.steps + 1):
            tau = cfg.train.temperature(step - 1)
            for router in routers(model):
                router.temperature = tau
            batch = train_set.balanced(cfg.train.batch_size, sampler)
            row = {"step": step, **train_step(model, batch, targets, lambdas, cfg.train.logit_penalty)}
            optimizer.step()
            ascent.step()
            optimizer.zero_grad(set_to_none=True)
            ascent.zero_grad(set_to_none=True)
            row.update({f"lambda1_{t}": lambdas[0, i].item() for i, t in enumerate(TAGS)})
            row.update({f"lambda2_{t}": lambdas[1, i].item() for i, t in enumerate(TAGS)})
            row.update(tau=tau, elapsed_s=time.perf_counter() - start)
            log.append(row)
            if step % cfg.train.log_interval == 0 or step == cfg.train.steps:
                omegas = " ".join(f"Ω_{t} {row[f'omega_{t}']:.3f}" for t in TAGS)
                print(f"step {step} | loss {row['loss']:.4f} | {omegas} | τ {tau:.3f}", flush=True)
        report = evaluate_router(model, valid_set, cfg.train.batch_size, cfg.targets)
        write_elastic_export(model, hf_dir, staging, log, report, cfg)
        apply_umask(staging)
        install_directory(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def write_elastic_export(
    model, hf_dir: Path, staging: Path, log: list, report: dict, cfg: ElasticConfig
) -> None:
    """The backbone's files but its weights, config and code; then the model (routers included, elastic
    mode, the package's modeling code), the training log, the evaluation and the resolved config."""
    from ssa_pretrain.hf.configuration_ssa import SSAConfig
    from ssa_pretrain.hf.modeling_ssa import SSAForCausalLM

    for path in hf_dir.iterdir():
        weights = path.name.endswith((".safetensors", ".safetensors.index.json", ".bin"))
        if path.is_file() and not weights and path.name not in BACKBONE_SKIP:
            shutil.copy2(path, staging / path.name)
    SSAConfig.register_for_auto_class()
    SSAForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    model.eval()
    model.config.inference_mode = "elastic"
    model.save_pretrained(staging)
    (staging / "router_metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in log))
    (staging / "router_eval.json").write_text(json.dumps(report, indent=1) + "\n")
    (staging / "router_config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=1) + "\n")
    if (staging / "backbone").exists():
        shutil.rmtree(staging / "backbone")  # a converted run: the export above replaces it
