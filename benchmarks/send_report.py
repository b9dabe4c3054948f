"""The send benchmark's tables (:mod:`benchmarks.send_bench`): the concurrent figures, the django-post_office
anchor, where each email's CPU goes, and the enqueued-then-drained figures (:mod:`benchmarks.send_drain`).

Every table is GitHub markdown, printed and pasted into docs/benchmarks.md as is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks.common import say, table

if TYPE_CHECKING:
    from benchmarks.send_bench import SendResult


def render(results: list[SendResult]) -> str:
    """The report table: each post_office and mailworker row carries its ratios to the baseline row of its
    configuration (the verdicts are mailworker's targets; post_office's ratios are printed bare)."""
    rows = []
    base: SendResult | None = None
    for r in results:
        if r.kind == "baseline":
            base = r
        vs = r.e2e_per_s / base.e2e_per_s if base and r.kind != "baseline" else None
        cpu_vs = r.worker_cpu_ms / base.worker_cpu_ms if base and r.kind != "baseline" else None
        verdict = r.kind == "mailworker"
        rows.append([
            r.label, r.kind, f"{r.enqueue_per_s:,.0f}", f"{r.e2e_per_s:,.0f}",
            "" if vs is None else f"**{vs:.2f}x**" + (f" {'ok' if vs >= 0.8 else 'MISS'}" if verdict else ""),
            f"{100 * r.e2e_per_s / r.ceiling:.0f}%", f"{r.p50_ms:,.0f}", f"{r.p99_ms:,.0f}",
            f"{r.worker_cpu_ms:.2f}", "" if cpu_vs is None else f"**{cpu_vs:.2f}x**" +
            (f" {'ok' if cpu_vs <= 2 else 'MISS'}" if verdict else ""), f"{r.peak_rss_mb:,.0f}",
        ])
    return table(["pool", "kind", "enqueue/s", "e2e emails/s", "e2e vs base (>=0.8)", "of c/latency",
                  "p50 ms", "p99 ms", "worker CPU ms/email", "CPU vs base (<=2)", "peak RSS MB"], rows)


def render_anchor(results: list[SendResult]) -> str:
    """One line per configuration that has a django-post_office row: the three end-to-end rates side by side
    and the ratios the issue's targets are about (mailworker >= 1.3x post_office and >= 0.8x the bare baseline).
    """
    by_label: dict[str, dict[str, SendResult]] = {}
    for r in results:
        by_label.setdefault(r.label, {})[r.kind] = r
    rows = []
    for name, kinds in by_label.items():
        base, po, mw = kinds.get("baseline"), kinds.get("post_office"), kinds.get("mailworker")
        if po is None:
            continue

        def rate(r: SendResult | None) -> str:
            return "-" if r is None else f"{r.e2e_per_s:,.0f}"

        def ratio(a: SendResult | None, b: SendResult | None, target: float | None = None) -> str:
            if a is None or b is None:
                return "-"
            x = a.e2e_per_s / b.e2e_per_s
            return f"**{x:.2f}x**" + ("" if target is None else f" {'ok' if x >= target else 'MISS'}")

        rows.append([name, rate(base), rate(po), rate(mw), ratio(mw, po, 1.3), ratio(mw, base, 0.8),
                     ratio(po, base), f"{po.worker_cpu_ms:.2f}", "-" if mw is None else f"{mw.worker_cpu_ms:.2f}"])
    return table(["pool", "bare e2e/s", "post_office e2e/s", "mailworker e2e/s", "mailworker / post_office (>=1.3)",
                  "mailworker / bare (>=0.8)", "post_office / bare", "post_office worker CPU ms/email",
                  "mailworker worker CPU ms/email"], rows)


def render_costs(results: list[SendResult]) -> str:
    """Where each email's CPU goes, per process, so the 2-core CPU bound can be read off directly."""
    rows = []
    for r in results:
        db, rd = r.server_cpu_ms.get("mariadb"), r.server_cpu_ms.get("redis")
        total = r.enqueue_cpu_ms + r.worker_cpu_ms + r.fake_cpu_ms + (db or 0) + (rd or 0)
        rows.append([r.label, r.kind, f"{r.enqueue_cpu_ms:.2f}", f"{r.worker_cpu_ms:.2f}",
                     f"{r.fake_cpu_ms:.2f}", "-" if db is None else f"{db:.2f}", "-" if rd is None else
                     f"{rd:.2f}", f"{total:.2f}", f"{2000 / total:,.0f}"])
    return table(["pool", "kind", "enqueue (caller)", "worker", "fake API", "mariadb*", "redis*",
                  "total ms/email", "2-core bound emails/s"], rows)


def line(r: SendResult) -> str:
    conc = str(r.concurrency) if r.processes == 1 else f"{r.concurrency}x{r.processes}"
    return (f"  {r.kind:16} {r.pool:8} c={conc:<3} enqueue {r.enqueue_per_s:7.0f}/s  e2e "
            f"{r.e2e_per_s:6.0f}/s  p50 {r.p50_ms:6.0f} ms  p99 {r.p99_ms:6.0f} ms  cpu "
            f"{r.worker_cpu_ms:5.2f} ms/email  rss {r.peak_rss_mb:5.0f} MB")


def has_drain(r: SendResult) -> bool:
    return "drain_per_s" in r.extra


def drain_line(r: SendResult) -> str:
    x = r.extra
    conc = str(r.concurrency) if r.processes == 1 else f"{r.concurrency}x{r.processes}"
    return (f"  {r.kind:16} {r.pool:8} c={conc:<3} drain: enqueue {x['drain_enqueue_per_s']:7.0f}/s  drained "
            f"{x['drain_per_s']:6.0f}/s in {x['drain_s']:5.2f} s ({x['drain_from_restart_s']:5.2f} s from restart)  "
            f"cpu {x['drain_worker_cpu_ms']:5.2f} ms/email  rss {x['drain_peak_rss_mb']:5.0f} MB  "
            f"{x['drain_distinct']:.0f}/{r.n} distinct, {x['drain_duplicates']:.0f} dup")


def render_drain(results: list[SendResult]) -> str:
    """Every row's drain figures, with its ratio to the baseline row of its configuration."""
    rows = []
    base: SendResult | None = None
    for r in (r for r in results if has_drain(r)):
        x = r.extra
        if r.kind == "baseline":
            base = r
        vs = x["drain_per_s"] / base.extra["drain_per_s"] if base and r.kind != "baseline" else None
        rows.append([
            r.label, r.kind, f"{x['drain_enqueue_per_s']:,.0f}", f"{x['drain_per_s']:,.0f}",
            "" if vs is None else f"**{vs:.2f}x**" + (f" {'ok' if vs >= 0.8 else 'MISS'}"
                                                      if r.kind == "mailworker" else ""),
            f"{100 * x['drain_per_s'] / r.ceiling:.0f}%", f"{x['drain_s']:.2f}", f"{x['drain_from_restart_s']:.2f}",
            f"{x['drain_worker_cpu_ms']:.2f}", f"{x['drain_worker_cpu_startup_ms']:.2f}",
            f"{x['drain_peak_rss_mb']:,.0f}", f"{x['drain_distinct']:.0f} / {x['drain_duplicates']:.0f}",
        ])
    return table(["pool", "kind", "enqueue/s (no worker)", "drain emails/s", "drain vs base (>=0.8)",
                  "of c/latency", "drain s", "s from restart", "worker CPU ms/email",
                  "incl. start-up", "peak RSS MB", "distinct / dup at stand-in"], rows)


def render_drain_anchor(results: list[SendResult]) -> str:
    """One line per configuration: the three drain rates side by side and the ratios of the issue's targets
    (mailworker >= 1.3x post_office and >= 0.8x the bare baseline); "-" where a kind did not run."""
    by_label: dict[str, dict[str, SendResult]] = {}
    for r in (r for r in results if has_drain(r)):
        by_label.setdefault(r.label, {})[r.kind] = r

    def rate(r: SendResult | None) -> str:
        return "-" if r is None else f"{r.extra['drain_per_s']:,.0f}"

    def cpu(r: SendResult | None) -> str:
        return "-" if r is None else f"{r.extra['drain_worker_cpu_ms']:.2f}"

    def ratio(a: SendResult | None, b: SendResult | None, target: float | None = None) -> str:
        if a is None or b is None:
            return "-"
        x = a.extra["drain_per_s"] / b.extra["drain_per_s"]
        return f"**{x:.2f}x**" + ("" if target is None else f" {'ok' if x >= target else 'MISS'}")

    rows = []
    for name, kinds in by_label.items():
        base, po, mw = kinds.get("baseline"), kinds.get("post_office"), kinds.get("mailworker")
        rows.append([name, rate(base), rate(po), rate(mw), ratio(mw, po, 1.3), ratio(mw, base, 0.8),
                     ratio(po, base), cpu(base), cpu(po), cpu(mw)])
    return table(["pool", "bare drain/s", "post_office drain/s", "mailworker drain/s",
                  "mailworker / post_office (>=1.3)", "mailworker / bare (>=0.8)", "post_office / bare",
                  "bare worker CPU ms/email", "post_office worker CPU ms/email", "mailworker worker CPU ms/email"],
                 rows)


def report(results: list[SendResult], mode: str, census_md: str, profile_md: str) -> None:
    if mode != "drain":
        say()
        say("While one caller enqueues (e2e = N / (last sent - first enqueue)):")
        say(render(results))
        say()
        if any(r.kind == "post_office" for r in results):
            say("Against django-post_office (the same stand-in, MariaDB, broker and in-flight count):")
            say(render_anchor(results))
            say()
        say(render_costs(results))
    if mode != "concurrent":
        say()
        say("Enqueued then drained (N queued with no worker running, then fresh workers drain them; rate = "
            "(N - 1) / (last - first acceptance at the stand-in), each email at its first acceptance; CPU from "
            "the first send on):")
        say(render_drain(results))
        say()
        say("Enqueued then drained, against django-post_office and the bare baseline:")
        say(render_drain_anchor(results))
    say()
    say("Round trips per email (in-process, deterministic; CPU is one thread with no contention):")
    say(census_md)
    if profile_md:
        say()
        say("py-spy profile of the mailworker worker, threads 32:")
        say(profile_md)
