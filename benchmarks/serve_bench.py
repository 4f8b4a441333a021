"""Serving overhead and concurrency of `localspec serve`, against `localspec generate`.

    python benchmarks/serve_bench.py --model /tmp/demo-wide.gguf --max-tokens 128 --repeats 5

1. One client: the same prompt through `localspec generate --stats` (a fresh process each time)
   and through the server (streaming /v1/completions), interleaved so machine load drifts hit both.
   Compared: decode tokens/s as each reports it (after the prefill), for each drafter given.
   The server's end-to-end tokens/s seen by the client (request sent -> [DONE]) is reported too.
2. N concurrent streaming clients (different prompts from benchmarks/prompts.jsonl): errors,
   total tokens / wall time, and the slowest client's time to first token.
Greedy throughout. Prints a markdown summary; --json writes everything.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
PROMPT = "def log_message(self, format, *args):\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "localspec.cli", *args]


def run_generate(model: str, prompt: str, max_tokens: int, threads: int, drafter: str) -> dict:
    out = subprocess.run(cli("generate", "--model", model, "--prompt", prompt, "-n", str(max_tokens),
                             "--threads", str(threads), "--drafter", drafter, "--stats"),
                         capture_output=True, text=True, check=True)
    return json.loads(out.stderr.strip().splitlines()[-1])


def stream_completion(url: str, prompt: str, max_tokens: int, drafter: str) -> dict:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "speculation": {"drafter": drafter}}
    start = time.perf_counter()
    first = None
    last: dict = {}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if first is None and chunk.get("choices") and chunk["choices"][0]["text"]:
                first = time.perf_counter() - start
            last = chunk
    wall = time.perf_counter() - start
    tokens = last["usage"]["completion_tokens"]
    return {"tokens": tokens, "wall_s": wall, "ttft_s": first, "e2e_tokens_per_s": tokens / wall,
            "decode_tokens_per_s": last["timings"]["predicted_per_second"],
            "draft_n": last["timings"]["draft_n"], "draft_n_accepted": last["timings"]["draft_n_accepted"]}


def start_server(model: str, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(cli("serve", "--model", model, "--port", str(port), "--threads", str(threads),
                                "--log-level", "warning"), stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not become healthy")


def one_client(model: str, url: str, args) -> dict:
    results = {}
    for drafter in args.drafters.split(","):
        gen, srv = [], []
        for _ in range(args.repeats):
            gen.append(run_generate(model, PROMPT, args.max_tokens, args.threads, drafter))
            srv.append(stream_completion(url, PROMPT, args.max_tokens, drafter))
        generate_tps = statistics.median(g["tokens_per_s"] for g in gen)
        server_tps = statistics.median(s["decode_tokens_per_s"] for s in srv)
        results[drafter] = {
            "generate_tokens_per_s": generate_tps, "server_tokens_per_s": server_tps,
            "server_e2e_tokens_per_s": statistics.median(s["e2e_tokens_per_s"] for s in srv),
            "ratio": server_tps / generate_tps, "generate_runs": gen, "server_runs": srv}
    return results


def many_clients(url: str, args) -> dict:
    prompts = [json.loads(line)["prompt"] for line in (HERE / "prompts.jsonl").read_text().splitlines()
               if line.strip() and "prompt" in json.loads(line)][: args.clients]
    runs: list[dict | None] = [None] * len(prompts)
    errors: list[str] = []

    def client(i: int) -> None:
        try:
            runs[i] = stream_completion(url, prompts[i], args.max_tokens, "auto")
        except Exception as exc:  # counted, not raised: the point is how many fail
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    done = [r for r in runs if r is not None]
    tokens = sum(r["tokens"] for r in done)
    return {"clients": len(prompts), "errors": len(errors), "error_messages": errors, "tokens": tokens,
            "wall_s": wall, "total_tokens_per_s": tokens / wall,
            "max_ttft_s": max(r["ttft_s"] or 0 for r in done) if done else None, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--drafters", default="none,auto")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    proc, url = start_server(args.model, args.threads)
    try:
        stream_completion(url, PROMPT, 16, "auto")  # warm-up
        single = one_client(args.model, url, args)
        many = many_clients(url, args)
    finally:
        proc.terminate()
        proc.wait(60)
    print(f"model {args.model}, greedy, {args.max_tokens} tokens, {args.threads} threads, "
          f"median of {args.repeats}\n")
    print("| drafter | generate tok/s | serve tok/s (decode) | serve/generate | serve tok/s (client e2e) |")
    print("|---|---|---|---|---|")
    for drafter, r in single.items():
        print(f"| {drafter} | {r['generate_tokens_per_s']:.1f} | {r['server_tokens_per_s']:.1f} | "
              f"{r['ratio']:.3f} | {r['server_e2e_tokens_per_s']:.1f} |")
    print(f"\n{many['clients']} concurrent streaming clients: {many['errors']} errors, "
          f"{many['tokens']} tokens in {many['wall_s']:.2f} s = "
          f"{many['total_tokens_per_s']:.1f} tok/s total; "
          f"slowest first token {many['max_ttft_s']:.2f} s")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "single": single,
                                         "concurrent": many}, indent=1))


if __name__ == "__main__":
    main()
