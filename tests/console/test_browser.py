"""A real browser: Debian's chromium (headless, through chromedriver and Selenium) against ``mailworker console``
served by gunicorn, with a real Celery worker running and a sweep done: the overview (health, tiles, charts), a
search, a retry with its reason and the audit row, a cancel, and a message whose HTML body tries to script the
console (the sandboxed iframe stops it).

``CONSOLE_SCREENSHOT_DIR=docs`` keeps the screenshots (docs/console-overview.png, docs/console-message.png).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import free_port, wait_until
from tests.console.conftest import PASSWORD, USER, add_attachment, add_event, make_message
from worker.infrastructure.models import AttemptOutcome, EventType, MessageStatus, RecipientStatus, utcnow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
PROJECT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

HOSTILE_HTML = """<h1>Reset your password</h1><p>Click <a href="https://example.com/reset">here</a>.</p>
<script>parent.document.body.setAttribute('data-pwned', 'script'); top.document.title = 'pwned';</script>
<img src="x" onerror="parent.document.body.setAttribute('data-pwned', 'onerror')">
<img src="https://tracker.example/open.gif">"""


def _browser_available() -> bool:
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


@pytest.fixture
def console_server(sqlite_db: str, tmp_path: Path) -> Iterator[str]:
    """``mailworker console`` (gunicorn) on a free port, on the test's SQLite database."""
    port = free_port()
    env = {**os.environ, "CONSOLE_BASIC_AUTH": f"{USER}:{PASSWORD}", "PYTHONPATH": str(PROJECT),
           "MAILWORKER_QUIET": "1"}
    mailworker = Path(sys.executable).with_name("mailworker")
    log = (tmp_path / "console.log").open("wb")
    proc = subprocess.Popen([str(mailworker), "console", "--host", "127.0.0.1", "--port", str(port)], cwd=PROJECT,
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "console.log").read_text()
            try:
                if requests.get(f"{base}/", auth=(USER, PASSWORD), timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "the console did not start"
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if not _browser_available():
        if os.environ.get("CI"):
            pytest.fail(f"chromium/chromedriver missing ({CHROMIUM}, {CHROMEDRIVER}): scripts/services.sh installs "
                        "them")
        pytest.skip("chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--no-first-run",
                "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def running_worker(console_server: str, tmp_path: Path) -> Iterator[None]:
    """``celery -A worker worker`` on every queue (as the Procfile runs it), on the console's database, until
    the console sees it; then one sweep, so beat's heartbeat is fresh."""
    from console_app import health
    from worker import app
    from worker.operations.sweeper import sweep

    queues = ",".join(q.name for q in app.conf.task_queues)
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool", "threads",
                             "--concurrency", "2", "--queues", queues, "--hostname", f"browser-test-{os.getpid()}@%h",
                             "--without-gossip", "--without-mingle", "--loglevel", "WARNING"], cwd=PROJECT,
                            env={**os.environ, "PYTHONPATH": str(PROJECT)}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_until(lambda: proc.poll() is not None or health.snapshot(app).workers, timeout=40)
        assert proc.poll() is None, (tmp_path / "worker.log").read_text()
        # the console reuses the workers' answer for a few seconds: wait until its overview has the new one
        wait_until(lambda: "1 running</p>" in requests.get(console_server + "/", auth=(USER, PASSWORD), timeout=5).text,
                   timeout=30, interval=0.5)
        sweep()
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def _history() -> None:
    """A week of realistic mail: a few dozen a day, most delivered within seconds, some bounces and failures."""
    now = utcnow()
    n = 0
    for day in range(7):
        for i in range(18 + 7 * (day % 3)):
            n += 1
            queued = now - timedelta(days=day, minutes=37 * i + 5)
            if queued > now - timedelta(minutes=2):
                continue
            latency = 0.6 + (n % 7) * 0.35 + (9.0 if n % 23 == 0 else 0.0)
            status = (MessageStatus.BOUNCED if n % 17 == 0 else MessageStatus.SENT if n % 5 == 0
                      else MessageStatus.DELIVERED)
            make_message(status, to=f"customer{n}@example.com", subject=f"Order {1000 + n} confirmed",
                         queued_at=queued, sent_at=queued + timedelta(seconds=latency),
                         email_delivered_at=queued + timedelta(seconds=latency + 2)
                         if status == MessageStatus.DELIVERED else None,
                         transport="smtp" if n % 11 == 0 else "smtp2go",
                         reference=f"order:{1000 + n}")
    make_message(MessageStatus.PARKED, to="dana@example.com", subject="Invoice 2231",
                 ambiguous_since=now - timedelta(minutes=3), inflight_since=now - timedelta(minutes=3))
    make_message(MessageStatus.CANCELLED, to="erin@example.com", subject="Reminder: your trial ends",
                 recipient_status=RecipientStatus.CANCELLED, last_error="cancelled by the application")


def _after_submit(driver: Any, selector: str) -> Any:
    """The element on the page a form's redirect leads to (a click returns before that page has loaded)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, 15).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR,
                                                                                           selector)))


def _keep(driver: Any, name: str, tmp_path: Path) -> None:
    driver.save_screenshot(str(tmp_path / name))
    target = os.environ.get("CONSOLE_SCREENSHOT_DIR")
    if target:
        shutil.copy(tmp_path / name, Path(target) / name)


def _attempt(message_id: str, provider: str, outcome: Any, seconds: float, **values: Any) -> None:
    """The message's send attempt as the send path records it: it ended when the message was sent."""
    from datetime import timedelta

    from worker.infrastructure.db import session_scope
    from worker.infrastructure.models import Attempt, Message

    with session_scope() as session:
        message = session.get(Message, message_id)
        assert message is not None and message.sent_at is not None
        session.add(Attempt(message_id=message_id, provider=provider, outcome=outcome,
                            started_at=message.sent_at - timedelta(seconds=seconds), finished_at=message.sent_at,
                            latency_ms=int(seconds * 1000), **values))


def test_overview_search_retry_and_a_sandboxed_body(console_server: str, running_worker: None, browser: Any,
                                                    tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    _history()
    now = utcnow()
    delivered = make_message(MessageStatus.DELIVERED, to="alice@example.com", subject="Reset your password",
                             html_body=HOSTILE_HTML, reference="password_reset:42", email_delivered_at=now)
    add_event(delivered, EventType.DELIVERED, "alice@example.com",
              payload={"event": "delivered", "rcpt": "alice@example.com", "email_id": f"em-{delivered[:8]}"})
    add_attachment(delivered, "receipt.pdf", b"%PDF-1.7" + b"0" * 4088)
    _attempt(delivered, "smtp2go", AttemptOutcome.ACCEPTED, 0.18, provider_message_id=f"em-{delivered[:8]}")
    failed = make_message(MessageStatus.FAILED, to="bob@example.com", subject="Your invoice", failed_at=now,
                          last_error="550 5.1.1 mailbox unavailable", attempts=4, api_attempts=3, smtp_attempts=1)
    for i in range(5):
        make_message(MessageStatus.DELIVERED, to=f"user{i}@example.com", subject=f"Welcome {i}")

    browser.get(console_server + "/")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Overview"
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart rect")
    tiles = browser.find_element(By.CSS_SELECTOR, ".tiles").text
    assert all(label in tiles for label in ("Failed", "Cancelled", "Expired", "Parked", "Held"))
    assert "1 running" in browser.find_element(By.ID, "workers").text
    assert "beat: last sweep" in browser.find_element(By.ID, "beat").text
    assert "nothing consumes it" not in browser.find_element(By.ID, "queues").text
    assert "No rate-limit pause" in browser.find_element(By.ID, "pause").text
    assert browser.find_elements(By.CSS_SELECTOR, "#trend svg rect.o-delivered")
    assert browser.find_elements(By.CSS_SELECTOR, "#latency svg circle.l-p95")
    main = browser.find_element(By.TAG_NAME, "main")
    assert main.size["width"] > 1300  # the page uses the window's width
    _keep(browser, "console-overview.png", tmp_path)

    search = browser.find_element(By.CSS_SELECTOR, "header form.quick input[name=q]")
    search.send_keys("status:failed")
    search.submit()
    rows = browser.find_elements(By.CSS_SELECTOR, "table.list tbody tr")
    assert len(rows) == 1 and "bob@example.com" in rows[0].text
    rows[0].find_element(By.LINK_TEXT, "Your invoice").click()
    assert failed in browser.current_url
    browser.find_element(By.LINK_TEXT, "Retry…").click()
    assert "status: failed -> queued" in browser.find_element(By.CSS_SELECTOR, "ul.changes").text
    browser.find_element(By.ID, "reason").send_keys("relay fixed (ticket 77)")
    browser.find_element(By.CSS_SELECTOR, "form.confirm button[type=submit]").click()
    assert "Done: retry: requeued" in _after_submit(browser, ".notice.ok").text
    audit = browser.find_element(By.XPATH, "//h2[text()='Audit log']/following-sibling::table").text
    assert "operator" in audit and "retry" in audit and "relay fixed (ticket 77)" in audit

    browser.get(f"{console_server}/messages/{delivered}")
    frame = browser.find_element(By.CSS_SELECTOR, "iframe.html-body")
    assert frame.get_attribute("sandbox") == ""  # no allow-scripts, no allow-same-origin
    time.sleep(0.5)  # give a script that could run the time to run
    assert browser.execute_script("return document.body.getAttribute('data-pwned')") is None
    assert browser.title != "pwned" and "Reset your password" in browser.title
    timeline = browser.find_element(By.CSS_SELECTOR, "ol.timeline").text
    assert "delivered" in timeline and "alice@example.com" in timeline
    assert timeline.index("Enqueued") < timeline.index("Accepted by") < timeline.index("delivered")
    main = browser.find_element(By.TAG_NAME, "main").text
    assert "Cancel is not offered yet" not in main
    assert "No send attempt yet" not in main and "180 ms" in main  # its attempt row, in the Send attempts table
    _keep(browser, "console-message.png", tmp_path)
    browser.switch_to.frame(frame)
    assert browser.find_element(By.TAG_NAME, "h1").text == "Reset your password"
    browser.switch_to.default_content()

    later = make_message(MessageStatus.QUEUED, to="frank@example.com", subject="Your weekly digest",
                         send_at=now + timedelta(days=1), next_attempt_at=now + timedelta(days=1))
    browser.get(f"{console_server}/messages/{later}")
    browser.find_element(By.LINK_TEXT, "Cancel…").click()
    assert browser.find_element(By.LINK_TEXT, "Keep it")
    browser.find_element(By.ID, "reason").send_keys("customer unsubscribed from the digest")
    browser.find_element(By.XPATH, "//button[text()='Cancel this email']").click()
    assert "Done: cancel: cancelled" in _after_submit(browser, ".notice.ok").text
    page = browser.find_element(By.TAG_NAME, "main").text
    assert "Last error" not in page and "Scheduled send time" not in page and "was never sent" in page
