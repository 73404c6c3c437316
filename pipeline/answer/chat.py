"""Chat answer: the loop that streams a grounded answer from a chat model, running its search_corpus calls.

Sync, over a providers.chat.ChatModel and a search callable; what it streams goes to on_delta as it arrives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..config import AskConfig, Config
from ..errors import BadResponseError, ConfigError, ContentRefusedError, NetworkError, ProviderError
from ..providers import check_credentials
from ..providers.chat import ChatModel, ChatReply, Usage
from ..records import Hit, ModelSpec
from ..tokens import token_counter_for
from .extractive import finish_answer
from .prompt import (
    ANSWER_FUNCTION,
    ANSWER_SCHEMA,
    SEARCH_FUNCTION,
    Budget,
    build_messages,
    fit_hits,
    overhead_cost,
    search_result,
)
from .records import Answer

__all__ = ["AUTO_CHAT_MODEL", "chat_answer", "resolve_chat_model"]

log = logging.getLogger("pipeline.ask")

AUTO_CHAT_MODEL = "GigaChat-2-Lite"  # what chat_model "auto" picks when GigaChat credentials are set

OnDelta = Callable[[str], None]
OnSearch = Callable[[str], None]
Search = Callable[[str], Sequence[Hit]]


def _refused(reply: ChatReply, model: str) -> None:
    if reply.finish_reason == "blacklist":
        raise ContentRefusedError(f"{model} refused to answer this question (finish_reason blacklist); rephrase "
                                  "it, or ask without --chat-model for the extractive answer")


def _stream_turn(backend: ChatModel, messages: Sequence[Mapping[str, Any]], opts: Mapping[str, Any],
                 on_delta: OnDelta) -> ChatReply:
    """One streamed turn. A stream that breaks before any text arrived is retried once from the start;
    one that breaks after text was shown raises NetworkError (the text shown stays incomplete)."""
    for attempt in (1, 2):
        parts: list[str] = []
        reason, call, usage, state = None, None, None, None
        try:
            for delta in backend.stream(messages, **opts):
                if delta.content:
                    parts.append(delta.content)
                    on_delta(delta.content)
                reason = delta.finish_reason or reason
                call = delta.function_call or call
                usage = delta.usage or usage
                state = delta.functions_state_id or state
        except ProviderError as e:
            # A proxy reports a cut upstream stream as an error event (LiteLLM: code 500), not as a cut.
            if parts:
                shown = sum(len(p) for p in parts)
                raise NetworkError(f"the answer stream broke after {shown} characters; the answer above is "
                                   f"incomplete, ask again ({e.server_message})", provider=e.provider,
                                   endpoint=e.endpoint, status=e.status) from None
            if not e.retryable:
                raise
            if attempt == 2:
                if isinstance(e, NetworkError):
                    raise NetworkError(f"the answer stream broke twice before any text arrived ({e.server_message})",
                                       provider=e.provider, endpoint=e.endpoint, status=e.status) from None
                raise
            log.warning("the answer stream failed before any text arrived (%s); retrying once", e.server_message)
            continue
        return ChatReply("".join(parts), reason, call, usage, functions_state_id=state)
    raise AssertionError("unreachable")


def _add_usage(total: dict[str, int], usage: Usage | None) -> None:
    if usage is None:
        return
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        total[key] = total.get(key, 0) + int(getattr(usage, key))


def _check_structured(data: Mapping[str, Any] | None, reply: ChatReply, answer: Answer, max_tokens: int) -> list[int]:
    """The structured reply's answer text into `answer`; returns the numbers its citations list names."""
    if data is None:
        if reply.finish_reason == "length":
            raise BadResponseError(f"the structured answer was cut at max_tokens ({max_tokens}) before it was "
                                   "complete; raise [ask] max_tokens")
        raise BadResponseError(f"{answer.model} did not answer in the JSON schema (finish_reason "
                               f"{reply.finish_reason!r})")
    text = data.get("answer")
    citations = data.get("citations") or []
    if not isinstance(text, str) or not isinstance(citations, list):
        raise BadResponseError("the structured answer lacks a string `answer` or a list `citations`")
    answer.text = text
    by_n = {s.n: s for s in answer.sources}
    numbers = []
    for c in citations:
        n = c.get("n") if isinstance(c, Mapping) else None
        if not isinstance(n, int) or isinstance(n, bool):
            answer.warnings.append(f"a citation without a source number was ignored: {c!r}"[:200])
            continue
        numbers.append(n)
        named = c.get("chunk_id")
        if n in by_n and named and named != by_n[n].chunk_id:
            answer.warnings.append(f"citation [{n}] names chunk {named!r}, but source [{n}] is {by_n[n].chunk_id!r}")
    return numbers


def chat_answer(question: str, hits: Sequence[Hit], *, backend: ChatModel, spec: ModelSpec, settings: AskConfig,
                search: Search | None = None, structured: bool = False, on_delta: OnDelta | None = None,
                on_search: OnSearch | None = None) -> Answer:
    """A grounded answer from a chat model: sources numbered [1..] and fitted to spec's context.

    The model may call search_corpus (at most settings.max_rounds times); its results are numbered on.
    Text mode streams each turn to on_delta; structured mode answers in ANSWER_SCHEMA by a forced function
    call. Raises ContentRefusedError (blacklist), BadRequestError (e.g. 422 for temperature 0),
    NetworkError (a stream broken midway), BadResponseError (a structured answer that is not one).
    """
    budget = Budget(token_counter_for(spec), spec.max_input_tokens, settings.max_tokens)
    functions = [SEARCH_FUNCTION] if search is not None and settings.max_rounds > 0 else []
    budget.left -= overhead_cost(budget, question, functions)
    numbered, dropped = fit_hits(hits, budget)
    answer = Answer(question, "", [n.source for n in numbered], mode="structured" if structured else "chat",
                    model=spec.name)
    if dropped:
        answer.warnings.append(f"{dropped} retrieved chunk(s) did not fit the context of {spec.name} "
                               f"({spec.max_input_tokens} tokens) and were left out")
    messages = build_messages(question, numbered, can_search=bool(functions))
    opts: dict[str, Any] = {"max_tokens": settings.max_tokens, "temperature": settings.temperature}
    emit = on_delta or (lambda text: None)
    rounds = 0
    reply: ChatReply | None = None
    while True:
        can_call = bool(functions) and rounds < settings.max_rounds
        if structured and not can_call:
            break  # the answer itself comes from the forced call below
        turn_opts = dict(opts, functions=functions or None,
                         function_call=("auto" if can_call else "none") if functions else None)
        reply = backend.chat(messages, **turn_opts) if structured else _stream_turn(backend, messages, turn_opts,
                                                                                    emit)
        _add_usage(answer.usage, reply.usage)
        _refused(reply, spec.name)
        call = reply.function_call
        if call is None:
            break
        if not can_call or call.name != SEARCH_FUNCTION["name"]:
            raise BadResponseError(f"{spec.name} called {call.name!r} although it was not offered")
        rounds += 1
        query = str(call.arguments.get("query") or question).strip()
        answer.searches.append(query)
        if on_search is not None:
            on_search(query)
        assert search is not None
        found_hits = list(search(query))
        known = {s.chunk_id: s.n for s in answer.sources}
        found, lost = fit_hits(found_hits, budget, first_n=len(answer.sources) + 1, skip_chunks=frozenset(known))
        repeats = sorted(known[h.chunk_id] for h in found_hits if h.chunk_id in known)
        notes = []
        if repeats:
            notes.append("also relevant: sources " + ", ".join(f"[{n}]" for n in repeats) + " given earlier")
        if lost:
            notes.append(f"{lost} more result(s) did not fit the context")
        result = search_result(query, found, note="; ".join(notes))
        budget.spend(result)
        answer.sources += [n.source for n in found]
        messages += [call.message(reply.functions_state_id), {"role": "function", "name": SEARCH_FUNCTION["name"], "content": result,
                                      "call_id": call.call_id}]
    extra: list[int] = []
    if structured:
        data, reply = backend.structured(messages, ANSWER_SCHEMA, ANSWER_FUNCTION, **opts)
        _add_usage(answer.usage, reply.usage)
        _refused(reply, spec.name)
        extra = _check_structured(data, reply, answer, settings.max_tokens)
    else:
        assert reply is not None
        answer.text = reply.content
    answer.finish_reason = "stop" if structured and reply.finish_reason == "function_call" else (
        reply.finish_reason or "")
    if reply.finish_reason == "length":
        answer.truncated = True
        answer.warnings.append(f"the answer was cut at max_tokens ({settings.max_tokens}); raise [ask] max_tokens "
                               "for a longer one")
    finish_answer(answer, extra)
    if answer.unknown_citations:
        answer.warnings.append("the answer cites " + ", ".join(f"[{n}]" for n in answer.unknown_citations)
                               + f", which {'is' if len(answer.unknown_citations) == 1 else 'are'} not among "
                               "the sources")
    if not answer.grounded:
        answer.warnings.append("the answer cites none of the sources it was given")
    return answer


def resolve_chat_model(config: Config, name: str | None = None) -> ModelSpec | None:
    """The chat model to answer with, or None for the extractive answer.

    `name` (the --chat-model option) wins over [ask] chat_model; "" or "none" mean extractive; "auto" means
    GigaChat-2-Lite when GigaChat credentials are set, else extractive. Raises ConfigError for an unknown
    or non-chat model, or one whose provider lacks credentials.
    """
    chosen = (config.ask.chat_model if name is None else name).strip()
    if chosen.lower() in ("", "none"):
        return None
    if chosen == "auto":
        if not config.gigachat.has_auth:
            return None
        chosen = AUTO_CHAT_MODEL
    spec = config.registry.get(chosen)
    if spec is None or spec.kind != "chat":
        known = ", ".join(sorted(n for n, s in config.registry.items() if s.kind == "chat"))
        what = "unknown model" if spec is None else "not a chat model:"
        raise ConfigError(f"--chat-model: {what} {chosen!r}; chat models: {known}")
    check_credentials(spec, config, what="chat model",
                      alternative="ask without --chat-model for the offline extractive answer")
    return spec
