"""The 7-day spam complaint rate on the console: the overview's card (red at the line) and /metrics."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.console.conftest import Console
from tests.worker.tracking.test_complaints import seed


def _card(page: str) -> str:
    start = page.rindex("<div", 0, page.index('id="complaints"'))
    return page[start:page.index("</div>", start)]


def _gauges(text: str) -> dict[str, float]:
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if not s.labels}


def test_over_the_line_the_card_is_red_and_the_metrics_say_so(console: Console) -> None:
    seed(1000, complained=4)
    card = _card(console.get("/").text)
    assert 'class="card bad" id="complaints"' in card
    assert "Spam complaints (7 days)" in card and "0.40 %" in card and "0.30 %" in card
    assert "4 complaint(s) / 1,000 recipient(s) accepted" in card
    gauges = _gauges(console.get("/metrics").text)
    assert gauges["mailworker_spam_complaint_rate_7d"] == 0.004
    assert gauges["mailworker_spam_complaint_threshold"] == 0.003


def test_under_the_line_the_card_is_not_red(console: Console) -> None:
    seed(1000, complained=1)
    card = _card(console.get("/").text)
    assert 'class="card " id="complaints"' in card and "0.10 %" in card
    assert _gauges(console.get("/metrics").text)["mailworker_spam_complaint_rate_7d"] == 0.001


def test_no_mail_shows_zero(console: Console) -> None:
    card = _card(console.get("/").text)
    assert "0.00 %" in card and "0 complaint(s) / 0 recipient(s)" in card and " bad" not in card
    assert _gauges(console.get("/metrics").text)["mailworker_spam_complaint_rate_7d"] == 0.0
