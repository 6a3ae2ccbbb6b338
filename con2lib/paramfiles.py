"""Params files: YAML mappings of parameter: value, with ``extends:`` chains and ``-p key value`` overrides.

Read by ``con2 run`` and by every point of a sweep grid (:mod:`con2lib.sweep`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from con2lib.paths import project_root, resolve


def load_params(path: str | os.PathLike[str], overrides: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """Reads a params file (following ``extends:`` chains) and applies ``-p key value`` overrides.

    ``extends: presets/cpu.yaml`` (relative to the file, or to ``params/``) loads that file first;
    the extending file's keys win. Override values are parsed as YAML (``-p epochs 5`` is an int).
    """
    params = _read_yaml(Path(path), seen=set())
    for key, value in overrides or []:
        params[key] = _parse_yaml(value, f"-p {key} {value!r}")
    return params


def _parse_yaml(text: str, what: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{what} is not valid YAML: {' '.join(str(err).split())}") from err


def _read_yaml(path: Path, seen: set[Path]) -> dict[str, Any]:
    path = path if path.is_file() else resolve(path)
    if not path.is_file():
        raise ValueError(f"params file {path} does not exist")
    if path.resolve() in seen:
        raise ValueError(f"params file {path} extends itself (cycle)")
    seen.add(path.resolve())
    data = _parse_yaml(path.read_text(), f"params file {path}") or {}
    if not isinstance(data, dict):
        raise ValueError(f"params file {path} must hold a mapping of parameter: value")
    base = data.pop("extends", None)
    if base is None:
        return data
    candidates = [path.parent / base, project_root() / "params" / base]
    base_path = next((p for p in candidates if p.is_file()), candidates[0])
    return {**_read_yaml(base_path, seen), **data}
