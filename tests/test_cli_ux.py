"""What a new user sees first: a quiet console, a fast `ssa --help`, clear errors from small commands, a
progress bar with an ETA, and the README's numbers rendered by `tools/readme_numbers.py`."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys

import pytest
from rich.console import Console

from tests.conftest import TINY_RUN_OVERRIDES
from tests.helpers import REPO

HEAVY = ("torch", "megatron", "deepspeed", "transformers", "matplotlib", "webdataset", "wandb")


def ssa(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`ssa ARGS` in a subprocess, stdout and stderr together in `.stdout`, as a terminal shows them."""
    return subprocess.run(
        [sys.executable, "-m", "ssa_pretrain.cli", *map(str, args)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        env=env,
    )


# ------------------------------------------------------------------------------------ quiet console


def lines_before_first_step(output: str) -> list[str]:
    lines = output.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("step "))
    return lines[:first]


@pytest.mark.slow
def test_train_prints_little_before_the_first_step(tiny_data, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}  # wandb as a user has it: offline
    overrides = [o for o in TINY_RUN_OVERRIDES if not o.startswith("logging.wandb")]
    proc = ssa("train", "configs/train/tiny-cpu.yaml", "--run-dir", tmp_path / "run", *overrides,
               f"data.dir={tiny_data}", "train.log_interval=1", "logging.wandb=offline", env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:]
    before = lines_before_first_step(proc.stdout)
    # DeepSpeed's "op built successfully", our wandb line and, on DeepSpeed's first run, our "compiling" line
    assert len(before) <= 3, "\n".join(before)
    assert not any("Warning" in line or "wandb: " in line for line in before), "\n".join(before)
    assert any(line.startswith("wandb offline: ") for line in before), "\n".join(before)
    after = proc.stdout.splitlines()[len(before) :]
    assert not any(line.startswith("wandb") for line in after), "\n".join(after)  # no end-of-run summary


def test_params_prints_only_its_answer():
    proc = ssa("params", "configs/model/tiny.yaml", "--vocab-size", "8192")
    assert proc.returncode == 0, proc.stdout
    lines = proc.stdout.splitlines()
    assert lines[-1] == "total: 1,838,208 (0.002 B)"
    assert len(lines) == 4, proc.stdout


def test_our_own_warnings_still_show():
    code = (
        "import warnings; from ssa_pretrain import quiet; quiet.install(); "
        "warnings.warn('Apex is not installed, says ssa_pretrain'); "
        "warnings.warn_explicit('Apex is not installed', UserWarning, 'x.py', 1, module='megatron.core.x')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert "says ssa_pretrain" in proc.stderr
    assert proc.stderr.count("Apex is not installed") == 1, proc.stderr


# ------------------------------------------------------------------------------------ start-up


def heavy_modules_after(code: str) -> list[str]:
    """The HEAVY packages imported by running `code` in a fresh interpreter."""
    code += f"; import sys; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_importing_the_cli_imports_no_heavy_package():
    assert heavy_modules_after("import ssa_pretrain.cli") == []


def test_building_the_cli_parser_imports_no_heavy_package():
    assert heavy_modules_after("import ssa_pretrain.cli as cli; cli.build_parser()") == []


# ------------------------------------------------------------------------------------ small commands


def test_plot_names_a_missing_run_dir(tmp_path):
    proc = ssa("plot", tmp_path / "nope", "--out", tmp_path / "loss.png")
    assert proc.returncode == 2, proc.stdout
    assert f"{tmp_path / 'nope'}: no such directory" in proc.stdout
    assert not (tmp_path / "loss.png").exists()


def test_plot_names_a_missing_output_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 5.0}) + "\n")
    proc = ssa("plot", run, "--out", tmp_path / "missing" / "loss.png")
    assert proc.returncode == 2, proc.stdout
    assert f"{tmp_path / 'missing'}: no such directory" in proc.stdout
    assert "Traceback" not in proc.stdout


def test_training_without_data_says_how_to_build_it(tmp_path, monkeypatch, capsys):
    from ssa_pretrain import cli
    from ssa_pretrain.data import prepare
    from ssa_pretrain.train import parse_with_overrides

    default = tmp_path / "default"  # stands for data/build/default, not built yet
    monkeypatch.setattr(prepare, "DEFAULT_BUILD_DIR", default)
    for data_dir, hint in [(default, "`ssa data prepare`"), (tmp_path / "mine", "`ssa data tokenizer`")]:
        argv = ["train", "configs/train/tiny-cpu.yaml", f"data.dir={data_dir}", "--run-dir", tmp_path / "r"]
        args = parse_with_overrides(cli.build_parser(), list(map(str, argv)))
        assert args.func(args) == 2
        err = capsys.readouterr().err
        assert f"{data_dir / 'tokenizer'}" in err and "tokenizer model not found" in err
        assert hint in err
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------ progress bar


def test_progress_bar_shows_an_eta_from_the_second_log_step():
    from ssa_pretrain.metrics import progress_bar

    clock = [0.0]
    console = Console(file=io.StringIO(), force_terminal=True, get_time=lambda: clock[0])
    bar = progress_bar(console)
    task = bar.add_task("train", total=300)
    for step in (10, 20):  # log steps 40 s apart: longer than rich's default speed window
        clock[0] += 40.0
        bar.update(task, completed=step)
    assert bar.tasks[0].time_remaining == pytest.approx(280 * 4.0)


# ------------------------------------------------------------------------------------ README numbers


@pytest.fixture
def readme_numbers(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    return importlib.import_module("readme_numbers")


def test_readme_numbers_are_rendered_from_the_saved_numbers(readme_numbers):
    numbers = json.loads(readme_numbers.NUMBERS.read_text())
    readme = readme_numbers.README.read_text()
    regions = readme_numbers.render(numbers)
    assert regions == readme_numbers.render(json.loads(json.dumps(numbers)))  # a pure function of the JSON
    assert readme_numbers.rewrite(readme, regions) == readme, "run tools/readme_numbers.py --render"
    results = readme_numbers.RESULTS.read_text()
    rendered = readme_numbers.doc_regions.rewrite(
        results, "readme-numbers", readme_numbers.render_results(numbers)
    )
    assert rendered == results, "run tools/readme_numbers.py --render"
    assert f"{numbers['parameters']:,} parameters" in readme


def test_readme_names_every_demo_command(readme_numbers):
    plan = readme_numbers.demo_plan(readme_numbers.readme_commands(readme_numbers.README.read_text()))
    assert plan["train"][:2] == ["train", "configs/train/tiny-cpu.yaml"]
    assert sorted(plan["eval"]) == ["elastic", "niah", "ppl", "sparsity"]
    assert plan["elastic"][:3] == ["elastic", "train", "configs/elastic/tiny.yaml"]
    assert plan["elastic_dir"] == readme_numbers.REPO / "hf/demo-elastic"
