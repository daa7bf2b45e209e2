"""With `ssa_kernels` installed, the export's plain prefill runs the fused ops (on CUDA; here: the Triton
kernels under Triton's interpreter on CPU) and gives the logits of its own code, in both modes."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

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
