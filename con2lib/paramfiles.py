"""Params files: YAML mappings of parameter: value, with ``extends:`` chains and ``-p key value`` overrides.

Read by ``con2 run`` and by every point of a sweep grid (:mod:`con2lib.sweeps.grid`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from con2lib.paths import project_root, resolve

# Values a params file may expand to, aliases counted at each use: a real file has tens; an alias bomb
# (``a: &a [x, x]``, ``b: &b [*a, *a]``, ...) doubles per line and takes gigabytes once printed or joined
MAX_YAML_VALUES = 10_000


def load_params(path: str | os.PathLike[str], overrides: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """Reads a params file (following ``extends:`` chains) and applies ``-p key value`` overrides.

    ``extends: presets/cpu.yaml`` (relative to the file, or to ``params/``) loads that file first;
    the extending file's keys win. Override values are parsed as YAML (``-p epochs 5`` is an int).
    """
    params = _read_yaml(Path(path), seen=set())
    for key, value in overrides or []:
        params[key] = _parse_yaml(value, f"-p {key} {value!r}")
    return params


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice (plain YAML keeps the last one, silently) and anchors that
    expand past :data:`MAX_YAML_VALUES` values."""

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # merge keys (<<: *base) may be overridden: that is what they are for
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (line {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_expansion(root: yaml.Node) -> None:
    """Raises a YAML error when the document, aliases expanded, holds more than :data:`MAX_YAML_VALUES` values.

    An alias is the anchored node itself (the composer shares it), so the expanded size is counted once per
    distinct node (memoised): linear in the file, whatever it would expand to.
    """
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) not in sizes:
            sizes[id(node)] = 0  # a recursive alias (``&a [*a]``) counts as one value, not a loop
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            else:
                children = []
            sizes[id(node)] = min(1 + sum(size(c) for c in children), MAX_YAML_VALUES + 1)
        return sizes[id(node)]

    if size(root) > MAX_YAML_VALUES:
        raise yaml.constructor.ConstructorError(
            None, None, f"it expands to more than {MAX_YAML_VALUES} values (anchors and aliases, e.g. a YAML alias "
            "bomb); write the values out", root.start_mark)


def _parse_yaml(text: str, what: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ValueError(f"{what} is not valid YAML: {' '.join(str(err).split())}") from err


MAX_EXTENDS = 50  # files in one extends chain: a longer one is a mistake (and would exhaust Python's stack)


def _read_yaml(path: Path, seen: set[Path]) -> dict[str, Any]:
    path = path if path.exists() else resolve(path)
    if path.is_dir():
        raise ValueError(f"params file {path} is a folder; name a .yaml file in it")
    if not path.is_file():
        raise ValueError(f"params file {path} does not exist")
    if path.resolve() in seen:
        raise ValueError(f"params file {path} extends itself (cycle)")
    if len(seen) >= MAX_EXTENDS:
        raise ValueError(f"params file {path}: the extends chain is longer than {MAX_EXTENDS} files")
    seen.add(path.resolve())
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"params file {path} is not UTF-8 text ({err.reason} at byte {err.start}); "
                         "save it as UTF-8") from err
    except OSError as err:
        raise ValueError(f"params file {path} cannot be read ({err.strerror or err})") from err
    data = _parse_yaml(text, f"params file {path}") or {}
    if not isinstance(data, dict):
        raise ValueError(f"params file {path} must hold a mapping of parameter: value")
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ValueError(f"params file {path}: extends={base!r} is invalid: expected one file name, "
                         "e.g. extends: presets/cpu.yaml")
    candidates = [path.parent / base, project_root() / "params" / base]
    base_path = next((p for p in candidates if p.exists()), candidates[0])
    return {**_read_yaml(base_path, seen), **data}
