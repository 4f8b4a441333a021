"""Preset memory profiles (TOML), packaged with the wheel; read by `localspec.profiles`."""
