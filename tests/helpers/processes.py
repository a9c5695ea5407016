"""Processes as /proc shows them: what a test checks was left running."""
from __future__ import annotations

from pathlib import Path


def children(pid: int) -> list[int]:
    """The processes started by any thread of ``pid``; threads (or the process) gone meanwhile skipped."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return []
    found = []
    for task in tasks:
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children of all its threads), gone ones skipped."""
    found, todo = [], [pid]
    while todo:
        below = children(todo.pop())
        found += below
        todo += below
    return found


def alive(pid: int) -> bool:
    """Running (a zombie counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
