"""Bad input to `tune`, `--profile` and `widen`: one line, the right exit code, nothing written or lost."""

from __future__ import annotations

from pathlib import Path

import pytest

import localspec.tune as tune_module
from localspec.cli import main
from localspec.errors import ModelFileError
from localspec.profiles import ProfileError, ProfileNameError, load_profile, user_profile_path, write_profile


@pytest.fixture()
def dirs(tmp_path, monkeypatch) -> Path:
    """Fresh config and cache folders; the profile folder is tmp_path/config/profiles."""
    monkeypatch.setenv("LOCALSPEC_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("LOCALSPEC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture()
def no_measuring(monkeypatch):
    """Fail loudly if tune starts measuring."""
    def measure(*args, **kwargs):
        raise AssertionError("tune measured before rejecting its input")

    monkeypatch.setattr(tune_module, "tune", measure)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert lines and all(line.strip() for line in lines), f"blank line in {err!r}"
    assert "Traceback" not in err and "internal error" not in err
    return lines[-1]


@pytest.mark.parametrize("name", ["../../escaped", "", "a/b", ".hidden", "/tmp/abs", "x" * 101])
def test_tune_rejects_a_name_that_is_not_a_plain_file_name(capsys, dirs, tiny_model, no_measuring, name):
    code = main(["tune", "-m", str(tiny_model), "-n", "8", "--threads", "1", "--name", name])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    assert "--name" in line and "bad profile name" in line
    assert files_under(dirs) == []


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "/etc/passwd", ""])
def test_profile_names_cannot_leave_the_profile_folder(dirs, name):
    outside = dirs / "escaped.toml"
    outside.write_text("[settings]\nctx = 128\n")
    with pytest.raises(ProfileNameError, match="bad profile name"):
        load_profile(name)
    with pytest.raises(ProfileNameError):
        write_profile(name, {"n_ctx": 1}, "test", {})
    assert files_under(dirs) == [outside]
    plain = write_profile("v1.2_fast-cpu", {"n_ctx": 300}, "test", {})  # dots inside are fine
    assert plain == user_profile_path("v1.2_fast-cpu") and plain.parent == dirs / "config" / "profiles"
    assert load_profile("v1.2_fast-cpu").settings == {"n_ctx": 300}


def test_generate_with_an_escaping_profile_is_one_line(capsys, dirs, tiny_model):
    config = dirs / "config"
    config.mkdir()
    (dirs / "escaped.toml").write_text("[settings]\nctx = 128\n")
    code = main(["generate", "-m", str(tiny_model), "-p", "def", "-n", "2", "--threads", "1",
                 "--profile", "../escaped"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 1 and line.startswith("localspec: error: bad profile name '../escaped'")


@pytest.mark.parametrize(("content", "message"), [
    (b"\xff\xfe", "is not UTF-8 text"),
    (b"measured = 3\n", "must be tables"),
    (b"profile = 'x'\n", "must be tables"),
])
def test_unreadable_profile_file_is_one_line_naming_it(capsys, dirs, tiny_model, content, message):
    path = dirs / "config" / "profiles" / "binp.toml"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(ProfileError, match=message):
        load_profile("binp")
    code = main(["generate", "-m", str(tiny_model), "-p", "def", "-n", "2", "--threads", "1",
                 "--profile", "binp"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 1 and str(path) in line and message in line
    assert path.read_bytes() == content


def test_unwritable_profile_is_a_profile_error_and_leaves_no_temporary_file(dirs):
    in_the_way = dirs / "config" / "profiles" / "tuned.toml"
    (in_the_way / "keep").mkdir(parents=True)
    with pytest.raises(ProfileError, match="cannot write profile"):
        write_profile("tuned", {"n_ctx": 1}, "test", {})
    assert sorted(in_the_way.parent.rglob("*")) == [in_the_way, in_the_way / "keep"]


def test_tune_rejects_zero_tokens_before_measuring(capsys, dirs, tiny_model, no_measuring):
    code = main(["tune", "-m", str(tiny_model), "-n", "0", "--threads", "1"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "--max-tokens" in line
    assert files_under(dirs) == []


def test_tune_library_checks_name_and_tokens_first(dirs, tiny_model, monkeypatch):
    def calibrate(*args, **kwargs):
        raise AssertionError("measured")

    monkeypatch.setattr(tune_module, "calibrate", calibrate)
    with pytest.raises(ProfileNameError):
        tune_module.tune(tiny_model, None, 1, name="../x")
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        tune_module.tune(tiny_model, None, 1, max_tokens=0)


@pytest.mark.parametrize("kind", ["missing", "not gguf"])
def test_tune_reports_a_bad_model_like_other_commands(capsys, dirs, no_measuring, kind):
    model = dirs / "model.gguf"
    if kind == "not gguf":
        model.write_bytes(b"hello world")
    code = main(["tune", "-m", str(model), "-n", "8", "--threads", "1"])
    tune_err = one_error_line(capsys.readouterr().err)
    assert code == 1
    main(["info", "-m", str(model)])
    assert tune_err == capsys.readouterr().err.strip()
    assert ("model file not found" if kind == "missing" else "not a GGUF file") in tune_err


def test_tune_error_before_any_stage_leaves_no_blank_line(capsys, dirs, tiny_model, monkeypatch):
    def fail(*args, **kwargs):
        raise ModelFileError("cannot plan this model")

    monkeypatch.setattr(tune_module, "tune", fail)
    code = main(["tune", "-m", str(tiny_model), "-n", "8", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 1 and one_error_line(err) == "localspec: error: cannot plan this model"


def test_tune_over_a_preset_name_says_so(capsys, dirs, tiny_model, monkeypatch):
    def fail(*args, **kwargs):
        raise ModelFileError("stopped after the checks")

    monkeypatch.setattr(tune_module, "tune", fail)
    assert main(["tune", "-m", str(tiny_model), "-n", "8", "--threads", "1", "--name", "cpu-8gb"]) == 1
    err = capsys.readouterr().err
    assert "'cpu-8gb' is a built-in preset" in err and "--name" in err


# widen

@pytest.mark.parametrize("target", ["nan", "inf"])
def test_widen_rejects_a_target_that_is_not_a_positive_number(capsys, tmp_path, tiny_model, target):
    dst = tmp_path / "wt.gguf"
    code = main(["widen", "--target-mb", target, str(tiny_model), str(dst)])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "--target-mb" in line
    assert list(tmp_path.iterdir()) == []


def test_widen_rejects_a_target_wider_than_gguf_stores(capsys, tmp_path, tiny_model):
    dst = tmp_path / "wt.gguf"
    code = main(["widen", "--target-mb", "1e9", str(tiny_model), str(dst)])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "--target-mb" in line and "4294967295" in line and "at most" in line
    assert list(tmp_path.iterdir()) == []


def test_widen_refuses_a_copy_bigger_than_the_free_space(capsys, tmp_path, tiny_model, monkeypatch):
    import shutil

    import localspec.demo.widen as widen_module

    monkeypatch.setattr(widen_module.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1, 1, 1))
    code = main(["widen", "--target-mb", "20", str(tiny_model), str(tmp_path / "wt.gguf")])
    line = one_error_line(capsys.readouterr().err)
    assert code == 1 and "free" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt(), MemoryError()])
def test_widen_failing_mid_write_removes_the_partial_file(tmp_path, tiny_model, monkeypatch, error):
    import gguf

    from localspec.demo.widen import widen_gguf

    def fail(self, tensor):
        raise error

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", fail)
    with pytest.raises((ModelFileError, type(error))):
        widen_gguf(tiny_model, tmp_path / "wt.gguf", target_weight_bytes=2**20)
    assert list(tmp_path.iterdir()) == []


def test_widen_into_a_file_as_folder_is_a_usage_error(capsys, tmp_path, tiny_model):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    code = main(["widen", "--target-mb", "1", str(tiny_model), str(afile / "w.gguf")])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "DST" in line and str(afile) in line
    assert afile.read_text() == "keep me"


def test_widen_gguf_into_a_file_as_folder_is_a_model_file_error(tmp_path, tiny_model):
    from localspec.demo.widen import widen_gguf

    (tmp_path / "afile").write_text("keep me")
    with pytest.raises(ModelFileError, match="cannot write"):
        widen_gguf(tiny_model, tmp_path / "afile" / "w.gguf", target_weight_bytes=2**20)
    assert files_under(tmp_path) == [tmp_path / "afile"]


def test_widen_to_a_folder_is_a_usage_error(capsys, tmp_path, tiny_model):
    code = main(["widen", "--target-mb", "1", str(tiny_model), str(tmp_path)])
    assert code == 2 and "is a directory" in one_error_line(capsys.readouterr().err)
