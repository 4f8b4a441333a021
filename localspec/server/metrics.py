"""Prometheus text exposition of the HTTP and speculation counters (no client library needed)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from localspec.session import Counters, Session, State

ACCEPTED_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16)
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")


@dataclass
class HttpCounters:
    """Responses by route and status; only touched on the event loop, so no lock."""

    responses: Counter = field(default_factory=Counter)

    def add(self, path: str, status: int) -> None:
        route = path if path in ROUTES else "other"  # bounded label values whatever clients send
        self.responses[(route, status)] += 1


def _line(name: str, value: float, labels: dict[str, str] | None = None) -> str:
    label = ",".join(f'{k}="{v}"' for k, v in (labels or {}).items())
    number = repr(float(value)) if isinstance(value, float) else str(value)
    return f"{name}{{{label}}} {number}" if label else f"{name} {number}"


def _family(out: list[str], name: str, kind: str, help_text: str) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")


def _speculation(out: list[str], c: Counters) -> None:
    _family(out, "localspec_spec_steps_total", "counter", "Verify steps (one target decode each).")
    out.append(_line("localspec_spec_steps_total", c.steps))
    _family(out, "localspec_spec_draft_tokens_total", "counter", "Draft tokens sent to verification.")
    out.append(_line("localspec_spec_draft_tokens_total", c.draft_tokens))
    _family(out, "localspec_spec_accepted_tokens_total", "counter", "Draft tokens the target accepted.")
    out.append(_line("localspec_spec_accepted_tokens_total", c.accepted_tokens))
    _family(out, "localspec_spec_accepted_by_position_total", "counter",
            "Accepted draft tokens at each position of the accepted path (1 = first drafted token).")
    for depth, count in enumerate(c.accepted_at_depth, start=1):
        out.append(_line("localspec_spec_accepted_by_position_total", count, {"position": str(depth)}))
    _family(out, "localspec_spec_accepted_per_step", "histogram", "Draft tokens accepted per verify step.")
    for bound in ACCEPTED_BUCKETS:
        below = sum(n for k, n in c.accepted_per_step.items() if k <= bound)
        out.append(_line("localspec_spec_accepted_per_step_bucket", below, {"le": str(bound)}))
    total = sum(c.accepted_per_step.values())
    out.append(_line("localspec_spec_accepted_per_step_bucket", total, {"le": "+Inf"}))
    accepted = sum(k * n for k, n in c.accepted_per_step.items())
    out.append(_line("localspec_spec_accepted_per_step_sum", accepted))
    out.append(_line("localspec_spec_accepted_per_step_count", total))


def render(session: Session, http: HttpCounters) -> str:
    c = session.counters()
    waiting, running = session.load_status()
    out: list[str] = []
    _family(out, "localspec_http_responses_total", "counter", "HTTP responses by route and status.")
    for (route, status), count in sorted(http.responses.items()):
        out.append(_line("localspec_http_responses_total", count, {"route": route, "status": str(status)}))
    _family(out, "localspec_requests_total", "counter", "Generation requests by outcome.")
    for outcome, count in (("completed", c.completed), ("cancelled", c.cancelled), ("failed", c.failed)):
        out.append(_line("localspec_requests_total", count, {"outcome": outcome}))
    _family(out, "localspec_requests_waiting", "gauge", "Generation requests queued behind the running one.")
    out.append(_line("localspec_requests_waiting", waiting))
    _family(out, "localspec_requests_running", "gauge", "Generation requests running (0 or 1).")
    out.append(_line("localspec_requests_running", int(running)))
    _family(out, "localspec_model_ready", "gauge", "1 once the model is loaded.")
    out.append(_line("localspec_model_ready", int(session.state is State.READY)))
    for name, value, text in (
        ("localspec_prompt_tokens_total", c.prompt_tokens, "Prompt tokens of finished requests."),
        ("localspec_prompt_tokens_cached_total", c.cached_tokens, "Prompt tokens whose KV was reused."),
        ("localspec_generated_tokens_total", c.generated_tokens, "Tokens generated."),
        ("localspec_prefill_seconds_total", c.prefill_seconds, "Seconds spent prefilling prompts."),
        ("localspec_decode_seconds_total", c.decode_seconds, "Seconds spent generating after the prefill."),
        ("localspec_queue_seconds_total", c.queued_seconds, "Seconds requests waited in the queue."),
    ):
        _family(out, name, "counter", text)
        out.append(_line(name, value))
    _speculation(out, c)
    return "\n".join(out) + "\n"
