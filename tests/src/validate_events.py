"""Validates `hm run --format json` output against docs/events.schema.json.

Usage: /usr/bin/python3 -I validate_events.py SCHEMA < EVENTS

Every line of EVENTS must be one event that the schema (JSON Schema draft 2020-12) accepts.
Prints every problem as `line N: ...` and exits 1 when there is any; exits 0 and prints how many
events it checked otherwise. Exits 2 when the schema itself is broken, 3 when the jsonschema
module is missing (Debian: `apt-get install python3-jsonschema`).

The Rust side (tests/src/schema.rs) runs this text with `python3 -c`.
"""

import json
import sys


def pointer(path):
    return "/" + "/".join(str(part) for part in path)


def leaf_errors(error):
    """What is wrong, as precisely as the schema says it. A failed `oneOf` over the kinds is
    reduced to the errors of the branch whose `kind` matched, rather than one "does not match"
    per kind."""
    if error.validator == "oneOf" and error.context:
        branches = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        matching = [
            subs
            for subs in branches.values()
            if not any(list(sub.relative_path) == ["kind"] for sub in subs)
        ]
        if len(matching) == 1:
            return [leaf for sub in matching[0] for leaf in leaf_errors(sub)]
    return [error]


def main():
    try:
        import jsonschema
    except ImportError:
        print(
            "the Python module jsonschema is missing: apt-get install python3-jsonschema",
            file=sys.stderr,
        )
        return 3
    if len(sys.argv) != 2:
        print("usage: validate_events.py SCHEMA < EVENTS", file=sys.stderr)
        return 2
    schema_path = sys.argv[1]
    try:
        with open(schema_path, encoding="utf-8") as f:
            schema = json.load(f)
        jsonschema.Draft202012Validator.check_schema(schema)
    except (OSError, ValueError, jsonschema.exceptions.SchemaError) as e:
        print(f"{schema_path}: not a usable draft 2020-12 schema: {e}", file=sys.stderr)
        return 2
    validator = jsonschema.Draft202012Validator(schema)

    text = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    problems = []
    for number, line in enumerate(lines, 1):
        shown = line if len(line) <= 400 else line[:400] + "..."
        try:
            event = json.loads(line)
        except ValueError as e:
            problems.append(f"line {number}: not JSON ({e}): {shown}")
            continue
        errors = [
            leaf
            for error in sorted(validator.iter_errors(event), key=lambda e: [str(p) for p in e.path])
            for leaf in leaf_errors(error)
        ]
        # A line that fails its kind also has every field "unevaluated" at the top: noise.
        if any(e.validator != "unevaluatedProperties" for e in errors):
            errors = [e for e in errors if e.validator != "unevaluatedProperties"]
        for error in errors:
            kind = event.get("kind") if isinstance(event, dict) else None
            problems.append(
                f"line {number} ({kind}): at {pointer(error.absolute_path)}: {error.message}"
            )
        if errors:
            problems.append(f"  the line: {shown}")
    if not lines:
        problems.append("no events at all")
    if problems:
        print("\n".join(problems))
        return 1
    print(f"{len(lines)} event(s) valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
