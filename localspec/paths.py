"""Where localspec keeps files for a user: cache, config (profiles) and data (chat history).

Each can be redirected with an environment variable, which is how tests stay out of the
user's own folders.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def _dir(env: str, default: str) -> Path:
    override = os.environ.get(env)
    return Path(override) if override else Path(default)


def cache_dir() -> Path:
    """Measured cost curves, recycling matrices: safe to delete."""
    return _dir("LOCALSPEC_CACHE_DIR", platformdirs.user_cache_dir("localspec"))


def config_dir() -> Path:
    """Tuned memory profiles and settings."""
    return _dir("LOCALSPEC_CONFIG_DIR", platformdirs.user_config_dir("localspec"))


def data_dir() -> Path:
    """Conversation history."""
    return _dir("LOCALSPEC_DATA_DIR", platformdirs.user_data_dir("localspec"))
