"""The simulator's HTTP surface: vLLM's OpenAI server routes on Starlette.

GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions, GET /metrics.
Generation runs inside the response object so that a client that disconnects cancels it (as
vLLM aborts the request), and the running gauge, KV cache and counters are settled either way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from inferplane.simulator.engine import Plan, SimulatedEngine
from inferplane.simulator.protocol import (
    ChatCompletionRequest,
    ClientError,
    CompletionRequest,
    dumps,
    error_response,
    parse_request,
)
from inferplane.simulator.responses import (
    DONE,
    ChunkWriter,
    chat_completion_body,
    completion_body,
    request_id,
)
from inferplane.simulator.settings import SimulatorSettings

_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache")]
_JSON_HEADERS = [(b"content-type", b"application/json")]


def create_app(settings: SimulatorSettings) -> Starlette:
    """A vLLM-compatible OpenAI server for `settings`; each app has its own metrics registry."""
    engine = SimulatedEngine(settings)
    details = settings.enable_prompt_tokens_details
    delayed = settings.ttft_seconds > 0 or settings.inter_token_seconds > 0
    created = int(time.time())
    models_body = dumps({"object": "list", "data": [
        {"id": name, "object": "model", "created": created, "owned_by": "vllm",
         "root": settings.model_spec_for(name).hf_repo, "parent": None,
         "max_model_len": model.max_model_len,
         "permission": [{"id": f"modelperm-simulator-{index}", "object": "model_permission",
                         "created": created, "allow_create_engine": False,
                         "allow_sampling": True, "allow_logprobs": True,
                         "allow_search_indices": False, "allow_view": True,
                         "allow_fine_tuning": False, "organization": "*", "group": None,
                         "is_blocking": False}]}
        for index, (name, model) in enumerate(engine.models.items())
    ]})

    async def health(request: Request) -> Response:
        return Response(status_code=200)

    async def list_models(request: Request) -> Response:
        return Response(models_body, media_type="application/json")

    async def metrics(request: Request) -> Response:
        return Response(engine.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def generate(request: Request, chat: bool):
        try:
            body = parse_request(ChatCompletionRequest if chat else CompletionRequest,
                                 await _read_body(request))
            plan = engine.plan_chat(body) if chat else engine.plan_completion(body)
        except ClientError as error:
            return error_response(error)
        rid = request_id("chatcmpl" if chat else "cmpl", request.headers.get("x-request-id"))
        return _respond(engine, plan, body, rid, chat=chat, delayed=delayed, details=details)

    async def chat_completions(request: Request):
        return await generate(request, chat=True)

    async def completions(request: Request):
        return await generate(request, chat=False)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        message = getattr(exc, "detail", None) or "Internal Server Error"
        if status in (404, 405):  # routing errors: vLLM's FastAPI answers {"detail": ...}
            return Response(dumps({"detail": str(message)}), status_code=status,
                            media_type="application/json")
        return error_response(ClientError(str(message), status))

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: http_error},
    )
    app.state.engine = engine
    app.state.settings = settings
    return app


async def _read_body(request: Request) -> bytes:
    try:
        return await request.body()
    except ClientDisconnect:
        # The client left while sending; nothing to answer, and not a server error.
        raise ClientError("the client disconnected before sending the whole body", 499) from None


def _respond(engine: SimulatedEngine, plan: Plan, body, rid: str, *, chat: bool,
             delayed: bool, details: bool):
    make_body = chat_completion_body if chat else completion_body
    if body.stream:
        options = body.stream_options
        include_usage = bool(options and options.include_usage)
        continuous = include_usage and bool(options.continuous_usage_stats)
        writers = [ChunkWriter(generation, rid, chat, include_usage, continuous, details)
                   for generation in plan.generations]
        return CancellableResponse(lambda send: _stream(engine, plan, writers, send))
    if not delayed:
        return _ImmediateResponse(engine, plan, make_body, rid, details)
    return CancellableResponse(
        lambda send: _delayed_body(engine, plan, make_body, rid, details, send))


async def _admit(engine: SimulatedEngine, plan: Plan) -> int:
    """Batch slots for every sequence of the plan; how many were taken (to release on abort)."""
    taken = 0
    try:
        for generation in plan.generations:
            await engine.admit(generation)
            taken += 1
    except BaseException:
        for generation in plan.generations[:taken]:
            engine.finish(generation, 0, "abort", None)
        raise
    return taken


class _ImmediateResponse:
    """Zero-latency, non-streamed: the whole request without a task or a sleep (benchmark path)."""

    def __init__(self, engine, plan, make_body, rid, details) -> None:
        self.args = (engine, plan, make_body, rid, details)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        engine, plan, make_body, rid, details = self.args
        await _admit(engine, plan)
        for generation in plan.generations:
            first_token_at = None
            finish_reason = "abort"
            try:
                engine.first_token(generation)
                first_token_at = time.monotonic()
                finish_reason = generation.finish_reason
            finally:
                engine.finish(generation, generation.completion_tokens if first_token_at else 0,
                              finish_reason, first_token_at)
        await _send_json(send, make_body(plan, rid, details))


class CancellableResponse:
    """Runs `work(send)` and cancels it when the client disconnects (vLLM's abort)."""

    def __init__(self, work: Callable[[Send], Awaitable[None]]) -> None:
        self.work = work

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        work = asyncio.ensure_future(self.work(send))
        watcher = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await asyncio.wait((work, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not work.done():
                work.cancel()
            try:
                await work  # let its finally blocks settle the gauges before we return
            except asyncio.CancelledError:
                if not watcher.done() or watcher.cancelled():
                    raise  # we were cancelled ourselves (server shutdown), not the client


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def _stream(engine: SimulatedEngine, plan: Plan, writers: list[ChunkWriter],
                  send: Send) -> None:
    """Every choice advances one token per step, its chunk sent in choice order (as vLLM's
    batch would emit them)."""
    settings = engine.settings
    await _admit(engine, plan)
    generations = plan.generations
    generated = [0] * len(generations)
    first_token_at = None
    finished = False
    try:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        await _sleep_until(plan.first.admitted + settings.ttft_seconds)
        for generation in generations:
            engine.first_token(generation)
        first_token_at = time.monotonic()
        for writer in writers:
            opening = writer.role() or writer.echo_only()
            if opening is not None:
                await send({"type": "http.response.body", "body": opening, "more_body": True})
        itl = settings.inter_token_seconds
        longest = max(generation.completion_tokens for generation in generations)  # 0: echo only
        for index in range(longest):
            if index and itl:
                await _sleep_until(first_token_at + index * itl)
            for position, writer in enumerate(writers):
                if index < generations[position].completion_tokens:
                    await send({"type": "http.response.body", "body": writer.token(index),
                                "more_body": True})
                    generated[position] = index + 1
        final = writers[0].final_usage(plan)
        if final is not None:
            await send({"type": "http.response.body", "body": final, "more_body": True})
        await send({"type": "http.response.body", "body": DONE, "more_body": False})
        finished = True
    finally:
        for position, generation in enumerate(generations):
            engine.finish(generation, generated[position],
                          generation.finish_reason if finished else "abort", first_token_at)


async def _delayed_body(engine: SimulatedEngine, plan: Plan, make_body, rid: str,
                        details: bool, send: Send) -> None:
    settings = engine.settings
    await _admit(engine, plan)
    first_token_at = None
    finish_reason = "abort"
    try:
        await _sleep_until(plan.first.admitted + settings.ttft_seconds)
        for generation in plan.generations:
            engine.first_token(generation)
        first_token_at = time.monotonic()
        count = max(generation.completion_tokens for generation in plan.generations)
        await _sleep_until(first_token_at + max(count - 1, 0) * settings.inter_token_seconds)
        finish_reason = "done"
    finally:
        for generation in plan.generations:
            generated = 0
            if first_token_at is not None:
                generated = generation.completion_tokens
                if finish_reason == "abort" and settings.inter_token_seconds:
                    elapsed = time.monotonic() - first_token_at
                    generated = min(generated, 1 + int(elapsed / settings.inter_token_seconds))
            engine.finish(generation, generated,
                          generation.finish_reason if finish_reason == "done" else "abort",
                          first_token_at)
    await _send_json(send, make_body(plan, rid, details))


async def _send_json(send: Send, body: dict) -> None:
    payload = dumps(body)
    await send({"type": "http.response.start", "status": 200,
                "headers": [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
