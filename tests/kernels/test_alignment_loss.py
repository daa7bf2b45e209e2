"""alignment_loss: the reference against autograd through `F.smooth_l1_loss` (fp32, bit for bit), in fp64
by gradcheck, the autograd contract (saved tensors, gradients only where a weight is nonzero) and input
checks. The Triton kernels run in test_interpreter.py (CPU) and test_gpu.py (CUDA)."""

import pytest
import torch
import torch.nn.functional as F
from ssa_kernels import alignment_loss, alignment_loss_through
from ssa_kernels.alignment_loss import naive_alignment_loss_bwd, naive_alignment_loss_fwd

WEIGHTS = [(0.5, 2.0), (2.0, 0.0), (0.0, 0.5), (0.0, 0.0)]


def outputs(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """a_full and a_sparse whose differences have std 1.5: about half of them beyond SmoothL1's beta = 1."""
    full = torch.randn(shape, dtype=dtype)
    return full, full + 1.5 * torch.randn(shape, dtype=dtype)


def by_autograd(a_full, a_sparse, w_fs, w_sf, grad_loss):
    """Loss, D and both gradients from autograd through F.smooth_l1_loss on leaf copies (zeros: no grad)."""
    full, sparse = a_full.clone().requires_grad_(), a_sparse.clone().requires_grad_()
    loss = w_fs * F.smooth_l1_loss(full, sparse.detach()) + w_sf * F.smooth_l1_loss(full.detach(), sparse)
    loss.backward(grad_loss)
    grads = [torch.zeros_like(t) if t.grad is None else t.grad for t in (full, sparse)]
    return loss.detach(), F.smooth_l1_loss(a_full, a_sparse), *grads


@pytest.mark.parametrize("weights", WEIGHTS, ids=str)
@pytest.mark.parametrize("shape", [(3, 37, 5), (2, 24, 4, 16)], ids=["3x37x5", "2x24x4x16"])
def test_reference_equals_autograd_bit_for_bit(shape, weights):
    full, sparse = outputs(shape)
    assert ((full - sparse).abs() > 1).float().mean() > 0.3  # both branches of SmoothL1 are exercised
    grad_loss = torch.tensor(0.7)
    value = naive_alignment_loss_fwd(full, sparse)
    grads = naive_alignment_loss_bwd(full, sparse, grad_loss, *weights)
    for weight, grad in zip(weights, grads, strict=True):
        assert (grad is None) == (weight == 0)
    grads = [torch.zeros_like(full) if g is None else g for g in grads]
    ref_loss, ref_value, *ref_grads = by_autograd(full, sparse, *weights, grad_loss)
    assert value.dtype == torch.float32 and torch.equal(value, ref_value)
    for name, ref, got in zip(("grad full", "grad sparse"), ref_grads, grads, strict=True):
        assert got.dtype == ref.dtype and torch.equal(got, ref), name
    # the public op (the reference on CPU) gives the same through autograd
    a, b = full.clone().requires_grad_(), sparse.clone().requires_grad_()
    loss, divergence = alignment_loss(a, b, *weights)
    loss.backward(grad_loss)
    assert torch.equal(loss.detach(), ref_loss) and torch.equal(divergence, ref_value)
    assert not divergence.requires_grad
    for name, tensor, ref in zip(("a_full", "a_sparse"), (a, b), ref_grads, strict=True):
        assert torch.equal(torch.zeros_like(ref) if tensor.grad is None else tensor.grad, ref), name


def test_gradcheck_fp64():
    """Each direction alone is a true derivative: w_fs D w.r.t. a_full, w_sf D w.r.t. a_sparse."""
    full, sparse = outputs((2, 5, 3, 4), torch.float64)
    # differences away from the kinks at |d| = 1, where finite differences straddle two branches
    sparse = torch.where((full - sparse).abs().sub(1).abs() < 0.05, full, sparse)
    assert torch.autograd.gradcheck(lambda a: alignment_loss(a, sparse, 0.5, 0.0)[0], full.requires_grad_())
    assert torch.autograd.gradcheck(lambda b: alignment_loss(full, b, 0.0, 2.0)[0], sparse.requires_grad_())


def test_gradient_only_where_needed():
    """An input that needs no gradient gets none computed; the other one gets its full gradient."""
    full, sparse = outputs((2, 7, 3))
    a = full.clone().requires_grad_()
    loss, _ = alignment_loss(a, sparse, 1.0, 1.0)
    loss.backward()
    expected = naive_alignment_loss_bwd(full, sparse, torch.tensor(1.0), 1.0, 0.0)[0]
    assert torch.equal(a.grad, expected)


def test_graph_saves_only_the_inputs():
    full, sparse = (t.bfloat16().requires_grad_() for t in outputs((2, 8, 2, 4)))
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        alignment_loss(full, sparse, 1.0, 1.0)
    assert len(saved) == 2 and all(s is t for s, t in zip(saved, (full, sparse), strict=True))


@pytest.mark.parametrize(
    ("sparse", "weights", "match"),
    [
        (torch.zeros(2, 3), (1.0, 1.0), "one shape and dtype"),
        (torch.zeros(2, 4, dtype=torch.float64), (1.0, 1.0), "one shape and dtype"),
        (torch.zeros(2, 4), (-1.0, 1.0), "weights must be >= 0"),
    ],
    ids=["shape", "dtype", "negative-weight"],
)
def test_bad_inputs_raise(sparse, weights, match):
    with pytest.raises(ValueError, match=match):
        alignment_loss(torch.zeros(2, 4), sparse, *weights)
    with pytest.raises(ValueError, match="empty"):
        alignment_loss(torch.zeros(0, 4), torch.zeros(0, 4), 1.0, 1.0)
    with pytest.raises(ValueError, match="'full' or 'sparse'"):
        alignment_loss_through(torch.zeros(2, 4), torch.zeros(2, 4), 1.0, 1.0, "mode")
