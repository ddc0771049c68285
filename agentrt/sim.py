"""Thousands of agent programs against the simulated engine, in virtual time: `agentrt sim`.

    agentrt sim --traces DIR [--programs 5000] --rate R [--rate R2 ...] [--policy P ...]
                --hardware cpu-smollm2|h100-llama8b [--kv-blocks K] [--json OUT] [--png OUT]

Programs are the recorded sessions of agentrt/replay.py under the same scaling rules and the same
seeded tool pauses as `agentrt bench jct`. Each session's prompts are the token ids the runtime
would send: `replay_agent` runs once through a real `Context` on a recording stub backend and the
real chat template renders what it sent, with the model's replies left to the engine (a turn's
output tokens stay in the next prompt, as live). One token after the system prompt marks each
program, so programs replaying the same session share only the system prompt, as distinct tasks do.

Policies are the presets (agentrt/presets.py): the same engine options and the same retention policy
objects (`agentrt/retention.py`, `toolpredict/ttl.py`) fed the same prior, on `engine.sim.SimulatedEngine`,
i.e. the real scheduler, block pool and pins with step times from the hardware's cost model. A
discrete-event loop: program arrivals (Poisson) and tool completions enter the engine between steps
with their own timestamps; when nothing runs, the clock jumps to the next event. Deterministic for
a given seed. `simulate(...)` is the API; its figures are `agentrt.report.run_figures`'s keys, as the
JCT benchmark's (benchmarks/jct.py) are.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio

from engine.params import ProgramHint, SamplingParams
from engine.sim import SimulatedEngine, VirtualClock, hardware
from toolpredict.features import ToolCallRecord

from agentrt.backends.stub import StubBackend
from agentrt.context import Context
from agentrt.presets import PRESETS, get_preset
from agentrt.replay import ReplaySession, load_sessions, replay_agent, replay_prior
from agentrt.report import run_figures
from agentrt.retention import Retention
from agentrt.runtime import ProgramResult, RunResult, poisson_arrivals
from agentrt.types import ToolCall, ToolResult

# replay scaling per hardware: the CPU one is the JCT benchmark's (docs/benchmarks.md); the GPU one keeps the
# recorded sessions whole (Llama-3.1-8B holds 128k tokens)
WORKLOADS: dict[str, dict] = {
    "cpu-smollm2": {"scale": 0.06, "max_turns": 12, "max_context_tokens": 1500, "max_output_tokens": 32},
    "h100-llama8b": {"scale": 1.0, "max_turns": 100, "max_context_tokens": 65536, "max_output_tokens": 4096},
}


@dataclass(slots=True)
class SessionTokens:
    """One session as token ids: turn 0's prompt, then what each later turn adds after the previous
    turn's prompt and output; `shared` leading tokens (the system prompt) are common to all programs."""

    session: ReplaySession
    first: list[int]
    deltas: list[list[int]]
    shared: int


@dataclass(slots=True)
class Workload:
    sessions: list[SessionTokens]
    prior: list[ToolCallRecord]  # what the TTL predictors know before the run (the JCT benchmark's "replay" prior)
    options: dict


def session_tokens(session: ReplaySession, tokenizer) -> SessionTokens:
    """Runs `replay_agent` on a stub backend that records each prompt as the embedded backend renders it."""
    sent: list[list[dict]] = []

    def record(messages: list[dict], hint: ProgramHint) -> str:
        sent.append([dict(m) for m in messages])
        return ""  # the reply's tokens come from the engine at simulation time

    quiet = dataclasses.replace(session, turns=[dataclasses.replace(t, pause_s=0.0) for t in session.turns])
    ctx = Context(session.session_id, quiet, StubBackend(record), tool_format="bash", max_turns=len(session.turns))
    anyio.run(replay_agent, ctx, quiet)

    def render(messages: list[dict], generation: bool = True) -> list[int]:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        return tokenizer.encode(text, add_special_tokens=False)

    prompts = [render(m) for m in sent]
    deltas = []
    for before, after in itertools.pairwise(prompts):
        if after[: len(before)] != before:
            raise ValueError(f"session {session.session_id}: a turn's prompt does not extend the previous one")
        deltas.append(after[len(before):])
    shared = len(render(sent[0][:1], generation=False)) if sent[0][0]["role"] == "system" else 0
    return SessionTokens(session, prompts[0], deltas, min(shared, len(prompts[0]) - 1))


def load_workload(traces: str | Path, hardware_name: str = "cpu-smollm2", seed: int = 0, **options) -> Workload:
    """The sessions under `traces` as token ids, scaled by WORKLOADS[hardware_name] unless `options`
    (load_sessions' keywords) say otherwise, with the JCT benchmark's prior (durations drawn with seed + 1)."""
    from engine.loader import load_tokenizer, resolve_model

    opts = {**WORKLOADS[hardware_name], **options}
    tokenizer = load_tokenizer(resolve_model(None))
    sessions = load_sessions(traces, tokenizer, seed=seed, **opts)
    prior = replay_prior(load_sessions(traces, tokenizer, seed=seed + 1, **opts))
    return Workload([session_tokens(s, tokenizer) for s in sessions], prior, {**opts, "seed": seed})


@dataclass(slots=True)
class _Program:
    index: int
    program_id: str
    tokens: SessionTokens
    arrival_s: float
    turn: int = 0
    context: list[int] = dataclasses.field(default_factory=list)  # last prompt + its output
    finished_s: float | None = None


class _Simulation:
    """The event loop over one simulated engine."""

    def __init__(self, engine: SimulatedEngine, clock: VirtualClock, retention: Retention | None, vocab: int,
                 mark_programs: bool):
        self.engine, self.clock, self.retention, self.vocab = engine, clock, retention, vocab
        self.mark_programs = mark_programs
        self.events: list[tuple[float, int, int]] = []  # (time, tie-break, program index): its next turn is due
        self.programs: list[_Program] = []
        self.by_request: dict[str, _Program] = {}
        self._seq = 0

    def _due(self, t: float, p: _Program) -> None:
        heapq.heappush(self.events, (t, self._seq, p.index))
        self._seq += 1

    def add_program(self, tokens: SessionTokens, arrival_s: float) -> None:
        p = _Program(len(self.programs), f"sim-{len(self.programs)}", tokens, arrival_s)
        self.programs.append(p)
        self._due(arrival_s, p)

    def _submit(self, p: _Program, t: float) -> None:
        st, turns = p.tokens, p.tokens.session.turns
        turn = turns[p.turn]
        last = p.turn == len(turns) - 1
        if p.turn == 0:
            prompt = list(st.first)
            if self.mark_programs:
                prompt[st.shared] = 3 + p.index % (self.vocab - 3)
        else:
            call = self._call(p, p.turn - 1)
            if self.retention is not None:  # the runtime's tool hook: the finished call teaches the predictor
                pause = turns[p.turn - 1].pause_s
                self.retention.observe(p.program_id, ToolResult(call, "", True, 0, started_at=t - pause, finished_at=t))
            prompt = p.context + st.deltas[p.turn - 1]
        callback = None
        if self.retention is not None and not last:
            call, retention, pid = self._call(p, p.turn), self.retention, p.program_id

            def callback(out, snapshot) -> float:
                return retention.ttl_for(pid, call, len(out.prompt_token_ids) + len(out.token_ids), snapshot).ttl_s
        params = SamplingParams(temperature=0.0, max_tokens=turn.output_tokens, ignore_eos=True)
        req = self.engine.make_request(prompt, params, request_id=f"{p.program_id}-{p.turn}",
                                       hint=ProgramHint(p.program_id, p.turn, last), retention=callback)
        req.metrics.arrival_time = t  # it arrived when its event fired, maybe during the last step
        self.engine.submit(req)
        self.by_request[req.request_id] = p

    @staticmethod
    def _call(p: _Program, turn: int) -> ToolCall:
        return ToolCall("bash", {"command": p.tokens.session.turns[turn].command or "true"}, f"replay-{turn}")

    def _finished(self, out) -> None:
        p = self.by_request.pop(out.request_id)
        turns = p.tokens.session.turns
        t = out.metrics.finish_time
        if p.turn == len(turns) - 1:
            p.finished_s = t
            if self.retention is not None:
                self.retention.program_finished(p.program_id, len(turns))
            return
        p.context = out.prompt_token_ids + out.token_ids
        self._due(t + turns[p.turn].pause_s, p)
        p.turn += 1

    def run(self) -> None:
        engine, clock, events = self.engine, self.clock, self.events
        while events or engine.has_unfinished_requests():
            while events and events[0][0] <= clock.now:
                t, _, i = heapq.heappop(events)
                self._submit(self.programs[i], t)
            if engine.has_unfinished_requests():
                outputs = engine.step()
                if not outputs and engine.last_step.num_requests == 0:
                    self._wait()
                for out in outputs:
                    if out.finished:
                        self._finished(out)
            elif events:
                clock.advance_to(events[0][0])

    def _wait(self) -> None:
        """Nothing could run (requests wait on earlier programs' pins, `protect_earlier_pins`): jump to
        the next pin expiry or event, as the real engine would sleep until then."""
        expiry = self.engine.snapshot.next_pin_expiry_s
        later = [expiry] if expiry is not None else []
        if self.events:
            later.append(self.events[0][0])
        if not later:
            raise RuntimeError("the simulated engine is stuck: requests wait, no pin expires and no program arrives")
        self.clock.advance_to(min(later))


def simulate(workload: Workload | str | Path, policy: str, rate: float, programs: int | None = None,
             kv_blocks: int | None = None, hardware_name: str = "cpu-smollm2", seed: int = 0, *,
             max_num_seqs: int | None = None, mark_programs: bool = True,
             retention: Callable[[list[ToolCallRecord]], Retention | None] | None = None) -> dict:
    """One simulated run: `programs` programs (default one per session; more cycle the sessions)
    arriving at `rate` per second under preset `policy`. `retention(prior)`, if given, replaces the
    preset's retention policy (to try new TTL policies). `mark_programs=False` replays sessions token
    for token as the JCT benchmark does (copies of a session then share all their prefixes).
    Returns `run_figures`' keys (mean/p50/p95 JCT, makespan, pin hits and hit rate, recomputed
    prefill tokens, ...) plus the simulation's own (steps, virtual and wall seconds)."""
    preset = get_preset(policy)
    if isinstance(workload, (str, Path)):
        workload = load_workload(workload, hardware_name, seed)
    hw = hardware(hardware_name)
    options = preset.engine_options()
    options["profile_reload"] = options["profile_reload"] or retention is not None
    clock = VirtualClock()
    engine = SimulatedEngine(hw.cost_model, clock=clock, kv_cache_tokens=(kv_blocks or hw.default_kv_blocks) * 16,
                             max_num_seqs=max_num_seqs or hw.max_num_seqs, **options)
    ret = retention(list(workload.prior)) if retention is not None else preset.retention(workload.prior)
    n = programs or len(workload.sessions)
    sim = _Simulation(engine, clock, ret, engine.model_config.vocab_size, mark_programs)
    start = clock.now  # after the reload profile's virtual seconds
    for i, offset in enumerate(poisson_arrivals(n, rate, seed)):
        sim.add_program(workload.sessions[i % len(workload.sessions)], start + offset)
    t0 = time.perf_counter()
    sim.run()
    wall = time.perf_counter() - t0
    engine.check_integrity()
    res = RunResult(f"sim-{policy}", started_at=start, finished_at=clock.now, programs=[
        ProgramResult(p.program_id, p.index, p.tokens.session.session_id, "finished", arrival_at=p.arrival_s,
                      started_at=p.arrival_s, finished_at=p.finished_s, turns=len(p.tokens.session.turns))
        for p in sim.programs])
    snap = engine.take_snapshot()
    out = run_figures(res, wall, snap)
    out.update({"steps": snap.num_steps, "virtual_s": clock.now - start,
                "tool_time_s": sum(t.pause_s for p in sim.programs for t in p.tokens.session.turns),
                "free_blocks_at_end": snap.num_free_blocks, "kv_blocks": snap.num_blocks})
    return out


def plot(results: dict, png: str | Path, title: str) -> None:
    """Mean JCT against arrival rate, one line per policy (results: policy -> rate -> figures)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for policy, by_rate in results.items():
        rates = sorted(by_rate, key=float)
        ax.plot([float(r) for r in rates], [by_rate[r]["mean_jct_s"] for r in rates], marker="o", label=policy)
    ax.set_xlabel("program arrival rate (programs/s)")
    ax.set_ylabel("mean JCT (s)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(args) -> dict:
    options = {k: getattr(args, k) for k in ("scale", "max_output_tokens", "max_turns", "max_context_tokens")
               if getattr(args, k) is not None}
    workload = load_workload(args.traces, args.hardware, args.seed, tool_time_scale=args.tool_time_scale,
                             pauses=args.pauses, **options)
    n = args.programs or len(workload.sessions)
    policies = args.policy or list(PRESETS)
    print(f"{n} programs from {len(workload.sessions)} sessions in {args.traces} on {args.hardware} (simulated)",
          flush=True)
    out = {"traces": str(args.traces), "programs": n, "hardware": args.hardware,
           "cost_model": hardware(args.hardware).cost_model.describe(), "workload": workload.options,
           "rates": args.rate, "results": {p: {} for p in policies}}
    out["cost_model"].get("source", {}).pop("samples", None)
    for rate in args.rate:
        for name in policies:
            r = simulate(workload, name, rate, n, args.kv_blocks, args.hardware, args.seed,
                         max_num_seqs=args.max_num_seqs)
            out["results"][name][str(rate)] = r
            print(f"rate {rate:>6}/s {name:>16}: mean JCT {r['mean_jct_s']:.1f} s  p50 {r['p50_jct_s']:.1f}  "
                  f"p95 {r['p95_jct_s']:.1f}  pin hits {r['pin_hits']}/{r['pins']}  "
                  f"recomputed {r['recomputed_prefill_tokens']} tokens  preemptions {r['preemptions']}  "
                  f"({r['steps']} steps, {r['wall_s']:.1f} s)", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
    if args.png:
        kv = args.kv_blocks or hardware(args.hardware).default_kv_blocks
        plot(out["results"], args.png, f"{n} programs from {Path(args.traces).name}, {args.hardware} (simulated), "
                                       f"KV {kv} blocks")
    return out
