"""The model on CUDA (GPU machine: megatron-core 0.19, torch 2.11): the same logits as the CPU reference,
in fp32 and bf16, and a finite forward+backward in every training mode. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from ssa_pretrain.model.gpt import build_model, set_attention_mode
from tests.helpers import tiny_config
from tests.model.reference_lm import reference_logits

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.usefixtures("megatron_world"),
]
VOCAB = 320


@pytest.mark.parametrize("mode", ["full", "sparse"])
@pytest.mark.parametrize(
    ("dtype", "tolerance"), [(torch.float32, 2e-3), (torch.bfloat16, 6e-2)], ids=["fp32", "bf16"]
)
def test_gpu_logits_match_the_cpu_reference(mode, dtype, tolerance):
    cfg = tiny_config("data.seq_len=256", "ssa.block_size=16", "ssa.block_count=4")
    torch.manual_seed(0)
    model = build_model(cfg, VOCAB).to(dtype).eval()
    assert next(model.parameters()).is_cuda
    tokens = torch.randint(0, VOCAB, (2, 256), generator=torch.Generator().manual_seed(1))
    set_attention_mode(model, mode)
    with torch.no_grad():
        logits = model(tokens.cuda(), None, None)[..., :VOCAB].float().cpu()
    expected = reference_logits(model.float().cpu(), cfg, tokens, mode)[..., :VOCAB]
    if mode == "full":
        torch.testing.assert_close(logits, expected, atol=tolerance, rtol=tolerance)
        return
    # On CUDA the blocks are scored on tensor cores (TF32 / bf16): a near-tied block can be chosen instead of
    # the fp32 reference's at a few positions (tests/kernels/test_gpu.py bounds that); all others must match.
    close = torch.isclose(logits, expected, atol=tolerance, rtol=tolerance).all(-1)  # [b, t]
    assert torch.isfinite(logits).all()
    assert close.float().mean() >= 0.98, f"only {close.float().mean():.1%} of positions match"


@pytest.mark.parametrize("variant", ["full", "sparse", "ssa"])
def test_gpu_bf16_training_step_is_finite(variant):
    cfg = tiny_config("data.seq_len=512", "ssa.block_size=16", "ssa.block_count=4", f"ssa.variant={variant}")
    model = build_model(cfg, VOCAB).bfloat16().train()
    tokens = torch.randint(0, VOCAB, (2, 513), device="cuda")
    for mode in ("full", "sparse"):
        model.zero_grad(set_to_none=True)
        set_attention_mode(model, mode)
        loss = model(tokens[:, :-1], None, None, labels=tokens[:, 1:]).float().mean()
        loss.backward()
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_gpu_fused_elementwise_ops_match_the_plain_ones():
    """`train.fused_elementwise` (Megatron's compiled SwiGLU, the compiled output gate) against the plain ops:
    the same loss and gradients, fp32 to float rounding, bf16 within bf16 rounding."""
    for dtype, tolerance in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
        results = []
        for fused in (False, True):
            flag = f"train.fused_elementwise={str(fused).lower()}"
            cfg = tiny_config("data.seq_len=256", "ssa.variant=ssa", flag)
            torch.manual_seed(0)
            model = build_model(cfg, VOCAB).to(dtype).train()
            assert model.config.bias_activation_fusion is fused
            set_attention_mode(model, "full")
            tokens = torch.randint(0, VOCAB, (2, 257), generator=torch.Generator().manual_seed(1)).cuda()
            loss = model(tokens[:, :-1], None, None, labels=tokens[:, 1:]).float().mean()
            loss.backward()
            results.append((loss.detach(), {n: p.grad.float() for n, p in model.named_parameters()}))
        (loss_ref, grads_ref), (loss, grads) = results
        torch.testing.assert_close(loss, loss_ref, atol=tolerance, rtol=tolerance)
        for name, ref in grads_ref.items():
            scale = ref.abs().max().clamp_min(1e-6)
            assert (grads[name] - ref).abs().max() / scale < tolerance * 2, (dtype, name)


def _gate_inputs(generator):
    x = torch.randn(256, 2, 8 * 64, device="cuda", generator=generator).bfloat16()
    gate = torch.randn(256, 2, 8, device="cuda", generator=generator).bfloat16()
    return (x, gate), torch.randn(256, 2, 8 * 64, device="cuda", generator=generator).bfloat16()


def _rope_inputs(generator):
    x = torch.randn(256, 2, 8, 64, device="cuda", generator=generator).bfloat16()
    angles = torch.outer(torch.arange(256.0, device="cuda"), 1e-3 ** torch.linspace(0, 1, 32, device="cuda"))
    freqs = torch.cat((angles, angles), -1)[:, None, None]
    return (x, freqs), torch.randn(2, 256, 8, 64, device="cuda", generator=generator).bfloat16()


@pytest.mark.parametrize("op", ["per_head_gate", "to_batch_major"])
def test_gpu_compiled_elementwise_op_equals_the_plain_one(op):
    """The compiled output gate and RoPE layout copy: fp32 math rounded once, as the eager op; bf16 output
    and gradients of the bf16 inputs."""
    from ssa_pretrain.model import attention

    generator = torch.Generator(device="cuda").manual_seed(0)
    inputs, grad = (_gate_inputs if op == "per_head_gate" else _rope_inputs)(generator)
    inputs = [t.requires_grad_() if t.dtype == torch.bfloat16 else t for t in inputs]
    differentiable = [t for t in inputs if t.requires_grad]
    results = []
    for fn in (getattr(attention, op), getattr(attention, f"compiled_{op}")):
        out = fn(*inputs)
        results.append((out, *torch.autograd.grad(out, differentiable, grad)))
    for ref, got in zip(*results, strict=True):
        assert got.dtype == ref.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), ref.float(), atol=1e-2, rtol=1e-2)
