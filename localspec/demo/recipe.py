"""Rebuild the demo model from scratch: `python -m localspec.demo.recipe`.

Stages (each cached under --work-dir, so an interrupted run resumes where it stopped):
corpus manifest -> BPE tokenizer -> token streams -> training (checkpointed) -> GGUF export ->
greedy samples through llama.cpp. Needs torch and tokenizers (`pip install torch tokenizers`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from localspec.demo import DEMO_DIR
from localspec.demo.bpe import load_bpe, tokenizer_spec, train_bpe
from localspec.demo.corpus import (
    SourceFile,
    chat_examples,
    collect_stdlib,
    functions_in,
    manifest,
    render_chatml,
    write_manifest,
)
from localspec.gguf_export import LlamaConfig, write_llama_gguf

EOT = "<|endoftext|>"
SAMPLE_PROMPTS = (
    ("code", "def fibonacci(n):"),
    ("chat", "write a function that reverses a string"),
)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch: int = 8
    seq_len: int = 512
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 200
    eval_batches: int = 8
    checkpoint_every: int = 50
    threads: int = 2
    seed: int = 0


@dataclass(frozen=True)
class RecipeConfig:
    model: LlamaConfig = field(default_factory=lambda: LlamaConfig(
        vocab_size=8192, n_embd=256, n_layer=6, n_head=8, n_head_kv=4, n_ff=704, n_ctx=512))
    train: TrainConfig = field(default_factory=TrainConfig)
    weight_type: str = "q8_0"
    name: str = "localspec-demo-6m"
    sample_tokens: int = 80

    @property
    def gguf_name(self) -> str:
        return f"{self.name}-{self.weight_type}.gguf"


# -- data ------------------------------------------------------------------------------------


def documents(files: Sequence[SourceFile], seed: int) -> list[str]:
    """Plain source files and ChatML exchanges mined from them, shuffled, each ending in EOT."""
    functions = [fn for f in files for fn in functions_in(f)]
    docs = [f.text for f in files] + [render_chatml(ex) for ex in chat_examples(functions, seed)]
    random.Random(seed).shuffle(docs)
    return [d + EOT for d in docs]


def encode_stream(tokenizer, docs: Sequence[str]) -> np.ndarray:
    encoded = tokenizer.encode_batch(list(docs))
    return np.concatenate([np.asarray(e.ids, dtype=np.uint16) for e in encoded])


def prepare_data(work: Path, config: RecipeConfig, files: Sequence[SourceFile],
                 manifest_path: Path | None) -> dict[str, np.ndarray]:
    """Tokenizer and token streams (train, val_code, val_chat), built once and cached."""
    if manifest_path is not None:
        write_manifest(files, manifest_path)
    train_files = [f for f in files if not f.is_validation]
    val_files = [f for f in files if f.is_validation]
    seed = config.train.seed
    tok_path = work / "tokenizer.json"
    if not tok_path.exists():
        train_bpe(documents(train_files, seed), config.model.vocab_size, tok_path)
    tokenizer = load_bpe(tok_path)
    streams = {}
    val_fns = [fn for f in val_files for fn in functions_in(f)]
    sources = {
        "train": lambda: documents(train_files, seed),
        "val_code": lambda: [f.text + EOT for f in val_files],
        "val_chat": lambda: [render_chatml(ex) + EOT for ex in chat_examples(val_fns, seed)],
    }
    for split, make_docs in sources.items():
        path = work / f"{split}.npy"
        if not path.exists():
            np.save(path, encode_stream(tokenizer, make_docs()))
        streams[split] = np.load(path)
    return streams


# -- training --------------------------------------------------------------------------------


def lr_at(step: int, t: TrainConfig) -> float:
    if step < t.warmup:
        return t.lr * (step + 1) / t.warmup
    progress = min(1.0, (step - t.warmup) / max(1, t.steps - t.warmup))
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * progress))


def batch_at(stream: np.ndarray, rng: np.random.Generator, batch: int, seq_len: int):
    import torch

    starts = rng.integers(0, len(stream) - seq_len - 1, size=batch)
    rows = np.stack([stream[s:s + seq_len + 1] for s in starts]).astype(np.int64)
    return torch.from_numpy(rows)


def evaluate(model, stream: np.ndarray, t: TrainConfig) -> float:
    """Mean loss over fixed windows (same every call) of a validation stream."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(1234)
    seq = min(t.seq_len, len(stream) - 2)
    losses = []
    model.eval()
    with torch.no_grad():
        for _ in range(t.eval_batches):
            rows = batch_at(stream, rng, t.batch, seq)
            logits = model(rows[:, :-1])
            losses.append(F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten()).item())
    model.train()
    return float(np.mean(losses))


def train(work: Path, config: RecipeConfig, streams: dict[str, np.ndarray], log=print):
    """Train (resuming from work/ckpt.pt if present); return the model and a summary."""
    import torch
    import torch.nn.functional as F

    from localspec.demo.torch_llama import Llama, count_params

    t = config.train
    torch.set_num_threads(t.threads)
    torch.manual_seed(t.seed)
    model = Llama(config.model)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=t.lr,
                            betas=(0.9, 0.95))
    ckpt_path, log_path = work / "ckpt.pt", work / "train_log.jsonl"
    state = {"step": 0, "seconds": 0.0, "rng": None, "train_loss": None}
    if ckpt_path.exists():
        saved = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        state = saved["state"]
    rng = np.random.default_rng(t.seed)
    if state["rng"] is not None:
        rng.bit_generator.state = state["rng"]
    log(f"model: {count_params(model):,} parameters; {len(streams['train']):,} train tokens")

    def checkpoint() -> None:
        state["rng"] = rng.bit_generator.state
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state},
                   work / "ckpt.tmp")
        (work / "ckpt.tmp").replace(ckpt_path)

    smooth = state["train_loss"]
    while state["step"] < t.steps:
        step, started = state["step"], time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, t)
        rows = batch_at(streams["train"], rng, t.batch, t.seq_len)
        loss = F.cross_entropy(model(rows[:, :-1]).flatten(0, 1), rows[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        state["seconds"] += time.perf_counter() - started
        smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
        state["step"] = step = step + 1
        state["train_loss"] = smooth
        record = {"step": step, "loss": round(loss.item(), 4), "seconds": round(state["seconds"])}
        if step % t.eval_every == 0 or step == t.steps:
            record |= {k: round(evaluate(model, streams[k], t), 4)
                       for k in ("val_code", "val_chat")}
            log(json.dumps(record | {"smooth": round(smooth, 4)}))
        with log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if step % t.checkpoint_every == 0 or step == t.steps:
            checkpoint()
    summary = {
        "steps": t.steps,
        "tokens_seen": t.steps * t.batch * t.seq_len,
        "train_seconds": round(state["seconds"]),
        "train_loss_smoothed": round(smooth or float("nan"), 4),
        "train_loss_eval": round(evaluate(model, streams["train"], t), 4),
        "val_code_loss": round(evaluate(model, streams["val_code"], t), 4),
        "val_chat_loss": round(evaluate(model, streams["val_chat"], t), 4),
        "n_params": count_params(model),
    }
    return model, summary


# -- export and samples ----------------------------------------------------------------------


def export(model, config: RecipeConfig, tokenizer, path: Path) -> Path:
    return write_llama_gguf(path, config.model, model.gguf_weights(), tokenizer_spec(tokenizer),
                            weight_type=config.weight_type, name=config.name)


def greedy_samples(path: Path, max_tokens: int = 80) -> dict[str, str]:
    """Greedy continuations from llama.cpp for the model card's two prompts."""
    import jinja2

    from localspec.backends.llamacpp import LlamaCppBackend
    from localspec.gguf_export import CHATML_TEMPLATE
    from localspec.settings import BackendSettings
    from localspec.tree import DraftTree

    backend = LlamaCppBackend(path, BackendSettings(n_ctx=512))
    template = jinja2.Template(CHATML_TEMPLATE)
    out = {}
    for kind, prompt in SAMPLE_PROMPTS:
        if kind == "chat":
            prompt = template.render(messages=[{"role": "user", "content": prompt}],
                                     add_generation_prompt=True)
        tokens = backend.tokenize(prompt, add_special=True, parse_special=True)  # BOS = EOT
        backend.truncate(0)
        backend.prefill(tokens[:-1])
        root, text = tokens[-1], b""
        for _ in range(max_tokens):
            logits = backend.verify(root, DraftTree.empty())
            nxt = int(logits[0].argmax())
            backend.commit(root, DraftTree.empty(), [])
            if backend.is_eog(nxt):
                break
            text += backend.token_bytes(nxt)
            root = nxt
        out[prompt] = text.decode("utf-8", "replace")
    return out


def run(config: RecipeConfig, work: Path, out_path: Path, files: Sequence[SourceFile] | None = None,
        manifest_path: Path | None = None, log=print) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    files = collect_stdlib() if files is None else files
    streams = prepare_data(work, config, files, manifest_path)
    tokenizer = load_bpe(work / "tokenizer.json")
    # a small corpus may not yield as many merges as asked for
    config = replace(config, model=replace(config.model, vocab_size=tokenizer.get_vocab_size()))
    model, summary = train(work, config, streams, log)
    export(model, config, tokenizer, out_path)
    summary |= {"config": asdict(config), "gguf": out_path.name,
                "gguf_bytes": out_path.stat().st_size,
                "tokens": {k: int(len(v)) for k, v in streams.items()}}
    summary["samples"] = greedy_samples(out_path, config.sample_tokens)
    (work / "report.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m localspec.demo.recipe", description=__doc__)
    parser.add_argument("--work-dir", type=Path, default=Path("build/demo"))
    parser.add_argument("--out", type=Path, default=None, help="GGUF to write (default: shipped)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--weight-type", choices=("f32", "f16", "q8_0"), default=None)
    args = parser.parse_args(argv)
    # Spinning OpenMP workers collapse throughput when another process holds a core.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    config = RecipeConfig()
    if args.steps is not None:
        config = replace(config, train=replace(config.train, steps=args.steps))
    if args.weight_type is not None:
        config = replace(config, weight_type=args.weight_type)
    out = args.out or DEMO_DIR / config.gguf_name
    manifest_path = DEMO_DIR / "corpus_manifest.json"
    files = collect_stdlib()
    if manifest_path.exists():
        before = json.loads(manifest_path.read_text())
        now = manifest(files)
        if now["corpus_sha256"] != before["corpus_sha256"]:
            print(f"note: this standard library (Python {now['python_version']}) differs from the "
                  f"recorded corpus (Python {before['python_version']}); the manifest is rewritten")
    summary = run(config, args.work_dir, out, files=files, manifest_path=manifest_path)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=1))


if __name__ == "__main__":
    main()
