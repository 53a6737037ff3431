"""The server's pure-Python parts: the scheduler with a stand-in engine, request parsing, error shapes."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

pytest.importorskip("starlette")

from qwen3_gguf.prompts import DEFAULT_INSTRUCTION  # noqa: E402
from qwen3_gguf.server.errors import (  # noqa: E402
    ApiError,
    cohere_body,
    llama_cpp_body,
    ollama_body,
    openai_body,
    tei_body,
)
from qwen3_gguf.server.parsing import embedding_inputs, field, instruction_of, text_list  # noqa: E402
from qwen3_gguf.server.scheduler import QueueFull, Scheduler  # noqa: E402


class Engine:
    """Stands in for a model: answers (key, input) pairs, records every call, can be held."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()

    def __call__(self, key, inputs):
        self.started.set()
        assert self.release.wait(10)
        self.calls.append((key, list(inputs)))
        return [(key, item) for item in inputs]


async def queued(scheduler: Scheduler, tokens: int) -> None:
    """Until the scheduler has admitted `tokens` (the tasks that queue them run on this loop)."""
    while scheduler.queued_tokens != tokens:
        await asyncio.sleep(0)


def test_scheduler_groups_waiting_requests_by_key_and_returns_each_its_own():
    engine = Engine()
    scheduler = Scheduler("test", engine, max_batch_tokens=1000, max_queue_tokens=1000)

    async def main():
        engine.release.clear()
        first = asyncio.ensure_future(scheduler.run("a", ["warm"], 1))  # holds the worker
        await asyncio.to_thread(engine.started.wait, 5)
        jobs = [scheduler.run(key, [f"{key}{i}-{j}" for j in range(i % 3 + 1)], 2)
                for i, key in enumerate("abab" * 3)]
        waiting = asyncio.gather(*jobs)
        await queued(scheduler, 1 + 2 * len(jobs))   # all twelve wait behind the held one
        engine.release.set()
        return await first, await waiting

    try:
        first, results = asyncio.run(asyncio.wait_for(main(), 20))
    finally:
        scheduler.stop(5)
    assert first == [("a", "warm")]
    for i, (key, result) in enumerate(zip("abab" * 3, results)):
        assert result == [(key, f"{key}{i}-{j}") for j in range(i % 3 + 1)]
    # The twelve requests that waited together took one engine call per key.
    assert [key for key, _ in engine.calls[1:]] == ["a", "b"]
    assert scheduler.queued_tokens == 0


def test_scheduler_refuses_what_does_not_fit_with_a_retry_time_and_takes_it_later():
    engine = Engine()
    scheduler = Scheduler("test", engine, max_batch_tokens=100, max_queue_tokens=10)

    async def main():
        engine.release.clear()
        held = asyncio.ensure_future(scheduler.run("k", ["x"], 8))
        await asyncio.to_thread(engine.started.wait, 5)
        with pytest.raises(QueueFull) as refused:
            await scheduler.run("k", ["y"], 5)
        assert refused.value.retry_after >= 1
        engine.release.set()
        await held
        return await scheduler.run("k", ["y"], 5)

    try:
        assert asyncio.run(asyncio.wait_for(main(), 20)) == [("k", "y")]
    finally:
        scheduler.stop(5)


def test_scheduler_drops_a_cancelled_request_before_decoding_it():
    engine = Engine()
    dropped = []
    scheduler = Scheduler("test", engine, max_batch_tokens=100, max_queue_tokens=100)
    scheduler.stats.on_dropped = dropped.append

    async def main():
        engine.release.clear()
        held = asyncio.ensure_future(scheduler.run("k", ["first"], 1))
        await asyncio.to_thread(engine.started.wait, 5)
        gone = asyncio.ensure_future(scheduler.run("k", ["gone-1", "gone-2"], 2))
        kept = asyncio.ensure_future(scheduler.run("k", ["kept"], 1))
        await queued(scheduler, 1 + 2 + 1)
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gone                              # its cancellation has reached the scheduler
        engine.release.set()
        return await held, await kept

    try:
        assert asyncio.run(asyncio.wait_for(main(), 20)) == ([("k", "first")], [("k", "kept")])
    finally:
        scheduler.stop(5)
    decoded = [item for _, inputs in engine.calls for item in inputs]
    assert decoded == ["first", "kept"]
    assert dropped == [2]


def test_scheduler_hands_an_engine_failure_to_the_requests_that_were_in_it():
    def failing(key, inputs):
        raise RuntimeError("decode failed")

    scheduler = Scheduler("test", failing, max_batch_tokens=100, max_queue_tokens=100)
    try:
        with pytest.raises(RuntimeError, match="decode failed"):
            asyncio.run(asyncio.wait_for(scheduler.run("k", ["x"], 1), 10))
    finally:
        scheduler.stop(5)
    assert scheduler.queued_tokens == 0


def test_embedding_inputs_accept_the_four_openai_forms():
    assert embedding_inputs("hi", "input", max_inputs=10, accept_token_ids=False).texts == ["hi"]
    assert embedding_inputs(["a", "b"], "input", max_inputs=10, accept_token_ids=False).texts == ["a", "b"]
    assert embedding_inputs([1, 2, 3], "input", max_inputs=10, accept_token_ids=True).token_ids == [[1, 2, 3]]
    assert embedding_inputs([[1], [2, 3]], "input", max_inputs=10, accept_token_ids=True).token_ids == [[1], [2, 3]]


@pytest.mark.parametrize("ids", [[1, 2, 3], [[1], [2, 3]]])
def test_token_ids_are_refused_unless_accepted_saying_why(ids):
    with pytest.raises(ApiError) as refused:
        embedding_inputs(ids, "inputs", max_inputs=10, accept_token_ids=False)
    assert refused.value.status == 400 and refused.value.param == "inputs"
    assert refused.value.message.startswith("'inputs' holds token ids, which this server would read as Qwen3 token ids")
    assert "check_embedding_ctx_length=False" in refused.value.message
    assert refused.value.message.endswith("start the server with --accept-token-ids")


@pytest.mark.parametrize(("value", "status", "fragment"), [
    (None, 400, "must be a string or a list"),
    ("", 400, "'input[0]' is an empty string"),
    ([], 400, "empty list"),
    (["ok", ""], 400, "'input[1]' is an empty string"),
    (["ok", 3], 400, "mixes token ids"),
    ([["a"]], 400, "'input[0]' must be a list of integer token ids"),
    ([[]], 400, "'input[0]' is an empty list of token ids"),
    ([True, False], 400, "'input[0]' must be a string"),
    ([1.5], 400, "'input[0]' must be a string, not a number"),
    ({"text": "x"}, 400, "not an object"),
    (["x"] * 11, 413, "at most 10"),
])
def test_embedding_inputs_refuse_bad_shapes_naming_the_field(value, status, fragment):
    with pytest.raises(ApiError) as refused:
        embedding_inputs(value, "input", max_inputs=10, accept_token_ids=True)
    assert refused.value.status == status
    assert fragment in refused.value.message
    assert refused.value.param == "input"


def test_fields_are_type_checked_and_booleans_are_not_numbers():
    assert field({"n": 3}, "n", int) == 3
    assert field({}, "n", int, 7) == 7
    with pytest.raises(ApiError, match="'n' must be an integer, not a boolean"):
        field({"n": True}, "n", int)
    with pytest.raises(ApiError, match="'q' is required"):
        field({}, "q", str)
    with pytest.raises(ApiError, match="'documents\\[1\\]' is an object without a string 'text'"):
        text_list(["a", {"txt": "b"}], "documents", max_inputs=5, allow_objects=True)


def test_query_instruction_comes_from_any_of_the_three_conventions():
    assert instruction_of({}) is None
    assert instruction_of({"input_type": "document"}) is None
    assert instruction_of({"input_type": "query"}) == DEFAULT_INSTRUCTION
    assert instruction_of({"prompt_name": "query"}) == DEFAULT_INSTRUCTION
    assert instruction_of({"instruction": "Find code"}) == "Find code"
    assert instruction_of({"input_type": "query", "instruction": "Find code"}) == "Find code"
    assert instruction_of({}, queries=True) == DEFAULT_INSTRUCTION  # the query model id
    assert instruction_of({"input_type": "document"}, queries=True) is None
    for bad in ({"input_type": "passage"}, {"input_type": "query", "prompt_name": "document"},
                {"input_type": "document", "instruction": "x"}, {"instruction": "  "}):
        with pytest.raises(ApiError):
            instruction_of(bad)


def test_each_family_has_its_original_error_shape():
    error = ApiError(400, "bad thing", param="input")
    assert openai_body(error) == {"error": {"message": "bad thing", "type": "invalid_request_error",
                                            "param": "input", "code": None}}
    assert llama_cpp_body(error) == {"error": {"code": 400, "message": "bad thing", "type": "invalid_request_error"}}
    assert tei_body(error) == {"error": "bad thing", "error_type": "Validation"}
    assert cohere_body(error) == {"message": "bad thing"}
    assert ollama_body(error) == {"error": "bad thing"}
    busy = ApiError(429, "busy", retry_after=3)
    assert busy.headers == {"Retry-After": "3"}
    assert tei_body(busy)["error_type"] == "Overloaded"
    assert openai_body(busy)["error"]["code"] == "rate_limit_exceeded"
