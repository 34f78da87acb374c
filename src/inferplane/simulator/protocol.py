"""The request bodies vLLM's OpenAI server accepts, and its error shape.

Requests are validated with pydantic straight from the raw bytes (one pass, in Rust). Fields the
simulator does not model (temperature, stop, ...) are accepted and ignored, as vLLM
accepts fields it does not know; fields it does model are type-checked, and every problem comes
back as a 400 naming the field, never a 500.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.responses import Response

try:  # orjson when installed: several times faster for the bodies we write
    import orjson

    def dumps(value: Any) -> bytes:
        return orjson.dumps(value)

except ImportError:  # pragma: no cover - depends on the environment
    import json

    def dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class ClientError(Exception):
    """A request the simulator refuses; becomes vLLM's error JSON with this status."""

    def __init__(self, message: str, status_code: int = 400, param: str | None = None,
                 error_type: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.param = param
        self.error_type = error_type or _ERROR_TYPES.get(status_code, "BadRequestError")


_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowed",
                500: "InternalServerError"}


def error_response(error: ClientError) -> Response:
    """vLLM's ErrorResponse: {"error": {"message", "type", "param", "code"}} with an int code."""
    body = {"error": {"message": error.message, "type": error.error_type, "param": error.param,
                      "code": error.status_code}}
    return Response(dumps(body), status_code=error.status_code, media_type="application/json")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class FunctionCall(_Lenient):
    name: str = ""
    arguments: str = ""


class ToolCall(_Lenient):
    function: FunctionCall | None = None


class ChatMessage(_Lenient):
    role: str = Field(min_length=1)
    content: Any = None  # a string, a list of {"type": "text", "text": ...} parts, or null
    tool_calls: list[ToolCall] | None = None

    @field_validator("content")
    @classmethod
    def _text_content(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise ValueError("content must be a string, a list of text parts, or null")
        for part in value:
            kind = part.get("type") if isinstance(part, dict) else None
            if not isinstance(kind, str):
                raise ValueError('each content part must be an object with a string "type"')
            if kind != "text":
                raise ValueError(f"content part type {kind!r} is not supported by this text-only "
                                 'model; send {"type": "text", "text": ...} parts')
            if not isinstance(part.get("text"), str):
                raise ValueError('a text content part needs a string "text"')
        return value


class StreamOptions(_Lenient):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class _GenerationRequest(_Lenient):
    model: str | None = None
    max_tokens: int | None = None
    n: int | None = 1  # checked by the engine, as vLLM does (400 naming "n")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    # vLLM's own sampling extensions that change the length of the output
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = Field(0, ge=0, le=20)
    echo: bool = False  # prepend the last message's content when it is the assistant's
    # The agentic API (simulator/agentic.py answers them as vLLM with our Nemotron plugin)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = True
    response_format: dict[str, Any] | None = None


class CompletionRequest(_GenerationRequest):
    prompt: Any  # a string, a list of token ids, or a list (batch) of either
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool | None = False

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value: Any) -> list[str | list[int]]:
        """Always a list of prompts (a batch of one for a single prompt), as vLLM reads it."""
        batch = value if isinstance(value, list) and value and \
            isinstance(value[0], (str, list)) else [value]
        for prompt in batch:
            if isinstance(prompt, str):
                continue
            if not (isinstance(prompt, list)
                    and all(type(item) is int and item >= 0 for item in prompt)):
                raise ValueError("prompt must be a string, a list of token ids, or a list of "
                                 "either")
        return batch


def parse_request(model_class: type[BaseModel], body: bytes) -> Any:
    """Validate a JSON body, turning every pydantic error into one 400 that names the fields."""
    try:
        return model_class.model_validate_json(body)
    except ValidationError as error:
        raise _client_error(error) from None


def _client_error(error: ValidationError) -> ClientError:
    # vLLM answers request validation errors (FastAPI's) with type "Bad Request" and the
    # field's location under "body" as param.
    problems = error.errors(include_url=False, include_input=False)
    first = problems[0]
    if first["type"] == "json_invalid":
        return ClientError(f"the request body is not valid JSON: {first['msg']}",
                           param="body", error_type="Bad Request")
    if first["type"] == "model_type" and not first["loc"]:
        return ClientError("the request body must be a JSON object", param="body",
                           error_type="Bad Request")
    messages = []
    for problem in problems:
        where = ".".join(str(part) for part in problem["loc"])
        messages.append(f"{where}: {problem['msg']}" if where else problem["msg"])
    param = ".".join(["body", *(str(part) for part in first["loc"])])
    return ClientError("; ".join(messages), param=param, error_type="Bad Request")
