"""Write benchmarks/prompts.jsonl: the bench prompt set, drawn from the demo corpus's held-out files.

Six categories that suit a small code model: code completion, rewriting code (the answer copies
its input), explaining code, writing code from a description, multi-turn edits, and continuing
code after a long context. Deterministic: the same Python version gives the same file.

    python benchmarks/make_prompts.py [--out benchmarks/prompts.jsonl]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from localspec.demo.corpus import FunctionInfo, collect_stdlib, functions_in

PER_CATEGORY = 11
LONG_CONTEXT_CHARS = 3500


def fenced(code: str) -> str:
    return f"```python\n{code}\n```"


def held_out_functions() -> tuple[list[FunctionInfo], list]:
    files = [f for f in collect_stdlib() if f.is_validation]
    functions = [fn for f in files for fn in functions_in(f) if 150 <= len(fn.code) <= 900]
    return functions, files


def build(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    functions, files = held_out_functions()
    rng.shuffle(functions)
    pick = iter(functions)
    rows: list[dict] = []

    def add(category: str, **fields) -> None:
        rows.append({"id": f"{category}-{sum(r['category'] == category for r in rows):02d}",
                     "category": category, **fields})

    for _ in range(PER_CATEGORY):
        fn = next(pick)
        head = fn.code.split("\n")[0] + "\n"  # the signature; the model writes the body
        add("completion", prompt=head)
    for _ in range(PER_CATEGORY):
        fn = next(pick)
        new = f"{fn.name}_v2"
        ask = f"Rewrite this function with a different name, `{new}`:\n{fenced(fn.code)}"
        add("rewrite", messages=[{"role": "user", "content": ask}])
    for _ in range(PER_CATEGORY):
        fn = next(pick)
        ask = f"{fenced(fn.code)}\nWhat does `{fn.name}` do?"
        add("explain", messages=[{"role": "user", "content": ask}])
    for _ in range(PER_CATEGORY):
        fn = next(pick)
        task = fn.summary[:1].lower() + fn.summary[1:]
        ask = f"Write a function `{fn.signature}` that {task}."
        add("write", messages=[{"role": "user", "content": ask}])
    for _ in range(PER_CATEGORY):
        fn = next(pick)
        add("multi_turn", messages=[
            {"role": "user", "content": f"write a function `{fn.name}` that {fn.summary.lower()}"},
            {"role": "assistant", "content": fenced(fn.code)},
            {"role": "user", "content": f"Rewrite this function with a different name, `new_{fn.name}`:\n"
                                        f"{fenced(fn.code)}"}])
    long_files = [f for f in files if len(f.text) > 3 * LONG_CONTEXT_CHARS]
    for f in rng.sample(long_files, min(PER_CATEGORY, len(long_files))):
        start = rng.randrange(0, len(f.text) - 2 * LONG_CONTEXT_CHARS)
        start = f.text.index("\n", start) + 1
        context = f.text[start:start + LONG_CONTEXT_CHARS]
        # ask the model to continue from a line it has already seen earlier in the context
        lines = [ln for ln in context.splitlines() if len(ln.strip()) > 20]
        again = lines[len(lines) // 3] if lines else ""
        add("long_context", prompt=f"# {f.relpath}\n{context}\n\n# again:\n{again}\n")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("prompts.jsonl"))
    args = parser.parse_args()
    rows = build()
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    counts = {c: sum(r["category"] == c for r in rows) for c in dict.fromkeys(r["category"] for r in rows)}
    print(f"wrote {len(rows)} prompts to {args.out}: {counts}")


if __name__ == "__main__":
    main()
