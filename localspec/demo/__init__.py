"""The demo model shipped inside the package, used when no --model is given.

It is a small Llama trained by this project on the Python standard library's source
(`python -m localspec.demo.recipe` rebuilds it; MODEL_CARD.md describes it). `widen` makes the
function-preserving bench variant of any llama-architecture GGUF.
"""

from __future__ import annotations

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
DEMO_GLOB = "localspec-demo-*.gguf"


def demo_model_path() -> Path | None:
    """The packaged demo GGUF, or None when the package was built without it."""
    found = sorted(DEMO_DIR.glob(DEMO_GLOB))
    return found[-1] if found else None
