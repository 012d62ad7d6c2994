"""A tiny library for the worked example of hm: greetings, and a command line."""

import sys

__all__ = ["greet", "main"]


def greet(name: str, excited: bool = False) -> str:
    """`Hello, NAME.` (or `!` when excited); an empty name is an error."""
    name = name.strip()
    if not name:
        raise ValueError("a greeting needs a name")
    return f"Hello, {name}{'!' if excited else '.'}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    excited = "--excited" in args
    names = [a for a in args if not a.startswith("--")] or ["world"]
    for name in names:
        print(greet(name, excited))
    return 0
