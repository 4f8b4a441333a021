"""The demo model's corpus: the Python standard library's own .py files, plus chat examples mined
from them. Pure Python (no torch), so the manifest and the mining are testable anywhere.
"""

from __future__ import annotations

import ast
import hashlib
import json
import platform
import random
import re
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test",
                       "__pycache__"})
MAX_FILE_BYTES = 400_000
MAX_FUNCTION_CHARS = 1200


@dataclass(frozen=True)
class SourceFile:
    relpath: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def is_validation(self) -> bool:
        """About 1 file in 20 is held out, chosen by a hash of its path (stable across runs)."""
        return hashlib.sha256(self.relpath.encode()).digest()[0] % 20 == 0


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def collect_stdlib(root: Path | None = None) -> list[SourceFile]:
    """Every UTF-8 .py file under the standard library, minus tests and installed packages."""
    root = root or stdlib_root()
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if SKIP_DIRS.intersection(rel.parts[:-1]) or path.stat().st_size > MAX_FILE_BYTES:
            continue
        try:
            text = path.read_text("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        files.append(SourceFile(rel.as_posix(), text))
    return files


def manifest(files: Sequence[SourceFile]) -> dict:
    """Python version, each file's sha256 and split, and one hash over them all."""
    entries = [{"path": f.relpath, "sha256": f.sha256, "bytes": len(f.text.encode("utf-8")),
                "split": "val" if f.is_validation else "train"} for f in files]
    total = hashlib.sha256("".join(e["path"] + e["sha256"] for e in entries).encode()).hexdigest()
    return {
        "python_version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "n_files": len(entries),
        "n_train": sum(e["split"] == "train" for e in entries),
        "n_val": sum(e["split"] == "val" for e in entries),
        "total_bytes": sum(e["bytes"] for e in entries),
        "corpus_sha256": total,
        "files": entries,
    }


def write_manifest(files: Sequence[SourceFile], path: Path) -> dict:
    data = manifest(files)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return data


# -- chat examples ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FunctionInfo:
    name: str
    signature: str  # "name(a, b=1)"
    summary: str  # first sentence of the docstring
    docstring: str
    code: str  # the function's source, dedented to column 0


def _summary(doc: str) -> str:
    first = doc.strip().split("\n\n")[0]
    first = " ".join(first.split())
    sentence = re.split(r"(?<=[.!?])\s", first, maxsplit=1)[0]
    return sentence.rstrip(".")


def functions_in(source: SourceFile) -> Iterator[FunctionInfo]:
    """Top-level functions and methods with a docstring and a body of reasonable size."""
    try:
        tree = ast.parse(source.text)
    except SyntaxError:
        return
    lines = source.text.splitlines()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(node)
        if not doc or node.name.startswith("__") or node.end_lineno is None:
            continue
        if node.decorator_list:  # properties and setters make poor "write a function" tasks
            continue
        body = lines[node.lineno - 1:node.end_lineno]
        indent = len(body[0]) - len(body[0].lstrip())
        if any(line.strip() and len(line) - len(line.lstrip()) < indent for line in body):
            continue
        code = "\n".join(line[indent:] for line in body)
        summary = _summary(doc)
        if len(code) > MAX_FUNCTION_CHARS or not 10 <= len(summary) <= 200:
            continue
        args = ast.unparse(node.args)
        yield FunctionInfo(node.name, f"{node.name}({args})", summary, doc.strip(), code)


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:1].isupper() and text[1:2].islower() else text


def _rename(code: str, old: str, new: str) -> str:
    """Rename the name itself, not attributes that happen to share it (`tree.parse`)."""
    return re.sub(rf"(?<![\w.]){re.escape(old)}\b", new, code)


def _fenced(code: str) -> str:
    return f"```python\n{code}\n```"


def chat_examples(functions: Sequence[FunctionInfo], seed: int = 0) -> list[list[dict[str, str]]]:
    """Three kinds of exchange per function: write it, explain it, rename it."""
    rng = random.Random(seed)
    names = sorted({f.name for f in functions})
    examples = []
    for fn in functions:
        task = _lower_first(fn.summary)
        ask = rng.choice([f"Write a function `{fn.signature}` that {task}.",
                          f"write a function `{fn.name}` that {task}",
                          f"Write a Python function that {task}.",
                          f"write a function that {task}"])
        examples.append([{"role": "user", "content": ask},
                         {"role": "assistant", "content": _fenced(fn.code)}])
        explain = fn.docstring if len(fn.docstring) <= 600 else fn.summary + "."
        examples.append([{"role": "user", "content": f"What does `{fn.name}` do?"},
                         {"role": "assistant", "content": f"`{fn.name}`: {explain}"}])
        new = rng.choice(names)
        if new != fn.name and not re.search(rf"\b{re.escape(new)}\b", fn.code):
            examples.append([
                {"role": "user", "content": "Rewrite this function with a different name, "
                 f"`{new}`:\n{_fenced(fn.code)}"},
                {"role": "assistant", "content": _fenced(_rename(fn.code, fn.name, new))}])
    rng.shuffle(examples)
    return examples


def render_chatml(messages: Sequence[dict[str, str]]) -> str:
    """The same text the GGUF's ChatML template produces for a finished conversation."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
