"""Profiles: presets ship, a tuned profile wins over a preset, explicit flags win over both."""

from __future__ import annotations

import pytest

from localspec.cli import main
from localspec.cli.common import ModelOptions, resolve_settings
from localspec.profiles import ProfileError, load_profile, preset_names, user_profile_path, write_profile

PRESETS = {"cpu-8gb", "cpu-16gb", "cuda-8gb", "cuda-12gb", "cuda-24gb", "apple-16gb"}


def options(**given) -> ModelOptions:
    fields = dict(model=None, n_ctx=None, n_batch=None, n_threads=1, n_gpu_layers=None, kv_type=None,
                  flash_attn=None, budget=None, profile=None)
    return ModelOptions(**(fields | given))


@pytest.fixture()
def tuned_cpu16():
    path = user_profile_path("cpu-16gb")
    yield path
    path.unlink(missing_ok=True)


def test_presets_ship_and_parse():
    assert set(preset_names()) >= PRESETS
    for name in PRESETS:
        profile = load_profile(name)
        assert profile.sources == ("preset",)
        assert profile.settings["budget"].endswith("GiB") and profile.settings["n_ctx"] >= 4096


def test_precedence_preset_then_tuned_then_flags(tuned_cpu16, tiny_model):
    preset = load_profile("cpu-16gb").settings
    without_budget = {"n_ctx": 1024, "kv_type": "q8_0"}
    write_profile("cpu-16gb", without_budget | {"budget": None}, "test", {"speedup": 1.5})
    merged = load_profile("cpu-16gb")
    assert merged.sources == ("preset", "tuned")
    assert merged.settings["n_ctx"] == 1024 and merged.settings["kv_type"] == "q8_0"  # tuned wins
    assert merged.settings["n_batch"] == preset["n_batch"]  # the preset fills the rest
    # budget from the preset means a plan; flags win over both and are never traded
    resolved = resolve_settings(options(profile="cpu-16gb", n_ctx=512, n_batch=64), tiny_model, measure=False)
    assert resolved.plan is not None
    assert resolved.settings.n_ctx == 512 and resolved.settings.n_batch == 64
    assert resolved.settings.kv_type == "q8_0"


def test_profile_without_budget_is_used_as_is(tiny_model):
    write_profile("plain-test", {"n_ctx": 300, "n_batch": 100, "max_tree_paths": 4}, "test", {})
    try:
        resolved = resolve_settings(options(profile="plain-test"), tiny_model)
        assert resolved.plan is None
        s = resolved.settings
        assert (s.n_ctx, s.n_batch, s.max_tree_paths) == (300, 100, 4)
        assert resolve_settings(options(profile="plain-test", n_ctx=200), tiny_model).settings.n_ctx == 200
    finally:
        user_profile_path("plain-test").unlink()


def test_defaults_without_profile_or_budget_are_unchanged(tiny_model):
    s = resolve_settings(options(), tiny_model).settings
    assert (s.n_ctx, s.n_batch, s.n_gpu_layers, s.kv_type) == (4096, 512, 0, "f16")


def test_unknown_and_malformed_profiles_are_errors():
    with pytest.raises(ProfileError, match="unknown profile 'nope'.*cpu-8gb"):
        load_profile("nope")
    path = user_profile_path("broken")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[settings]\nctx = 'big'\n")
    try:
        with pytest.raises(ProfileError, match="ctx must be a int"):
            load_profile("broken")
        path.write_text("[settings]\ncolour = 1\n")
        with pytest.raises(ProfileError, match="unknown setting 'colour'"):
            load_profile("broken")
    finally:
        path.unlink()


@pytest.mark.parametrize(("args", "message"), [(["--profile", "nope"], "unknown profile 'nope'"),
                                               (["--budget", "5XB"], "bad memory budget '5XB'"),
                                               (["--budget", "1MiB"], "does not fit in the budget")])
def test_cli_errors_are_one_line(capsys, tiny_model, args, message):
    code = main(["generate", "-m", str(tiny_model), "-p", "def", "-n", "2", "--threads", "1", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert message in err[-1] and err[-1].startswith("localspec: error:")


def test_info_plan_prints_breakdown_without_loading(capsys, tiny_model):
    import json

    code = main(["info", "-m", str(tiny_model), "--plan", "--budget", "1GiB", "--json", "--threads", "1"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    plan = out["plan"]
    assert plan["budget"] == 1 << 30 and plan["memory"]["total"] <= plan["host_limit"]
    assert plan["memory"]["weights_host"] > 0 and plan["memory"]["kv_host"] > 0


def test_generate_drafts_as_the_profile_chose_unless_flags_say_otherwise(capsys, tiny_model):
    import json

    write_profile("draft-test", {"n_ctx": 256, "drafter": "lookup", "tree_nodes": 0}, "test", {})
    base = ["generate", "-m", str(tiny_model), "-p", "a b a b a b", "-n", "6", "--threads", "1",
            "--profile", "draft-test", "--stats", "--no-learn"]
    try:
        assert main(base) == 0
        stats = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert stats["drafter"] == "lookup" and stats["draft_tokens"] == 0  # 0 nodes: plain decoding
        assert main([*base, "--drafter", "recycling"]) == 0
        assert json.loads(capsys.readouterr().err.strip().splitlines()[-1])["drafter"] == "recycling"
        resolved = resolve_settings(options(profile="draft-test"), tiny_model)
        assert resolved.speculation(None, None, 8) == ("lookup", 0)
        assert resolved.speculation("auto", 5, 8) == ("auto", 5)  # flags win
        assert resolve_settings(options(), tiny_model).speculation(None, None, 8) == ("auto", 8)
    finally:
        user_profile_path("draft-test").unlink()
