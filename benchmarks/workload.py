"""The benchmark's data: agent sessions shaped like real ones, generated from a seeded RNG.

Standard library only: the peers' runner imports this module from its own virtual environment, so
that every system, in either interpreter, stores exactly the same sessions and runs.

A session is a user (one of many), an agent, a state dict and a history of runs. A run is one agent
turn: a user message, an assistant message of a few hundred bytes, sometimes a tool call and its
result, and the metrics an agent framework records.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Final

_TEXT: Final = (
    "the order shipped yesterday and should arrive within three business days please check the "
    "tracking link for updates about your refund policy account settings invoice billing address "
    "weather forecast in paris tomorrow will be sunny with light wind from the north west the "
    "meeting was moved to thursday afternoon because the quarterly report is not ready yet can "
    "you summarise the last document and list the action items for the team before friday "
    "python function returns a list of dictionaries sorted by date the database query took "
    "longer than expected so we added an index on the user column and the latency dropped"
)
_WORDS: Final = tuple(_TEXT.split())
_TOOLS: Final = ("get_weather", "search_orders", "lookup_invoice", "create_ticket", "web_search")
_CITIES: Final = ("Paris", "Berlin", "Lisbon", "Osaka", "Toronto", "Nairobi", "Lima", "Oslo")
_MODELS: Final = ("gpt-4.1-mini", "claude-sonnet-4", "gemini-2.5-flash", "llama-3.3-70b")


@dataclass(frozen=True)
class WorkloadSpec:
    """What to seed. Everything derives from `seed`, so two processes build identical data."""

    sessions: int = 2000
    users: int = 200
    agents: int = 8
    min_runs: int = 4  # run history lengths are uniform in [min_runs, max_runs]
    max_runs: int = 16
    last_runs: int = 10  # a turn loads this many recent runs (the context window)
    list_limit: int = 10  # the listing scenario's page size
    tool_call_share: float = 0.3  # share of runs with a tool call
    seed: int = 20261125
    prefix: str = "s"  # session ids are f"{prefix}{index:07d}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkloadSpec:
        return cls(**data)

    def history(self, runs: int, sessions: int) -> WorkloadSpec:
        """The same workload with every session holding exactly `runs` runs."""
        return WorkloadSpec(
            sessions=sessions,
            users=max(1, min(self.users, sessions // 4)),
            agents=self.agents,
            min_runs=runs,
            max_runs=runs,
            last_runs=self.last_runs,
            list_limit=self.list_limit,
            tool_call_share=self.tool_call_share,
            seed=self.seed + runs,
            prefix=f"h{runs}_",
        )


@dataclass(frozen=True)
class SessionRef:
    """What a caller knows before a turn: which session, whose, which agent."""

    session_id: str
    user_id: str
    agent_id: str


@dataclass
class SeedSession:
    """One seeded session as plain JSON values (the fields of `Session`)."""

    session_id: str
    user_id: str
    agent_id: str
    session_data: dict[str, Any]
    agent_data: dict[str, Any]
    metadata: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)
    created_at: int = 0  # epoch seconds

    @property
    def ref(self) -> SessionRef:
        return SessionRef(self.session_id, self.user_id, self.agent_id)

    def session_fields(self) -> dict[str, Any]:
        """The keyword arguments of the `Session` that stores this seed."""
        return {
            "session_id": self.session_id,
            "user_id": self.user_id,
            "agent_id": self.agent_id,
            "session_data": self.session_data,
            "agent_data": self.agent_data,
            "metadata": self.metadata,
            "runs": self.runs,
        }


def _text(rng: random.Random, approx_bytes: int) -> str:
    # Words average about six bytes with their space: one choices() call, not a loop.
    words = rng.choices(_WORDS, k=max(1, approx_bytes // 6))
    return " ".join(words).capitalize() + "."


def make_run(
    rng: random.Random, *, session_id: str, agent_id: str, user_id: str, index: int, share: float
) -> dict[str, Any]:
    """One run: the user's message, the assistant's answer (and sometimes a tool call), metrics.
    About 1 KB of JSON."""
    run_id = f"{session_id}-r{index}-{rng.getrandbits(32):08x}"
    question = _text(rng, rng.randint(60, 200))
    messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
    if rng.random() < share:
        tool = rng.choice(_TOOLS)
        call_id = f"call_{rng.getrandbits(48):012x}"
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {
                            "name": tool,
                            "arguments": f'{{"query": "{_text(rng, 30)}", "limit": 5}}',
                        },
                    }
                ],
            }
        )
        messages.append({"role": "tool", "tool_call_id": call_id, "content": _text(rng, 150)})
    answer = _text(rng, rng.randint(250, 450))
    messages.append({"role": "assistant", "content": answer})
    tokens_in = rng.randint(200, 4000)
    tokens_out = rng.randint(50, 600)
    return {
        "run_id": run_id,
        "agent_id": agent_id,
        "user_id": user_id,
        "status": "COMPLETED",
        "input": question,
        "content": answer,
        "messages": messages,
        "model": rng.choice(_MODELS),
        "metrics": {
            "input_tokens": tokens_in,
            "output_tokens": tokens_out,
            "total_tokens": tokens_in + tokens_out,
            "duration": round(rng.uniform(0.4, 9.0), 3),
        },
        "created_at": 1_764_000_000 + index * 60,
    }


def next_state(session_data: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """The turn's state update: a counter, the last city, a bounded list of notes."""
    state = dict(session_data.get("session_state") or {})
    state["turns"] = int(state.get("turns", 0)) + 1
    state["city"] = rng.choice(_CITIES)
    notes = list(state.get("notes") or [])[-4:]
    notes.append(_text(rng, 40))
    state["notes"] = notes
    return {**session_data, "session_state": state}


def _session(spec: WorkloadSpec, index: int) -> SeedSession:
    rng = random.Random(spec.seed * 1_000_003 + index)
    session_id = f"{spec.prefix}{index:07d}"
    user_id = f"user{index % spec.users:05d}"
    agent_id = f"agent{rng.randrange(spec.agents)}"
    n_runs = rng.randint(spec.min_runs, spec.max_runs)
    runs = [
        make_run(
            rng,
            session_id=session_id,
            agent_id=agent_id,
            user_id=user_id,
            index=i,
            share=spec.tool_call_share,
        )
        for i in range(n_runs)
    ]
    state = {
        "session_name": _text(rng, 20),
        "session_state": {
            "turns": n_runs,
            "city": rng.choice(_CITIES),
            "cart": [{"sku": f"SKU-{rng.randrange(10_000)}", "qty": rng.randint(1, 3)}] * 2,
            "notes": [_text(rng, 40)],
            "preferences": {"language": "en", "units": "metric", "verbose": rng.random() < 0.5},
        },
    }
    return SeedSession(
        session_id=session_id,
        user_id=user_id,
        agent_id=agent_id,
        session_data=state,
        agent_data={"name": agent_id, "model": {"id": rng.choice(_MODELS), "provider": "bench"}},
        metadata={"source": "benchmark", "tier": rng.choice(("free", "pro", "team"))},
        runs=runs,
        created_at=1_764_000_000 + index,
    )


def sessions(spec: WorkloadSpec) -> Iterator[SeedSession]:
    """Every seeded session, in order; the same for every process."""
    for index in range(spec.sessions):
        yield _session(spec, index)


@lru_cache(maxsize=16)
def refs(spec: WorkloadSpec) -> list[SessionRef]:
    """The id, owner and agent of every seeded session (cheap: no run is built; cached, do not
    modify the list)."""
    out: list[SessionRef] = []
    for index in range(spec.sessions):
        rng = random.Random(spec.seed * 1_000_003 + index)
        out.append(
            SessionRef(
                f"{spec.prefix}{index:07d}",
                f"user{index % spec.users:05d}",
                f"agent{rng.randrange(spec.agents)}",
            )
        )
    return out


def users(spec: WorkloadSpec) -> list[str]:
    return [f"user{u:05d}" for u in range(min(spec.users, spec.sessions))]


class Picker:
    """Per-worker random choice of the session (or user) each operation works on."""

    def __init__(self, spec: WorkloadSpec, worker: int, salt: int = 0) -> None:
        self.rng = random.Random(spec.seed ^ (worker * 7919 + salt * 104_729 + 1))
        self._refs = refs(spec)
        self._users = users(spec)
        self._spec = spec
        self._counter = 0

    def session(self) -> SessionRef:
        return self._refs[self.rng.randrange(len(self._refs))]

    def user(self) -> str:
        return self._users[self.rng.randrange(len(self._users))]

    def new_run(self, ref: SessionRef) -> dict[str, Any]:
        self._counter += 1
        return make_run(
            self.rng,
            session_id=ref.session_id,
            agent_id=ref.agent_id,
            user_id=ref.user_id,
            index=10_000 + self._counter,
            share=self._spec.tool_call_share,
        )
