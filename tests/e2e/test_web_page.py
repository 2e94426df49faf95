"""/ui in a real browser: Debian's chromium, driven by Selenium through /usr/bin/chromedriver,
against a real `qtask serve` with API keys on.

The page asks for the key when the server answers 401; then the Bell circuit shows two bars,
`00` and `11`, and its row in the task list turns `completed` through the websocket; a syntax
error shows its line and column; an error message that quotes `<script>` is shown as text and
creates no script element. Its screenshots are kept in `test-output/` at the repository root
(git ignores it), so a CI run leaves them to look at; the test prints their paths.

Without chromium this skips, except under CI (CI=true), where a missing browser is a failed
install step: scripts/bootstrap installs it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from qtask.api.auth import key_digest, new_key
from qtask_testkit import BELL, ServerProcess

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
KEY = new_key()

if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
    if os.environ.get("CI") == "true":
        pytest.fail(
            f"{CHROMIUM} and {CHROMEDRIVER} are required under CI: "
            "apt-get install chromium chromium-driver (scripts/bootstrap does)",
            pytrace=False,
        )
    pytest.skip(
        "chromium and chromium-driver are not installed (apt-get install chromium "
        "chromium-driver); this test runs wherever they are, and always under CI",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402 - only once the browser is known to be there
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

SYNTAX_ERROR = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nh q[0]\ncx q[0], q[1];\n'
SCRIPT_IN_ERROR = 'OPENQASM 3.0;\ninclude "<script>window.pwned = 1</script>";\nqubit q;\n'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "QTASK_AUTH__ENABLED": "true",
        "QTASK_AUTH__KEYS": json.dumps([{"name": "ui", "sha256": key_digest(KEY)}]),
    }
    process = ServerProcess(tmp_path_factory.mktemp("ui") / "data", workers=1, env=env)
    process.start()
    yield process
    process.terminate()


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    # The driver and the browser are named: Selenium Manager must not try to download either.
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def submit(driver: WebDriver, source: str) -> None:
    """Put `source` in the page's editor and press Submit."""
    editor = driver.find_element(By.ID, "qasm")
    driver.execute_script("arguments[0].value = arguments[1];", editor, source)
    driver.find_element(By.ID, "submit").click()


def visible_text(driver: WebDriver, element_id: str, timeout: float = 30.0) -> str:
    """The text of an element once it is shown."""
    element = driver.find_element(By.ID, element_id)
    WebDriverWait(driver, timeout).until(lambda _: element.is_displayed() and element.text)
    return str(element.text)


SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output"


def keep_screenshot(browser: WebDriver, name: str) -> None:
    """Save what the page shows now as test-output/<name> (a PNG) and print where."""
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / name
    assert browser.save_screenshot(str(path))
    print(f"screenshot: {path}")


def test_the_page_runs_bell_shows_errors_with_line_and_column_and_never_runs_server_text(
    server: ServerProcess, browser: WebDriver, tmp_path: Path
) -> None:
    wait = WebDriverWait(browser, 60)
    browser.get(f"{server.url}/ui")

    # Keys are on: the page's first listing gets 401 and it asks for the key.
    reason = visible_text(browser, "key-reason")
    assert "API key is required" in reason
    browser.find_element(By.ID, "api-key").send_keys(KEY)
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    wait.until(lambda d: not d.find_element(By.ID, "key-panel").is_displayed())
    assert browser.execute_script("return sessionStorage.getItem('qtask.apiKey')") == KEY
    assert browser.execute_script("return localStorage.length") == 0

    # Bell, uploaded as a file: two bars, 00 and 11, with counts and probabilities; its row
    # turns completed.
    bell_file = tmp_path / "bell.qasm"
    bell_file.write_text(BELL)
    browser.find_element(By.ID, "qasm-file").send_keys(str(bell_file))
    wait.until(lambda d: d.find_element(By.ID, "qasm").get_property("value") == BELL)
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#histogram .bar"))
    bars = browser.find_elements(By.CSS_SELECTOR, "#histogram .bar")
    assert [bar.get_attribute("data-outcome") for bar in bars] == ["00", "11"]
    values = [v.text for v in browser.find_elements(By.CSS_SELECTOR, "#histogram .bar-value")]
    counts = [int(value.split()[0]) for value in values]
    assert sum(counts) == 1024
    assert all("%" in value for value in values)
    task_id = browser.find_element(By.ID, "detail-id").text
    badge = f'#tasks tr[data-task-id="{task_id}"] .state'
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, badge).text == "completed")
    keep_screenshot(browser, "ui-bell.png")

    # A syntax error: the message with its line and column, nothing submitted.
    submit(browser, SYNTAX_ERROR)
    where = visible_text(browser, "submit-error-where")
    message = browser.find_element(By.ID, "submit-error-message").text
    assert where.startswith("Line 5, column ")
    assert "line 5, column " in message
    # The editor's caret is put on that line.
    caret = browser.execute_script("return document.getElementById('qasm').selectionStart")
    assert SYNTAX_ERROR[:caret].count("\n") == 4

    # An error that quotes <script>: shown as text, no element made of it, nothing run.
    scripts_before = browser.execute_script("return document.scripts.length")
    submit(browser, SCRIPT_IN_ERROR)
    wait.until(lambda d: "<script>" in d.find_element(By.ID, "submit-error-message").text)
    message = browser.find_element(By.ID, "submit-error-message").text
    assert '"<script>window.pwned = 1</script>" cannot be included' in message
    assert browser.find_elements(By.CSS_SELECTOR, "#submit-error script") == []
    assert browser.execute_script("return document.scripts.length") == scripts_before
    assert browser.execute_script("return window.pwned") is None
    keep_screenshot(browser, "ui-error.png")

    # No script error and no Content-Security-Policy violation; the refused requests (401,
    # 400) are the only complaints.
    console = browser.get_log("browser")
    assert any("401" in entry["message"] for entry in console)  # the log is really read
    problems = [
        entry["message"]
        for entry in console
        if entry["level"] == "SEVERE" and "Failed to load resource" not in entry["message"]
    ]
    assert problems == []
