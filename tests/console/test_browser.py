"""A real browser: Debian's chromium (headless, through chromedriver and Selenium) against ``mailworker console``
served by gunicorn: the overview, a search, a retry with its reason and the audit row, and a message whose HTML
body tries to script the console (the sandboxed iframe stops it).

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
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import free_port
from tests.console.conftest import PASSWORD, USER, add_attachment, add_event, make_message
from worker.infrastructure.models import EventType, MessageStatus, utcnow

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
                "--window-size=1280,1400", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
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


def _keep(driver: Any, name: str, tmp_path: Path) -> None:
    driver.save_screenshot(str(tmp_path / name))
    target = os.environ.get("CONSOLE_SCREENSHOT_DIR")
    if target:
        shutil.copy(tmp_path / name, Path(target) / name)


def test_overview_search_retry_and_a_sandboxed_body(console_server: str, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    now = utcnow()
    delivered = make_message(MessageStatus.DELIVERED, to="alice@example.com", subject="Reset your password",
                             html_body=HOSTILE_HTML, reference="password_reset:42", email_delivered_at=now)
    add_event(delivered, EventType.DELIVERED, "alice@example.com",
              payload={"event": "delivered", "rcpt": "alice@example.com", "email_id": f"em-{delivered[:8]}"})
    add_attachment(delivered, "receipt.pdf", b"%PDF-1.7" + b"0" * 4088)
    failed = make_message(MessageStatus.FAILED, to="bob@example.com", subject="Your invoice", failed_at=now,
                          last_error="550 5.1.1 mailbox unavailable", attempts=4, api_attempts=3, smtp_attempts=1)
    for i in range(5):
        make_message(MessageStatus.DELIVERED, to=f"user{i}@example.com", subject=f"Welcome {i}")

    browser.get(console_server + "/")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Overview"
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart rect")
    assert "Failed" in browser.find_element(By.CSS_SELECTOR, ".tiles").text
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
    assert "Done: retry: requeued" in browser.find_element(By.CSS_SELECTOR, ".notice.ok").text
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
    _keep(browser, "console-message.png", tmp_path)
    browser.switch_to.frame(frame)
    assert browser.find_element(By.TAG_NAME, "h1").text == "Reset your password"
    browser.switch_to.default_content()
