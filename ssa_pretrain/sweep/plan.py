"""Expand a sweep grid (YAML) into one resolved, validated run config per run.

A grid file::

    base: ../train/300m-8k.yaml          # a run config, relative to this file
    set: {train.steps: 5000}             # dotted keys applied to every run (optional)
    variants:                            # explicit named runs (optional)
      - {name: full, set: {ssa.variant: full}}
      - {name: ssa}                      # the base as it is
    axes:                                # cartesian product (optional), crossed with the variants
      ssa.full_ratio: [0.25, 0.5]        # a config key and its values
      align:                             # a named axis: each value is a label and the keys it sets
        both: {ssa.w_fs: 1.0, ssa.w_sf: 1.0}
        sf_only: {ssa.w_fs: 0.0}

Runs are `variants x product(axes)`, named `<variant>_<axis>-<value>_...`. `blocks:` (a list of such
mappings, each with its own `variants` / `axes` / `set`) gives the union of several products, the usual
shape of an ablation table (one axis at a time around a baseline). Runs whose resolved config is identical
are planned once (the first name wins). Command-line overrides apply last, to every run.
`lookup(plan.json, K)` is what `slurm/pretrain.sh --plan` asks for array element K.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ssa_pretrain.config import ConfigError, apply_overrides, build_config, dump_config, read_yaml
from ssa_pretrain.errors import UserError
from ssa_pretrain.files import write_atomically

PLAN_FILE = "plan.json"
PLAN_VERSION = 1


class SweepError(UserError, ValueError):
    """A grid file or sweep directory that cannot be used; the message names it and the fix."""


@dataclass
class PlannedRun:
    """One run of a sweep: its name, where its config and run directory are, and the swept values."""

    index: int
    """Position in the plan = the Slurm array index."""
    name: str
    """Unique, filesystem-safe run name."""
    config: str
    """Resolved config, relative to the sweep directory (`runs/<name>/config.yaml`)."""
    run_dir: str
    """Run directory, relative to the sweep directory (`runs/<name>`)."""
    params: dict[str, Any] = field(default_factory=dict)
    """The swept keys and named axes with this run's value (every run lists every swept key)."""
    config_sha256: str = ""
    """Hash of the resolved config (re-planning the same directory must give the same runs)."""


def _set_dotted(data: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    node = data
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise SweepError(f"{where}: {dotted!r}: {key!r} is not a config section")
    node[keys[-1]] = value


def _get_dotted(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SweepError(f"{where}: expected a mapping of dotted keys to values, got {value!r}")
    return value


def _label(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


@dataclass
class _Choice:
    """One value of one axis (or one variant): a name part, the keys it sets, the named-axis label."""

    part: str
    sets: dict[str, Any]
    axis: str | None = None
    label: Any = None


def _axis_choices(name: str, values: Any, where: str) -> list[_Choice]:
    if isinstance(values, dict):  # named axis: label -> {dotted key: value}
        if not values:
            raise SweepError(f"{where}: axis {name!r} has no values")
        return [
            _Choice(f"{name}-{_label(lab)}", _mapping(sets, f"{where}: axis {name!r} = {lab!r}"), name, lab)
            for lab, sets in values.items()
        ]
    if not isinstance(values, list) or not values:
        raise SweepError(
            f"{where}: axis {name!r} must be a non-empty list of values (a config key) or a mapping of "
            "labels to settings (a named axis)"
        )
    short = name.rsplit(".", 1)[-1]
    return [_Choice(f"{short}-{_label(v)}", {name: v}) for v in values]


def _variant_choices(variants: Any, where: str) -> list[_Choice]:
    if variants is None:
        return [_Choice("", {})]
    if not isinstance(variants, list) or not variants:
        raise SweepError(f"{where}: 'variants' must be a non-empty list of {{name: ..., set: {{...}}}}")
    out = []
    for i, var in enumerate(variants):
        if not isinstance(var, dict) or "name" not in var:
            raise SweepError(f"{where}: variants[{i}] needs a 'name' (and optionally 'set: {{key: value}}')")
        unknown = set(var) - {"name", "set"}
        if unknown:
            raise SweepError(f"{where}: variants[{i}]: unknown keys {sorted(unknown)}; allowed: name, set")
        out.append(_Choice(_label(var["name"]), _mapping(var.get("set"), f"{where}: variants[{i}].set")))
    return out


def _expand_block(
    block: dict[str, Any], where: str
) -> tuple[list[tuple[str, dict[str, Any], dict[str, Any]]], set[str]]:
    """(name, dotted settings, named-axis labels) for every run of one block, and the keys that are set
    by something other than a named axis (a named axis's label stands for the keys it sets)."""
    unknown = set(block) - {"name", "set", "variants", "axes"}
    if unknown:
        raise SweepError(f"{where}: unknown keys {sorted(unknown)}; allowed: name, set, variants, axes")
    common = _mapping(block.get("set"), f"{where}.set")
    axes = _mapping(block.get("axes"), f"{where}.axes")
    lists = [_variant_choices(block.get("variants"), where)]
    lists += [_axis_choices(str(name), values, where) for name, values in axes.items()]
    plain = set(common) | {key for choices in lists for c in choices if c.axis is None for key in c.sets}
    runs = []
    for combo in itertools.product(*lists):
        sets = dict(common)
        labels = {}
        for choice in combo:
            sets.update(choice.sets)
            if choice.axis is not None:
                labels[choice.axis] = choice.label
        parts = [block.get("name", ""), *(c.part for c in combo)]
        runs.append(("_".join(p for p in parts if p) or "base", sets, labels))
    return runs, plain


def expand_grid(
    grid_path: str | Path, overrides: list[str] | None = None
) -> tuple[list[tuple[str, dict[str, Any], dict[str, Any]]], list[str], list[str]]:
    """Raw configs of every run [(name, config mapping, named-axis labels)], the swept config keys and
    the named axes."""
    grid_path = Path(grid_path)
    try:
        grid = yaml.safe_load(grid_path.read_text())
    except OSError as err:
        raise SweepError(f"cannot read grid {grid_path}: {err}") from err
    except yaml.YAMLError as err:
        raise SweepError(f"{grid_path}: not valid YAML: {err}") from err
    if not isinstance(grid, dict) or "base" not in grid:
        raise SweepError(f"{grid_path}: a grid is a mapping with 'base: <run config>' (see ssa sweep -h)")
    unknown = set(grid) - {"base", "set", "variants", "axes", "blocks"}
    if unknown:
        raise SweepError(
            f"{grid_path}: unknown keys {sorted(unknown)}; allowed: base, set, variants, axes, blocks"
        )
    if "blocks" in grid and ({"variants", "axes"} & set(grid)):
        raise SweepError(f"{grid_path}: use either 'blocks' or top-level 'variants'/'axes', not both")
    try:
        base = read_yaml(grid_path.parent / str(grid["base"]))
    except ConfigError as err:
        raise SweepError(f"{grid_path}: base: {err}") from err
    common = _mapping(grid.get("set"), f"{grid_path}: set")
    blocks = grid.get("blocks") or [{k: grid[k] for k in ("variants", "axes") if k in grid}]
    if not isinstance(blocks, list):
        raise SweepError(f"{grid_path}: 'blocks' must be a list of {{variants, axes, set, name}} mappings")

    expanded = []
    plain: set[str] = set()
    for i, block in enumerate(blocks):
        where = f"{grid_path}: blocks[{i}]" if "blocks" in grid else str(grid_path)
        block_runs, block_plain = _expand_block(_mapping(block, where), where)
        expanded += block_runs
        plain |= block_plain

    swept = sorted(plain - set(common))
    named_axes = sorted({axis for _, _, labels in expanded for axis in labels})
    runs = []
    for name, sets, labels in expanded:
        data = yaml.safe_load(yaml.safe_dump(base))  # deep copy
        for key, value in {**common, **sets}.items():
            _set_dotted(data, str(key), value, f"{grid_path}: run {name}")
        try:
            data = apply_overrides(data, overrides or [])
        except ConfigError as err:
            raise SweepError(str(err)) from err
        runs.append((name, data, labels))
    return runs, swept, named_axes


def plan(grid_yaml: str | Path, out_dir: str | Path, overrides: list[str] | None = None) -> list[PlannedRun]:
    """Write `out_dir/runs/<name>/config.yaml` for every run of the grid and `out_dir/plan.json`.

    Every config is validated with `build_config` before anything is written. Re-planning a directory
    is allowed only when it gives the same runs (so a sweep in progress is never silently changed).
    """
    out_dir = Path(out_dir)
    expanded, swept, named_axes = expand_grid(grid_yaml, overrides)
    runs: list[PlannedRun] = []
    texts: dict[str, str] = {}
    seen: dict[str, str] = {}
    for name, data, labels in expanded:
        try:
            cfg = build_config(data, source=f"{grid_yaml}: run {name}")
        except ConfigError as err:
            raise SweepError(str(err)) from err
        text = dump_config(cfg)
        # Every run lists every swept key (its resolved value, defaults included): a one-axis-at-a-time
        # ablation then lines its runs up along each axis.
        resolved = cfg.model_dump(mode="json")
        params: dict[str, Any] = {key: _get_dotted(resolved, key) for key in swept}
        params.update({axis: labels.get(axis) for axis in named_axes})
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest in seen:  # the same run under another name (e.g. the baseline of two one-axis blocks)
            first = next(r for r in runs if r.name == seen[digest])
            first.params.update({k: v for k, v in params.items() if first.params.get(k) is None})
            continue
        if name in texts:
            raise SweepError(f"{grid_yaml}: two different runs are both named {name!r}; rename a variant")
        seen[digest] = name
        texts[name] = text
        runs.append(PlannedRun(len(runs), name, f"runs/{name}/config.yaml", f"runs/{name}", params, digest))
    if not runs:
        raise SweepError(f"{grid_yaml}: the grid has no runs")

    old = out_dir / PLAN_FILE
    if old.is_file():
        previous = [(r.name, r.config_sha256) for r in load_plan(out_dir)]
        if previous != [(r.name, r.config_sha256) for r in runs]:
            raise SweepError(
                f"{out_dir} already holds a different sweep plan; use a new --out directory "
                f"(or delete {old} and its runs/ if that sweep is to be discarded)"
            )
    for run in runs:
        path = out_dir / run.config
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text() != texts[run.name]:
            path.write_text(texts[run.name])
    doc = {
        "version": PLAN_VERSION,
        "grid": str(Path(grid_yaml).resolve()),
        "overrides": list(overrides or []),
        "axes": swept + named_axes,
        "runs": [asdict(r) for r in runs],
    }
    write_atomically(out_dir / PLAN_FILE, json.dumps(doc, indent=2) + "\n")
    return runs


def read_plan_doc(out_dir: str | Path) -> dict[str, Any]:
    """The raw `plan.json` of a sweep directory."""
    path = Path(out_dir) / PLAN_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise SweepError(f"{path} not found; write it with: ssa sweep plan GRID --out {out_dir}") from None
    except (OSError, json.JSONDecodeError) as err:
        raise SweepError(f"cannot read {path}: {err}") from err
    if doc.get("version") != PLAN_VERSION:
        raise SweepError(f"{path}: plan version {doc.get('version')!r}, this ssa reads {PLAN_VERSION}")
    return doc


def load_plan(out_dir: str | Path) -> list[PlannedRun]:
    """The planned runs of a sweep directory."""
    return [PlannedRun(**r) for r in read_plan_doc(out_dir)["runs"]]


def lookup(plan_file: str | Path, index: int) -> tuple[Path, Path]:
    """(config, run directory) of array element `index`, as absolute paths."""
    out_dir = Path(plan_file).resolve().parent
    runs = load_plan(out_dir)
    if not 0 <= index < len(runs):
        raise SweepError(f"{plan_file}: array index {index} is outside the plan (0..{len(runs) - 1})")
    return out_dir / runs[index].config, out_dir / runs[index].run_dir
