"""Where in a YAML file a setting is written, so a configuration problem can name its line.

The YAML is composed into its node tree (which keeps each node's position) and the problem's path, e.g.
``("thresholds", "creatinine_rise_warning")``, is walked down that tree. A path that stops matching (a key
that is missing, which is what "is required" problems are about) gives the line of the deepest node found.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml


def compose(text: str) -> yaml.Node | None:
    """The node tree of ``text``, or None when it is empty or not valid YAML."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None


def _child(node: yaml.Node, part: str | int) -> tuple[yaml.Node, yaml.Node] | None:
    """(node to point at, node to walk into) under ``node`` for a mapping key or a sequence index.

    For a mapping entry the line shown is the key's: a nested mapping's value starts on the next line.
    """
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return key, value
        return None
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return node.value[part], node.value[part]
    return None


def line_in(tree: yaml.Node | None, path: Iterable[str | int]) -> int | None:
    """The 1-based line of the setting at ``path`` in ``tree`` (or of its nearest written ancestor)."""
    if tree is None:
        return None
    node, line = tree, None
    for part in path:
        found = _child(node, part)
        if found is None:
            break
        shown, node = found
        line = shown.start_mark.line + 1
    return line


def line_of(file: Path, path: Iterable[str | int]) -> int | None:
    """The line of ``path`` in the YAML ``file``; None if the file cannot be read or parsed."""
    try:
        text = file.read_text(encoding="utf-8")
    except OSError:
        return None
    return line_in(compose(text), path)


def duplicate_keys(tree: yaml.Node | None, path: tuple = ()) -> list[tuple[tuple, int, int]]:
    """Keys written twice in a mapping, as (path, line, first line): YAML loaders keep the last silently."""
    found: list[tuple[tuple, int, int]] = []
    if isinstance(tree, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key, value in tree.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            if name is not None and name in first_line:
                found.append(((*path, name), key.start_mark.line + 1, first_line[name]))
            elif name is not None:
                first_line[name] = key.start_mark.line + 1
            found += duplicate_keys(value, (*path, name))
    elif isinstance(tree, yaml.SequenceNode):
        for index, item in enumerate(tree.value):
            found += duplicate_keys(item, (*path, index))
    return found
