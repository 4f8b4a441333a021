"""How much memory a configuration needs: computed from the GGUF where it can be, measured where not.

Computed: weights per layer (tensor sizes) and where they live, KV bytes per token (per layer
n_head_kv x head_dim for K and for V, in the cache type's ggml block size), the logits buffer
(rows = tree nodes + root, or the sequence count llama.cpp reserves, x vocab x 4: logits are only
requested for tree rows, never for the whole batch) and drafter state. Measured: the compute
scratch (activations and CPU work buffers, which grow with n_batch) and the process's own
baseline, by loading the model in a fresh process with given settings, running a full-batch
prefill and maximal tree verifies, and reading its peak RSS. `calibrate` fits the scratch
from two such runs and caches it per model. The torch backend (`estimate_torch`) holds every
weight dequantised in its dtype and a cache sized to the context; its terms are computed.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import gguf
from gguf.constants import GGML_QUANT_SIZES

from localspec.drafters.recycling import CONTEXT_SLOTS, OBSERVE_CHUNK_ROWS, RECYCLING_K
from localspec.errors import ModelFileError
from localspec.paths import cache_dir, replace_file
from localspec.settings import BackendSettings

MiB = 1 << 20
CTX_PAD = 256  # llama.cpp rounds the context up to a multiple of 256 cells
AUTOMATON_BYTES_PER_TOKEN = 512  # suffix automaton: ~2 states a token, a dict and three list slots each
TORCH_RUNTIME_BYTES = 288 * MiB  # a CLI process with torch loaded (231 MiB after importing it, CPU build)
DRAFTER_STATE = {"none": (), "lookup": (), "retrieval": ("automaton",), "recycling": ("recycling",),
                 "auto": ("automaton", "recycling")}


def type_bytes(type_name: str, n_elements: int) -> int:
    """Bytes of a row of n_elements in a ggml type (quantised types store whole blocks)."""
    try:
        block, size = GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name.upper()]]
    except KeyError:
        raise ValueError(f"unknown ggml type {type_name!r}") from None
    return math.ceil(n_elements / block) * size


@dataclass(frozen=True)
class ModelMemory:
    """The memory-relevant shape of a model, read from GGUF metadata and tensor sizes."""

    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_ff: int
    n_vocab: int
    context_length: int
    layer_bytes: tuple[int, ...]  # weights of block i
    embd_bytes: int  # token embeddings: llama.cpp keeps them on the CPU
    output_bytes: int  # output norm and matrix: offloaded only with every layer
    n_params: int = 0  # elements of every tensor: what the torch backend dequantises
    largest_tensor: int = 0  # elements of the largest one

    @property
    def weights_bytes(self) -> int:
        return sum(self.layer_bytes) + self.embd_bytes + self.output_bytes

    def kv_bytes_per_token_layer(self, kv_type: str) -> int:
        return (type_bytes(kv_type, self.n_head_kv * self.head_dim_k)
                + type_bytes(kv_type, self.n_head_kv * self.head_dim_v))

    def kv_bytes_per_token(self, kv_type: str) -> int:
        return self.n_layer * self.kv_bytes_per_token_layer(kv_type)

    @classmethod
    def from_gguf(cls, path: str | Path) -> ModelMemory:
        path = Path(path)
        try:
            reader = gguf.GGUFReader(str(path))
        except Exception as exc:  # gguf raises several types on a bad file
            raise ModelFileError(f"cannot read GGUF metadata of {path}: {exc}") from None

        def value(key: str, default=None):
            field = reader.get_field(key)
            if field is None:
                return default
            v = field.contents()
            return max(v) if isinstance(v, list) and v else v

        arch = str(value("general.architecture", "llama"))
        n_layer = int(value(f"{arch}.block_count", 0))
        n_embd = int(value(f"{arch}.embedding_length", 0))
        n_head = int(value(f"{arch}.attention.head_count", 1)) or 1
        n_head_kv = int(value(f"{arch}.attention.head_count_kv", n_head))
        layer_bytes = [0] * n_layer
        embd = output = 0
        sizes = [int(t.n_elements) for t in reader.tensors]
        for tensor in reader.tensors:
            match = re.match(r"blk\.(\d+)\.", tensor.name)
            if match and int(match.group(1)) < n_layer:
                layer_bytes[int(match.group(1))] += int(tensor.n_bytes)
            elif tensor.name.startswith("token_embd"):
                embd += int(tensor.n_bytes)
            else:
                output += int(tensor.n_bytes)
        tokens = reader.get_field("tokenizer.ggml.tokens")
        n_vocab = len(tokens.data) if tokens is not None else int(value(f"{arch}.vocab_size", 0))
        return cls(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
                   head_dim_k=int(value(f"{arch}.attention.key_length", n_embd // n_head)),
                   head_dim_v=int(value(f"{arch}.attention.value_length", n_embd // n_head)),
                   n_ff=int(value(f"{arch}.feed_forward_length", 4 * n_embd)),
                   n_vocab=n_vocab, context_length=int(value(f"{arch}.context_length", 0)),
                   layer_bytes=tuple(layer_bytes), embd_bytes=embd, output_bytes=output,
                   n_params=sum(sizes), largest_tensor=max(sizes, default=0))


@dataclass(frozen=True)
class ScratchModel:
    """The measured terms: the process baseline and the compute scratch's fit in n_batch."""

    runtime_bytes: int  # interpreter, numpy and the llama.cpp libraries before any model
    fixed_bytes: int
    per_batch_token: float  # compute scratch per token of n_batch
    measured: bool = False

    @classmethod
    def analytic(cls, model: ModelMemory) -> ScratchModel:
        """A guess from the graph's largest activations, used until a measurement exists."""
        per_token = 4.0 * (3 * model.n_ff + 8 * model.n_embd)
        return cls(runtime_bytes=64 * MiB, fixed_bytes=16 * MiB, per_batch_token=per_token)

    def compute_bytes(self, model: ModelMemory, n_batch: int, n_ctx: int, flash_attn: bool | None) -> int:
        attention = n_ctx * n_batch * 2  # the f16 KQ mask
        if flash_attn is False:  # without flash attention the f32 scores are materialised too
            # (softmax works in place); pages are touched only as the context fills, so this
            # is the peak of a full context
            attention += n_ctx * n_batch * model.n_head * 4
        return int(self.fixed_bytes + self.per_batch_token * n_batch + attention)


@dataclass(frozen=True)
class MemoryBreakdown:
    runtime: int
    weights_host: int
    weights_device: int
    kv_host: int
    kv_device: int
    logits: int
    compute_host: int
    compute_device: int
    drafter: int

    @property
    def host(self) -> int:
        return (self.runtime + self.weights_host + self.kv_host + self.logits + self.compute_host
                + self.drafter)

    @property
    def device(self) -> int:
        return self.weights_device + self.kv_device + self.compute_device

    @property
    def total(self) -> int:
        return self.host + self.device

    def rows(self) -> list[tuple[str, int, int]]:
        """(term, host bytes, device bytes) for a table."""
        return [("runtime", self.runtime, 0), ("weights", self.weights_host, self.weights_device),
                ("kv cache", self.kv_host, self.kv_device), ("logits", self.logits, 0),
                ("compute", self.compute_host, self.compute_device), ("drafter", self.drafter, 0)]

    def as_dict(self) -> dict:
        return asdict(self) | {"host": self.host, "device": self.device, "total": self.total}


def logits_rows(settings: BackendSettings, tree_nodes: int) -> int:
    """llama.cpp reserves one output row per sequence (the paths and the one that pads lone
    tokens) and grows to the largest batch of outputs."""
    return max(settings.max_tree_paths + 1, tree_nodes + 1)


def drafter_bytes(drafter: str, model: ModelMemory, n_ctx: int) -> int:
    parts = DRAFTER_STATE.get(drafter, ("automaton", "recycling"))
    total = (n_ctx + 1) * 4  # the engine's token history
    if "automaton" in parts:
        total += n_ctx * AUTOMATON_BYTES_PER_TOKEN
    if "recycling" in parts:
        # ids (int32) and logits (float16) per token and per context slot (+ its int64 key),
        # and the top-k work on a chunk of rows
        total += ((model.n_vocab * RECYCLING_K * 6) + CONTEXT_SLOTS * (8 + RECYCLING_K * 6)
                  + OBSERVE_CHUNK_ROWS * model.n_vocab * 8)
    return total


def offloaded_layers(model: ModelMemory, n_gpu_layers: int) -> int:
    """Blocks on the GPU; llama.cpp offloads the last ones, and the output layer past n_layer."""
    if n_gpu_layers < 0:
        return model.n_layer + 1
    return min(n_gpu_layers, model.n_layer + 1)


def estimate(model: ModelMemory, settings: BackendSettings, tree_nodes: int, drafter: str,
             scratch: ScratchModel) -> MemoryBreakdown:
    """Predicted peak memory of a process running `drafter` with these settings."""
    n_ctx = -(-(settings.n_ctx or model.context_length) // CTX_PAD) * CTX_PAD
    n_batch = min(settings.n_batch, n_ctx)
    n_gpu = offloaded_layers(model, settings.n_gpu_layers)
    n_gpu_blocks = min(n_gpu, model.n_layer)
    weights_device = sum(model.layer_bytes[model.n_layer - n_gpu_blocks:]) if n_gpu_blocks else 0
    if n_gpu > model.n_layer:
        weights_device += model.output_bytes
    kv_layer = n_ctx * model.kv_bytes_per_token_layer(settings.kv_type)
    compute = scratch.compute_bytes(model, n_batch, n_ctx, settings.resolved_flash_attn)
    # with any layer offloaded the big activations live on the GPU; the host keeps a little
    compute_host = compute if n_gpu == 0 else int(scratch.fixed_bytes + 16 * n_batch * model.n_embd)
    return MemoryBreakdown(
        runtime=scratch.runtime_bytes,
        weights_host=model.weights_bytes - weights_device,
        weights_device=weights_device,
        kv_host=kv_layer * (model.n_layer - n_gpu_blocks),
        kv_device=kv_layer * n_gpu_blocks,
        logits=logits_rows(settings, tree_nodes) * model.n_vocab * 4,
        compute_host=compute_host,
        compute_device=compute if n_gpu else 0,
        drafter=drafter_bytes(drafter, model, n_ctx),
    )


@dataclass(frozen=True)
class TorchMemory:
    """What the torch backend keeps where: weights and cache in `dtype_bytes` on the GPU or not."""

    dtype_bytes: int
    on_gpu: bool
    file_bytes: int  # the GGUF, mapped while it is dequantised
    max_tree_nodes: int = 128  # cache slots past the context (TorchSettings)
    scratch_slots: int = 192
    prefill_chunk: int = 256  # tokens a prefill forward takes (TorchBackend.prefill)
    runtime_bytes: int = TORCH_RUNTIME_BYTES


def estimate_torch(model: ModelMemory, settings: BackendSettings, tree_nodes: int, drafter: str,
                   torch_memory: TorchMemory) -> MemoryBreakdown:
    """Predicted peak memory of the torch backend: the dequantised weights, a cache of n_ctx plus
    tree and scratch slots, and the larger of loading's extra (the mapped file and one tensor in
    float32) and a prefill chunk's work (activations, float64 attention scores on the CPU)."""
    t = torch_memory
    n_ctx = settings.n_ctx or model.context_length
    slots = n_ctx + t.max_tree_nodes + 1 + t.scratch_slots
    weights = model.n_params * t.dtype_bytes
    kv = model.n_layer * model.n_head_kv * (model.head_dim_k + model.head_dim_v) * t.dtype_bytes * slots
    rows = t.prefill_chunk
    work = rows * (3 * model.n_ff + 8 * model.n_embd) * 4
    if not t.on_gpu:  # exact attention: float64 scores and keys/values widened per head
        work += model.n_head * slots * (2 * rows + 2 * model.head_dim_k) * 8
    loading = t.file_bytes + 2 * model.largest_tensor * 4
    logits = (tree_nodes + 1) * model.n_vocab * 4
    gpu, cpu = (1, 0) if t.on_gpu else (0, 1)
    return MemoryBreakdown(
        runtime=t.runtime_bytes, weights_host=cpu * weights, weights_device=gpu * weights,
        kv_host=cpu * kv, kv_device=gpu * kv, logits=2 * logits,  # on the device and copied out
        compute_host=loading if t.on_gpu else max(loading, work), compute_device=gpu * work,
        drafter=drafter_bytes(drafter, model, n_ctx))


# -- measuring --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Measurement:
    settings: BackendSettings
    tree_nodes: int
    drafter: str
    baseline_rss: int  # after imports, before loading
    peak_rss: int
    n_ctx: int


def measure(model_path: str | Path, settings: BackendSettings, tree_nodes: int, drafter: str = "none",
            fill_batches: int = 2, timeout: float = 600.0) -> Measurement:
    """Peak RSS of a fresh process that loads the model with `settings`, prefills `fill_batches`
    full batches, verifies maximal trees and (with a drafter) generates a little."""
    request = {"model": str(model_path), "settings": asdict(settings), "tree_nodes": tree_nodes,
               "drafter": drafter, "fill_batches": fill_batches}
    proc = subprocess.run([sys.executable, "-m", "localspec.memory", json.dumps(request)],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelFileError(f"memory measurement failed: {tail}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return Measurement(settings, tree_nodes, drafter, data["baseline_rss"], data["peak_rss"], data["n_ctx"])


def fit_scratch(model: ModelMemory, measurements: list[Measurement]) -> ScratchModel:
    """Scratch = what the peak holds beyond every computed term; a line through it in n_batch."""
    points = []
    for m in measurements:
        bare = ScratchModel(runtime_bytes=m.baseline_rss, fixed_bytes=0, per_batch_token=0.0)
        known = estimate(model, m.settings, m.tree_nodes, m.drafter, bare)  # includes the mask
        points.append((min(m.settings.n_batch, m.n_ctx), m.peak_rss - known.host))
    baseline = max(m.baseline_rss for m in measurements)
    if len(points) == 1:
        (n, s), = points
        return ScratchModel(baseline, 0, max(s, 0) / n, measured=True)
    points.sort()
    (n0, s0), (n1, s1) = points[0], points[-1]
    slope = max((s1 - s0) / (n1 - n0), 0.0) if n1 != n0 else max(s1, 0) / n1
    fixed = max(int(s0 - slope * n0), 0)
    return ScratchModel(baseline, fixed, slope, measured=True)


def _cache_key(model_path: str | Path, n_threads: int, flash_attn: bool | None) -> str:
    from localspec.budget import model_fingerprint

    return f"{model_fingerprint(model_path)}|threads={n_threads}|fa={flash_attn}"


def cached_scratch(model_path: str | Path, n_threads: int, flash_attn: bool | None = None
                   ) -> ScratchModel | None:
    store = cache_dir() / "memory.json"
    try:
        data = json.loads(store.read_text())
        return ScratchModel(**data[_cache_key(model_path, n_threads, flash_attn)])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store_scratch(model_path: str | Path, n_threads: int, flash_attn: bool | None,
                  scratch: ScratchModel) -> None:
    store = cache_dir() / "memory.json"
    try:
        data = json.loads(store.read_text())
    except (OSError, ValueError):
        data = {}
    data[_cache_key(model_path, n_threads, flash_attn)] = asdict(scratch)
    replace_file(store, json.dumps(data, indent=1))


def calibration_settings(model: ModelMemory, n_threads: int, batches: tuple[int, ...] = (32, 256)
                         ) -> list[BackendSettings]:
    n_ctx = min(model.context_length or 4096, 4096)
    return [BackendSettings(n_ctx=n_ctx, n_batch=min(b, n_ctx // 4), n_threads=n_threads, max_tree_paths=8)
            for b in batches]


def calibrate(model_path: str | Path, n_threads: int, refresh: bool = False, on_step=None) -> ScratchModel:
    """The measured scratch for this model and thread count, measured once and cached."""
    if not refresh:
        cached = cached_scratch(model_path, n_threads)
        if cached is not None:
            return cached
    model = ModelMemory.from_gguf(model_path)
    runs = []
    for settings in calibration_settings(model, n_threads):
        runs.append(measure(model_path, settings, tree_nodes=min(16, settings.n_batch - 1)))
        if on_step is not None:
            on_step()
    scratch = fit_scratch(model, runs)
    store_scratch(model_path, n_threads, None, scratch)
    return scratch


def peak_rss() -> int:
    """This process's peak resident set size in bytes."""
    import resource

    status = Path("/proc/self/status")
    if status.exists():  # Linux: ru_maxrss survives fork + exec, so a child would report its parent's
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def _run_measurement(request: dict) -> dict:
    """The child side of `measure`: everything it imports is loaded before the baseline."""
    import numpy as np
    import psutil

    from localspec.backends.llamacpp import LlamaCppBackend
    from localspec.engine import Engine
    from localspec.generate import generate
    from localspec.settings import GenerationSettings
    from localspec.tree import DraftTree

    settings = BackendSettings(**request["settings"])
    nodes, drafter = request["tree_nodes"], request["drafter"]
    baseline = psutil.Process().memory_info().rss
    backend = LlamaCppBackend(request["model"], settings)
    rng = np.random.default_rng(0)
    fill = min(request["fill_batches"] * backend.n_batch, backend.n_ctx - nodes - 40)
    backend.prefill(rng.integers(0, backend.n_vocab, fill).tolist())
    paths = min(backend.max_tree_paths, max(nodes, 1))
    # a bush: `paths` chains under the root, so the verify uses every sequence and output row
    parents = np.array([-1 if i < paths else i - paths for i in range(nodes)], np.int32)
    for _ in range(3):
        tree = DraftTree(rng.integers(0, backend.n_vocab, nodes).astype(np.int32), parents)
        root = int(rng.integers(0, backend.n_vocab))
        backend.verify(root, tree)
        backend.commit(root, tree, [])
    if drafter != "none":
        prompt = backend.tokens + [int(rng.integers(0, backend.n_vocab))]
        generate(Engine(backend), prompt, GenerationSettings(max_tokens=16, drafter=drafter,
                                                             max_draft_tokens=max(nodes, 1)))
    return {"baseline_rss": baseline, "peak_rss": peak_rss(), "n_ctx": backend.n_ctx}


if __name__ == "__main__":
    print(json.dumps(_run_measurement(json.loads(sys.argv[1]))))
