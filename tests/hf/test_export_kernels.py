"""With `ssa_kernels` installed, the export's plain prefill runs the fused ops (on CUDA; here: the Triton
kernels under Triton's interpreter on CPU) and gives the logits of its own code, in both modes."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.helpers import REPO

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

# In a child: TRITON_INTERPRET=1 must be set before triton is imported.
COMPARE = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    modeling = sys.modules[type(model).__module__]
    kernels, calls = modeling.ssa_kernels, []
    for name in ("full_attention", "sparse_attention"):
        op = getattr(kernels, name)
        setattr(kernels, name, lambda *a, op=op, name=name, **kw: calls.append(name) or op(*a, **kw))
    tokens = torch.randint(0, model.config.vocab_size, (2, 70), generator=torch.Generator().manual_seed(0))
    result = {}
    with torch.no_grad():
        for mode in ("full", "sparse"):
            model.config.inference_mode = mode
            modeling.ssa_kernels = kernels
            fused = model(tokens, use_cache=False).logits
            modeling.ssa_kernels = None
            own = model(tokens, use_cache=False).logits
            result[mode] = (fused - own).abs().max().item()
    result["calls"] = sorted(set(calls))
    print(json.dumps(result))
    """
)


def test_plain_prefill_with_kernels_equals_own_code(exported) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    child = subprocess.run(
        [sys.executable, "-c", COMPARE, str(exported["tp1"])],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr[-4000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["calls"] == ["full_attention", "sparse_attention"], result  # the fused path ran
    assert result["full"] < 1e-4 and result["sparse"] < 1e-4, result


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    ("dtype", "tolerance"), [(torch.float32, 1e-3), (torch.bfloat16, 0.1)], ids=["fp32", "bf16"]
)
@pytest.mark.parametrize("mode", ["full", "sparse"])
def test_plain_prefill_on_cuda_uses_kernels(
    monkeypatch: pytest.MonkeyPatch, mode: str, dtype: torch.dtype, tolerance: float
) -> None:
    """On a GPU the export's plain prefill runs the fused ops; its logits are those of the export's own code
    (fp32 math) within the dtype's tolerance, at a length off the block and tile grids.

    A random model's block scores are nearly tied everywhere, so in bf16 (block means rounded for the tensor
    cores) the two selections differ at many positions: there the budget covers all 21 blocks, which checks
    the wiring and dtypes; fp32 checks a binding budget (tests/kernels/test_gpu.py tests the selection)."""
    from ssa_pretrain.hf import modeling_ssa
    from ssa_pretrain.hf.configuration_ssa import SSAConfig

    config = SSAConfig(
        vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, block_size=16, block_count=4 if dtype == torch.float32 else 32,
        inference_mode=mode,
    )  # fmt: skip
    torch.manual_seed(0)
    model = modeling_ssa.SSAForCausalLM(config).to("cuda", dtype).eval()
    tokens = torch.randint(0, config.vocab_size, (2, 333), device="cuda")
    kernels, calls = modeling_ssa.ssa_kernels, []
    assert kernels is not None, "ssa_kernels is importable here"
    for name in ("full_attention", "select_blocks", "sparse_attention"):
        op = getattr(kernels, name)
        monkeypatch.setattr(
            kernels, name, lambda *a, op=op, name=name, **kw: calls.append(name) or op(*a, **kw)
        )
    with torch.no_grad():
        fused = model(tokens, use_cache=False).logits.float()
        monkeypatch.setattr(modeling_ssa, "ssa_kernels", None)  # the export's own code
        own = model(tokens, use_cache=False).logits.float()
    expected_calls = {"full_attention"} if mode == "full" else {"select_blocks", "sparse_attention"}
    assert set(calls) == expected_calls
    if mode == "full":
        torch.testing.assert_close(fused, own, atol=tolerance, rtol=tolerance)
        return
    # sparse: tensor-core selection may swap a near-tied block at a few positions (tests/kernels/test_gpu.py)
    close = torch.isclose(fused, own, atol=tolerance, rtol=tolerance).all(-1)
    assert close.float().mean() >= 0.98, f"{(~close).sum()} of {close.numel()} positions differ"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    ("dtype", "tolerance"), [(torch.float32, 1e-3), (torch.bfloat16, 0.1)], ids=["fp32", "bf16"]
)
def test_elastic_prefill_on_cuda_uses_mixed_attention(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, tolerance: float
) -> None:
    """Elastic mode's plain prefill with mixed head modes runs `ssa_kernels.mixed_attention`; its logits are
    those of the export's own code (both modes, picked per head), as `test_plain_prefill_on_cuda_uses_kernels`
    checks them (a near-tied block may swap at a few positions in the sparse heads)."""
    from ssa_pretrain.hf import modeling_ssa
    from ssa_pretrain.hf.configuration_ssa import SSAConfig

    config = SSAConfig(
        vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, block_size=16, block_count=4 if dtype == torch.float32 else 32,
        inference_mode="elastic", router={"pool_tokens": 16, "hidden_multiple": 2},
    )  # fmt: skip
    torch.manual_seed(0)
    model = modeling_ssa.SSAForCausalLM(config).to("cuda", dtype).eval()
    tokens = torch.randint(0, config.vocab_size, (2, 333), device="cuda")
    head_modes = torch.tensor([[[True, False], [False, True]], [[False, False], [True, True]]], device="cuda")
    kernels, calls = modeling_ssa.ssa_kernels, []
    op = kernels.mixed_attention
    monkeypatch.setattr(kernels, "mixed_attention", lambda *a, **kw: calls.append(1) or op(*a, **kw))
    with torch.no_grad():
        fused = model(tokens, use_cache=False, head_modes=head_modes).logits.float()
        monkeypatch.setattr(modeling_ssa, "ssa_kernels", None)  # the export's own code
        own = model(tokens, use_cache=False, head_modes=head_modes).logits.float()
    assert len(calls) == 2  # both layers mix modes within the batch
    close = torch.isclose(fused, own, atol=tolerance, rtol=tolerance).all(-1)
    assert close.float().mean() >= 0.98, f"{(~close).sum()} of {close.numel()} positions differ"
