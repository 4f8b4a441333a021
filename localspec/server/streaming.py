"""Session jobs as asyncio streams, and the OpenAI bodies (whole or SSE chunks) built from them."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from starlette.requests import Request

from localspec.server.errors import from_domain
from localspec.server.params import Prepared
from localspec.server.schemas import Timings, Usage
from localspec.session import BusyError, Event, Failed, Finished, Job, Session

FINISH_REASONS = {"stop": "stop", "length": "length", "context": "length"}


def submit(session: Session, prepared: Prepared) -> tuple[Job, AsyncIterator[Event]]:
    """Queue the job; its events arrive on this event loop. Raises (before queueing) if refused."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Event] = asyncio.Queue()
    job = session.submit(prepared.prompt, prepared.settings, prepared.logit_bias,
                         listener=lambda event: loop.call_soon_threadsafe(inbox.put_nowait, event))

    async def events() -> AsyncIterator[Event]:
        try:
            held: Event | None = None
            while True:
                event = held if held is not None else await inbox.get()
                held = None
                # pieces that piled up while the client was slow go out as one chunk
                while isinstance(event, str) and not inbox.empty():
                    following = inbox.get_nowait()
                    if not isinstance(following, str):
                        held = following
                        break
                    event += following
                yield event
                if not isinstance(event, str):
                    return
        finally:  # the consumer stopped (client gone, task cancelled): stop generating now
            job.cancel()

    return job, events()


async def disconnected(request: Request) -> None:
    """Return once the client has gone (the body is already read, so only a disconnect arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def usage(done: Finished) -> Usage:
    s = done.stats
    return Usage(prompt_tokens=s.prompt_tokens, completion_tokens=s.tokens,
                 total_tokens=s.prompt_tokens + s.tokens,
                 prompt_tokens_details={"cached_tokens": done.cached_tokens})


def timings(done: Finished) -> Timings:
    s = done.stats
    prompt_n = max(s.prompt_tokens - done.cached_tokens, 0)
    return Timings(cache_n=done.cached_tokens, prompt_n=prompt_n, prompt_ms=s.prefill_seconds * 1e3,
                   prompt_per_second=prompt_n / s.prefill_seconds if s.prefill_seconds > 0 else 0.0,
                   predicted_n=s.tokens, predicted_ms=s.seconds * 1e3, predicted_per_second=s.tokens_per_s,
                   draft_n=s.draft_tokens, draft_n_accepted=s.accepted_tokens, steps=s.steps,
                   drafter=s.drafter)


@dataclass
class Reply:
    """Builds one response's bodies: `chat` (chat.completion) or text_completion."""

    chat: bool
    model: str
    include_usage: bool = False
    echo: str = ""
    id: str = field(default="")
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.id = self.id or f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"

    def _choice(self, text: str | None, finish: str | None, role: bool = False) -> dict:
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        delta: dict = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    def chunk(self, text: str | None = None, finish: str | None = None, role: bool = False,
              done: Finished | None = None) -> dict:
        body = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model,
                "choices": [self._choice(text, finish, role)] if finish or text is not None or role else []}
        if self.include_usage:
            body["usage"] = usage(done).model_dump() if done else None
        if done is not None:
            body["timings"] = timings(done).model_dump()
        return body

    def whole(self, text: str, done: Finished) -> dict:
        finish = FINISH_REASONS.get(done.finish_reason, "stop")
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish}
        else:
            choice = {"index": 0, "text": self.echo + text, "logprobs": None, "finish_reason": finish}
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice],
                "usage": usage(done).model_dump(), "timings": timings(done).model_dump()}


def _sse(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def _cancelled_error() -> Failed:
    return Failed(BusyError("the generation was cancelled: the server is shutting down"))


async def sse_stream(reply: Reply, events: AsyncIterator[Event]) -> AsyncIterator[str]:
    """OpenAI's SSE: a role chunk (chat), text chunks, a finish chunk, a usage chunk, then [DONE]."""
    if reply.chat:
        yield _sse(reply.chunk(text="", role=True))
    elif reply.echo:
        yield _sse(reply.chunk(text=reply.echo))
    async for event in events:
        if isinstance(event, str):
            yield _sse(reply.chunk(text=event))
            continue
        if isinstance(event, Finished) and event.finish_reason == "cancelled":
            event = _cancelled_error()
        if isinstance(event, Failed):
            yield _sse(from_domain(event.error).body())
            break
        finish = FINISH_REASONS.get(event.finish_reason, "stop")
        if reply.include_usage:
            yield _sse(reply.chunk(finish=finish))
            yield _sse(reply.chunk(done=event))
        else:
            body = reply.chunk(finish=finish)
            body["timings"] = timings(event).model_dump()
            yield _sse(body)
    yield "data: [DONE]\n\n"


async def collect(events: AsyncIterator[Event]) -> tuple[str, Finished | Failed]:
    parts: list[str] = []
    async for event in events:
        if isinstance(event, str):
            parts.append(event)
        else:
            if isinstance(event, Finished) and event.finish_reason == "cancelled":
                event = _cancelled_error()
            return "".join(parts), event
    raise RuntimeError("the job ended without a final event")
