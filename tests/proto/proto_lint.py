#!/usr/bin/env python3
"""Contract lint for proto/sinkscope/v1: every message, enum, enum value (except *_UNSPECIFIED), field, oneof, rpc
and service has a comment (a `//` line directly above it, or a trailing `//` on the same line); the package is
versioned; field numbers inside a message are unique. Exit 1 with one line per problem."""
import re
import sys
from pathlib import Path

DECL = re.compile(
    r'^\s*(?:(?:optional|repeated)\s+)?(?:map<[^>]+>|[\w.]+)\s+(\w+)\s*=\s*(\d+)\s*;'  # field
)
ENUM_VALUE = re.compile(r'^\s*([A-Z][A-Z0-9_]*)\s*=\s*(-?\d+)\s*;')
BLOCK = re.compile(r'^\s*(message|enum|service|oneof)\s+(\w+)\s*\{')
RPC = re.compile(r'^\s*rpc\s+(\w+)\s*\(')


def lint(path: Path) -> list[str]:
    problems = []
    lines = path.read_text().splitlines()
    if not re.search(r'^package sinkscope\.v\d+;', path.read_text(), re.M):
        problems.append(f"{path}: package is not versioned (sinkscope.vN)")
    stack = []  # (kind, name, field numbers)
    for i, line in enumerate(lines):
        prev = lines[i - 1].strip() if i else ""
        commented = prev.startswith("//") or "//" in line
        m = BLOCK.match(line)
        if m:
            kind, name = m.groups()
            if not commented and kind != "oneof":
                problems.append(f"{path}:{i+1}: {kind} {name} has no comment")
            stack.append((kind, name, set()))
            continue
        if line.strip().startswith("}"):
            if stack:
                stack.pop()
            continue
        m = RPC.match(line)
        if m and not commented:
            problems.append(f"{path}:{i+1}: rpc {m.group(1)} has no comment")
        if stack and stack[-1][0] == "enum":
            m = ENUM_VALUE.match(line)
            if m and not m.group(1).endswith("_UNSPECIFIED") and not commented:
                problems.append(f"{path}:{i+1}: enum value {m.group(1)} has no comment")
            continue
        m = DECL.match(line)
        if m and stack:
            name, num = m.group(1), int(m.group(2))
            # field numbers are per message; oneof members share the enclosing message's numbers
            owner = next((s for s in reversed(stack) if s[0] == "message"), None)
            if owner is not None:
                if num in owner[2]:
                    problems.append(f"{path}:{i+1}: field number {num} reused in {owner[1]}")
                owner[2].add(num)
            if not commented:
                problems.append(f"{path}:{i+1}: field {name} has no comment")
    return problems


def main() -> int:
    root = Path(sys.argv[1])
    files = sorted(root.glob("sinkscope/v*/*.proto"))
    if not files:
        print(f"no proto files under {root}")
        return 1
    problems = [p for f in files for p in lint(f)]
    for p in problems:
        print(p)
    print(f"{len(files)} files, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
