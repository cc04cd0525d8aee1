"""The OpenAI wire format as the gateway needs it: request checks, error bodies, SSE relay.

Only what routing needs is checked here (model, prompt, max_tokens, stream); everything
else in a body travels to vLLM untouched and vLLM checks it. Every refusal is an
``ApiError`` that becomes an OpenAI-style error body, so clients see the same shape as
from OpenAI itself: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from agents.protocol import nested_deeper_than

# vLLM's completions default, as in OpenAI's legacy API: used when max_tokens is absent.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
USAGE_EVENT = re.compile(rb'"usage"\s*:\s*\{')
# The most tokens one request can report: more than any context holds, so a larger count
# is a server misbehaving, not a request (and would not fit the request log's columns).
MAX_REPORTED_TOKENS = 10_000_000


def usage_tokens(usage: object) -> tuple[int, int] | None:
    """(prompt, completion) tokens of an OpenAI ``usage`` object, or None where it is not one.

    The numbers come from an upstream, which is not trusted: each must be a whole number
    from 0 to ``MAX_REPORTED_TOKENS`` (not a float, a string, a bool or null; a missing
    completion count is 0), else the usage is ignored and the request counted without it.
    """
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens", 0)
    counts = (prompt, 0 if completion is None else completion)
    if all(type(count) is int and 0 <= count <= MAX_REPORTED_TOKENS for count in counts):
        return counts  # type: ignore[return-value]
    return None


class ApiError(Exception):
    """A refusal with its HTTP status and OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or []

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return json.dumps({"error": error}).encode()


def invalid(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value" if param else None)


@dataclass(slots=True)
class ParsedRequest:
    """What routing reads from a request body; ``payload`` is the body as parsed."""

    endpoint: str
    model: str
    texts: list[str]
    known_token_counts: list[int]
    messages: int
    max_tokens: int | None
    stream: bool
    include_usage: bool
    payload: dict[str, Any] = field(repr=False)

    @property
    def text(self) -> str:
        return "\n".join(self.texts)


# Far deeper than a request nests, JSON schemas of tools included; deep enough nesting would
# otherwise exhaust the parser's recursion.
MAX_JSON_DEPTH = 100


def load_json(body: bytes) -> dict[str, Any]:
    too_deep = f"The request body is nested too deep: at most {MAX_JSON_DEPTH} levels of arrays and objects."
    try:
        payload = json.loads(body)
    except RecursionError as exc:
        raise invalid(too_deep) from exc
    except ValueError as exc:
        raise invalid(f"The request body is not valid JSON: {str(exc)[:200]}") from exc
    # Only a body with that many brackets can nest that deep: most skip the walk.
    if body.count(b"{") + body.count(b"[") > MAX_JSON_DEPTH and nested_deeper_than(payload, MAX_JSON_DEPTH):
        raise invalid(too_deep)
    if not isinstance(payload, dict):
        raise invalid("The request body must be a JSON object.")
    return payload


def _max_tokens(payload: dict[str, Any], names: tuple[str, ...]) -> int | None:
    for name in names:
        value = payload.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise invalid(f"{name} must be a whole number of at least 1, not {str(value)[:40]}.", name)
        return value
    return None


def _common(payload: dict[str, Any]) -> tuple[str, bool, bool]:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model must be the name of a served model.", "model")
    stream = payload.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise invalid("stream must be true or false.", "stream")
    options = payload.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise invalid("stream_options must be an object.", "stream_options")
    include_usage = bool(options and options.get("include_usage") is True)
    return model, stream, include_usage


def _message_text(message: Any, index: int) -> str:
    param = f"messages[{index}]"
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise invalid(f"{param} must be an object with a role.", param)
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise invalid(f"{param}.content must be a string or a list of parts.", f"{param}.content")
    texts = []
    for part in content:
        if not isinstance(part, dict):
            raise invalid(f"{param}.content parts must be objects.", f"{param}.content")
        text = part.get("text")
        if part.get("type") == "text":
            if not isinstance(text, str):
                raise invalid(f"{param}.content text parts need a text string.", f"{param}.content")
            texts.append(text)
    return "\n".join(texts)


def parse_chat(payload: dict[str, Any]) -> ParsedRequest:
    model, stream, include_usage = _common(payload)
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages must be a non-empty list.", "messages")
    text = "\n".join(_message_text(message, index) for index, message in enumerate(messages))
    return ParsedRequest(
        endpoint="chat",
        model=model,
        texts=[text],
        known_token_counts=[],
        messages=len(messages),
        max_tokens=_max_tokens(payload, ("max_completion_tokens", "max_tokens")),
        stream=stream,
        include_usage=include_usage,
        payload=payload,
    )


def _is_token_ids(value: Any) -> TypeGuard[list[int]]:
    return isinstance(value, list) and bool(value) and all(type(item) is int for item in value)


def parse_completion(payload: dict[str, Any]) -> ParsedRequest:
    """``prompt`` is a string, a list of strings, token ids, or a list of token-id lists."""
    model, stream, include_usage = _common(payload)
    prompt = payload.get("prompt")
    texts: list[str] = []
    known: list[int] = []
    if isinstance(prompt, str):
        texts.append(prompt)
    elif _is_token_ids(prompt):
        known.append(len(prompt))
    elif isinstance(prompt, list) and prompt and all(isinstance(item, str) for item in prompt):
        texts.extend(prompt)
    elif isinstance(prompt, list) and prompt and all(_is_token_ids(item) for item in prompt):
        known.extend(len(item) for item in prompt)
    else:
        raise invalid("prompt must be a string, a list of strings, or token ids.", "prompt")
    max_tokens = _max_tokens(payload, ("max_tokens",))
    return ParsedRequest(
        endpoint="completions",
        model=model,
        texts=texts,
        known_token_counts=known,
        messages=0,
        max_tokens=COMPLETIONS_DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
        stream=stream,
        include_usage=include_usage,
        payload=payload,
    )


# Delta fields that carry generated tokens in a chat chunk; vLLM names reasoning text
# ``reasoning_content`` (``reasoning`` in newer releases).
OUTPUT_FIELDS = ("content", "reasoning_content", "reasoning", "tool_calls")


def _event_json(event: bytes) -> Any:
    """The JSON in an event's data lines, or None (``[DONE]``, comments, anything unreadable)."""
    data = b"\n".join(line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:"))
    try:
        return json.loads(data) if data else None
    except (ValueError, RecursionError):
        return None


def carries_output(chunk: Any) -> bool:
    """True for a stream chunk with a generated token in it: non-empty ``text`` (completions) or a
    non-empty ``OUTPUT_FIELDS`` entry in a choice's ``delta`` (chat)."""
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if choice.get("text") or (isinstance(delta, dict) and any(delta.get(name) for name in OUTPUT_FIELDS)):
            return True
    return False


class SseRelay:
    """Passes server-sent events through whole, and reads the first token and the usage on the way.

    Complete events (up to the last blank line) go out as soon as they arrive; a partial
    event waits for its end, kept as the pieces it came in, so an event arriving in many
    small reads is joined once and the relay stays linear in bytes. When the gateway added
    ``include_usage`` itself, the usage event (empty ``choices``) is removed so the client
    gets the stream it asked for. Without any usage event the output token count falls back
    to the number of data events, one per generated token in vLLM's streams (an estimate).

    ``generated`` turns true with the first event that ``carries_output``: the gateway's time
    to first token. Not the first event: vLLM opens a chat stream with an empty role chunk
    (``"delta": {"role": "assistant", "content": ""}``) before any token is computed. Events
    are parsed until then, each once.
    """

    __slots__ = ("_pending", "completion_tokens", "data_events", "generated", "prompt_tokens", "strip_usage")

    def __init__(self, *, strip_usage: bool) -> None:
        self._pending: list[bytes] = []
        self.strip_usage = strip_usage
        self.data_events = 0
        self.generated = False
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None

    def feed(self, data: bytes) -> bytes:
        end = data.rfind(b"\n\n")
        if end >= 0:
            end += 2
        elif data[:1] == b"\n" and self._pending and self._pending[-1][-1:] == b"\n":
            end = 1  # the blank line began in the previous read
        else:
            if data:
                self._pending.append(data)
            return b""
        complete = b"".join([*self._pending, data[:end]]) if self._pending else data[:end]
        self._pending = [data[end:]] if end < len(data) else []
        return self._events(complete)

    def finish(self) -> bytes:
        rest, self._pending = b"".join(self._pending), []
        return self._events(rest) if rest else b""

    def _events(self, complete: bytes) -> bytes:
        if not self.generated:
            self.generated = any(carries_output(_event_json(event)) for event in complete.split(b"\n\n") if event)
        if USAGE_EVENT.search(complete) is None:
            self.data_events += complete.count(b"data:") - complete.count(b"data: [DONE]")
            return complete
        parts = complete.split(b"\n\n")
        kept = []
        for index, event in enumerate(parts):
            if not event or (USAGE_EVENT.search(event) and self._read_usage(event) and self.strip_usage):
                continue
            self.data_events += event.count(b"data:") - event.count(b"data: [DONE]")
            kept.append(event if index == len(parts) - 1 else event + b"\n\n")
        return b"".join(kept)

    def _read_usage(self, event: bytes) -> bool:
        """Record the usage in ``event``; True if it is a usage-only event (no choices)."""
        chunk = _event_json(event)
        tokens = usage_tokens(chunk.get("usage") if isinstance(chunk, dict) else None)
        if tokens is None:
            return False
        self.prompt_tokens, self.completion_tokens = tokens
        return not chunk.get("choices")
