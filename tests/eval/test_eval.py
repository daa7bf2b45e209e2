"""`ssa eval ppl|sparsity|niah` on the tiny export (64-token training length, 8-token blocks, K=2), through
the CLI as a user runs it; bad input; the lm-evaluation-harness loading the export (when installed)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ssa_pretrain import cli
from tests.helpers import REPO

BLOCK_SIZE = 8  # tests/conftest.py's tiny runs: ssa.block_size=8, ssa.block_count=2, data.seq_len=64
TRAINING_LENGTH = 64


def ssa_eval(*args) -> subprocess.CompletedProcess:
    """`ssa eval ARGS` in a subprocess on the CPU."""
    return subprocess.run(
        [sys.executable, "-m", "ssa_pretrain.cli", "eval", *map(str, args), "--device", "cpu"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def written_report(proc: subprocess.CompletedProcess, out: Path, name: str) -> dict:
    """The command succeeded and wrote exactly NAME.json/.md/.png into OUT (and nothing next to OUT)."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [f"{name}.json", f"{name}.md", f"{name}.png"]
    assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / f"{name}.md").read_text().startswith("# ")
    assert [p.name for p in out.parent.iterdir()] == [out.name], "staging directories left behind"
    return json.loads((out / f"{name}.json").read_text())


def relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.fixture(scope="module")
def hf_dir(exported) -> Path:
    return exported["tp1"]


# ----------------------------------------------------------------------------------------- ppl


@pytest.fixture(scope="module")
def ppl(hf_dir, tiny_data, tmp_path_factory) -> dict:
    """Lengths 32, 64 and 256 (4, 8, 32 blocks); budgets 1, 2 (the export's) and 32 (every block)."""
    out = tmp_path_factory.mktemp("ppl") / "out"
    proc = ssa_eval(
        "ppl", hf_dir, "--data", tiny_data, "--out", out, "--lengths", 32, 64, 256, "--block-counts", 1, 32,
        "--windows", 4,
    )  # fmt: skip
    report = written_report(proc, out, "ppl")
    report["by"] = {(r["length"], r["block_count"]): r for r in report["results"]}
    return report


def test_ppl_scores_the_same_tokens_at_every_length_and_budget(ppl):
    assert len(ppl["by"]) == 3 * 4
    assert {r["tokens"] for r in ppl["results"]} == {4 * 256}
    assert all(math.isfinite(r["ppl"]) and r["ppl"] > 1 for r in ppl["results"])


def test_sparse_ppl_with_every_block_selected_equals_full(ppl):
    for length in (32, 64, 256):
        assert relative(ppl["by"][length, 32]["ppl"], ppl["by"][length, None]["ppl"]) < 1e-5, length
    # at length 32 (4 blocks) the export's K=2 drops blocks; a budget of 4+ would not
    assert relative(ppl["by"][32, 2]["ppl"], ppl["by"][32, None]["ppl"]) > 1e-6


def test_sparse_ppl_at_the_smallest_budget_differs_from_full_and_ignores_the_length(ppl):
    for length in (32, 64, 256):
        assert relative(ppl["by"][length, 1]["ppl"], ppl["by"][length, None]["ppl"]) > 1e-3, length
    # K=1: every query sees its own block only, the same tokens at every length (windows start on block
    # boundaries, RoPE is relative), so the ppl is the same up to rounding
    assert relative(ppl["by"][256, 1]["ppl"], ppl["by"][32, 1]["ppl"]) < 1e-5


def test_ppl_on_text_files(hf_dir, tiny_data, tmp_path):
    """`--data` may be text: tokenized with the export's tokenizer, an EOS after each document."""
    argv = [
        "eval",
        "ppl",
        str(hf_dir),
        "--data",
        str(tiny_data / "corpus.jsonl"),
        "--out",
        str(tmp_path / "out"),
    ]
    assert cli.main([*argv, "--lengths", "64", "--windows", "2", "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "out" / "ppl.json").read_text())
    assert report["data"] == f"text {tiny_data / 'corpus.jsonl'}"
    assert [r["tokens"] for r in report["results"]] == [128, 128]  # full, sparse K=2
    assert all(math.isfinite(r["ppl"]) for r in report["results"])


# ----------------------------------------------------------------------------------------- sparsity


def test_sparsity_dropped_mass_and_kl(hf_dir, tiny_data, tmp_path):
    proc = ssa_eval("sparsity", hf_dir, "--data", tiny_data, "--out", tmp_path / "out")
    report = written_report(proc, tmp_path / "out", "sparsity")
    assert report["block_count"] == 2 and report["blocks_per_window"] == TRAINING_LENGTH // BLOCK_SIZE
    for layer in report["layers"]:
        by_block = layer["dropped_mass_by_query_block"]
        assert by_block[:2] == [0.0, 0.0], "queries with at most K blocks to choose from drop nothing"
        assert all(0.0 <= m <= 1.0 for m in by_block)
        assert 0.0 < layer["dropped_mass"] < layer["dropped_mass_where_budget_binds"] <= 1.0
        assert all(0.0 <= m <= 1.0 for m in layer["dropped_mass_per_head_where_budget_binds"])
        assert layer["kl_only_this_layer_sparse"] >= 0.0
    assert report["kl_all_layers_sparse"] > 0.0


def test_sparsity_with_every_block_selected_drops_nothing(hf_dir, tiny_data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("replaced by --overwrite")
    argv = ["eval", "sparsity", str(hf_dir), "--data", str(tiny_data), "--out", str(out), "--device", "cpu"]
    assert cli.main([*argv, "--block-count", str(TRAINING_LENGTH // BLOCK_SIZE), "--overwrite"]) == 0
    assert not (out / "old.txt").exists()
    report = json.loads((out / "sparsity.json").read_text())
    for layer in report["layers"]:
        assert layer["dropped_mass"] == 0.0 and set(layer["dropped_mass_by_query_block"]) == {0.0}
        assert layer["kl_only_this_layer_sparse"] < 1e-9
    assert report["kl_all_layers_sparse"] < 1e-9


# ----------------------------------------------------------------------------------------- niah


def test_niah_with_llama3_rope_beyond_the_training_length_is_reproducible(hf_dir, tmp_path):
    args = ["--lengths", 96, 4 * TRAINING_LENGTH, "--depths", 0, 1, "--trials", 2, "--distractors", 3]
    args += ["--rope-scaling", "llama3", "--rope-factor", 4, "--seed", 7]
    report = written_report(ssa_eval("niah", hf_dir, "--out", tmp_path / "a", *args), tmp_path / "a", "niah")
    assert report["rope_parameters"] == {
        "rope_type": "llama3",
        "rope_theta": 10000.0,
        "factor": 4.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": TRAINING_LENGTH,
    }
    assert len(report["cells"]) == 2 * 2 * 2  # lengths x depths x modes
    for cell in report["cells"]:
        assert 0.0 <= cell["accuracy"] <= 1.0 and 0.0 <= cell["greedy"] <= 1.0
        assert cell["logprob"] < 0.0 and math.isfinite(cell["margin"])
    assert cli.main(["eval", "niah", str(hf_dir), "--out", str(tmp_path / "b"), *map(str, args)]) == 0
    again = json.loads((tmp_path / "b" / "niah.json").read_text())
    for cell, same in zip(report["cells"], again["cells"], strict=True):
        assert {k: cell[k] for k in ("length", "depth", "mode", "accuracy", "greedy")} == {
            k: same[k] for k in ("length", "depth", "mode", "accuracy", "greedy")
        }
        assert same["logprob"] == pytest.approx(cell["logprob"], rel=1e-6)


# ----------------------------------------------------------------------------------------- bad input


def test_missing_data_or_model_exits_2_and_writes_nothing(hf_dir, tiny_data, tmp_path):
    proc = ssa_eval("ppl", hf_dir, "--data", tmp_path / "no-such-data", "--out", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "no-such-data: no such shard directory or text file" in proc.stderr
    proc = ssa_eval("sparsity", tiny_data, "--data", tiny_data, "--out", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "not an SSA Hugging Face export" in proc.stderr and "ssa convert" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_non_empty_out_without_overwrite_exits_2_and_writes_nothing(hf_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = ssa_eval("niah", hf_dir, "--out", out)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith(f"error: {out}: exists and is not empty; pass --overwrite")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in out.iterdir()] == ["keep.txt"]


def test_failure_after_the_model_loads_leaves_no_out(hf_dir, tiny_data, tmp_path):
    proc = ssa_eval("ppl", hf_dir, "--data", tiny_data, "--out", tmp_path / "out", "--lengths", 10**6)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "fewer than one window of 1000000 + 1" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_interrupted_writing_leaves_out_as_it_was(hf_dir, tiny_data, tmp_path, monkeypatch):
    from ssa_pretrain.eval import sparsity

    def interrupted(report, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(sparsity, "plot_sparsity", interrupted)
    argv = ["eval", "sparsity", str(hf_dir), "--data", str(tiny_data), "--device", "cpu", "--windows", "1"]
    with pytest.raises(KeyboardInterrupt):
        cli.main([*argv, "--out", str(tmp_path / "new")])
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("mine")
    with pytest.raises(KeyboardInterrupt):
        cli.main([*argv, "--out", str(tmp_path / "old"), "--overwrite"])
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["keep.txt"]


# ----------------------------------------------------------------------------------------- lm-eval


def test_lm_evaluation_harness_loads_the_export_offline(hf_dir, tmp_path):
    """A two-question multiple-choice task from a local JSON file (no download), full and sparse mode."""
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate", reason="lm_eval's hf model needs accelerate")
    docs = [
        {"question": "In the beginning God created the", "choices": [" heaven and the earth", " code"]},
        {"question": "def f(x):\n    return", "choices": [" x", " the heaven"]},
    ]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({**d, "answer": 0}) + "\n" for d in docs))
    (tmp_path / "ssa_smoke.yaml").write_text(
        "task: ssa_smoke\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'docs.jsonl'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env = {**os.environ, **offline, "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    loglikelihoods = {}
    for mode in ("full", "sparse"):
        model_args = f"pretrained={hf_dir},trust_remote_code=True,inference_mode={mode},block_count=1"
        command = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", model_args]
        command += ["--tasks", "ssa_smoke", "--include_path", tmp_path, "--device", "cpu"]
        command += ["--output_path", tmp_path / mode, "--log_samples"]
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
        (results,) = (tmp_path / mode).rglob("results_*.json")
        assert 0.0 <= json.loads(results.read_text())["results"]["ssa_smoke"]["acc,none"] <= 1.0
        (samples,) = (tmp_path / mode).rglob("samples_ssa_smoke_*.jsonl")
        first = json.loads(samples.read_text().splitlines()[0])  # doc 0: [[loglikelihood, is_greedy], ...]
        loglikelihoods[mode] = [float(ll) for ll, _ in first["filtered_resps"]]
    # the model_args reach from_pretrained: sparse attention with K=1 (own block only) changes the scores
    assert loglikelihoods["sparse"] != pytest.approx(loglikelihoods["full"], rel=1e-4)
