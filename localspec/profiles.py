"""Memory profiles: named sets of settings. Presets ship in the `profiles` package; `localspec tune`
writes tuned ones to the user's config folder. Precedence, lowest first: preset, tuned profile of
the same name, explicit flags.

A profile is TOML:

    [profile]
    description = "..."
    [settings]            # any of the keys in SETTING_KEYS
    budget = "6GiB"
    ctx = 8192
    [measured]            # tuned profiles only: what tune saw
    speedup = 1.7
"""

from __future__ import annotations

import contextlib
import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import tomli_w

from localspec.errors import LocalspecError
from localspec.paths import config_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

# profile key -> ModelOptions / BackendSettings field
SETTING_KEYS = {"ctx": "n_ctx", "batch": "n_batch", "threads": "n_threads", "gpu_layers": "n_gpu_layers",
                "kv_type": "kv_type", "flash_attn": "flash_attn", "budget": "budget",
                "tree_paths": "max_tree_paths", "tree_nodes": "tree_nodes", "drafter": "drafter"}
SETTING_TYPES = {"n_ctx": int, "n_batch": int, "n_threads": int, "n_gpu_layers": int, "kv_type": str,
                 "flash_attn": bool, "budget": str, "max_tree_paths": int, "tree_nodes": int, "drafter": str}


# a plain file name in the profile folder: no separators, not hidden, short enough for any file system
PROFILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")


class ProfileError(LocalspecError):
    """A profile is unknown or malformed."""


class ProfileNameError(ProfileError, ValueError):
    """A profile name that is not a plain file name (it could escape the profile folder)."""


@dataclass(frozen=True)
class Profile:
    name: str
    sources: tuple[str, ...]  # where its values came from, lowest precedence first
    settings: dict = field(default_factory=dict)  # field name -> value
    description: str = ""
    measured: dict = field(default_factory=dict)


def user_profile_dir() -> Path:
    return config_dir() / "profiles"


def check_profile_name(name: str) -> str:
    """`name` if it is a plain profile name (letters, digits, `_`, `-`, `.` after the first)."""
    if not PROFILE_NAME.fullmatch(name):
        raise ProfileNameError(f"bad profile name {name!r}: use letters, digits, '_', '-' and '.' "
                               "(not first), at most 100 characters, no folders")
    return name


def user_profile_path(name: str) -> Path:
    return user_profile_dir() / f"{check_profile_name(name)}.toml"


def _preset_text(name: str) -> str | None:
    item = resources.files("profiles") / f"{name}.toml"
    return item.read_text(encoding="utf-8") if item.is_file() else None


def preset_names() -> list[str]:
    return sorted(p.name.removesuffix(".toml") for p in resources.files("profiles").iterdir()
                  if p.name.endswith(".toml"))


def available_profiles() -> dict[str, str]:
    """name -> "preset", "tuned" or "tuned over preset"."""
    names = dict.fromkeys(preset_names(), "preset")
    if user_profile_dir().is_dir():
        for path in sorted(user_profile_dir().glob("*.toml")):
            name = path.stem
            names[name] = "tuned over preset" if name in names else "tuned"
    return names


def parse_profile(text: str, origin: str) -> tuple[dict, str, dict]:
    """(settings by field name, description, measured) of a profile's TOML text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"profile {origin} is not valid TOML: {exc}") from None
    raw = data.get("settings", {})
    if not isinstance(raw, dict):
        raise ProfileError(f"profile {origin}: [settings] must be a table")
    settings = {}
    for key, value in raw.items():
        if key not in SETTING_KEYS:
            raise ProfileError(f"profile {origin}: unknown setting {key!r} "
                               f"(known: {', '.join(SETTING_KEYS)})")
        name = SETTING_KEYS[key]
        kind = SETTING_TYPES[name]
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            raise ProfileError(f"profile {origin}: {key} must be a {kind.__name__}, got {value!r}")
        settings[name] = value
    meta, measured = data.get("profile", {}), data.get("measured", {})
    if not isinstance(meta, dict) or not isinstance(measured, dict):
        raise ProfileError(f"profile {origin}: [profile] and [measured] must be tables")
    return settings, str(meta.get("description", "")), measured


def _read_profile_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(f"profile {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                           "fix or delete it") from None
    except OSError as exc:
        raise ProfileError(f"cannot read profile {path}: {exc.strerror or exc}") from None


def load_profile(name: str) -> Profile:
    """The preset called `name` with the user's tuned profile of that name laid over it."""
    layers = []
    tuned = user_profile_path(name)  # checks the name first
    preset = _preset_text(name)
    if preset is not None:
        layers.append(("preset", *parse_profile(preset, f"preset {name!r}")))
    if tuned.is_file():
        layers.append(("tuned", *parse_profile(_read_profile_file(tuned), str(tuned))))
    if not layers:
        known = ", ".join(available_profiles()) or "none"
        raise ProfileError(f"unknown profile {name!r} (available: {known})")
    settings: dict = {}
    measured: dict = {}
    description = ""
    for _, values, desc, meas in layers:
        settings.update(values)
        measured.update(meas)
        description = desc or description
    return Profile(name, tuple(source for source, *_ in layers), settings, description, measured)


def write_profile(name: str, settings: dict, description: str, measured: dict) -> Path:
    """Write a tuned profile (field names in `settings`) to the user's config folder."""
    keys = {v: k for k, v in SETTING_KEYS.items()}
    data = {"profile": {"name": name, "description": description},
            "settings": {keys[k]: v for k, v in settings.items() if v is not None},
            "measured": measured}
    path = user_profile_path(name)
    tmp = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(tomli_w.dumps(data), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise ProfileError(f"cannot write profile {path}: {exc.strerror or exc}") from None
    return path


def layer_settings(profile: Profile | None, flags: dict) -> tuple[dict, frozenset[str]]:
    """Profile values overridden by the flags given (None = not given); returns the names fixed by flags."""
    given = {k: v for k, v in flags.items() if v is not None}
    values = dict(profile.settings) if profile else {}
    values.update(given)
    return values, frozenset(given)
