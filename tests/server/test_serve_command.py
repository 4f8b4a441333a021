"""`localspec serve` as a process: readiness, access log, graceful SIGTERM, a model that won't load."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import httpx


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


def test_a_model_that_cannot_load_stops_the_server(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf at all")
    proc, _ = serve("--model", str(bad))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "could not load the model" in stderr
