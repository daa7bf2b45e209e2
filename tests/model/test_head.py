"""`train.cross_entropy=fused` (`use_fused_cross_entropy`): the training loss (the mean over the tokens) and
every gradient equal Megatron's logits + cross-entropy path (fp32, chunked PyTorch on CPU), the
`[tokens, vocab]` logits are never saved, and without labels the model still returns its logits."""

from __future__ import annotations

import pytest
import torch

from ssa_pretrain.config import ConfigError
from ssa_pretrain.model import head
from ssa_pretrain.model.gpt import build_model, set_attention_mode
from tests.helpers import tiny_config

VOCAB = 600  # padded to 640: no layer activation has that width
pytestmark = pytest.mark.usefixtures("megatron_world")


def models():
    cfg = tiny_config()
    torch.manual_seed(0)
    plain = build_model(cfg, VOCAB).train()
    fused = build_model(tiny_config("train.cross_entropy=fused"), VOCAB).train()
    fused.load_state_dict(plain.state_dict())
    return plain, fused


def batch() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 65), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("mode", ["full", "sparse"])
def test_loss_and_gradients_equal_megatrons(monkeypatch, mode):
    monkeypatch.setattr(head, "CHUNK_TOKENS", 48)  # 128 tokens: three chunks, the last one short
    results = []
    for model, shape in zip(models(), [(2, 64), ()], strict=True):  # Megatron's per token, the fused mean
        set_attention_mode(model, mode)
        tokens = batch()
        out = model(tokens[:, :-1], None, None, labels=tokens[:, 1:])
        assert out.shape == shape
        loss = out.mean()
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        results.append((loss.detach(), grads))
    (loss_ref, grads_ref), (loss, grads) = results
    torch.testing.assert_close(loss, loss_ref, atol=1e-6, rtol=1e-5)
    for name, ref in grads_ref.items():
        torch.testing.assert_close(grads[name], ref, atol=1e-6, rtol=1e-5, msg=name)


def saved_logits(model: torch.nn.Module, tokens: torch.Tensor) -> list[tuple[int, ...]]:
    """Shapes of the activations saved for backward whose last dimension is the (padded) vocabulary."""
    vocab = model.embedding.word_embeddings.weight.shape[0]
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    shapes = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.ndim >= 2 and t.shape[-1] == vocab and t.untyped_storage().data_ptr() not in params:
            shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(tokens[:, :-1], None, None, labels=tokens[:, 1:]).mean()
    return shapes


def test_logits_are_not_saved_and_evaluation_gets_logits():
    plain, fused = models()
    tokens = batch()
    assert saved_logits(plain, tokens)  # Megatron's path keeps [S, B, V] logits / softmax
    assert not saved_logits(fused, tokens)
    with torch.no_grad():
        logits = fused(tokens[:, :-1], None, None)
        torch.testing.assert_close(logits, plain(tokens[:, :-1], None, None))
    assert logits.shape[-1] >= VOCAB


def test_fused_cross_entropy_refuses_tensor_parallelism():
    with pytest.raises(ConfigError, match=r"train\.cross_entropy=fused needs parallel\.tp=1"):
        tiny_config("train.cross_entropy=fused", "parallel.tp=2")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_bf16_loss_and_gradients_close_to_megatrons():
    """On CUDA (Liger's kernel when installed, else the chunked path), bf16: within bf16 rounding."""
    plain, fused = (m.cuda().bfloat16() for m in models())
    tokens = batch().cuda()
    results = []
    for model in (plain, fused):
        loss = model(tokens[:, :-1], None, None, labels=tokens[:, 1:]).mean()
        loss.backward()
        results.append((loss.detach().float(), {n: p.grad.float() for n, p in model.named_parameters()}))
    (loss_ref, grads_ref), (loss, grads) = results
    torch.testing.assert_close(loss, loss_ref, atol=2e-2, rtol=2e-2)
    for name, ref in grads_ref.items():
        scale = ref.abs().max().clamp_min(1e-6)
        assert (grads[name] - ref).abs().max() / scale < 5e-2, name
