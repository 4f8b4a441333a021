"""`localspec serve`: the OpenAI-compatible server."""

from __future__ import annotations

import logging
import socket
from dataclasses import fields

import click

from localspec.cli.common import (
    ModelOptions,
    check_drafter,
    model_options,
    note,
    open_engine,
    resolve_model,
    resolve_settings,
)
from localspec.errors import InvalidSettingsError, LocalspecError
from localspec.modelfile import read_model_file
from localspec.settings import BackendSettings

LOG_LEVELS = ("debug", "info", "warning", "error")
GRACE_SECONDS = 10  # in-flight requests may finish this long after SIGINT/SIGTERM, then are cancelled
LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_DRAFT_TOKENS = 255  # the most GenerationSettings accepts


@click.command()
@model_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (anything but loopback exposes the model to the network).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port to listen on (0 = any free one).")
@click.option("--api-key", envvar="LOCALSPEC_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' on every route but /health.")
@click.option("--cors-origin", "cors_origins", multiple=True,
              help="Allow browser requests from this origin (repeatable; '*' for any). Default: none.")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True)
@click.option("--drafter", "-d", default="auto", show_default=True,
              help="Draft method when a request does not choose: auto, recycling, retrieval, lookup, none, "
                   "or with --backend torch layerskip or polybasic.")
@click.option("--draft-tokens", type=click.IntRange(0, MAX_DRAFT_TOKENS), default=8, show_default=True,
              help="Most draft tokens verified per step.")
@click.option("--fixed-draft", is_flag=True,
              help="Verify every drafted token instead of letting the cost model pick the tree size.")
@click.option("--learn/--no-learn", default=True, show_default=True,
              help="Keep Token Recycling's successor matrix on disk for this model between runs.")
def serve(opts: ModelOptions, host, port, api_key, cors_origins, log_level, drafter, draft_tokens,
          fixed_draft, learn) -> None:
    """Serve the model to OpenAI clients: /v1/chat/completions, /v1/completions, /v1/models,
    /health and /metrics. Requests run one at a time, in arrival order."""
    import uvicorn

    from localspec.drafters import DRAFTERS, TORCH_DRAFTERS
    from localspec.server import ServerConfig, create_app
    from localspec.session import LoadedModel, Session, State

    check_model_options(opts)
    check_drafter(drafter, opts.runtime)
    choice = resolve_model(opts)
    read_model_file(choice.path)  # a missing or broken file fails here, not after startup
    drafters = (*DRAFTERS, *(TORCH_DRAFTERS if opts.backend == "torch" else ()))
    config = ServerConfig(model_id=choice.path.stem, api_key=api_key, cors_origins=tuple(cors_origins),
                          drafter=drafter, drafters=drafters, max_draft_tokens=draft_tokens)
    sock = listen(host, port)
    port = sock.getsockname()[1]  # the one chosen, with --port 0
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if host not in LOOPBACK and not api_key:
        note(f"warning: listening on {host} without --api-key: anyone who can reach it can use it")

    def load() -> LoadedModel:
        from localspec.drafters.persist import restore_learned, save_learned

        settings = resolve_settings(opts, choice.path).settings  # may plan memory (--budget): part of loading
        backend, engine = open_engine(choice.path, settings, use_budget=not fixed_draft,
                                      runtime=opts.runtime)
        if learn:
            restore_learned(engine.drafter(drafter), choice.path, backend.n_vocab)
        logging.getLogger("localspec.server").info("model ready: %s (context %d tokens)",
                                                   choice.describe(), backend.n_ctx)
        return LoadedModel(backend, engine,
                           (lambda: save_learned(engine.drafter(drafter), choice.path)) if learn else None)

    def on_state(state: State) -> None:
        if state is State.FAILED:
            server.should_exit = True  # nothing to serve: stop instead of answering 503 forever

    session = Session(load, max_queue=config.max_queue, on_state=on_state)
    app = create_app(config, session)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                                           log_level=log_level, timeout_graceful_shutdown=GRACE_SECONDS))
    note(f"serving {choice.describe()} on http://{host}:{port}/v1 (Ctrl+C stops)")
    with sock:
        server.run(sockets=[sock])  # returns after a graceful shutdown; uvicorn then re-raises the signal
    if session.error is not None:
        raise LocalspecError(f"could not load the model: {session.error}")


def check_model_options(opts: ModelOptions) -> None:
    """Reject model options the model loader would, before the server listens: it loads the model
    in the background, so otherwise the error would come only after startup."""
    from localspec.planner import MemoryBudgetError, parse_budget

    given = {f.name: getattr(opts, f.name) for f in fields(BackendSettings)
             if getattr(opts, f.name, None) is not None}
    try:
        BackendSettings(**given)
    except InvalidSettingsError as exc:
        raise click.UsageError(str(exc)) from None
    if opts.budget is not None:
        try:
            parse_budget(opts.budget, available=1)  # only the syntax: free memory is measured later
        except MemoryBudgetError as exc:
            raise click.BadParameter(str(exc), param_hint="'--budget'") from None


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that an address that cannot be used is one clear error
    (uvicorn would log it and exit with status 3)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restart while old ones linger
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise LocalspecError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock
