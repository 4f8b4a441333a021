"""`--backend torch` on the command line: layerskip and polybasic through generate and bench."""

from __future__ import annotations

import json

import pytest
import torch

from localspec.cli import main


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_layerskip_and_polybasic_equal_plain_torch_decoding(capsys, torch_model_path):
    base = ["generate", "-m", str(torch_model_path), "-p", "def f(x):", "-n", "24", "--threads", "1",
            "--ctx", "256", "--backend", "torch", "--device", "cpu", "--dtype", "float32", "--no-learn"]
    code, plain, _ = run(capsys, *base, "--drafter", "none")
    assert code == 0 and plain.strip()
    for drafter in ("layerskip", "polybasic"):
        code, out, err = run(capsys, *base, "--drafter", drafter, "--stats")
        assert code == 0, err
        assert out == plain
        assert json.loads(err.strip().splitlines()[-1])["drafter"] == drafter


def test_torch_drafters_need_the_torch_backend(capsys, torch_model_path):
    code, _, err = run(capsys, "generate", "-m", str(torch_model_path), "-p", "x", "--drafter", "layerskip")
    assert code == 2 and "--backend torch" in err and "Traceback" not in err


def test_device_and_dtype_belong_to_the_torch_backend(capsys, torch_model_path):
    code, _, err = run(capsys, "generate", "-m", str(torch_model_path), "-p", "x", "--dtype", "float16")
    assert code == 2 and "--backend torch" in err
    code, out, err = run(capsys, "info", "-m", str(torch_model_path), "--device", "cpu")
    assert code == 2 and "--backend torch" in err and not out


@pytest.mark.parametrize("flag", [["--batch", "64"], ["--gpu-layers", "2"], ["--kv-type", "q8_0"],
                                  ["--no-flash-attn"]])
def test_llama_cpp_flags_are_refused_with_the_torch_backend(capsys, torch_model_path, flag):
    code, _, err = run(capsys, "generate", "-m", str(torch_model_path), "-p", "x", "-n", "2",
                       "--backend", "torch", "--device", "cpu", *flag)
    assert code == 2 and flag[0] in err and "the torch backend takes" in err
    assert len(err.splitlines()) == 1, err


def test_bench_runs_torch_methods(capsys, tmp_path, torch_model_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "a", "category": "code", "prompt": "def add(a, b):"}) + "\n")
    out = tmp_path / "r.json"
    code, _, err = run(capsys, "bench", "-m", str(torch_model_path), "--prompts", str(prompts),
                       "--methods", "none,layerskip", "-n", "12", "--threads", "1", "--ctx", "256",
                       "--backend", "torch", "--device", "cpu", "--dtype", "float32", "--json", str(out))
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["device"].startswith("torch cpu")
    assert report["summary"]["layerskip"]["identical_to_none"] == 1.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_device_torch_cannot_use_is_a_one_line_error(capsys, torch_model_path):
    code, _, err = run(capsys, "generate", "-m", str(torch_model_path), "-p", "x", "--backend", "torch",
                       "--device", "cuda")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and lines[-1].startswith("localspec: error: device cuda")
    assert "internal error" not in err


def test_a_budget_plans_the_torch_backends_memory(capsys, torch_model_path):
    base = ["generate", "-m", str(torch_model_path), "-p", "def f(x):", "-n", "4", "--threads", "1",
            "--backend", "torch", "--device", "cpu", "--dtype", "float32", "--no-learn"]
    code, out, err = run(capsys, *base, "--budget", "4GiB")
    assert code == 0 and out.strip(), err
    code, _, err = run(capsys, *base, "--budget", "100MiB")  # torch alone takes more
    assert code == 1 and "torch backend" in err and "Traceback" not in err


def test_info_plans_the_torch_backends_weights_in_its_dtype(capsys, torch_model_path):
    from localspec.memory import ModelMemory

    base = ["info", "-m", str(torch_model_path), "--plan", "--budget", "4GiB", "--threads", "1",
            "--backend", "torch", "--device", "cpu"]
    code, out, _ = run(capsys, *base, "--dtype", "float32", "--json")
    plan = json.loads(out)["plan"]
    assert code == 0 and plan["backend"] == "torch"
    assert plan["memory"]["weights_host"] == 4 * ModelMemory.from_gguf(torch_model_path).n_params
    code, out, _ = run(capsys, *base, "--dtype", "bfloat16")
    assert code == 0 and "backend: torch" in out and "expected speed" not in out
