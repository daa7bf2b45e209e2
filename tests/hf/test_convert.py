"""Train tiny → `ssa convert` → load with transformers (no ssa package) → logits, generation, TP=2, errors."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
import time

import pytest
import sentencepiece as spm
import torch
from safetensors.torch import load_file

from ssa_pretrain.config import Config
from tests.helpers import REPO
from tests.hf.conftest import ssa_convert

# Runs in a fresh interpreter whose sys.path holds no checkout and whose imports of our packages fail.
LOAD_AND_RUN = textwrap.dedent(
    """
    import importlib.abc, os, sys
    BLOCKED = ("ssa_pretrain", "ssa_kernels", "tests")
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"the export imported {name}")
    sys.meta_path.insert(0, Block())
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != REPO]  # the checkout itself

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_dir, tokens_file, out_file = sys.argv[1:4]
    tokens = torch.load(tokens_file)
    tok = AutoTokenizer.from_pretrained(hf_dir, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=True).eval()
    result = {"logits": {}, "generate": {}, "model_class": type(model).__module__}
    with torch.no_grad():
        for mode in ("full", "sparse"):
            model.config.inference_mode = mode
            result["logits"][mode] = model(tokens, use_cache=False).logits
        # block_count override at load time
        for k in (1, 64):
            m = AutoModelForCausalLM.from_pretrained(
                hf_dir, trust_remote_code=True, inference_mode="sparse", block_count=k
            ).eval()
            result["logits"][f"sparse_k{k}"] = m(tokens, use_cache=False).logits
        # greedy generation with and without cache, both modes, plain and left-padded batches
        prompts = ["In the beginning God created the heaven and the earth. And the earth was",
                   "def f(x):\\n    return"]
        enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
        single = tok(prompts[:1], return_tensors="pt")
        for mode in ("full", "sparse"):
            model.config.inference_mode = mode
            args = dict(max_new_tokens=40, do_sample=False)
            cached = model.generate(**single, **args)
            uncached = model.generate(**single, **args, use_cache=False)
            padded = model.generate(**enc, **args)
            padded_uncached = model.generate(**enc, **args, use_cache=False)
            result["generate"][mode] = {
                "single": cached.tolist(), "single_nocache": uncached.tolist(),
                "padded": padded.tolist(), "padded_nocache": padded_uncached.tolist(),
                "pad_len": int((enc["attention_mask"][0] == 0).sum()),
            }
    result["tokenizer"] = {"class": type(tok).__name__, "ids": tok("Hello world")["input_ids"],
                           "pad": tok.pad_token_id, "eos": tok.eos_token_id}
    result["leaked"] = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    torch.save(result, out_file)
    """
).replace("REPO", repr(str(REPO)))


class _Weights:
    """What `reference_logits` reads from a Megatron model: its state dict."""

    def __init__(self, state):
        self.state = state

    def state_dict(self):
        return self.state


def _gathered_megatron_state(run_dir):
    from ssa_pretrain.hf.convert import gather_tensor_parallel, load_shards, resolve_checkpoint

    ckpt, _ = resolve_checkpoint(run_dir)
    meta = json.loads((ckpt / "meta.json").read_text())
    cfg = Config.model_validate(meta["config"])
    return gather_tensor_parallel(load_shards(ckpt, cfg.parallel.tp)), cfg, meta["vocab_size"]


@pytest.fixture(scope="module")
def loaded(exported, runs, tmp_path_factory):
    """The TP=1 export loaded and run in a subprocess without our package on its path."""
    work = tmp_path_factory.mktemp("load")
    tokens = torch.randint(4, 512, (2, 48), generator=torch.Generator().manual_seed(1))
    torch.save(tokens, work / "tokens.pt")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            LOAD_AND_RUN,
            str(exported["tp1"]),
            str(work / "tokens.pt"),
            str(work / "out.pt"),
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return tokens, torch.load(work / "out.pt", weights_only=False)


def test_export_directory(exported):
    out = exported["tp1"]
    names = {p.name for p in out.iterdir()}
    expected = ["config.json", "generation_config.json", "model.safetensors", "configuration_ssa.py",
                "modeling_ssa.py", "tokenizer.model", "tokenizer.json", "tokenizer_config.json"]  # fmt: skip
    assert set(expected) <= names
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_ssa.SSAConfig",
        "AutoModelForCausalLM": "modeling_ssa.SSAForCausalLM",
    }
    weights = load_file(out / "model.safetensors")
    assert weights["model.embed_tokens.weight"].shape == (512, 128)  # the tokenizer's vocabulary
    assert {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.gate_proj.weight",
            "model.layers.3.mlp.down_proj.weight", "model.layers.0.post_attention_layernorm.weight",
            "model.norm.weight"} <= weights.keys()  # fmt: skip
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary directory left


def test_sharded_export(runs, tmp_path):
    proc = ssa_convert(runs["tp1"], tmp_path / "hf", "--max-shard-size", "1MB")
    assert proc.returncode == 0, proc.stderr[-3000:]
    index = json.loads((tmp_path / "hf/model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1


def test_loads_without_our_package_and_matches_the_training_model(loaded, runs):
    from tests.model.reference_lm import reference_logits

    tokens, result = loaded
    assert result["leaked"] == [] and result["model_class"].startswith("transformers_modules")
    state, cfg, vocab = _gathered_megatron_state(runs["tp1"])
    for mode in ("full", "sparse"):
        want = reference_logits(_Weights(state), cfg, tokens, mode)[..., :vocab]
        torch.testing.assert_close(result["logits"][mode], want, rtol=1e-4, atol=1e-4, msg=mode)
    sparse_effect = (result["logits"]["full"] - result["logits"]["sparse"]).abs().max()
    assert sparse_effect > 1e-3  # sparse really drops blocks at this length
    tok = result["tokenizer"]
    sp = spm.SentencePieceProcessor(model_file=str(runs["tp1"] / "tokenizer/tokenizer.model"))
    assert tok["ids"] == sp.encode("Hello world") and tok["class"].startswith("LlamaTokenizer")
    assert (tok["pad"], tok["eos"]) == (3, 2)


def test_block_count_override(loaded):
    _, result = loaded
    logits = result["logits"]
    assert (logits["sparse_k1"] - logits["sparse"]).abs().max() > 1e-3  # K=1 (own block only) != K=2
    torch.testing.assert_close(logits["sparse_k64"], logits["full"], rtol=1e-5, atol=1e-5)  # K >= #blocks


@pytest.mark.parametrize("mode", ["full", "sparse"])
def test_greedy_generation_with_cache_equals_without(loaded, mode):
    _, result = loaded
    gen = result["generate"][mode]
    assert gen["single"] == gen["single_nocache"]
    assert gen["padded"] == gen["padded_nocache"]
    # the left-padded row continues exactly like the same prompt alone
    assert gen["padded"][0][gen["pad_len"] :] == gen["single"][0]


def test_tp2_checkpoint_converts_to_the_tp1_weights(exported, runs):
    """Same seed, same batches, TP=1 vs TP=2: equal losses and the same HF weights. Two Adam steps can move an
    element whose gradient is ~0 by up to lr (3e-4 here) in one layout and not the other (fp32 summation
    order flips the sign); a wrong shard layout would move most elements by ~init_std (0.02)."""
    from tests.helpers import read_metrics

    loss = [[m["loss"] for m in read_metrics(runs[name])] for name in ("tp1", "tp2")]
    assert loss[1] == pytest.approx(loss[0], rel=2e-5)
    one = load_file(exported["tp1"] / "model.safetensors")
    two = load_file(exported["tp2"] / "model.safetensors")
    assert one.keys() == two.keys()
    moved = 0
    for name in one:
        diff = (two[name] - one[name]).abs()
        assert diff.max() <= 3e-4, name
        moved += int((diff > 1e-6).sum())
    assert moved < 1e-3 * sum(w.numel() for w in one.values())


def _no_leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".") or p.name == "hf"]


def test_missing_checkpoint_and_latest(tmp_path):
    proc = ssa_convert(tmp_path / "nope", tmp_path / "hf")
    assert proc.returncode == 2 and "no such run directory" in proc.stderr
    (tmp_path / "run/checkpoints").mkdir(parents=True)
    proc = ssa_convert(tmp_path / "run", tmp_path / "hf")
    assert proc.returncode == 2 and "checkpoints/latest" in proc.stderr
    (tmp_path / "run/checkpoints/latest").write_text("step-000099")
    proc = ssa_convert(tmp_path / "run", tmp_path / "hf")
    assert proc.returncode == 2 and "step-000099" in proc.stderr
    assert _no_leftovers(tmp_path) == []


def test_missing_shard_and_mismatched_config(runs, tmp_path):
    src = runs["tp2"] / "checkpoints" / (runs["tp2"] / "checkpoints/latest").read_text()
    ckpt = tmp_path / "run/checkpoints/step-000002"
    shutil.copytree(src, ckpt)
    (ckpt / "mp_rank_01_model_states.pt").rename(tmp_path / "moved.pt")
    proc = ssa_convert(ckpt, tmp_path / "hf")
    assert proc.returncode == 2 and "mp_rank_01_model_states.pt: missing model shard" in proc.stderr
    (tmp_path / "moved.pt").rename(ckpt / "mp_rank_01_model_states.pt")

    meta = json.loads((ckpt / "meta.json").read_text())
    meta["config"]["model"]["ffn_hidden_size"] = 512
    (ckpt / "meta.json").write_text(json.dumps(meta))
    proc = ssa_convert(ckpt, tmp_path / "hf")
    assert proc.returncode == 2, proc.stderr
    assert "do not match the model in meta.json" in proc.stderr
    assert "decoder.layers.0.mlp.linear_fc1.weight: checkpoint (768, 128), config (1024, 128)" in proc.stderr
    assert _no_leftovers(tmp_path) == []


def test_existing_out_dir_is_refused(runs, tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf/keep.txt").write_text("mine")
    proc = ssa_convert(runs["tp1"], tmp_path / "hf")
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert [p.name for p in (tmp_path / "hf").iterdir()] == ["keep.txt"]


def test_a_killed_convert_is_cleaned_up_by_the_next_which_publishes_with_the_umask(runs, tmp_path):
    """`kill -9` while the export is staged leaves its staging directory; the next convert into the same
    OUT_DIR removes it, and the export's directory and files get the user's umask (here 027), not 0700."""
    out = tmp_path / "exports/hf"
    command = [sys.executable, "-m", "ssa_pretrain.cli", "convert", str(runs["tp1"]), str(out)]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out.parent.is_dir() and any(out.parent.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, "convert ended before staging its export"
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    (staged,) = out.parent.iterdir()
    assert staged.name.startswith(".hf.tmp-")  # what the kill left

    umask = os.umask(0o027)
    try:
        again = ssa_convert(runs["tp1"], out)
    finally:
        os.umask(umask)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"removed {staged.name}" in again.stdout
    assert [p.name for p in out.parent.iterdir()] == ["hf"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o640}


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_staging_of_dead_processes_goes_and_the_rest_stays(tmp_path, capsys):
    from ssa_pretrain.hf.convert import clean_stale_staging

    out, host, dead = tmp_path / "hf", socket.gethostname(), _dead_pid()
    names = {
        "dead": f".hf.tmp-{host}-{dead}-0123abcd",
        "alive": f".hf.tmp-{host}-{os.getpid()}-0123abcd",  # a convert still running
        "elsewhere": f".hf.tmp-other-node-{dead}-0123abcd",  # another host's processes are not visible
        "moved aside": f".hf.old-{host}-{dead}-0123abcd",  # killed between --overwrite's two renames
        "other export": f".hf2.tmp-{host}-{dead}-0123abcd",
    }
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(name)
    clean_stale_staging(out)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["hf", names["alive"], names["elsewhere"], names["other export"]])
    assert (out / "config.json").read_text() == names["moved aside"]  # the previous export is back
    printed = capsys.readouterr().out
    assert f"removed {names['dead']}" in printed and f"restored {out}" in printed
    assert "other-node (pid" in printed and "left alone" in printed

    (tmp_path / names["moved aside"]).mkdir()  # killed after the new export was in place: the old one goes
    clean_stale_staging(out)
    assert not (tmp_path / names["moved aside"]).exists()
    assert (out / "config.json").read_text() == names["moved aside"]
