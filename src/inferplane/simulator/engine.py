"""The simulated engine: what to generate for a request, when each token is ready, and the
bookkeeping vLLM's scheduler would do (batch slots, queue, KV cache, prefix cache, metrics).
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field

from inferplane.catalog import ReasoningStyle
from inferplane.simulator.agentic import AgenticOutput, plan_agentic, split_pieces
from inferplane.simulator.generation import THINK_OVERHEAD_TOKENS, TextGenerator, prompt_digest
from inferplane.simulator.metrics import ModelStats, SimulatorMetrics
from inferplane.simulator.protocol import ChatCompletionRequest, ClientError, CompletionRequest
from inferplane.simulator.settings import SimulatorSettings
from inferplane.simulator.tokens import (
    CHAT_PRIMER_TOKENS,
    COMPLETION_PRIMER_TOKENS,
    MESSAGE_OVERHEAD_TOKENS,
    count_text_tokens,
    count_tools_tokens,
    message_text,
    token_pieces,
)

PREFIX_CACHE_BLOCK_TOKENS = 16  # vLLM's default block size: hits are counted in whole blocks
_PREFIX_CACHE_ENTRIES = 65536


@dataclass
class ServedModel:
    """One served name: its limits, reasoning behaviour, counters and batch slots."""

    name: str
    max_model_len: int
    reasoning_style: ReasoningStyle
    reasoning_prompts: dict[str, str]
    reasoning_default_on: bool
    stats: ModelStats
    slots: asyncio.Semaphore
    # vLLM runs a reasoning parser for it: chat usage reports completion_tokens_details
    reasoning_details: bool = False


@dataclass
class Generation:
    """One planned sequence (a choice of a prompt): its prompt accounting and the exact pieces
    it will emit."""

    model: ServedModel
    prompt_tokens: int
    max_tokens: int
    pieces: list[str]
    finish_reason: str
    cached_tokens: int = 0
    agentic: AgenticOutput | None = None  # tool calls or a JSON answer (simulator/agentic.py)
    thinks: bool = False  # opens with a think block (reasoning on)
    deltas: list | None = None  # per-token stream deltas, computed once (responses.py)
    prefix_keys: list[tuple[int, int]] = field(default_factory=list)
    arrived: float = field(default_factory=time.monotonic)
    admitted: float = 0.0  # when it got a batch slot; prefill (TTFT) starts here
    index: int = 0  # the choice's index in the response (prompt * n + choice)
    echo: str = ""  # text put before the first piece (`echo`)
    echo_pieces: list[str] = field(default_factory=list)  # its tokens (completion logprobs)
    top_logprobs: int | None = None  # alternatives per token when logprobs were asked for
    first_of_prompt: bool = True  # counts the prompt in the usage totals

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces)


@dataclass
class Plan:
    """One request: a Generation per choice of every prompt, in vLLM's choice order. Usage
    totals count each prompt once and every choice's completion."""

    generations: list[Generation]

    @property
    def first(self) -> Generation:
        return self.generations[0]

    @property
    def prompt_tokens(self) -> int:
        return sum(g.prompt_tokens for g in self.generations if g.first_of_prompt)

    @property
    def cached_tokens(self) -> int:
        return sum(g.cached_tokens for g in self.generations if g.first_of_prompt)

    @property
    def completion_tokens(self) -> int:
        return sum(g.completion_tokens for g in self.generations)


def reasoning_requested(messages: list, prompts: dict[str, str], default_on: bool) -> bool:
    """Nemotron's toggle: a system-message line equal to "detailed thinking on|off" (the last one
    wins); with no such line, the model's default (on for Nemotron-Ultra)."""
    on, off = prompts.get("on"), prompts.get("off")
    choice = default_on
    for message in messages:
        if message.role != "system":
            continue
        for line in message_text(message).splitlines():
            line = line.strip()
            if line == on:
                choice = True
            elif line == off:
                choice = False
    return choice


class SimulatedEngine:
    """Plans generations and keeps vLLM's scheduler state and metrics for every served model."""

    def __init__(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        self.generator = TextGenerator(settings.seed)
        self.models: dict[str, ServedModel] = {}
        for name in settings.served_model_names:
            spec = settings.model_spec_for(name)
            max_len = settings.max_model_len_for(name)
            self.models[name] = ServedModel(
                name=name,
                max_model_len=max_len,
                reasoning_style=spec.reasoning_style,
                reasoning_prompts=dict(spec.reasoning_prompts),
                reasoning_default_on=spec.reasoning_default_on,
                stats=ModelStats(max_len, settings.kv_cache_capacity_tokens),
                slots=asyncio.Semaphore(settings.max_num_seqs),
                reasoning_details=spec.reasoning_parser is not None,
            )
        self.default_model = self.models[settings.served_model_names[0]]
        self.metrics = SimulatorMetrics({name: m.stats for name, m in self.models.items()})
        self._prefix_cache: OrderedDict[int, int] = OrderedDict()

    # -- planning -------------------------------------------------------------------------

    def resolve_model(self, name: str | None) -> ServedModel:
        if name is None or name == "":
            return self.default_model  # vLLM serves its model when the request names none
        model = self.models.get(name)
        if model is None:
            raise ClientError(f"The model `{name}` does not exist.", 404, param="model")
        return model

    def plan_chat(self, request: ChatCompletionRequest) -> Plan:
        model = self.resolve_model(request.model)
        n = request.n or 1
        self._check_common(request, n)
        prompt_tokens = CHAT_PRIMER_TOKENS
        texts = []
        boundaries: list[tuple[str, int]] = []
        for message in request.messages:
            text = message_text(message)
            prompt_tokens += MESSAGE_OVERHEAD_TOKENS + count_text_tokens(text)
            texts.append(f"{message.role}\x00{text}")
            boundaries.append((texts[-1], prompt_tokens))
        if request.tools:
            # The chat template lists the tools in the system turn.
            prompt_tokens += count_tools_tokens(request.tools)
        reasoning_tokens = 0
        if model.reasoning_style is ReasoningStyle.SYSTEM_PROMPT and reasoning_requested(
            request.messages, model.reasoning_prompts, model.reasoning_default_on
        ):
            reasoning_tokens = self.settings.reasoning_tokens
        requested = (request.max_completion_tokens if request.max_completion_tokens is not None
                     else request.max_tokens)
        param = ("max_completion_tokens" if request.max_completion_tokens is not None
                 else "max_tokens")
        last = request.messages[-1]
        echo = message_text(last) if request.echo and last.role == "assistant" else ""
        top = (request.top_logprobs or 0) if request.logprobs else None
        agentic = plan_agentic(request, prompt_digest("\x01".join(texts), request.seed),
                               self.settings.enable_auto_tool_choice)
        if agentic is not None:
            reasoning_tokens = 0  # tool calls and JSON answers come without a think block
        generations = []
        for choice in range(n):
            generation = self._plan(model, prompt_tokens, "\x01".join(texts), request,
                                    requested, param, reasoning_tokens, continuation=False,
                                    choice=choice, agentic=agentic)
            generation.index, generation.echo, generation.top_logprobs = choice, echo, top
            generation.first_of_prompt = choice == 0
            generations.append(generation)
        if self.settings.enable_prompt_tokens_details:
            self._apply_prefix_cache(generations[0], boundaries)
        return Plan(generations)

    def plan_completion(self, request: CompletionRequest) -> Plan:
        model = self.resolve_model(request.model)
        n = request.n or 1
        self._check_common(request, n * len(request.prompt))
        generations = []
        for prompt_index, prompt in enumerate(request.prompt):
            if isinstance(prompt, str):
                prompt_tokens = COMPLETION_PRIMER_TOKENS + count_text_tokens(prompt)
                prompt_text = prompt
                echo_pieces = token_pieces(prompt)
            else:
                prompt_tokens = len(prompt)
                prompt_text = ",".join(map(str, prompt))
                echo_pieces = [f"<{token}>" for token in prompt]
            if prompt_tokens == 0 or prompt == "":
                raise ClientError("Either prompt or prompt_embeds must be provided and non-empty.",
                                  param="prompt")
            for choice in range(n):
                generation = self._plan(model, prompt_tokens, prompt_text, request,
                                        request.max_tokens, "max_tokens", 0, continuation=True,
                                        choice=choice)
                generation.index = prompt_index * n + choice
                generation.first_of_prompt = choice == 0
                generation.top_logprobs = request.logprobs
                if request.echo:
                    generation.echo = "".join(echo_pieces)
                    generation.echo_pieces = echo_pieces
                generations.append(generation)
            if self.settings.enable_prompt_tokens_details:
                self._apply_prefix_cache(generations[-n], [(prompt_text, prompt_tokens)])
        return Plan(generations)

    def _plan(self, model: ServedModel, prompt_tokens: int, prompt_text: str, request,
              requested: int | None, param: str, reasoning_tokens: int,
              continuation: bool, choice: int = 0,
              agentic: AgenticOutput | None = None) -> Generation:
        max_len = model.max_model_len
        # vLLM's echo-only scoring: /v1/completions with `echo` and max_tokens 0 returns the
        # prompt and generates nothing.
        echo_only = requested == 0 and continuation and bool(getattr(request, "echo", False))
        if requested is not None and requested < 1 and not echo_only:
            raise ClientError(f"{param} must be at least 1, got {requested}.", param=param)
        asked = requested or 0
        if prompt_tokens >= max_len or prompt_tokens + asked > max_len:
            raise ClientError(
                f"This model's maximum context length is {max_len} tokens. However, you "
                f"requested {asked} output tokens and your prompt contains at least "
                f"{prompt_tokens} input tokens, for a total of at least {prompt_tokens + asked} "
                "tokens. Please reduce the length of the input prompt or the number of requested "
                f"output tokens. (parameter=input_tokens, value={prompt_tokens})",
                param="input_tokens",
            )
        max_tokens = requested if requested is not None else max_len - prompt_tokens
        if echo_only:
            return Generation(model, prompt_tokens, 0, [], "length")
        natural = self.settings.output_tokens
        if reasoning_tokens:
            natural += THINK_OVERHEAD_TOKENS + reasoning_tokens
        natural = max(natural, request.min_tokens)
        if request.ignore_eos or natural > max_tokens:
            length, finish_reason = max_tokens, "length"
        else:
            length, finish_reason = natural, "stop"
        if agentic is not None:
            pieces = split_pieces(agentic.text)
            if len(pieces) > max_tokens:  # cut short: the text as far as it got, unparsed
                return Generation(model, prompt_tokens, max_tokens, pieces[:max_tokens], "length")
            return Generation(model, prompt_tokens, max_tokens, pieces, "stop", agentic=agentic)
        # Choice 0 keeps the text a single-choice request gets; the others differ.
        digest = prompt_digest(prompt_text if not choice else f"{prompt_text}\x02{choice}",
                               request.seed)
        pieces = self.generator.pieces(digest, reasoning_tokens, length, continuation)
        return Generation(model, prompt_tokens, max_tokens, pieces, finish_reason,
                          thinks=reasoning_tokens > 0)

    def _check_common(self, request, sequences: int) -> None:
        if request.n is not None and request.n < 1:
            raise ClientError(f"n must be at least 1, got {request.n}.", param="n")
        if request.n not in (None, 1) and getattr(request, "temperature", None) == 0:
            raise ClientError(f"n must be 1 when using greedy sampling, got {request.n}.")
        if sequences > self.settings.max_num_seqs:
            raise ClientError(f"this request asks for {sequences} sequences (n times prompts); "
                              f"the batch holds {self.settings.max_num_seqs}", param="n")
        if request.stream_options is not None and not request.stream:
            raise ClientError("Stream options can only be defined when `stream=True`.",
                              param="stream_options")

    def _apply_prefix_cache(self, generation: Generation,
                            boundaries: list[tuple[str, int]]) -> None:
        """Cached tokens: the longest earlier-seen prefix of whole messages, in whole blocks,
        never the full prompt (vLLM always recomputes the last token)."""
        digest, hit = 0, 0
        for text, tokens in boundaries:
            digest = zlib.crc32(text.encode("utf-8", "surrogatepass"), digest)
            key = digest * 1_000_003 + tokens
            generation.prefix_keys.append((key, tokens))
            if key in self._prefix_cache:
                hit = tokens
                self._prefix_cache.move_to_end(key)
        hit = min(hit, generation.prompt_tokens - 1)
        generation.cached_tokens = hit - hit % PREFIX_CACHE_BLOCK_TOKENS

    # -- running ----------------------------------------------------------------------------

    async def admit(self, generation: Generation) -> None:
        """Take a batch slot, queueing (vllm:num_requests_waiting) when all are busy."""
        model = generation.model
        stats = model.stats
        if model.slots.locked():
            stats.waiting += 1
            try:
                await model.slots.acquire()
            finally:
                stats.waiting -= 1
        else:
            await model.slots.acquire()
        stats.running += 1
        stats.kv_tokens += generation.prompt_tokens + generation.completion_tokens
        generation.admitted = time.monotonic()
        stats.queue_time.observe(generation.admitted - generation.arrived)

    def first_token(self, generation: Generation) -> None:
        """Prefill done: count the prompt, as vLLM does once it has computed it."""
        stats = generation.model.stats
        stats.ttft.observe(time.monotonic() - generation.arrived)
        stats.prompt_tokens += generation.prompt_tokens
        stats.prefix_cache_queries += generation.prompt_tokens
        stats.prefix_cache_hits += generation.cached_tokens
        for key, _tokens in generation.prefix_keys:
            self._prefix_cache[key] = 1
        while len(self._prefix_cache) > _PREFIX_CACHE_ENTRIES:
            self._prefix_cache.popitem(last=False)

    def finish(self, generation: Generation, generated: int, finish_reason: str,
               first_token_at: float | None) -> None:
        """Release the slot and record the request (finish_reason "abort" on disconnect)."""
        stats = generation.model.stats
        now = time.monotonic()
        stats.running -= 1
        stats.kv_tokens -= generation.prompt_tokens + generation.completion_tokens
        stats.generation_tokens += generated
        stats.success[finish_reason] += 1
        stats.e2e.observe(now - generation.arrived)
        stats.request_prompt_tokens.observe(generation.prompt_tokens)
        stats.request_generation_tokens.observe(generated)
        stats.request_max_tokens.observe(generation.max_tokens)
        if first_token_at is not None and generated > 1:
            stats.inter_token.observe((now - first_token_at) / (generated - 1), generated - 1)
        generation.model.slots.release()
