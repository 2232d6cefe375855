"""The web chat in real headless Chromium: a streamed reply, approving, declining with a reason,
editing arguments (checked against the tool's schema first), a reload mid-run, two tabs deciding;
the conversation's guardrails (a blocked, a redacted and a paused message, an answer blocked
mid-stream or asked again) and a typed answer.

Chromium is the system's (Debian's ``chromium``, installed by ``.ci/run``), driven by Playwright;
no browser is downloaded. Without it these tests skip, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server_fixtures import Gate, LiveServer, bank_agent, guarded_agent, ledger_lines, typed_agent
from timestep import ModelClient
from timestep.server import create_app
from timestep.testing import Reply, TestServer, ToolCall

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "approval-card.png"
WAIT = 20_000  # ms: generous for a busy machine; a passing test never waits this long


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        why = f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return tmp_path / "ledger.jsonl"


@pytest.fixture
def site(tmp_path: Path, server: TestServer, ledger: Path) -> Iterator[str]:
    model = ModelClient(base_url=server.base_url, api_key="sk-test", max_retries=0)
    agents = [bank_agent(ledger), guarded_agent(), typed_agent()]
    app = create_app(agents, store=str(tmp_path / "conversations"), client=model)
    with LiveServer(app) as url:
        yield url


@pytest.fixture
def page(browser: Any, site: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 700})
    page = context.new_page()
    page.set_default_timeout(WAIT)
    page.goto(site)
    page.wait_for_selector("#agent option", state="attached")
    yield page
    context.close()


def send(page: Any, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def pause(page: Any, server: TestServer) -> Any:
    """Ask for a transfer the guardrail puts to a person; the approval card."""
    server.script(Reply.tool_calls(ToolCall("send_money", {"to": "Ada", "amount": 500}, id="call_big")))
    send(page, "Send 500 to Ada")
    card = page.locator("#pending .card")
    card.wait_for()
    return card


def test_a_message_streams_its_reply(page: Any, server: TestServer) -> None:
    server.script(Reply.text("Hello from the agent, in pieces", chunks=5))
    send(page, "Hi")
    page.locator(".msg.user", has_text="Hi").wait_for()
    page.locator(".msg.assistant:not(.streaming)", has_text="Hello from the agent, in pieces").wait_for()
    assert page.locator(".msg.assistant").count() == 1  # the streamed draft became the message
    page.locator("#conversations li").first.wait_for()


def test_approving_a_call(page: Any, server: TestServer, ledger: Path, browser: Any, tmp_path: Path) -> None:
    card = pause(page, server)
    assert "Send 500 to Ada?" in card.inner_text()
    # TIMESTEP_SCREENSHOTS=1 refreshes the README's picture of the card; otherwise it goes to tmp.
    shot = SCREENSHOT if os.environ.get("TIMESTEP_SCREENSHOTS") == "1" else tmp_path / SCREENSHOT.name
    card.screenshot(path=str(shot))
    assert shot.stat().st_size > 1000
    # A second person has the same conversation open:
    other = browser.new_context().new_page()
    other.set_default_timeout(WAIT)
    other.route("**/events*", lambda route: route.abort())  # its live updates lag: it still shows the card
    other.goto(page.url)
    other_card = other.locator("#pending .card")
    other_card.wait_for()
    server.script(Reply.text("Sent."))
    card.get_by_role("button", name="Approve").click()
    page.locator(".call.done", has_text="sent 500 to Ada").wait_for()
    page.locator(".msg.assistant", has_text="Sent.").wait_for()
    other_card.get_by_role("button", name="Approve").click()
    other.locator(".card .outcome", has_text="Already decided").wait_for()
    assert ledger_lines(ledger) == [{"to": "Ada", "amount": 500}]
    other.context.close()


def test_declining_with_a_reason(page: Any, server: TestServer, ledger: Path) -> None:
    card = pause(page, server)
    server.script(Reply.text("Understood, not sent."))
    card.get_by_role("button", name="Decline").click()
    card.get_by_label("Reason").fill("ask me tomorrow")
    card.get_by_role("button", name="Decline with this reason").click()
    page.locator(".msg.assistant", has_text="Understood, not sent.").wait_for()
    assert "ask me tomorrow" in server.requests[-1].messages[-1]["content"]  # the model was told why
    assert ledger_lines(ledger) == []


def test_editing_arguments_checks_them_against_the_schema(page: Any, server: TestServer, ledger: Path) -> None:
    card = pause(page, server)
    card.get_by_role("button", name="Edit arguments").click()
    card.get_by_label("Arguments").fill('{"to": "Ada", "amount": "lots"}')
    card.get_by_role("button", name="Approve with these arguments").click()
    card.locator(".problem", has_text="amount must be integer").wait_for()
    card.get_by_label("Arguments").fill('{"to": "Ada"}')
    card.get_by_role("button", name="Approve with these arguments").click()
    card.locator(".problem", has_text="amount is required").wait_for()
    assert ledger_lines(ledger) == []  # nothing was sent
    server.script(Reply.text("Sent 50."))
    card.get_by_label("Arguments").fill('{"to": "Ada", "amount": 50}')
    card.get_by_role("button", name="Approve with these arguments").click()
    page.locator(".msg.assistant", has_text="Sent 50.").wait_for()
    assert ledger_lines(ledger) == [{"to": "Ada", "amount": 50}]


def test_a_reload_mid_run_shows_what_happened_and_follows_the_rest(page: Any, server: TestServer) -> None:
    gate = Gate(Reply.text("Worth the wait"))
    server.responder = gate
    send(page, "Take your time")
    assert gate.arrived.wait(30)
    page.reload()
    page.locator(".msg.user", has_text="Take your time").wait_for()  # from the stored conversation
    page.locator("#status", has_text="running").wait_for()
    gate.release.set()
    page.locator(".msg.assistant", has_text="Worth the wait").wait_for()
    assert page.locator(".msg.user").count() == 1


def test_a_handoff_shows_nested_and_a_guardrail_block_shows_why(page: Any, server: TestServer) -> None:
    server.script(
        Reply.tool_calls(ToolCall("transfer_to_helper", {"message": "Weather in Lima?"})),
        Reply.tool_calls(ToolCall("lookup", {"city": "Lima"})),  # the delegate's own call
        Reply.text("It is sunny in Lima."),  # the delegate's answer
        Reply.text("Helper says: sunny."),  # back at the top
    )
    send(page, "Ask the helper about Lima")
    nested = page.locator(".nested")
    nested.locator(".label", has_text="handed to Helper").wait_for()
    nested.locator(".call.done", has_text="sunny in Lima").wait_for()
    nested.locator(".msg.assistant", has_text="It is sunny in Lima.").wait_for()
    page.locator("#transcript > .msg.assistant", has_text="Helper says: sunny.").wait_for()
    server.script(
        Reply.tool_calls(ToolCall("send_money", {"to": "Mallory", "amount": 5})), Reply.text("I cannot do that.")
    )
    send(page, "Send 5 to Mallory")
    page.locator(".call.blocked", has_text="Mallory is on the sanctions list").wait_for()
    page.locator(".msg.assistant", has_text="I cannot do that.").wait_for()


def talk_to(page: Any, agent: str) -> None:
    page.select_option("#agent", agent)


def test_a_blocked_message_shows_why_and_never_reaches_the_model(page: Any, server: TestServer) -> None:
    talk_to(page, "Guarded")
    send(page, "my password is hunter2")
    page.locator(".msg.user.blocked", has_text="my password is hunter2").wait_for()
    page.locator(".guardrail-note.block", has_text="never send passwords here").wait_for()
    page.locator("#status", has_text="stopped by a guardrail").wait_for()
    assert server.requests == []


def test_a_redacted_message_shows_what_the_agent_got(page: Any, server: TestServer) -> None:
    talk_to(page, "Guarded")
    server.script(Reply.text("Noted."))
    send(page, "card 4111 1111 1111 1111 is lost")
    page.locator(".guardrail-note[data-stage=message]", has_text="screen_message changed your message").wait_for()
    page.locator(".msg.user", has_text="card [card] is lost").wait_for()
    page.locator(".msg.assistant", has_text="Noted.").wait_for()
    page.reload()
    page.locator(".msg.user", has_text="card [card] is lost").wait_for()  # as stored
    assert "4111" not in page.locator("#transcript").inner_text()


def test_approving_a_paused_message_with_an_edit(page: Any, server: TestServer) -> None:
    talk_to(page, "Guarded")
    send(page, "please wire 500 to Ada")
    card = page.locator("#pending .card.message")
    card.wait_for()
    page.locator(".msg.held", has_text="waiting for a person").wait_for()
    page.reload()  # the question comes from the session, not from this tab
    card.wait_for()
    assert "Let this message through to the agent?" in card.inner_text()
    assert "please wire 500 to Ada" in card.locator(".args").inner_text()
    page.locator(".msg.held", has_text="please wire 500 to Ada").wait_for()
    card.get_by_role("button", name="Edit message").click()
    card.get_by_label("Message text").fill("")
    card.get_by_role("button", name="Approve the edited message").click()
    card.locator(".problem", has_text="message.content must not be empty").wait_for()
    assert server.requests == []
    server.script(Reply.text("Wiring 50."))
    card.get_by_label("Message text").fill("please wire 50 to Ada")
    card.get_by_role("button", name="Approve the edited message").click()
    page.locator(".msg.user:not(.held)", has_text="please wire 50 to Ada").wait_for()
    page.locator(".msg.assistant", has_text="Wiring 50.").wait_for()
    page.locator(".guardrail-note.approved", has_text="with edits").wait_for()
    assert page.locator(".msg.held").count() == 0 and page.locator("#pending .card").count() == 0
    assert server.requests[-1].messages[-1]["content"] == "please wire 50 to Ada"


def test_declining_a_paused_message(page: Any, server: TestServer) -> None:
    talk_to(page, "Guarded")
    send(page, "wire everything to Mallory")
    card = page.locator("#pending .card.message")
    card.wait_for()
    card.get_by_role("button", name="Decline").click()
    card.get_by_label("Reason").fill("not today")
    card.get_by_role("button", name="Decline with this reason").click()
    page.locator(".guardrail-note.block", has_text="A person declined your message: not today").wait_for()
    page.locator(".msg.held.declined", has_text="wire everything to Mallory").wait_for()
    page.locator("#status", has_text="stopped by a guardrail").wait_for()
    assert server.requests == []


def test_an_answer_blocked_mid_stream_and_one_asked_again(page: Any, server: TestServer) -> None:
    talk_to(page, "Guarded")
    server.script(Reply.text("All good. Your code is 1234. Bye now.", chunks=8))
    send(page, "hi")
    page.locator(".guardrail-note.block", has_text="blocked by screen_answer: it contains a code").wait_for()
    page.locator(".msg.assistant", has_text="I can't give that answer: it contains a code.").wait_for()
    assert "after 9 characters" in page.locator(".guardrail-note.block").inner_text()
    assert "1234" not in page.locator("#transcript").inner_text()  # never shown, not even for a moment
    server.script(Reply.text("Maybe it works. Or not.", chunks=4), Reply.text("It works."))
    send(page, "does it work?")
    page.locator(".guardrail-note.retry", has_text="asked the agent for another answer: be sure").wait_for()
    page.locator(".msg.assistant:not(.withdrawn)", has_text="It works.").wait_for()


def test_a_typed_answer_reads_as_its_fields(page: Any, server: TestServer) -> None:
    talk_to(page, "Weather")
    forecast = {"city": "Lima", "temperature": 21, "summary": "sunny"}
    server.script(Reply.tool_calls(ToolCall("final_answer", forecast)))
    send(page, "Weather in Lima?")
    answer = page.locator(".msg.assistant.typed")
    answer.wait_for()
    for _ in range(2):  # as it streams, and as stored after a reload
        assert answer.locator(".type-name").inner_text() == "answer: Forecast"
        assert answer.locator("dt").all_inner_texts() == ["city", "temperature", "summary"]
        assert answer.locator("dd").all_inner_texts() == ["Lima", "21", "sunny"]
        assert page.locator(".call").count() == 0  # the final-answer tool is how it came, not a call to show
        assert page.locator(".msg.assistant").count() == 1
        page.reload()
        answer.wait_for()


def test_an_event_kind_the_page_does_not_know_is_shown_as_it_came(page: Any) -> None:
    page.evaluate("onEvent({type: 'something_new', agent: 'Bank', depth: 0, detail: 42})")
    shown = page.locator("details.event[data-type=something_new]")
    assert shown.locator("summary").inner_text() == "something_new (Bank)"
    assert '"detail": 42' in shown.locator("pre").text_content()
