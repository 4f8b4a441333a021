"""`localspec serve` as a process: readiness, access log, graceful SIGTERM, a model that won't load."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import uvicorn

from localspec.cli import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(*args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "localspec.cli", "serve", "--port", str(port), "--threads",
                             "1", "--ctx", "512", "--fixed-draft", "--no-learn", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, f"http://127.0.0.1:{port}"


def wait_healthy(proc: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the server never became healthy: {proc.communicate()[1]}")


def test_sigterm_lets_the_running_stream_finish_then_exits_cleanly(tiny_model):
    proc, url = serve("--model", str(tiny_model))
    try:
        wait_healthy(proc, url)
        body = {"prompt": "def the", "max_tokens": 300, "temperature": 0, "stream": True}
        lines = []
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if line and not lines:
                    proc.send_signal(signal.SIGTERM)
                if line:
                    lines.append(line)
        assert lines[-1] == "data: [DONE]"
        assert json.loads(lines[-2][len("data: "):])["choices"][0]["finish_reason"] in ("length", "stop")
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    # uvicorn re-raises the signal once its shutdown is complete, so the exit status says SIGTERM
    assert proc.returncode in (0, -signal.SIGTERM), stderr
    assert "Application shutdown complete" in stderr
    access = [json.loads(line.split("localspec.server.access: ", 1)[1]) for line in stderr.splitlines()
              if "localspec.server.access: " in line]
    assert {"method": "POST", "path": "/v1/completions", "status": 200}.items() <= access[-1].items()
    assert "Shutting down" in stderr


def test_a_model_that_cannot_load_stops_the_server_before_it_listens(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf at all")
    proc, _ = serve("--model", str(bad))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert stderr == f"localspec: error: not a GGUF file (bad magic b'not '): {bad}\n"


@pytest.fixture
def no_server(monkeypatch):
    """Makes a test fail at once, instead of hanging, if `serve` got as far as starting uvicorn."""
    monkeypatch.setattr(uvicorn.Server, "run", lambda *args, **kwargs: pytest.fail("the server started"))


@pytest.mark.parametrize("args, named", [
    (["--port", "-1"], "--port"),
    (["--port", "70000"], "--port"),
    (["--draft-tokens", "1000"], "--draft-tokens"),  # the range generate accepts: 0..255
    (["--draft-tokens", "-1"], "--draft-tokens"),
    (["--ctx", "-5"], "--ctx"),
    (["--threads", "0"], "--threads"),
    (["--batch", "3"], "n_batch"),
    (["--gpu-layers", "-2"], "n_gpu_layers"),
    (["--budget", "abc"], "--budget"),
])
def test_bad_options_are_usage_errors_before_anything_starts(no_server, capsys, args, named):
    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("localspec: error: ") and named in err
    assert len(err.splitlines()) == 1, err


def test_a_missing_model_is_reported_before_listening(no_server, capsys, tmp_path):
    missing = tmp_path / "missing.gguf"
    assert main(["serve", "--model", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err == f"localspec: error: model file not found: {missing}\n"


def test_a_port_in_use_is_one_clear_error(no_server, capsys, tiny_model):
    model = tiny_model
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(model), "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"localspec: error: cannot listen on 127.0.0.1:{port}: ")
    assert len(err.splitlines()) == 1, err


def test_an_unresolvable_host_is_one_clear_error(no_server, capsys, tiny_model):
    model = tiny_model
    assert main(["serve", "--model", str(model), "--host", "999.1.1.1", "--port", str(free_port())]) == 1
    err = capsys.readouterr().err
    assert err.startswith("localspec: error: cannot listen on 999.1.1.1:")
    assert len(err.splitlines()) == 1, err
