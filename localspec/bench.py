"""`localspec bench`: every method on every prompt, interleaved in one process, against plain
decoding and what llama-cpp-python gives a user today."""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from localspec.chat import Message, encode_chat
from localspec.engine import Engine
from localspec.errors import ContextOverflowError, InvalidSettingsError, LocalspecError
from localspec.generate import generate
from localspec.settings import GenerationSettings

PEER_METHODS = ("peer-pld", "peer-ar")


@dataclass(frozen=True)
class BenchPrompt:
    id: str
    category: str
    prompt: str | None = None
    messages: tuple[Message, ...] = ()


@dataclass(frozen=True)
class RunResult:
    tokens: list[int]
    output: bytes
    seconds: float  # decoding only: the prefill is timed apart and left out
    mean_accepted: float | None


def load_prompts(path: str | Path) -> list[BenchPrompt]:
    """Read a JSONL prompt set: {"id", "category", "prompt"} or {"id", "category", "messages"}."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()  # -sig: a BOM is fine
    except OSError as exc:
        raise InvalidSettingsError(f"cannot read prompt file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise InvalidSettingsError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    prompts: list[BenchPrompt] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = parse_prompt_line(line)
        except InvalidSettingsError as exc:
            raise InvalidSettingsError(f"{path}:{number}: {exc}") from None
        if item.id in first_line:
            raise InvalidSettingsError(f"{path}:{number}: id {item.id!r} is already used on line "
                                       f"{first_line[item.id]}; give every prompt its own id")
        first_line[item.id] = number
        prompts.append(item)
    if not prompts:
        raise InvalidSettingsError(f"{path}: no prompts")
    return prompts


def parse_prompt_line(line: str) -> BenchPrompt:
    """One line of a prompt set; InvalidSettingsError says in words what is wrong with it."""
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise InvalidSettingsError(f"not valid JSON ({exc})") from None
    if not isinstance(row, dict):
        raise InvalidSettingsError('each line must be a JSON object like {"id": "a", "prompt": "..."}')
    if "id" not in row:
        raise InvalidSettingsError('"id" is missing')
    if not isinstance(row["id"], str | int | float) or isinstance(row["id"], bool):
        raise InvalidSettingsError('"id" must be a string or a number')
    category = row.get("category", "default")
    if not isinstance(category, str):
        raise InvalidSettingsError('"category" must be a string')
    if ("prompt" in row) == ("messages" in row):
        raise InvalidSettingsError('give exactly one of "prompt" or "messages"')
    if "prompt" in row:
        if not isinstance(row["prompt"], str):
            raise InvalidSettingsError('"prompt" must be a string')
        return BenchPrompt(str(row["id"]), category, prompt=row["prompt"])
    messages = row["messages"]
    if not (isinstance(messages, list) and messages
            and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), str) for m in messages)):
        raise InvalidSettingsError('"messages" must be a non-empty list of {"role", "content"} objects '
                                   'with string role and content')
    return BenchPrompt(str(row["id"]), category, messages=tuple(Message(m["role"], m["content"])
                                                                for m in messages))


def prime_drafters(engine: Engine, names: list[str]) -> int:
    """Prime the recycling matrix of every named drafter that keeps one, as `localspec tune`
    primes the saved one; the model is asked once and each drafter gets its own copy."""
    from localspec.drafters import DRAFTERS
    from localspec.drafters.persist import recycling_part
    from localspec.drafters.priming import prime_recycling

    parts = [part for part in (recycling_part(engine.drafter(n)) for n in names if n in DRAFTERS)
             if part is not None]
    if not parts:
        return 0
    primed = prime_recycling(engine.backend, parts[0])
    for part in parts[1:]:
        part.adopt(parts[0])
    return primed


class Method(Protocol):
    name: str

    def run(self, tokens: list[int], settings: GenerationSettings) -> RunResult: ...


class EngineMethod:
    """One of localspec's drafters (or plain decoding) on the shared engine."""

    def __init__(self, name: str, engine: Engine) -> None:
        self.name = name
        self.engine = engine

    def run(self, tokens: list[int], settings: GenerationSettings) -> RunResult:
        self.engine.backend.truncate(0)  # every method pays the same prefill
        result = generate(self.engine, tokens, replace(settings, drafter=self.name))
        output = b"".join(self.engine.backend.token_bytes(t) for t in result.tokens)
        return RunResult(result.tokens, output, result.stats.seconds, result.stats.mean_accepted)


class PeerMethod:
    """llama-cpp-python's high-level `Llama`: plain (`peer-ar`) or with its prompt lookup."""

    def __init__(self, name: str, model_path: Path, n_ctx: int, n_threads: int, n_gpu_layers: int,
                 num_pred_tokens: int) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        self.name = name
        draft = LlamaPromptLookupDecoding(num_pred_tokens=num_pred_tokens) if name == "peer-pld" else None
        # logits_all is required with a draft model (else it crashes past n_batch tokens)
        self.llm = Llama(str(model_path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                         n_gpu_layers=n_gpu_layers, draft_model=draft, logits_all=draft is not None,
                         verbose=False)

    def run(self, tokens: list[int], settings: GenerationSettings) -> RunResult:
        import llama_cpp

        s = settings.sampling
        self.llm.reset()
        if len(tokens) > 1:
            self.llm.eval(tokens[:-1])
        if s.seed is not None:
            self.llm.set_seed(s.seed)
        out: list[int] = []
        start = time.perf_counter()
        for token in self.llm.generate(tokens, temp=s.temperature, top_k=s.top_k if not s.greedy else 1,
                                       top_p=s.top_p, min_p=s.min_p, repeat_penalty=s.repeat_penalty,
                                       reset=True):
            if llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token):
                break
            out.append(token)
            if len(out) >= settings.max_tokens:
                break
        seconds = time.perf_counter() - start
        return RunResult(out, self.llm.detokenize(out), seconds, None)


def device_description(n_threads: int, n_gpu_layers: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    where = f", {n_gpu_layers} layers on GPU" if n_gpu_layers else ""
    return f"{cpu}, {n_threads} threads{where}"


def encode_prompt(backend, prompt: BenchPrompt) -> list[int]:
    if prompt.messages:
        return encode_chat(backend, list(prompt.messages))
    return backend.tokenize(prompt.prompt or "", add_special=True)


@contextmanager
def naming(prompt: BenchPrompt) -> Iterator[None]:
    """Put the prompt's id in front of any error it causes (the class stays the same)."""
    try:
        yield
    except LocalspecError as exc:
        raise type(exc)(f"prompt {prompt.id}: {exc}") from None


def run_bench(prompts: list[BenchPrompt], methods: list[Method], backend, settings: GenerationSettings,
              repeats: int = 1, on_run: Callable[[], None] | None = None) -> dict:
    """Run each (prompt, method) `repeats` times, interleaved; returns the per-prompt results."""
    encoded = []
    for prompt in prompts:  # every prompt is checked before any runs (a peer would fail less clearly)
        with naming(prompt):
            tokens = encode_prompt(backend, prompt)
            if not tokens:
                raise InvalidSettingsError("the prompt is empty")
            if len(tokens) >= backend.n_ctx:
                raise ContextOverflowError(f"the prompt has {len(tokens)} tokens but the context holds "
                                           f"{backend.n_ctx}; shorten it or raise --ctx")
        encoded.append(tokens)
    warm = GenerationSettings(max_tokens=8, drafter="none", sampling=settings.sampling)
    for method in methods:  # warm up caches, thread pools and drafter state
        with naming(prompts[0]):
            method.run(encoded[0], warm)
    results: dict[str, dict[str, dict]] = {p.id: {} for p in prompts}
    for repeat in range(repeats):
        for index, (prompt, tokens) in enumerate(zip(prompts, encoded, strict=False)):
            order = methods[(index + repeat) % len(methods):] + methods[:(index + repeat) % len(methods)]
            for method in order:
                with naming(prompt):
                    run = method.run(tokens, settings)
                entry = results[prompt.id].setdefault(method.name, {
                    "tokens": 0, "seconds": 0.0, "mean_accepted": run.mean_accepted,
                    "output_sha256": hashlib.sha256(run.output).hexdigest()})
                entry["tokens"] += len(run.tokens)
                entry["seconds"] += run.seconds
                if on_run:
                    on_run()
    rows = []
    for prompt in prompts:
        per_method = {}
        for name, entry in results[prompt.id].items():
            entry = dict(entry)
            entry["tokens_per_s"] = entry["tokens"] / entry["seconds"] if entry["seconds"] else 0.0
            per_method[name] = entry
        rows.append({"id": prompt.id, "category": prompt.category, "results": per_method})
    return {"prompts": rows}


def summarize(rows: list[dict], methods: list[str]) -> tuple[dict, dict]:
    """Overall and per-category speedups: total tokens over total seconds, against `none`."""
    def speed(subset: list[dict], method: str) -> float:
        tokens = sum(r["results"][method]["tokens"] for r in subset)
        seconds = sum(r["results"][method]["seconds"] for r in subset)
        return tokens / seconds if seconds else 0.0

    def accepted(subset: list[dict], method: str) -> float | None:
        values = [r["results"][method]["mean_accepted"] for r in subset]
        return float(np.mean(values)) if values and None not in values else None

    def block(subset: list[dict]) -> dict:
        base = speed(subset, "none") if "none" in methods else None
        out = {}
        for m in methods:
            s = speed(subset, m)
            out[m] = {"tokens_per_s": round(s, 2),
                      "speedup_vs_none": round(s / base, 3) if base else None,
                      "mean_accepted": None if accepted(subset, m) is None else round(accepted(subset, m), 3)}
            if base is not None:
                same = [r["results"][m]["output_sha256"] == r["results"]["none"]["output_sha256"]
                        for r in subset]
                out[m]["identical_to_none"] = round(float(np.mean(same)), 3)
        return out

    summary = block(rows)
    categories = sorted({r["category"] for r in rows})
    by_category = {}
    for c in categories:
        b = block([r for r in rows if r["category"] == c])
        by_category[c] = {m: {"speedup_vs_none": v["speedup_vs_none"], "mean_accepted": v["mean_accepted"]}
                          for m, v in b.items()}
    return summary, by_category


def markdown_table(report: dict) -> str:
    methods = list(report["summary"])
    lines = [f"# localspec bench: {report['model']}", "", f"device: {report['device']}  ",
             f"settings: `{json.dumps(report['settings'])}`", "",
             "| method | tokens/s | speedup vs none | mean accepted | identical to none |",
             "|---|---|---|---|---|"]
    for m in methods:
        s = report["summary"][m]
        accepted = "-" if s["mean_accepted"] is None else f"{s['mean_accepted']:.2f}"
        lines.append(f"| {m} | {s['tokens_per_s']:.1f} | {s['speedup_vs_none'] or 0:.2f}x | {accepted} | "
                     f"{s.get('identical_to_none', '-')} |")
    lines += ["", "| category | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for c, row in report["by_category"].items():
        cells = " | ".join(f"{row[m]['speedup_vs_none'] or 0:.2f}x" for m in methods)
        lines.append(f"| {c} | {cells} |")
    return "\n".join(lines) + "\n"


def write_chart(report: dict, path: Path) -> bool:
    """A grouped bar chart of speedup vs plain decoding per category; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    methods = [m for m in report["summary"] if m != "none"]
    groups = ["overall", *report["by_category"]]
    values = np.array([[report["summary"][m]["speedup_vs_none"] or 0 for m in methods]] +
                      [[report["by_category"][c][m]["speedup_vs_none"] or 0 for m in methods]
                       for c in report["by_category"]])
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) * len(methods) / 2), 4))
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(groups))
    for i, m in enumerate(methods):
        ax.bar(x + i * width - 0.4 + width / 2, values[:, i], width, label=m)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(x, groups, rotation=20)
    ax.set_ylabel("speedup vs plain decoding (none)")
    ax.set_title(f"localspec bench — {report['model']}")
    if methods:  # with only `none` there are no bars, and an empty legend warns
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return True


def write_report(report: dict, json_path: Path) -> bool:
    """Write the report as JSON, its table beside it as .md and its chart as .png (False: no
    matplotlib, so no chart). Each is written to a .partial file first and all are moved into place
    only once every one was written, so a failure leaves the user's files as they were."""
    targets = [json_path, json_path.with_suffix(".md"), json_path.with_suffix(".png")]
    partials = [t.with_name(t.name + ".partial") for t in targets]
    try:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        partials[0].write_text(json.dumps(report, indent=1))
        partials[1].write_text(markdown_table(report))
        charted = write_chart(report, partials[2])
        written = len(targets) if charted else 2
        for partial, target in zip(partials[:written], targets[:written], strict=True):
            partial.replace(target)
    except OSError as exc:
        raise LocalspecError(f"cannot write the results to {exc.filename or json_path}: "
                             f"{exc.strerror or exc}") from None
    finally:
        for partial in partials:
            with suppress(OSError):
                partial.unlink(missing_ok=True)
    return charted
