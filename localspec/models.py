"""Which model file a command uses, and opening it on a backend."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from localspec.errors import ModelFileError


@dataclass(frozen=True)
class ModelChoice:
    path: Path
    is_demo: bool

    def describe(self) -> str:
        return f"using the built-in demo model ({self.path.name})" if self.is_demo else str(self.path)


def choose_model(path: str | Path | None) -> ModelChoice:
    """The given path, else the demo model shipped inside the package."""
    if path:
        return ModelChoice(Path(path).expanduser(), False)
    from localspec.demo import demo_model_path

    demo = demo_model_path()
    if demo is None:
        raise ModelFileError("no model given and no demo model is installed; pass --model PATH")
    return ModelChoice(demo, True)
