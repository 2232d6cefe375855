"""History policies are pure functions of the messages about to be sent; these tests need no model.

What they pin down: the system message always stays, the window is the latest messages in order,
a window never opens on a tool result (whose tool call would then be missing), limits are respected
except when respecting them would leave nothing to send, and the input is never modified.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from timestep import ConfigurationError
from timestep.history import approx_chars_over_4, last_messages, token_budget

SYSTEM = {"role": "system", "content": "Be brief."}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def calls(*ids: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": i, "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            for i in ids
        ],
    }


def result(call_id: str, text: str = "sunny") -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def contents(messages: list[dict[str, Any]]) -> list[Any]:
    return [m.get("content") if m["role"] != "tool" else f"tool:{m['tool_call_id']}" for m in messages]


CONVERSATION = [
    SYSTEM,
    user("u1"),
    assistant("a1"),
    user("u2"),
    calls("c1", "c2"),
    result("c1"),
    result("c2"),
    assistant("a2"),
    user("u3"),
]


# -- last_messages -----------------------------------------------------------------------------------


def test_last_messages_keeps_the_system_message_and_the_latest_n() -> None:
    kept = last_messages(2)(CONVERSATION)
    assert kept == [SYSTEM, assistant("a2"), user("u3")]


def test_last_messages_with_room_for_everything_returns_everything() -> None:
    assert last_messages(100)(CONVERSATION) == CONVERSATION
    assert last_messages(8)(CONVERSATION) == CONVERSATION


def test_last_messages_never_opens_the_window_on_a_tool_result() -> None:
    # The latest 4 would start at the second tool result, cut off from its call: the orphaned
    # results are dropped rather than the limit exceeded.
    kept = last_messages(4)(CONVERSATION)
    assert kept == [SYSTEM, assistant("a2"), user("u3")]
    # A window that starts on the call keeps every one of its results.
    assert last_messages(5)(CONVERSATION) == [
        SYSTEM,
        calls("c1", "c2"),
        result("c1"),
        result("c2"),
        assistant("a2"),
        user("u3"),
    ]


def test_a_conversation_ending_in_tool_results_keeps_them_with_their_call() -> None:
    # This is what the run loop sends right after tools ran: the model must see the call and its results.
    ending = [SYSTEM, user("u1"), calls("c1", "c2"), result("c1"), result("c2")]
    for n in (1, 2):
        assert last_messages(n)(ending) == [SYSTEM, calls("c1", "c2"), result("c1"), result("c2")]
    assert last_messages(3)(ending) == [SYSTEM, calls("c1", "c2"), result("c1"), result("c2")]
    assert last_messages(4)(ending) == ending


def test_without_a_system_message_nothing_is_invented() -> None:
    messages = [user("u1"), assistant("a1"), user("u2")]
    assert last_messages(1)(messages) == [user("u2")]
    assert last_messages(5)(messages) == messages


def test_only_a_leading_system_message_counts_as_the_system_message() -> None:
    messages = [user("u1"), {"role": "system", "content": "late"}, user("u2")]
    assert last_messages(1)(messages) == [user("u2")]


def test_empty_and_system_only_conversations() -> None:
    assert last_messages(3)([]) == []
    assert last_messages(3)([SYSTEM]) == [SYSTEM]
    assert token_budget(10)([]) == []
    assert token_budget(1)([SYSTEM]) == [SYSTEM]


def test_policies_never_modify_their_input() -> None:
    original = copy.deepcopy(CONVERSATION)
    messages = copy.deepcopy(CONVERSATION)
    for policy in (last_messages(1), last_messages(3), token_budget(5), token_budget(10_000)):
        kept = policy(messages)
        assert kept is not messages
        assert messages == original


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", True, None])
def test_last_messages_rejects_a_count_that_is_not_a_positive_integer(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="last_messages"):
        last_messages(bad)


# -- token_budget ------------------------------------------------------------------------------------


def by_words(message: dict[str, Any]) -> int:
    return len(str(message.get("content") or "").split()) or 1


def test_token_budget_keeps_as_many_latest_messages_as_fit() -> None:
    messages = [SYSTEM, user("one two three"), assistant("four five"), user("six")]
    # SYSTEM costs 2, then from the end: 1, 2, 3.
    assert token_budget(3, count=by_words)(messages) == [SYSTEM, user("six")]
    assert token_budget(5, count=by_words)(messages) == [SYSTEM, assistant("four five"), user("six")]
    assert token_budget(7, count=by_words)(messages) == [SYSTEM, assistant("four five"), user("six")]
    assert token_budget(8, count=by_words)(messages) == messages


def test_token_budget_always_sends_the_last_message_even_over_budget() -> None:
    messages = [SYSTEM, user("short"), user("a very long question indeed, much longer than the budget")]
    assert token_budget(1, count=by_words)(messages) == [SYSTEM, messages[-1]]


def test_token_budget_respects_tool_call_groups() -> None:
    messages = [SYSTEM, user("u1"), calls("c1"), result("c1", "one two three four"), assistant("done now")]
    # Room for the answer and the tool result, but not the call: the orphaned result goes too.
    assert token_budget(2 + 2 + 4, count=by_words)(messages) == [SYSTEM, assistant("done now")]
    ending = [SYSTEM, user("u1"), calls("c1"), result("c1", "one two three four")]
    assert token_budget(3, count=by_words)(ending) == [SYSTEM, calls("c1"), result("c1", "one two three four")]


def test_token_budget_stops_at_the_first_message_that_does_not_fit() -> None:
    # A cheap old message behind an expensive one is not pulled in out of order.
    messages = [SYSTEM, user("x"), user("a b c d e f g h"), user("y")]
    assert token_budget(2 + 1 + 3, count=by_words)(messages) == [SYSTEM, user("y")]


@pytest.mark.parametrize("bad", [0, -5, 2.5, "100", False])
def test_token_budget_rejects_a_budget_that_is_not_a_positive_integer(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="token_budget"):
        token_budget(bad)


def test_token_budget_rejects_a_count_that_is_not_callable() -> None:
    with pytest.raises(ConfigurationError, match="count"):
        token_budget(100, count=42)  # type: ignore[arg-type]


# -- the default estimate ----------------------------------------------------------------------------


def test_approx_chars_over_4_counts_text_tool_calls_and_content_parts() -> None:
    assert approx_chars_over_4(user("")) == 4
    assert approx_chars_over_4(user("abcd")) == 5
    assert approx_chars_over_4(user("abcde")) == 6
    assert approx_chars_over_4({"role": "assistant", "content": None}) == 4
    call = calls("c1")
    expected = 4 + (len("get_weather") + len('{"city": "Paris"}') + 3) // 4
    assert approx_chars_over_4(call) == expected
    parts = {"role": "user", "content": [{"type": "text", "text": "abcdefgh"}, {"type": "image_url", "image_url": {}}]}
    assert approx_chars_over_4(parts) == 6
    assert approx_chars_over_4({"role": "assistant", "content": None, "tool_calls": ["garbage", None]}) == 4


def test_default_token_budget_on_a_long_conversation() -> None:
    messages = [SYSTEM] + [user("word " * 40) for _ in range(1000)]  # each ~54 tokens
    kept = token_budget(1000)(messages)
    assert kept[0] == SYSTEM
    assert kept[1:] == messages[-len(kept) + 1 :]
    assert sum(approx_chars_over_4(m) for m in kept) <= 1000
    assert len(kept) > 10


def test_policies_describe_themselves() -> None:
    assert "3" in repr(last_messages(3))
    assert "500" in repr(token_budget(500))
