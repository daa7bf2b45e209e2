# Sourced on a GPU machine (torch 2.11, Python 3.12, no megatron-core / DeepSpeed) by the tools/gpu_*.sh
# scripts, from the repository root, with the run's output folder as $1:
#   . tools/gpu_setup.sh "$OUT" || exit 1
# Installs the wheels in .whl/ ( megatron-core 0.19.2, DeepSpeed 0.19.8, pydantic, webdataset, ... see
# docs/DEVELOPMENT.md) into /tmp/site and this package in editable mode, exports PYTHONPATH, and writes the
# versions (and GPUs) to $1/versions.txt. Returns non-zero when an install fails. Defines
# ALIGNMENT_GPU_TEST, the GPU test of the fused alignment loss that training scripts run before trusting it
# (on failure they set SSA_KERNELS_REFERENCE=alignment_loss: its reference serves).
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null || return 1
python3 -c "import torch, triton, megatron.core, deepspeed, transformers, sys; print('python', sys.version.split()[0], \
'torch', torch.__version__, 'triton', triton.__version__, 'megatron-core', megatron.core.__version__, \
'deepspeed', deepspeed.__version__, 'gpu', torch.cuda.get_device_name(), 'x', torch.cuda.device_count())" \
    | tee "${1:-.}/versions.txt"
ALIGNMENT_GPU_TEST=(python3 -m pytest -q -m gpu -p no:cacheprovider tests/kernels/test_gpu.py -k alignment)
