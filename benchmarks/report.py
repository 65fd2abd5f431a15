"""Ratios, the performance targets, and the outputs: the terminal tables, JSON, Markdown, PNG."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .loadgen import CellResult
from .systems import BULK, HISTORY, LIST, LIST_RUNS, TURN

RAW = {"sqlite": "raw aiosqlite", "postgres": "raw asyncpg", "mongo": "raw pymongo"}
SCENARIO_TITLES = {
    TURN: "Turn (read last N runs + write), turns/s",
    LIST: "List a user's 10 most recent sessions, lists/s",
    LIST_RUNS: "List a user's 10 most recent sessions with their runs, lists/s",
    HISTORY: "Turn on sessions of 10 / 100 / 1,000 runs, turns/s",
    "cold_start_fresh": "Cold start: open() on a fresh database",
    "cold_start_current": "Cold start: open() on an up-to-date database",
    BULK: "Bulk load (upsert_many), sessions/s",
}
STORE_SYSTEMS = ("store append", "store upsert")
LEASED, UNLEASED = "store leased", "store append"
SEALED = "store sealed"


def cells_from(data: dict[str, Any]) -> list[CellResult]:
    return [CellResult.from_dict(c) for c in data["cells"]]


def _key(cell: CellResult) -> tuple[str, str, int, int | None]:
    return (cell.backend, cell.scenario, cell.concurrency, cell.param)


def baseline(cells: Iterable[CellResult]) -> dict[tuple[str, str, int, int | None], CellResult]:
    """The raw driver's cell for each (backend, scenario, concurrency, param)."""
    return {_key(c): c for c in cells if c.kind == "raw" and c.system == RAW.get(c.backend)}


def ratio(
    cell: CellResult, base: dict[tuple[str, str, int, int | None], CellResult]
) -> float | None:
    """Throughput of the cell over the raw driver's, in the same run."""
    raw = base.get(_key(cell))
    if raw is None or not raw.ops_per_s or not cell.ops_per_s:
        return None
    return cell.ops_per_s / raw.ops_per_s


def p99_ratio(
    cell: CellResult, base: dict[tuple[str, str, int, int | None], CellResult]
) -> float | None:
    raw = base.get(_key(cell))
    if raw is None or not raw.p99_ms or not cell.p99_ms:
        return None
    return cell.p99_ms / raw.p99_ms


@dataclass
class LeaseCost:
    """What a turn under a lease costs against the same turn without one, in the same run:
    `time` is the unleased turns/s over the leased (how much longer a leased turn takes at that
    load), `p50` the leased p50 over the unleased p50."""

    backend: str
    concurrency: int
    time: float | None
    p50: float | None


def lease_costs(cells: list[CellResult], variant: str = LEASED) -> list[LeaseCost]:
    """The cost of `variant` (the leased turn, or the sealed one) against "store append"."""
    out = []
    for c in cells:
        if (c.scenario, c.system) != (TURN, variant):
            continue
        plain = _find(cells, c.backend, TURN, UNLEASED, c.concurrency)
        if plain is None:
            continue
        time = plain.ops_per_s / c.ops_per_s if c.ops_per_s and plain.ops_per_s else None
        p50 = c.p50_ms / plain.p50_ms if c.p50_ms and plain.p50_ms else None
        out.append(LeaseCost(c.backend, c.concurrency, time, p50))
    return out


def lease_cost_lines(cells: list[CellResult], variant: str = LEASED) -> list[str]:
    """One line per backend: the leased (or sealed) turn's cost at each concurrency of the run."""
    by_backend: dict[str, list[LeaseCost]] = {}
    for cost in lease_costs(cells, variant):
        by_backend.setdefault(cost.backend, []).append(cost)
    what, against = (
        ("a leased", "an unleased one") if variant == LEASED else ("an encrypted", "a plain one")
    )
    return [
        f"{backend}: {what} turn costs "
        + ", ".join(
            f"{c.time:.2f}x (p50 {c.p50:.2f}x) at {c.concurrency}"
            for c in costs
            if c.time is not None and c.p50 is not None
        )
        + f" {against} (callers)"
        for backend, costs in by_backend.items()
    ]


@dataclass
class Target:
    name: str
    met: bool | None  # None: not measured in this run
    detail: str


def _find(
    cells: list[CellResult],
    backend: str,
    scenario: str,
    system: str,
    conc: int | None = None,
    param: int | None = None,
) -> CellResult | None:
    for c in cells:
        if (
            (c.backend, c.scenario, c.system) == (backend, scenario, system)
            and (conc is None or c.concurrency == conc)
            and (param is None or c.param == param)
        ):
            return c
    return None


def targets(cells: list[CellResult], systems: list[dict[str, Any]] | None = None) -> list[Target]:
    """The performance targets (docs/benchmarks.md), judged on this run's cells."""
    base = baseline(cells)
    out: list[Target] = []

    def x(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}x"

    def each(backend: str, scenario: str, system: str) -> list[tuple[int, float]]:
        found = [
            (c.concurrency, ratio(c, base))
            for c in cells
            if (c.backend, c.scenario, c.system) == (backend, scenario, system)
        ]
        return [(n, r) for n, r in found if r is not None]

    def at_least(name: str, known: list[tuple[int, float]], goal: Any) -> None:
        """A target on the cells of one scenario (none measured: no line); `goal(n)` is the
        ratio the cell at n callers must reach."""
        if known:
            out.append(
                Target(
                    name,
                    all(r >= goal(n) for n, r in known),
                    ", ".join(f"{n}: {x(r)}" for n, r in known),
                )
            )

    # The turn, against the raw driver sending the same statements.
    raw_pg, raw_sqlite = RAW["postgres"], RAW["sqlite"]
    at_least(
        f"PostgreSQL turn, store append >= 1.5x {raw_pg} at every concurrency",
        each("postgres", TURN, "store append"),
        lambda n: 1.5,
    )
    at_least(
        f"PostgreSQL turn, store upsert >= 1.0x {raw_pg} at every concurrency",
        each("postgres", TURN, "store upsert"),
        lambda n: 1.0,
    )
    for system in STORE_SYSTEMS:
        c = _find(cells, "postgres", TURN, system, 256)
        r = None if c is None else p99_ratio(c, base)
        if c is not None:
            out.append(
                Target(
                    f"PostgreSQL p99 at 256 callers, {system} <= {raw_pg}'s",
                    None if r is None else r <= 1.0,
                    "n/a" if r is None else f"{c.p99_ms:.0f} ms, {x(r)} raw's",
                )
            )
    at_least(
        f"SQLite turn, store append >= 1.0x one {raw_sqlite} connection at 1 caller, "
        ">= 1.5x at 16 and more",
        each("sqlite", TURN, "store append"),
        lambda n: 1.0 if n < 16 else 1.5,
    )
    at_least(
        f"SQLite turn, store upsert >= 1.0x one {raw_sqlite} connection at every concurrency",
        each("sqlite", TURN, "store upsert"),
        lambda n: 1.0,
    )
    # Bulk load: upsert_many against the raw driver's batched insert.
    for backend, goal in (("postgres", 1.5), ("sqlite", 1.0)):
        at_least(
            f"{backend} bulk load (upsert_many) >= {goal:.1f}x {RAW[backend]}'s batched insert",
            each(backend, BULK, "store append"),
            lambda n, goal=goal: goal,
        )
    # Bytes on disk per seeded session, tables and indexes.
    seeds = {(s["backend"], s["name"]): (s.get("seed") or {}) for s in systems or []}
    for backend, limit in (("postgres", 1.5), ("sqlite", 1.2)):
        store = seeds.get((backend, "store append"), {}).get("bytes_per_session")
        raw = seeds.get((backend, RAW[backend]), {}).get("bytes_per_session")
        if store and raw:
            out.append(
                Target(
                    f"{backend} bytes on disk per session <= {limit:.1f}x {RAW[backend]}'s",
                    store / raw <= limit,
                    f"{store / raw:.2f}x ({store:,.0f} vs {raw:,.0f} bytes)",
                )
            )
    # Listing.
    for backend in ("postgres", "sqlite", "mongo"):
        at_least(
            f"{backend} listing >= 2x raw fetching full rows",
            each(backend, LIST, "store append"),
            lambda n: 2.0,
        )
        at_least(
            f"{backend} listing with runs >= 2x raw fetching full rows",
            each(backend, LIST_RUNS, "store append"),
            lambda n: 2.0,
        )
    # History scaling.
    for backend in ("sqlite", "postgres", "mongo"):
        for system in STORE_SYSTEMS:
            short = _find(cells, backend, HISTORY, system, param=10)
            long = _find(cells, backend, HISTORY, system, param=1000)
            if short is None or long is None or not long.ops_per_s:
                continue
            cost = short.ops_per_s / long.ops_per_s
            out.append(
                Target(
                    f"{backend} {system}: a turn on 1,000 runs costs <= 1.5x one on 10 runs",
                    cost <= 1.5,
                    f"{cost:.2f}x ({short.ops_per_s:.0f} vs {long.ops_per_s:.0f} turns/s)",
                )
            )
    # Errors and memory.
    # The rule is the store's (and the raw baseline's, which would make the comparison void);
    # a peer failing is a finding about the peer, reported on its own line.
    errors = [c for c in cells if c.errors and c.kind != "peer"]
    out.append(
        Target(
            "zero errors at every cell (store and raw driver)",
            not errors,
            "none"
            if not errors
            else "; ".join(
                f"{c.backend} {c.scenario} x{c.concurrency} {c.system}: {c.errors}"
                for c in errors[:6]
            ),
        )
    )
    peer_errors = [c for c in cells if c.errors and c.kind == "peer"]
    if peer_errors:
        out.append(
            Target(
                "errors of the peers (for information)",
                None,
                "; ".join(
                    f"{c.backend} {c.scenario} x{c.concurrency} {c.system}: {c.errors} "
                    f"({c.error_samples[0] if c.error_samples else 'no message'})"
                    for c in peer_errors[:6]
                ),
            )
        )
    # Growth over the second half of the window: a leak grows with every turn, while a bounded
    # cache (SQLite's page cache, up to 64 MiB per connection) fills in the first half.
    growth = [
        (c, c.rss_end_mb - (c.rss_mid_mb or c.rss_start_mb))
        for c in cells
        if c.kind == "store" and c.scenario in (TURN, HISTORY) and c.ops
    ]
    if growth:
        worst, grown = max(growth, key=lambda g: g[1])
        out.append(
            Target(
                "RSS flat (store cells grow < 8 MiB over the second half of their window)",
                grown < 8.0,
                f"largest growth {grown:+.1f} MiB ({worst.backend} {worst.scenario} "
                f"x{worst.concurrency} {worst.system}); "
                f"peak {max(c.rss_peak_mb for c, _ in growth):.0f} MiB",
            )
        )
    return out


def scaling_lines(cells: list[CellResult]) -> list[str]:
    """The routed systems (a replica, PgBouncer) against "store append" straight to the
    primary, in the same run: each round's ratio, then their median and range."""
    direct = {
        (c.backend, c.scenario, c.concurrency): c
        for c in cells
        if c.system == "store append" and c.scenario in (TURN, LIST)
    }
    out = []
    for c in sorted(cells, key=lambda c: (c.scenario, c.system, c.concurrency)):
        base = direct.get((c.backend, c.scenario, c.concurrency))
        if base is None or not c.system.startswith("store append ") or not base.ops_per_s:
            continue
        mine = c.round_ops_per_s or [c.ops_per_s]
        theirs = base.round_ops_per_s or [base.ops_per_s]
        ratios = sorted(m / t for m, t in zip(mine, theirs, strict=True) if t)
        if not ratios:
            continue
        median = statistics.median(ratios)
        out.append(
            f"{c.backend} {c.scenario} x{c.concurrency}: {c.system} {c.ops_per_s:,.0f} ops/s vs "
            f"store append {base.ops_per_s:,.0f}: {median:.2f}x (rounds {ratios[0]:.2f}-"
            f"{ratios[-1]:.2f}, n={len(ratios)}); p99 {c.p99_ms:.1f} vs {base.p99_ms:.1f} ms"
        )
    return out


# --- outputs ----------------------------------------------------------------------------------


def _fmt_ratio(r: float | None) -> str:
    return "" if r is None else f"{r:.2f}x"


def rows(cells: list[CellResult]) -> list[dict[str, Any]]:
    """One row per cell, with its ratios to the raw driver, in a stable order."""
    base = baseline(cells)
    order = {s: i for i, s in enumerate(SCENARIO_TITLES)}
    kinds = {"store": 0, "raw": 1, "peer": 2}
    out = []
    for c in sorted(
        cells,
        key=lambda c: (
            c.backend,
            order.get(c.scenario, 99),
            c.param or 0,
            c.concurrency,
            kinds.get(c.kind, 3),
            c.system,
        ),
    ):
        out.append({"cell": c, "ratio": ratio(c, base), "p99_ratio": p99_ratio(c, base)})
    return out


def terminal_tables(data: dict[str, Any]) -> list[Any]:
    """One narrow table per backend and scenario (each fits an 80-column terminal): callers,
    system, throughput and its ratio to the raw driver, p50/p99 latency and the p99's ratio,
    CPU per operation, errors. The JSON and Markdown outputs carry every column (p95, RSS...)."""
    from rich import box
    from rich.table import Table

    tables: list[Any] = []
    table: Any = None
    previous: tuple[str, str, int | None] | None = None
    for row in rows(cells_from(data)):
        c: CellResult = row["cell"]
        group = (c.backend, c.scenario, None if c.scenario == BULK else c.param)
        if group != previous:
            previous = group
            title = SCENARIO_TITLES.get(c.scenario, c.scenario)
            if c.param is not None and c.scenario not in (BULK, TURN, LIST, LIST_RUNS):
                title += f" [{c.param}]"
            table = Table(
                title=f"{c.backend}: {title}",
                title_justify="left",
                box=box.SIMPLE_HEAD,
                header_style="bold",
                pad_edge=False,
            )
            for name in ("N", "system", "ops/s", "x raw", "p50", "p99", "p99 x raw", "CPU/op"):
                table.add_column(name, justify="left" if name == "system" else "right")
            table.add_column("err", justify="right")
            tables.append(table)
        style = "red" if c.errors else ("bold" if c.kind == "store" else "")
        table.add_row(
            str(c.concurrency),
            c.system,
            f"{c.ops_per_s:,.0f}" if c.ops_per_s >= 10 else f"{c.ops_per_s:.2f}",
            _fmt_ratio(row["ratio"]),
            f"{c.p50_ms:.1f}",
            f"{c.p99_ms:.1f}" if c.p99_ms else "",
            _fmt_ratio(row["p99_ratio"]),
            f"{c.cpu_ms_per_op:.2f}" if c.cpu_ms_per_op else "",
            str(c.errors),
            style=style,
        )
    return tables


def markdown(data: dict[str, Any]) -> str:
    cells = cells_from(data)
    env = data["environment"]
    plan = data["plan"]
    lines = [
        f"# Benchmark results, {data['started']}",
        "",
        f"{env.get('cpu_count')} CPUs ({env.get('cpu_model')}), Python {env.get('python')}, "
        f"SQLite {env.get('sqlite')}; load average at start {env.get('load_average_at_start')}, "
        f"at end {env.get('load_average_at_end')}. Commit {env.get('git_commit')}.",
        "",
        f"Measured window {plan['duration']} s after a {plan['warmup']} s warm-up per cell; "
        f"{plan['spec']['sessions']} seeded sessions ({plan['spec']['min_runs']}-"
        f"{plan['spec']['max_runs']} runs each, {plan['spec']['users']} users), a turn loads the "
        f"last {plan['spec']['last_runs']} runs; pools of 20. Ratios are to the raw driver in the "
        "same run (x raw: throughput over the raw driver's; p99 x raw: p99 over its p99).",
        "",
    ]
    for name, server in env.get("servers", {}).items():
        lines.append(f"- {name} server: {server.get('version') or server.get('error')}")
    if env.get("peers"):
        peers = env["peers"]
        lines.append(
            "- peers: " + ", ".join(f"{k} {v}" for k, v in peers.items() if v and k != "python")
        )
    lines.append("")
    lines.append("## Targets")
    lines.append("")
    for t in targets(cells, data["systems"]):
        mark = {True: "met", False: "**not met**", None: "not measured"}[t.met]
        lines.append(f"- {t.name}: {mark} ({t.detail})")
    lines.append("")
    costs = lease_cost_lines(cells)
    if costs:
        lines += ["## Leases", ""]
        lines += [f"- {line}" for line in costs]
        lines.append("")
    sealed = lease_cost_lines(cells, SEALED)
    if sealed:
        lines += ["## Encrypted payloads", ""]
        lines += [f"- {line}" for line in sealed]
        lines.append("")
    current: tuple[str, str] | None = None
    for row in rows(cells):
        c: CellResult = row["cell"]
        if (c.backend, c.scenario) != current:
            current = (c.backend, c.scenario)
            title = SCENARIO_TITLES.get(c.scenario, c.scenario)
            lines += [
                "",
                f"### {c.backend}: {title}",
                "",
                "| callers | param | system | ops/s | x raw | p50 ms | p95 ms | p99 ms | p99 x raw "
                "| errors | CPU ms/op | RSS MiB |",
                "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
        lines.append(
            f"| {c.concurrency} | {'' if c.param is None else c.param} | {c.system} | "
            f"{c.ops_per_s:,.1f} | {_fmt_ratio(row['ratio'])} | {c.p50_ms:.1f} | "
            f"{c.p95_ms:.1f} | {c.p99_ms:.1f} | {_fmt_ratio(row['p99_ratio'])} | {c.errors} | "
            f"{c.cpu_ms_per_op:.2f} | {c.rss_peak_mb:.0f} |"
        )
    scaling = scaling_lines(cells)
    if scaling:
        lines += ["", "## Replica and PgBouncer against the primary (ratios per round)", ""]
        lines += [f"- {line}" for line in scaling]
    lines += ["", "## Systems", ""]
    lines.append("| backend | system | status | bytes/session | seed s | details |")
    lines.append("|---|---|---|---:|---:|---|")
    for s in data["systems"]:
        seed = s.get("seed") or {}
        bps = seed.get("bytes_per_session")
        status = "ran" if s["available"] else s["reason"]
        details = ", ".join(f"{k}={v}" for k, v in (s.get("info") or {}).items())
        lines.append(
            f"| {s['backend']} | {s['name']} | {status} | "
            f"{'' if bps is None else f'{bps:,.0f}'} | {seed.get('seconds', '')} | {details} |"
        )
    errors = [c for c in cells if c.error_samples]
    if errors:
        lines += ["", "## Errors", ""]
        for c in errors:
            lines.append(
                f"- {c.backend} {c.scenario} x{c.concurrency} {c.system}: {c.errors} "
                f"({'; '.join(c.error_samples)})"
            )
    empty = [c for c in cells if c.note.startswith("no operation")]
    if empty:
        lines += ["", "## Cells without a result", ""]
        lines += [
            f"- {c.backend} {c.scenario} x{c.concurrency} {c.system}: {c.note}" for c in empty
        ]
    return "\n".join(lines) + "\n"


def plot(data: dict[str, Any], backend: str, path: Path) -> bool:
    """Turns/s and p99 against concurrency, one line per system; False when nothing to plot."""
    cells = [c for c in cells_from(data) if c.backend == backend and c.scenario == TURN and c.ops]
    if not cells:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = sorted({c.system for c in cells}, key=lambda s: (not s.startswith("store"), s))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for system in systems:
        mine = sorted((c for c in cells if c.system == system), key=lambda c: c.concurrency)
        xs = [c.concurrency for c in mine]
        style = "-o" if system.startswith("store") else ("--s" if "raw" in system else ":^")
        left.plot(xs, [c.ops_per_s for c in mine], style, label=system)
        right.plot(xs, [c.p99_ms for c in mine], style, label=system)
    for ax, title, unit in (
        (left, "Turns per second (higher is better)", "turns/s"),
        (right, "p99 latency of a turn (lower is better)", "ms"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({c.concurrency for c in cells}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("concurrent callers")
        ax.set_ylabel(unit)
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
    left.set_ylim(bottom=0)
    right.set_yscale("log")
    right.get_yaxis().set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    left.legend(fontsize=8)
    env = data["environment"]
    fig.suptitle(
        f"{backend}: read last {data['plan']['spec']['last_runs']} runs + write one turn; "
        f"{env.get('cpu_count')} CPUs, {data['started'][:10]}",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def write_all(data: dict[str, Any], outdir: Path, stem: str) -> dict[str, Path]:
    """The JSON, the Markdown summary and one PNG per backend; returns the paths written."""
    outdir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    json_path = outdir / f"{stem}.json"
    json_path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    written["json"] = json_path
    md_path = outdir / f"{stem}.md"
    md_path.write_text(markdown(data))
    written["markdown"] = md_path
    backends = sorted({c["backend"] for c in data["cells"]})
    for backend in backends:
        png = outdir / (f"{stem}.png" if len(backends) == 1 else f"{stem}-{backend}.png")
        if plot(data, backend, png):
            written[f"png-{backend}"] = png
    return written


def ratio_tables(data: dict[str, Any]) -> str:
    """Compact Markdown tables for docs/benchmarks.md: per backend and scenario, one row per
    system, one column per concurrency (or history length); store and peer cells as throughput
    over the raw driver's, p99 over its p99 in brackets; the raw driver's own numbers."""
    cells = cells_from(data)
    base = baseline(cells)
    out: list[str] = []
    for backend in sorted({c.backend for c in cells}):
        for scenario in (TURN, LIST, LIST_RUNS, HISTORY):
            mine = [c for c in cells if c.backend == backend and c.scenario == scenario]
            if not mine:
                continue
            columns = sorted({(c.param or 0, c.concurrency) for c in mine})
            systems = list(dict.fromkeys(c.system for c in rows_order(mine)))
            heads = [
                f"{p:,} runs" if scenario == HISTORY else f"{n} caller{'s' * (n > 1)}"
                for p, n in columns
            ]
            out += [
                f"{backend}, {SCENARIO_TITLES[scenario]}",
                "",
                "| system | " + " | ".join(heads) + " |",
                "|---|" + "---:|" * len(columns),
            ]
            for system in systems:
                row = []
                for p, n in columns:
                    c = next(
                        (
                            c
                            for c in mine
                            if c.system == system and (c.param or 0, c.concurrency) == (p, n)
                        ),
                        None,
                    )
                    if c is None:
                        row.append("")
                    elif c.kind == "raw":
                        row.append(f"{c.ops_per_s:,.0f}/s, p99 {c.p99_ms:,.0f} ms")
                    else:
                        r, q = ratio(c, base), p99_ratio(c, base)
                        text = "n/a" if r is None else f"{r:.2f}x"
                        text += "" if q is None else f" ({q:.2f}x)"
                        text += f", {c.errors} errors" if c.errors else ""
                        row.append(text)
                out.append(f"| {system} | " + " | ".join(row) + " |")
            out.append("")
    return "\n".join(out)


def rows_order(cells: list[CellResult]) -> list[CellResult]:
    kinds = {"store": 0, "raw": 1, "peer": 2}
    return sorted(cells, key=lambda c: (kinds.get(c.kind, 3), c.system))


if __name__ == "__main__":
    import sys

    for name in sys.argv[1:]:
        print(ratio_tables(json.loads(Path(name).read_text())))
