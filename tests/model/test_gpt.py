"""The Megatron-Core GPT with SSA attention: builds from the tiny config, runs forward+backward on CPU in
every
mode, matches an independent PyTorch LM, and wires the alignment loss exactly as DESIGN.md states."""

from __future__ import annotations

import pytest
import torch

from ssa_pretrain.model.alignment import AttachAuxLoss
from ssa_pretrain.model.attention import SSACoreAttention
from ssa_pretrain.model.gpt import (
    alignment_per_layer,
    build_model,
    set_attention_mode,
    ssa_layers,
    transformer_config,
)
from tests.helpers import tiny_config
from tests.model.reference_lm import reference_logits

VOCAB = 320
pytestmark = pytest.mark.usefixtures("megatron_world")


def make(*overrides: str, seed: int = 0):
    cfg = tiny_config(*overrides)
    torch.manual_seed(seed)
    return cfg, build_model(cfg, VOCAB)


def tokens(batch: int = 2, length: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length + 1), generator=torch.Generator().manual_seed(seed))


def loss_and_grads(model, batch: torch.Tensor, mode: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    set_attention_mode(model, mode)
    loss = model(batch[:, :-1], None, None, labels=batch[:, 1:]).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("variant", ["full", "sparse", "ssa"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("mode", ["full", "sparse"])
def test_forward_backward_every_mode(variant, training, mode):
    _, model = make(f"ssa.variant={variant}")
    model.train(training)
    loss, grads = loss_and_grads(model, tokens(), mode)
    assert torch.isfinite(loss) and 4.0 < loss < 8.0  # ~ln(320) = 5.77 at init
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert "embedding.word_embeddings.weight" in grads
    aligned = training and variant == "ssa"
    assert (alignment_per_layer(model) is not None) == aligned


@pytest.mark.parametrize("mode", ["full", "sparse"])
@pytest.mark.parametrize("gate", [True, False])
def test_logits_match_an_independent_pytorch_lm(mode, gate):
    cfg, model = make(f"ssa.output_gate={str(gate).lower()}")
    model.eval()
    set_attention_mode(model, mode)
    batch = tokens()[:, :-1]
    with torch.no_grad():
        logits = model(batch, None, None)[..., :VOCAB]
    expected = reference_logits(model, cfg, batch, mode)[..., :VOCAB]
    torch.testing.assert_close(logits, expected, atol=2e-5, rtol=2e-5)


def ssa_and_single_branch(mode: str, *ssa_overrides: str):
    """(loss, grads) of an SSA model and of the `variant=mode` model with the same weights, in `mode`."""
    _, ssa = make("ssa.variant=ssa", *ssa_overrides)
    _, single = make(f"ssa.variant={mode}")
    single.load_state_dict(ssa.state_dict())
    batch = tokens()
    return loss_and_grads(ssa.train(), batch, mode), loss_and_grads(single.train(), batch, mode)


@pytest.mark.parametrize("mode", ["full", "sparse"])
def test_residual_stream_sees_only_the_chosen_mode(mode):
    """An SSA model in a `full` (ratio 1) or `sparse` (ratio 0) micro-step computes exactly the loss of the
    single-branch model with the same weights: the counterpart never reaches the residual stream."""
    (ssa_loss, _), (single_loss, _) = ssa_and_single_branch(mode)
    assert ssa_loss == single_loss


def test_alpha_zero_gives_zero_alignment_gradient():
    (_, g_ssa), (_, g_full) = ssa_and_single_branch("full", "ssa.alpha=0")
    assert g_ssa.keys() == g_full.keys()
    for name in g_ssa:
        torch.testing.assert_close(g_ssa[name], g_full[name], rtol=0, atol=0, msg=name)


def test_alignment_changes_gradients_but_not_the_loss():
    (loss_ssa, g_ssa), (loss_full, g_full) = ssa_and_single_branch("full", "ssa.alpha=10")
    assert loss_ssa == loss_full  # the auxiliary term is attached, not added to the returned loss
    qkv = "decoder.layers.0.self_attention.linear_qkv.weight"
    assert not torch.allclose(g_ssa[qkv], g_full[qkv])


def core_attention(**ssa_overrides) -> SSACoreAttention:
    cfg = tiny_config(*(f"ssa.{k}={v}" for k, v in ssa_overrides.items()))
    return SSACoreAttention(transformer_config(cfg, torch.float32), 1, None, "self").train()


def probe_branches(core: SSACoreAttention, mode: str):
    """Run the core attention on fresh q/k/v; hooks record the gradient reaching each branch output."""
    seen: dict[str, torch.Tensor | None] = {"full": None, "sparse": None}
    originals = {"full": core._full, "sparse": core._sparse}

    def wrap(name):
        def branch(q, k, v):
            out = originals[name](q, k, v)
            out.register_hook(lambda g: seen.__setitem__(name, g))
            return out

        return branch

    core._full, core._sparse = wrap("full"), wrap("sparse")
    core.mode = mode
    q = torch.randn(40, 2, 4, 32, requires_grad=True)  # [sq, b, heads, d]
    k, v = (torch.randn(40, 2, 2, 32, requires_grad=True) for _ in range(2))
    out = core(q, k, v, None)
    upstream = torch.randn_like(out)
    AttachAuxLoss.set_grad_scale(1.0)
    (out * upstream).sum().backward()
    return seen, upstream


@pytest.mark.parametrize("mode", ["full", "sparse"])
def test_counterpart_gets_gradient_only_through_alignment(mode):
    other = "sparse" if mode == "full" else "full"
    # Alignment off in the counterpart's direction: the counterpart gets no gradient at all.
    off = {"full": "w_fs", "sparse": "w_sf"}[other]
    seen, _ = probe_branches(core_attention(**{off: 0}), mode)
    assert seen[other] is None or torch.count_nonzero(seen[other]) == 0
    # Alignment on: the counterpart's gradient is exactly that of alpha * w * SmoothL1 / num_layers.
    core = core_attention(alpha=10, w_fs=1, w_sf=1)
    seen, upstream = probe_branches(core, mode)
    assert seen[other] is not None and torch.count_nonzero(seen[other]) > 0
    # The chosen branch gets the upstream gradient plus its own alignment share.
    assert not torch.allclose(seen[mode], upstream.view_as(seen[mode].transpose(0, 1)).transpose(0, 1))


def test_alignment_gradient_equals_the_formula():
    core = core_attention(alpha=10, w_fs=0.5, w_sf=2.0)
    q = torch.randn(40, 1, 4, 32, requires_grad=True)
    k, v = (torch.randn(40, 1, 2, 32, requires_grad=True) for _ in range(2))
    core.mode = "full"
    AttachAuxLoss.set_grad_scale(1.0)
    core(q, k, v, None).sum().backward()
    got = [t.grad.clone() for t in (q, k, v)]

    for t in (q, k, v):
        t.grad = None
    qb, kb, vb = (t.transpose(0, 1) for t in (q, k, v))
    full, sparse = core._full(qb, kb, vb), core._sparse(qb, kb, vb)
    smooth = torch.nn.functional.smooth_l1_loss
    aux = 0.5 * smooth(full, sparse.detach()) + 2.0 * smooth(full.detach(), sparse)
    (full.sum() + 10 / core.config.num_layers * aux).backward()
    for g, t in zip(got, (q, k, v), strict=True):
        torch.testing.assert_close(g, t.grad, atol=1e-6, rtol=1e-5)


def test_alignment_is_reported_per_layer_and_scaled_by_accumulation():
    _, model = make()
    model.train()
    set_attention_mode(model, "sparse")
    batch = tokens()
    model(batch[:, :-1], None, None, labels=batch[:, 1:]).mean()
    per_layer = alignment_per_layer(model)
    assert per_layer.shape == (4,) and (per_layer > 0).all()
    # The grad scale set by the trainer (1 / accumulation steps) scales the alignment gradient linearly.
    core = core_attention()
    core.mode = "sparse"
    q = torch.randn(64, 1, 4, 32, requires_grad=True)  # 8 blocks of 8, 3 selected: sparse differs from full
    k, v = torch.randn(64, 1, 2, 32), torch.randn(64, 1, 2, 32)
    grads = []
    for scale in (1.0, 0.25):
        AttachAuxLoss.set_grad_scale(scale)
        out = core(q, k, v, None)
        grads.append(torch.autograd.grad((out * 0).sum(), q)[0])  # only the attached term carries gradient
    AttachAuxLoss.set_grad_scale(1.0)
    assert torch.count_nonzero(grads[0]) > 0
    torch.testing.assert_close(grads[1], grads[0] * 0.25)


def test_inference_budget_override():
    cfg, model = make()
    model.eval()
    batch = tokens()[:, :-1]
    set_attention_mode(model, "sparse", block_size=8, block_count=64)  # every block: sparse == full
    with torch.no_grad():
        everything = model(batch, None, None)
        set_attention_mode(model, "full")
        full = model(batch, None, None)
        set_attention_mode(model, "sparse")
        budget = model(batch, None, None)
    torch.testing.assert_close(everything, full, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(budget, full, atol=1e-3)
    assert all(layer.block_count == cfg.ssa.block_count for layer in ssa_layers(model))


@pytest.mark.parametrize("recompute", ["selective", "full"])
def test_activation_recomputation_gives_the_same_gradients(recompute):
    _, plain = make()
    _, recomputed = make(f"train.recompute={recompute}")
    recomputed.load_state_dict(plain.state_dict())
    batch = tokens()
    _, g_plain = loss_and_grads(plain.train(), batch, "sparse")
    _, g_rec = loss_and_grads(recomputed.train(), batch, "sparse")
    for name in g_plain:
        torch.testing.assert_close(g_rec[name], g_plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_fused_elementwise_sets_megatrons_fusion_on_cuda_only(monkeypatch):
    assert not transformer_config(tiny_config(), torch.float32).bias_activation_fusion  # CPU: plain SwiGLU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert transformer_config(tiny_config(), torch.float32).bias_activation_fusion
    plain = tiny_config("train.fused_elementwise=false")
    assert not transformer_config(plain, torch.float32).bias_activation_fusion


def test_the_core_attentions_rope_equals_megatrons():
    """`to_batch_major` rotates as Megatron's RoPE (then transposes), forward and backward, fp32."""
    from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

    from ssa_pretrain.model.attention import to_batch_major

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(24, 2, 4, 16, generator=generator, dtype=torch.float64).float().requires_grad_()
    angles = torch.outer(torch.arange(24.0), 1.0 / 500000.0 ** (torch.arange(0, 16, 2) / 16))
    freqs = torch.cat((angles, angles), -1)[:, None, None]  # Megatron's RotaryEmbedding layout
    grad = torch.randn(2, 24, 4, 16, generator=generator)
    ours = to_batch_major(x, freqs)
    megatrons = _apply_rotary_pos_emb_bshd(x, freqs).transpose(0, 1)
    torch.testing.assert_close(ours, megatrons, atol=1e-6, rtol=1e-6)
    assert ours.is_contiguous()
    torch.testing.assert_close(*(torch.autograd.grad(y, x, grad)[0] for y in (ours, megatrons)))
    with pytest.raises(ValueError, match="RoPE over 8 of 16 channels"):
        to_batch_major(x, freqs[..., :8])
