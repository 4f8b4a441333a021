"""`localspec tune` end to end on a test model, and `generate --profile` using what it wrote."""

from __future__ import annotations

import sys

import pytest

from localspec.cli import main
from localspec.cli.common import ModelOptions, resolve_settings
from localspec.drafters import make_drafter
from localspec.drafters.persist import restore_learned
from localspec.profiles import load_profile, user_profile_path
from localspec.tune import tune

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def test_tune_writes_a_profile_that_generate_uses(capsys, tiny_model, tiny_backend):
    result = tune(tiny_model, budget=None, n_threads=1, name="tune-test", max_tokens=8,
                  prompts=("def the", "for x in self"), drafters=("none", "auto"),
                  check_points=[(256, 8, "auto")])
    path = user_profile_path("tune-test")
    assert result.profile_path == path and path.is_file()
    data = tomllib.loads(path.read_text())
    assert data["settings"]["ctx"] == result.plan.settings.n_ctx == 2048  # the test model's context
    assert set(data["measured"]["speedups"]) == {"none", "auto"}
    assert data["measured"]["speedups"]["none"] == 1.0
    assert abs(result.checks[0].error) < 0.25
    profile = load_profile("tune-test")
    assert profile.sources == ("tuned",) and profile.settings["drafter"] == result.plan.drafter
    saved = make_drafter("auto")  # the primed matrix waits where generate restores it
    assert result.primed_tokens > 0 and restore_learned(saved, tiny_model, tiny_backend.n_vocab)
    assert (saved.recycling.adj >= 0).all()

    opts = ModelOptions(model=str(tiny_model), n_ctx=None, n_batch=None, n_threads=1, n_gpu_layers=None,
                        kv_type=None, flash_attn=None, budget=None, profile="tune-test")
    assert resolve_settings(opts).settings == result.plan.settings
    code = main(["generate", "-m", str(tiny_model), "-p", "def", "-n", "6", "--profile", "tune-test",
                 "--threads", "1", "--stats"])
    assert code == 0
    assert capsys.readouterr().out.endswith("\n")


def test_tune_command_prints_the_plan_and_speedup(capsys, tiny_model, monkeypatch):
    import localspec.tune as tune_module

    monkeypatch.setattr(tune_module, "TUNE_PROMPTS", ("def the",))
    monkeypatch.setattr(tune_module, "TUNE_DRAFTERS", ("none", "auto"))
    code = main(["tune", "-m", str(tiny_model), "--threads", "1", "-n", "6", "--name", "cli-tune",
                 "--budget", "2GiB"])
    out = capsys.readouterr().out
    assert code == 0
    assert "plan: ctx" in out and "measured speedup" in out and "profile written" in out
    assert load_profile("cli-tune").settings["budget"] == "2GiB"


@pytest.mark.parametrize("flags", [["--backend", "torch"], ["--dtype", "float16"]])
def test_tune_says_it_tunes_llama_cpp_only(capsys, tiny_model, flags):
    code = main(["tune", "-m", str(tiny_model), *flags])
    err = capsys.readouterr().err
    assert code == 2 and "llama.cpp" in err and "Traceback" not in err
    assert "--budget" in err or "--backend torch" in err


@pytest.mark.parametrize("flags", [["--ctx", "512"], ["--kv-type", "q8_0"], ["--profile", "cpu-8gb"],
                                   ["--no-flash-attn"]])
def test_tune_refuses_settings_it_plans_itself(capsys, tiny_model, flags):
    code = main(["tune", "-m", str(tiny_model), "-n", "4", *flags])
    err = capsys.readouterr().err
    assert code == 2 and flags[0] in err and "plans" in err
    assert len(err.splitlines()) == 1, err

