"""Prometheus metrics of one app, in a registry of its own (two apps in a process do not mix)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .scheduler import SchedulerStats

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("qwen3_gguf_requests", "HTTP requests answered, by route and status.",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("qwen3_gguf_request_seconds", "Time from request to response, by route.",
                                 ["route"], registry=self.registry,
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.inputs = Counter("qwen3_gguf_inputs", "Inputs answered (texts, token lists, documents), by model.",
                              ["model"], registry=self.registry)
        self.tokens = Counter("qwen3_gguf_tokens", "Prompt tokens answered, by model.", ["model"],
                              registry=self.registry)
        self.decoded_inputs = Counter("qwen3_gguf_decoded_inputs", "Inputs run through the engine, by model.",
                                      ["model"], registry=self.registry)
        self.dropped_inputs = Counter("qwen3_gguf_dropped_inputs",
                                      "Inputs of disconnected clients dropped before decoding, by model.",
                                      ["model"], registry=self.registry)
        self.queue_tokens = Gauge("qwen3_gguf_queue_tokens", "Tokens admitted and not yet finished, by model.",
                                  ["model"], registry=self.registry)
        self.batch_inputs = Histogram("qwen3_gguf_batch_inputs", "Inputs per engine call, by model.", ["model"],
                                      registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024))
        self.batch_tokens = Histogram("qwen3_gguf_batch_tokens", "Tokens per engine call, by model.", ["model"],
                                      registry=self.registry,
                                      buckets=(16, 64, 256, 1024, 4096, 16384, 65536))

    def scheduler_stats(self, model: str) -> SchedulerStats:
        """The hooks a model's scheduler reports through."""

        def on_round(n_inputs: int, n_tokens: int) -> None:
            self.decoded_inputs.labels(model).inc(n_inputs)
            self.batch_inputs.labels(model).observe(n_inputs)
            self.batch_tokens.labels(model).observe(n_tokens)

        return SchedulerStats(
            on_round=on_round,
            on_dropped=self.dropped_inputs.labels(model).inc,
            on_queue=self.queue_tokens.labels(model).set,
        )

    def admitted(self, model: str, n_inputs: int, n_tokens: int) -> None:
        self.inputs.labels(model).inc(n_inputs)
        self.tokens.labels(model).inc(n_tokens)

    def answered(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
