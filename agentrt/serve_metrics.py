"""The server's Prometheus metrics, under vLLM's names plus agentrt's, each with a `model_name`
label: gauges and counters read from the engine's `EngineSnapshot` at scrape time, histograms
observed per request."""

from __future__ import annotations

from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from engine.snapshot import EngineSnapshot


_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0)
_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                480.0, 960.0, 1920.0, 7680.0)
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
_JCT_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)
_LOG_ERROR_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
MIN_DURATION_S = 1e-3  # |log predicted - log observed| of sub-millisecond durations is noise


class ServerState(Protocol):
    """What the metrics read of the app's server state (agentrt/server.py `_Server`)."""

    aengine: Any  # engine.AsyncEngine: only its engine's published `snapshot` is read
    model_name: str
    num_requests: int
    finished: dict[str, int]  # requests by finish reason
    programs: Any  # ProgramTable: its size


class _SnapshotCollector:
    """Gauges and counters read at scrape time from the engine's published `EngineSnapshot` (and the
    server's own request and program counts), in the names a vLLM Grafana board reads."""

    def __init__(self, server: ServerState):
        self.server = server

    def collect(self):
        server = self.server
        snap: EngineSnapshot = server.aengine.engine.snapshot  # immutable: safe while the engine steps
        label = [server.model_name]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=["model_name"])
            g.add_metric(label, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=["model_name"])
            c.add_metric(label, value)
            return c

        yield gauge("vllm:num_requests_running", "Requests in the engine's running batch.", snap.num_running)
        yield gauge("vllm:num_requests_waiting", "Requests waiting to run.", snap.num_waiting)
        yield gauge("vllm:kv_cache_usage_perc", "Share of the KV pool in use (1 = full).", snap.kv_usage)
        yield counter("vllm:prompt_tokens", "Prompt tokens of admitted requests.", snap.num_prompt_tokens)
        yield counter("vllm:generation_tokens", "Tokens generated.", snap.num_generated_tokens)
        yield counter("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                      snap.num_prompt_tokens)
        yield counter("vllm:prefix_cache_hits", "Prompt tokens served from the prefix cache.",
                      snap.num_prefix_hit_tokens)
        yield counter("vllm:num_preemptions", "Requests preempted (their KV freed, recomputed later).",
                      snap.num_preemptions)
        success = CounterMetricFamily("vllm:request_success", "Finished requests, by finish reason.",
                                      labels=["model_name", "finished_reason"])
        for reason, n in sorted(server.finished.items()):
            success.add_metric([server.model_name, reason], n)
        yield success
        yield counter("agentrt:requests", "Generation requests accepted.", server.num_requests)
        yield gauge("agentrt:kv_blocks_total", "KV cache blocks.", snap.num_blocks)
        yield gauge("agentrt:kv_blocks_free", "Free KV cache blocks (cached, unreferenced ones count as free).",
                    snap.num_free_blocks)
        yield counter("agentrt:kv_pins", "KV pins made between a program's turns.", snap.num_pins)
        yield counter("agentrt:kv_pin_hits", "Pins whose program came back while they held.", snap.num_pin_hits)
        yield counter("agentrt:kv_pin_expired", "Pins that ran out their TTL.", snap.num_pin_expiries)
        released = CounterMetricFamily("agentrt:kv_pin_released", "Pins ended early: under KV pressure, or at "
                                       "the program's last turn.", labels=["model_name", "reason"])
        released.add_metric([server.model_name, "pressure"], snap.num_pin_forced_releases)
        released.add_metric([server.model_name, "last_turn"], snap.num_pin_last_turn_releases)
        yield released
        yield gauge("agentrt:kv_pinned_blocks", "KV blocks held by pins.", snap.num_pinned_blocks)
        yield gauge("agentrt:programs_active", "Programs the server is following (seen, not ended).",
                    len(server.programs))


class ServerMetrics:
    """The app's own Prometheus registry (one per app, so several apps live in one process)."""

    def __init__(self, server: ServerState):
        self.registry = CollectorRegistry()
        name = server.model_name

        def histogram(metric: str, doc: str, buckets: tuple) -> Any:
            return Histogram(metric, doc, ["model_name"], registry=self.registry, buckets=buckets).labels(name)

        self.ttft = histogram("vllm:time_to_first_token_seconds", "Time to first token.", _TTFT_BUCKETS)
        self.itl = histogram("vllm:inter_token_latency_seconds", "Time between a request's tokens.", _ITL_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "Request latency, arrival to last token.",
                             _E2E_BUCKETS)
        self.queue = histogram("vllm:request_queue_time_seconds", "Time a request waited before it first ran.",
                               _E2E_BUCKETS)
        self.prompt_tokens = histogram("vllm:request_prompt_tokens", "Prompt tokens per request.", _TOKEN_BUCKETS)
        self.generation_tokens = histogram("vllm:request_generation_tokens", "Generated tokens per request.",
                                           _TOKEN_BUCKETS)
        self.jct = histogram("agentrt:program_jct_seconds", "Program job completion time, first request to "
                             "last reply.", _JCT_BUCKETS)
        self.tool_error = histogram("agentrt:tool_duration_abs_log_error", "|log predicted - log observed| "
                                    "tool duration (predicted median; observed: the gap before the next turn).",
                                    _LOG_ERROR_BUCKETS)
        self.registry.register(_SnapshotCollector(server))
