"""The named mutations: each is one exact snippet of a module and what to put in its place.

``tests`` names the test files (or test ids) expected to kill a mutation, most likely first, so a
run stays short; with none given, the whole suite runs. ``harmless`` marks a mutation expected to
survive, with the reason it cannot matter; every other survivor is a missing test.

The first group is issue 19: changes that once went unnoticed by the whole suite; the rest of
that issue's table (its store and model.py rows) is in ``LATER`` and ``ISSUE_19_STORES_AND_MODEL``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutation:
    name: str
    module: str  # a path from the repository root
    find: str  # must occur exactly once in the module
    replace: str
    description: str
    tests: tuple[str, ...] = ()
    harmless: str | None = None


EXECUTION = "timestep/execution.py"
RUN = "timestep/run.py"
APPROVALS = "timestep/approvals.py"
GUARDRAILS = "timestep/guardrails.py"
TOOLS = "timestep/tools.py"

PROMISES = "tests/test_promises.py"
HANDOFF_PROMISES = "tests/test_promises_handoffs.py"


def _p(test: str) -> str:
    return f"{PROMISES}::{test}"


def _h(test: str) -> str:
    return f"{HANDOFF_PROMISES}::{test}"


ISSUE_19: list[Mutation] = [
    Mutation(
        "call-id-unstable",
        EXECUTION,
        "context = ToolContext(tool_call_id=call.id,",
        "context = ToolContext(tool_call_id=call.id + repr(object()),",
        "ToolContext.tool_call_id differs on every attempt",
        (_p("test_a_tools_call_id_is_the_same_on_every_attempt"),),
    ),
    Mutation(
        "rerun-uses-model-args",
        EXECUTION,
        'args = call.started_args if call.started_args is not None else base["arguments"]',
        'args = base["arguments"]',
        "a re-run after a crash uses the model's arguments, not the ones let through",
        (_p("test_a_rerun_after_a_crash_uses_the_arguments_the_person_let_through"),),
    ),
    Mutation(
        "one-approval-for-all-guardrails",
        EXECUTION,
        'if interrupt.get("guardrail") == guardrail and asked_fp in covered:',
        "if asked_fp in covered:",
        "one approval answers every approval guardrail of the call",
        (_p("test_each_approval_guardrail_of_a_call_gets_its_own_answer"),),
    ),
    Mutation(
        "saved-result-ignored",
        EXECUTION,
        "if call.result is not None:  # it finished",
        "if False:  # it finished",
        "a result already in the journal is ignored and the call runs again",
        (_p("test_a_result_saved_while_an_earlier_call_ran_is_used_not_run_again"),),
    ),
    Mutation(
        "inherited-input-guardrails-last",
        EXECUTION,
        "chain = [g for g in (*ctx.inherited_guardrails, *agent.guardrails) if isinstance(g, InputGuardrail)]",
        "chain = [g for g in (*agent.guardrails, *ctx.inherited_guardrails) if isinstance(g, InputGuardrail)]",
        "inherited input guardrails run after the delegate's own",
        (_h("test_inherited_guardrails_run_before_the_delegates_own"),),
    ),
    Mutation(
        "rerun-without-retry-flag",
        EXECUTION,
        'ctx.emit({"type": "tool_call", **base, "arguments": args, "args": args, "retry": True})',
        'ctx.emit({"type": "tool_call", **base, "arguments": args, "args": args})',
        "the tool_call event of a re-run lacks retry=True",
        (_p("test_the_tool_call_event_of_a_rerun_says_retry"),),
    ),
    Mutation(
        "approve-need-not-be-bool",
        APPROVALS,
        "if unknown or not isinstance(approve, bool):",
        "if unknown or approve is None:",
        'a dict decision whose approve is not a bool ("no") is accepted',
        (_p("test_a_malformed_decision_is_refused_and_nothing_runs"),),
    ),
    Mutation(
        "fingerprint-key-order",
        APPROVALS,
        "json.dumps([tool_name, arguments], sort_keys=True",
        "json.dumps([tool_name, arguments], sort_keys=False",
        "the arguments' fingerprint depends on key order",
        (_p("test_an_approval_of_edited_arguments_does_not_depend_on_key_order"),),
    ),
    Mutation(
        "decline-dict-loses-message",
        APPROVALS,
        "return Decision(approve=approve, message=str(message) if message is not None else None, args=args)",
        "return Decision(approve=approve, message=None, args=args)",
        '{"approve": False, "message": ...} loses its message',
        (_p("test_a_decline_keeps_its_message"),),
    ),
    Mutation(
        "interrupt-args-ignored",
        GUARDRAILS,
        "self.tool_args: dict[str, Any] = dict(args) if args is not None else {}",
        "self.tool_args: dict[str, Any] = {}",
        "the arguments given to GuardrailInterrupt are ignored (the person sees the full call)",
        (_p("test_a_person_is_shown_the_arguments_the_guardrail_names"),),
    ),
    Mutation(
        "handoff-never-resumed",
        RUN,
        '"message": message, "resumed": received}',
        '"message": message, "resumed": False}',
        "handoff_start.resumed is always false",
        (_h("test_a_resumed_handoff_says_so_and_is_not_delivered_twice"),),
    ),
    Mutation(
        "out-of-turn-result-not-journaled",
        RUN,
        "                await keep(n)  # safe while earlier calls still run",
        "                pass",
        "a later call's finished result is not journaled while earlier calls still run",
        (_p("test_a_result_saved_while_an_earlier_call_ran_is_used_not_run_again"),),
    ),
    Mutation(
        "usage-last-call-only",
        RUN,
        "usage[k] = usage.get(k, 0) + int(used.get(k) or 0)",
        "usage[k] = int(used.get(k) or 0)",
        "usage keeps only the last model call's counts",
        (_p("test_usage_is_summed_over_the_runs_model_calls"), _p("test_the_result_reports_the_summed_usage")),
    ),
    Mutation(
        "model-settings-dropped",
        RUN,
        '"messages": messages, **agent.model_settings}',
        '"messages": messages}',
        "model_settings are dropped from the request",
        (_p("test_model_settings_are_sent_with_every_request"),),
    ),
    Mutation(
        "depth-limit-one-early",
        RUN,
        "if ctx.depth + 1 > ctx.config.max_handoff_depth:",
        "if ctx.depth + 1 >= ctx.config.max_handoff_depth:",
        "the handoff depth limit refuses one level early",
        (_h("test_the_handoff_depth_limit_allows_exactly_max_handoff_depth_levels"),),
    ),
    Mutation(
        "no-delegate-lock",
        RUN,
        'lock = getattr(sub, "lock", None)  #',
        "lock = None  #",
        "no lock around a delegate's session: two transfers to one delegate interleave",
        ("tests/test_edge_cases.py::test_two_transfers_to_one_delegate_take_turns",),
    ),
    Mutation(
        "run-end-usage-empty",
        RUN,
        '"usage": usage,',
        '"usage": {},',
        "run_end.usage is always {}",
        (_p("test_usage_is_summed_over_the_runs_model_calls"), _p("test_the_result_reports_the_summed_usage")),
    ),
    Mutation(
        "approval-event-without-edit",
        EXECUTION,
        '"edited_arguments": decision.args,',
        '"edited_arguments": None,',
        "the approval event loses edited_arguments",
        (_p("test_edited_arguments_are_in_the_approval_event"),),
    ),
]

MORE: list[Mutation] = [
    # -- execution.py ---------------------------------------------------------------------------
    Mutation(
        "input-block-ignored",
        EXECUTION,
        '            raise _blocked(ctx, base, "input", g.name, verdict.reason or "blocked")',
        "            pass",
        "an input guardrail's block is ignored",
        ("tests/test_guardrails.py",),
    ),
    Mutation(
        "modify-args-ignored",
        EXECUTION,
        "            args = verdict.args",
        "            pass",
        "modify_args does not change the arguments",
        ("tests/test_guardrails.py",),
    ),
    Mutation(
        "modify-result-ignored",
        EXECUTION,
        "            result = verdict.result",
        "            pass",
        "modify_result does not change the result",
        ("tests/test_guardrails.py",),
    ),
    Mutation(
        "input-guardrail-fails-open",
        EXECUTION,
        '            raise _blocked(ctx, base, "input", g.name, f"the guardrail failed ({type(exc).__name__}: {exc})")'
        " from None",
        "            continue",
        "an input guardrail that raises lets the call through",
        ("tests/test_guardrails.py",),
    ),
    Mutation(
        "output-guardrail-fails-open",
        EXECUTION,
        '            raise _blocked(ctx, base, "output", g.name, f"the guardrail failed ({type(exc).__name__}: {exc})")'
        " from None",
        "            continue",
        "an output guardrail that raises lets the result through",
        ("tests/test_guardrails.py",),
    ),
    Mutation(
        "edits-not-rechecked",
        EXECUTION,
        "for _ in range(len(chain) + 2):",
        "for _ in range(1):",
        "edited arguments do not go through the chain again (boundary)",
        ("tests/test_edge_cases.py", "tests/test_approvals.py"),
    ),
    Mutation(
        "started-not-journaled",
        EXECUTION,
        '    await session.add_items([seal.sign({"journal": "started", "call": call.id, "args": _jsonable(args)})])',
        "    pass",
        "the start of a call is not journaled (dropped await)",
        ("tests/test_run.py::test_leaving_the_event_stream_early_cancels_the_run", "tests/test_approvals.py"),
    ),
    Mutation(
        "idempotent-ignored",
        EXECUTION,
        "if agent.get_handoff(call.name) is None and not (tool is not None and tool.idempotent):",
        "if agent.get_handoff(call.name) is None:",
        "an idempotent tool whose outcome was lost pauses instead of running again",
        (_p("test_the_tool_call_event_of_a_rerun_says_retry"), "tests/test_approvals.py"),
    ),
    Mutation(
        "handler-not-serialised",
        EXECUTION,
        "    async with ctx.approval_lock:",
        "    if True:",
        "concurrent calls ask the approval handler at the same time",
        ("tests/test_approvals.py::test_a_handler_answers_calls_left_waiting_and_one_question_at_a_time",),
    ),
    Mutation(
        "decline-text-without-message",
        EXECUTION,
        'return f"A person declined {what}" + (f": {message}" if message else ".")',
        'return f"A person declined {what}."',
        "the model is not told why a person declined",
        ("tests/test_approvals.py", PROMISES),
    ),
    Mutation(
        "edit-restarts-forever",
        EXECUTION,
        "if edited is not None and edited != args:",
        "if edited is not None:",
        "an approval that repeats the arguments restarts the chain (swapped condition)",
        (_p("test_an_approval_of_edited_arguments_does_not_depend_on_key_order"), "tests/test_docs.py"),
    ),
    Mutation(
        "inherited-output-guardrails-last",
        EXECUTION,
        "for g in (*ctx.inherited_guardrails, *agent.guardrails):",
        "for g in (*agent.guardrails, *ctx.inherited_guardrails):",
        "inherited output guardrails run after the delegate's own",
        (_h("test_inherited_guardrails_run_before_the_delegates_own"),),
    ),
    Mutation(
        "caller-guardrails-not-inherited",
        EXECUTION,
        "                *(g for g in caller.guardrails if isinstance(g, InputGuardrail | OutputGuardrail)),\n",
        "",
        "a delegate's tools escape the caller's guardrails",
        ("tests/test_handoffs.py",),
    ),
    # -- run.py ---------------------------------------------------------------------------------
    Mutation(
        "max-turns-plus-one",
        RUN,
        "for _ in range(ctx.config.max_turns):",
        "for _ in range(ctx.config.max_turns + 1):",
        "one model call more than max_turns (boundary)",
        ("tests/test_run.py::test_max_turns_ends_a_runaway_loop",),
    ),
    Mutation(
        "results-out-of-call-order",
        RUN,
        "                await stored[n - 1].wait()",
        "                pass",
        "results are stored as calls finish, not in call order (dropped await)",
        ("tests/test_run.py::test_tool_calls_run_concurrently_and_results_are_stored_in_call_order",),
    ),
    Mutation(
        "new-message-while-pending",
        RUN,
        "    if has_messages and (pending or messages):",
        "    if False:",
        "a new user message is accepted while calls wait for approval",
        ("tests/test_approvals.py::test_forged_replayed_and_tampered_approvals_run_nothing",),
    ),
    Mutation(
        "tampered-call-approved",
        RUN,
        '        if p.interrupt.get("call_fingerprint") != p.call_fingerprint:',
        "        if False:",
        "an approval is accepted for a call whose stored arguments changed",
        ("tests/test_approvals.py::test_forged_replayed_and_tampered_approvals_run_nothing",),
        harmless="check_interrupt, called right after it for the same call, refuses a changed call "
        "fingerprint too; this earlier check only words the error for the common case",
    ),
    Mutation(
        "unknown-outcome-editable",
        RUN,
        '        if p.interrupt.get("kind") == "unknown_outcome" and decisions[cid].args is not None:',
        "        if False:",
        "a call that may already have run can be approved with new arguments",
        ("tests/test_edge_cases.py::test_unknown_outcome_calls_cannot_be_edited",),
    ),
    Mutation(
        "system-message-doubled",
        RUN,
        'messages = [{"role": "system", "content": agent.instructions}, *messages[1:]]',
        'messages = [{"role": "system", "content": agent.instructions}, *messages]',
        "the stored system message is sent as well as the agent's instructions",
        ("tests/test_run.py::test_text_answer_persists_and_reports",),
    ),
    Mutation(
        "stream-usage-not-asked",
        RUN,
        '        body["stream_options"] = {"include_usage": True}',
        "        pass",
        "a streamed request does not ask for usage",
        (_p("test_usage_is_summed_over_the_runs_model_calls"), "tests/test_run.py"),
    ),
    Mutation(
        "repeated-call-ids-kept",
        RUN,
        "if not isinstance(call_id, str) or not call_id or call_id in used_ids:",
        "if not isinstance(call_id, str) or not call_id:",
        "a tool call id the conversation already used is kept",
        ("tests/test_edge_cases.py::test_missing_and_repeated_tool_call_ids_are_made_unique",),
    ),
    Mutation(
        "delegate-pause-lost",
        RUN,
        '    if outcome.status == "interrupted":',
        '    if outcome.status == "paused":',
        "a pause inside a delegate is not passed up to the caller",
        ("tests/test_handoffs.py",),
    ),
    Mutation(
        "handoff-marker-never-written",
        RUN,
        'suffix = None if received else [{"journal": HANDOFF_RECEIVED, "call": call.id}]',
        "suffix = None",
        "a delegate's receipt of the message is not journaled",
        (_h("test_a_resumed_handoff_says_so_and_is_not_delivered_twice"), "tests/test_handoffs.py"),
    ),
    Mutation(
        "run-lock-dropped",
        RUN,
        "        async with lock(cfg.lock_timeout) if lock is not None else contextlib.nullcontext():",
        "        async with contextlib.nullcontext():",
        "two runs of one conversation do not take turns",
        (
            "tests/test_approvals.py::test_a_run_waits_for_another_run_of_the_same_conversation",
            "tests/test_approvals.py",
        ),
    ),
    Mutation(
        "history-ignored",
        RUN,
        "        messages = ctx.config.history(messages)",
        "        pass",
        "RunConfig(history=...) does not trim what is sent",
        ("tests/test_stores_runs.py::test_a_history_policy_trims_the_request_but_not_the_store",),
    ),
    Mutation(
        "delegate-pending-hidden",
        RUN,
        "        if target is not None and p.started and depth < 64:\n            below = delegate_session(",
        "        if False:\n            below = delegate_session(",
        "calls waiting inside a delegate are not listed (nor approvable)",
        ("tests/test_handoffs.py",),
    ),
    # -- approvals.py ---------------------------------------------------------------------------
    Mutation(
        "string-decision-approves",
        APPROVALS,
        "        return Decision(approve=False, message=value)",
        "        return Decision(approve=True, message=value)",
        "a decline message approves the call",
        ("tests/test_approvals.py",),
    ),
    Mutation(
        "unknown-decision-keys-accepted",
        APPROVALS,
        "if unknown or not isinstance(approve, bool):",
        "if not isinstance(approve, bool):",
        "a decision with a misspelt key is accepted",
        (_p("test_a_malformed_decision_is_refused_and_nothing_runs"),),
    ),
    Mutation(
        "decision-args-not-checked",
        APPROVALS,
        "        if args is not None and not isinstance(args, dict):",
        "        if False:",
        "edited arguments that are not a dict are accepted",
        (_p("test_a_malformed_decision_is_refused_and_nothing_runs"),),
    ),
    Mutation(
        "saved-result-not-replayed",
        APPROVALS,
        '        p.result = item.get("content")',
        "        pass",
        "a journaled result is not read back",
        (_p("test_a_result_saved_while_an_earlier_call_ran_is_used_not_run_again"),),
    ),
    Mutation(
        "new-attempt-keeps-old-answers",
        APPROVALS,
        "        p.interrupt, p.decision, p.decided = None, None, []",
        "        pass",
        "an approval of an earlier attempt still covers a new attempt",
        ("tests/test_edge_cases.py::test_an_approved_rerun_that_crashes_again_asks_again", "tests/test_approvals.py"),
    ),
    Mutation(
        "any-handoff-marker-counts",
        APPROVALS,
        'return any(r.get("journal") == HANDOFF_RECEIVED and r.get("call") == parent_call_id for r in journal)',
        'return any(r.get("journal") == HANDOFF_RECEIVED for r in journal)',
        "a delegate that received one message is taken to have received every later one",
        ("tests/test_handoffs.py",),
    ),
    Mutation(
        "fingerprint-empty",
        APPROVALS,
        "hexdigest()[:32]",
        "hexdigest()[:0]",
        "every call has the same fingerprint (boundary)",
        ("tests/test_approvals.py::test_forged_replayed_and_tampered_approvals_run_nothing",),
    ),
    Mutation(
        "answered-calls-pending",
        APPROVALS,
        'answered = {m.get("tool_call_id", "") for m in messages[last_call_msg + 1 :] if m.get("role") == "tool"}',
        "answered: set[str] = set()",
        "calls that have a result still count as pending",
        ("tests/test_approvals.py",),
    ),
    Mutation(
        "decision-not-replayed",
        APPROVALS,
        "        p.decision = item",
        "        pass",
        "a recorded decision is not read back",
        ("tests/test_edge_cases.py", "tests/test_approvals.py"),
    ),
    # -- guardrails.py --------------------------------------------------------------------------
    Mutation(
        "none-blocks",
        GUARDRAILS,
        "    if value is None:\n        return GuardrailResult.proceed()",
        "    if value is None:\n        return GuardrailResult.block()",
        "a handler that returns None blocks (swapped branch)",
        ("tests/test_guardrails.py", HANDOFF_PROMISES),
    ),
    Mutation(
        "garbage-proceeds",
        GUARDRAILS,
        '    raise TypeError(f"guardrail {name!r} returned {type(value).__name__}, expected GuardrailResult")',
        "    return GuardrailResult.proceed()",
        "a handler that returns something else waves the call through",
        ("tests/test_guardrails.py",),
    ),
    Mutation(
        "async-handler-not-awaited",
        GUARDRAILS,
        "        value = await value",
        "        pass",
        "an async guardrail's coroutine is never awaited (dropped await)",
        ("tests/test_guardrails.py",),
    ),
    # -- tools.py -------------------------------------------------------------------------------
    Mutation(
        "sync-tool-on-the-loop",
        TOOLS,
        "        result = await asyncio.to_thread(self.fn, *call_args, **call_kwargs)",
        "        result = self.fn(*call_args, **call_kwargs)",
        "a sync tool blocks the event loop",
        ("tests/test_run.py::test_sync_tools_run_off_the_event_loop_and_results_become_json",),
    ),
    Mutation(
        "context-not-passed",
        TOOLS,
        "            call_kwargs[self.context_param] = context",
        "            pass",
        "a tool asking for ToolContext does not get it",
        ("tests/test_tools.py",),
    ),
    Mutation(
        "seed-keys-never-required",
        TOOLS,
        "                required.append(key)",
        "                pass",
        "a seed-style tool's schema requires nothing",
        ("tests/test_tools.py",),
    ),
    Mutation(
        "strings-sent-as-json",
        TOOLS,
        "    if isinstance(value, str):\n        return valid_text(value)",
        "    if False:\n        return valid_text(value)",
        "a string result reaches the model JSON-quoted",
        ("tests/test_tools.py",),
    ),
    Mutation(
        "arguments-not-coerced",
        TOOLS,
        "        return {name: getattr(model, name) for name in type(model).model_fields}",
        "        return args",
        "validated arguments are passed on raw, without pydantic's coercion",
        ("tests/test_tools.py",),
    ),
    Mutation(
        "extra-arguments-allowed",
        TOOLS,
        'ConfigDict(extra="forbid",',
        'ConfigDict(extra="ignore",',
        "arguments the tool does not take are silently dropped",
        ("tests/test_tools.py",),
    ),
    Mutation(
        "tool-name-65",
        TOOLS,
        'TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")',
        'TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,65}$")',
        "a 65-character tool name is accepted (the API's limit is 64; boundary)",
        (_p("test_tool_names_stop_at_the_apis_64_characters"), "tests/test_tools.py"),
    ),
    Mutation(
        "idempotent-flag-lost",
        TOOLS,
        "parameters=parameters, idempotent=idempotent)\n\n    return wrap",
        "parameters=parameters, idempotent=False)\n\n    return wrap",
        "@tool(idempotent=True) is not recorded",
        ("tests/test_tools.py",),
    ),
    Mutation(
        "surrogates-replaced",
        TOOLS,
        'text.encode("utf-8", "backslashreplace")',
        'text.encode("utf-8", "replace")',
        "an undecodable character is lost instead of escaped",
        ("tests/test_edge_cases.py::test_text_that_is_not_utf8_and_arguments_json_cannot_store",),
    ),
]

MODEL = "timestep/model.py"
FILE_STORE = "timestep/sessions/file.py"
SQLITE = "timestep/sessions/sqlite.py"
INTEGRITY_TESTS = "tests/test_approval_integrity.py"

# Promises added since: approvals that a write to the store cannot forge, results in call order,
# namesake guardrails, and the model.py and store rows of issue 19.
LATER = [
    Mutation(
        "decision-not-bound",
        APPROVALS,
        '        or decision.get("interrupt") != digest(interrupt)\n',
        "",
        "a recorded decision is not checked against the question it answers",
        (INTEGRITY_TESTS,),
    ),
    Mutation(
        "shown-args-unchecked",
        APPROVALS,
        'elif fingerprint(call.name, record.get("args")) != record.get("args_fingerprint"):',
        "elif False:",
        "a question whose shown arguments were edited is still shown and applied",
        (INTEGRITY_TESTS,),
    ),
    Mutation(
        "rerun-args-unchecked",
        APPROVALS,
        'elif record.get("kind") == "unknown_outcome" and (',
        "elif False and (",
        "a re-run may use arguments other than the ones the person was shown",
        (INTEGRITY_TESTS,),
    ),
    Mutation(
        "unsigned",
        APPROVALS,
        '            record["sig"] = self._mac(record)',
        "            pass",
        "with a secret, records are not signed",
        (INTEGRITY_TESTS,),
    ),
    Mutation(
        "signature-unchecked",
        APPROVALS,
        "        if not self.secret:\n            return\n        sig = record.get",
        "        if True:\n            return\n        sig = record.get",
        "with a secret, unsigned records are accepted",
        (INTEGRITY_TESTS,),
    ),
    Mutation(
        "answers-not-rechecked",
        EXECUTION,
        "    _check_answers(seal, call)  # a stored decision is checked before it is acted on",
        "    pass",
        "stored decisions are used without checking them",
        (INTEGRITY_TESTS,),
        harmless="the same check runs again just before the tool runs; a decision that never reaches a tool "
        "can only decline it",
    ),
    Mutation(
        "results-jump-a-paused-call",
        RUN,
        "            if held[0]:\n                await keep(n)\n            elif",
        "            if False:\n                await keep(n)\n            elif",
        "when a call pauses, later results are stored before it",
        ("tests/test_call_order.py",),
    ),
    Mutation(
        "namesake-guardrails-share-an-answer",
        GUARDRAILS,
        'out.append(g.name if seen[g.name] == 1 else f"{g.name} #{seen[g.name]}")',
        "out.append(g.name)",
        "two approval guardrails with one name share one answer",
        (_p("test_two_approval_guardrails_with_the_same_name_each_get_an_answer"),),
    ),
    Mutation(
        "transfer-result-as-text",
        EXECUTION,
        'result: Any = {"result": outcome.content}',
        "result: Any = outcome.content",
        "an output guardrail gets a transfer's answer as text, not {'result': ...}",
        ("tests/test_seed.py",),
    ),
    Mutation(
        "retry-after-ignored",
        MODEL,
        "                if after is not None:\n"
        "                    return min(max(float(after), 0.0), MAX_RETRY_AFTER)",
        "                if False:\n                    pass",
        "Retry-After in seconds is ignored",
        ("tests/test_model.py",),
    ),
    Mutation(
        "transient-not-retried",
        MODEL,
        "RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})",
        "RETRY_STATUSES = frozenset({429, 500})",
        "408, 409, 502, 503 and 504 are not retried",
        ("tests/test_model.py",),
    ),
    Mutation(
        "key-in-repr",
        MODEL,
        "api_key={REDACTED if self.api_key else None})",
        "api_key={self.api_key})",
        "repr(ModelClient) shows the key",
        ("tests/test_model.py",),
    ),
    Mutation(
        "fsync-skipped",
        FILE_STORE,
        "                if self.fsync:\n                    os.fsync(fd)",
        "                if self.fsync:\n                    pass",
        "FileSession(fsync=True) never fsyncs",
        ("tests/test_file_session.py",),
    ),
    Mutation(
        "reads-unlocked",
        FILE_STORE,
        "            self._lock(fd, fcntl.LOCK_SH, blocking)",
        "            pass",
        "reads no longer take the shared lock",
        ("tests/test_file_session.py",),
    ),
    Mutation(
        "held-appends-unlocked",
        FILE_STORE,
        "        try:\n            self._lock(fd, fcntl.LOCK_EX, blocking)\n            st = os.fstat(fd)",
        "        try:\n            if not borrowed:\n                self._lock(fd, fcntl.LOCK_EX, blocking)\n"
        "            st = os.fstat(fd)",
        "a run's appends on its lock's descriptor skip the writers' lock",
        ("tests/test_file_session.py",),
    ),
    Mutation(
        "sqlite-synchronous-off",
        SQLITE,
        'conn.execute("PRAGMA synchronous = NORMAL")',
        'conn.execute("PRAGMA synchronous = OFF")',
        "SQLite runs with synchronous=OFF",
        ("tests/test_session_contract.py",),
    ),
    Mutation(
        "sqlite-deferred",
        SQLITE,
        '    conn.execute("BEGIN IMMEDIATE")',
        '    conn.execute("BEGIN")',
        "SQLite transactions are deferred instead of BEGIN IMMEDIATE",
        ("tests/test_session_contract.py",),
    ),
]

CONVERSATION = "timestep/conversation.py"
OUTPUT = "timestep/output.py"

# Guarding the conversation and typed answers (issue 16).
CONVERSATION_GUARDS = [
    Mutation(
        "stream-released-before-checked",
        CONVERSATION,
        "        self._release(min(self.passed))",
        "        self._release(len(self.text))",
        "a streamed answer is shown before its answer guardrails passed it",
        ("tests/test_conversation_guardrails.py",),
    ),
    Mutation(
        "message-block-ignored",
        CONVERSATION,
        '                return _blocked(ctx, head, label, verdict.reason or "blocked")',
        "                pass",
        "a message guardrail's block lets the message through",
        ("tests/test_conversation_guardrails.py",),
    ),
    Mutation(
        "answer-not-validated",
        OUTPUT,
        "            return self.adapter.validate_python(data)",
        "            return data",
        "a typed answer is not validated against its type",
        ("tests/test_output_type.py",),
    ),
    Mutation(
        "answer-retries-unbounded",
        RUN,
        "            if attempts > ctx.config.max_answer_retries:",
        "            if attempts > ctx.config.max_answer_retries + 5:",
        "answers that never validate are retried past max_answer_retries",
        ("tests/test_output_type.py",),
    ),
    Mutation(
        "no-response-format-fallback",
        RUN,
        "        _no_response_format.add((ctx.client.base_url, agent.model))",
        "        pass",
        "an endpoint that refused the response format is asked with it again",
        ("tests/test_output_type.py",),
    ),
]

POSTGRES = "timestep/sessions/postgres.py"
STORES = "timestep/sessions/stores.py"
MCP_CONVERT = "timestep/mcp/convert.py"
SERVER_RUNS = "timestep/server/runs.py"
CONTRACT = "tests/test_session_contract.py"
MODEL_TESTS = "tests/test_model.py"


def _c(test: str) -> str:
    return f"{CONTRACT}::{test}"


def _m(test: str) -> str:
    return f"{MODEL_TESTS}::{test}"


# The rest of issue 19's table: the sqlite.py and model.py rows each broken by hand once.
ISSUE_19_STORES_AND_MODEL = [
    Mutation(
        "sqlite-lease-released-by-anyone",
        SQLITE,
        '            "DELETE FROM leases WHERE agent_name = ? AND conversation_id = ? AND owner = ?",\n'
        "            (self.agent_name, self.conversation_id, token),",
        '            "DELETE FROM leases WHERE agent_name = ? AND conversation_id = ?",\n'
        "            (self.agent_name, self.conversation_id),",
        "releasing a run lock deletes the lease whoever holds it",
        (_c("test_giving_a_lock_back_leaves_a_lease_another_run_took"),),
    ),
    Mutation(
        "cancelled-waiter-keeps-lease",
        SQLITE,
        "        _in_background(_give_back_quietly(give_back, token, named))\n        raise",
        "        raise",
        "a waiter cancelled while taking the lock keeps what it got (SQLite and PostgreSQL share this code)",
        (
            _c("test_an_sqlite_waiter_cancelled_while_its_take_waits_for_the_write_lock_gives_the_lease_back"),
            _c("test_a_waiter_cancelled_while_taking_the_lock_gives_back_what_it_got"),
        ),
    ),
    Mutation(
        "sqlite-instant-locked-not-retried",
        SQLITE,
        'if ("locked" not in str(exc) and "busy" not in str(exc)) or attempt == RETRIES - 1:',
        "if True:",
        'an instant "database is locked" is no longer retried',
        (_c("test_sqlite_retries_a_database_is_locked_answered_at_once"),),
    ),
    Mutation(
        "connection-errors-not-retried",
        MODEL,
        "                if attempt >= self.max_retries:\n                    raise self._unreachable(",
        "                if True:\n                    raise self._unreachable(",
        "connection errors are not retried",
        (_m("test_a_connection_dropped_before_the_answer_is_retried"),),
    ),
    Mutation(
        "openai-timeout-ignored",
        MODEL,
        "            timeout=read,\n            connect_timeout=connect,\n",
        "",
        "a configured openai.AsyncOpenAI's timeout is ignored",
        (
            _m("test_an_openai_clients_timeout_and_retry_budget_are_used"),
            _m("test_an_openai_clients_larger_retry_budget_is_used"),
        ),
    ),
    Mutation(
        "openai-retry-budget-ignored",
        MODEL,
        '            max_retries=int(getattr(client, "max_retries", 2)),\n',
        "",
        "a configured openai.AsyncOpenAI's retry budget is ignored",
        (
            _m("test_an_openai_clients_timeout_and_retry_budget_are_used"),
            _m("test_an_openai_clients_larger_retry_budget_is_used"),
        ),
    ),
    Mutation(
        "key-in-a-second-header",
        MODEL,
        '            merged["authorization"] = ("Authorization", f"Bearer {self.api_key}")',
        '            merged["authorization"] = ("Authorization", f"Bearer {self.api_key}")\n'
        '            merged["x-api-key"] = ("X-Api-Key", self.api_key)',
        "the key is also sent in a second header",
        (_m("test_the_key_is_sent_once_and_never_shown"),),
    ),
    Mutation(
        "retry-after-ms-ignored",
        MODEL,
        "                if ms is not None:\n"
        "                    return min(max(float(ms) / 1000, 0.0), MAX_RETRY_AFTER)",
        "                if False:\n                    pass",
        "Retry-After in milliseconds (retry-after-ms) is ignored",
        (_m("test_retry_after_is_waited_for"),),
    ),
    Mutation(
        "retry-after-date-ignored",
        MODEL,
        "                if when is not None:\n                    return min(max(when.timestamp() - time.time()",
        "                if False:\n                    return min(max(when.timestamp() - time.time()",
        "Retry-After as an HTTP date is ignored",
        (_m("test_retry_after_is_waited_for"),),
    ),
]

# Modules that came later: the PostgreSQL store, MCP's policy, delegates in a store, the server.
NEWER_MODULES = [
    Mutation(
        "pg-lease-released-by-anyone",
        POSTGRES,
        '"give_back_lease": f"DELETE FROM {p}leases WHERE agent_name = $1 AND conversation_id = $2 AND owner = $3",',
        '"give_back_lease": f"DELETE FROM {p}leases WHERE agent_name = $1 AND conversation_id = $2'
        ' AND (owner = $3 OR true)",',
        "PostgreSQL: releasing a run lock deletes the lease whoever holds it",
        (_c("test_giving_a_lock_back_leaves_a_lease_another_run_took"),),
    ),
    Mutation(
        "pg-pop-keeps-generation",
        POSTGRES,
        'AND seq >= $2 RETURNING 1) "\n'
        '            f"UPDATE {p}conversations SET item_count = item_count - (SELECT count(*) FROM gone), '
        'updated_at = now(), "\n'
        '            "generation = generation + 1 WHERE id = $1"',
        'AND seq >= $2 RETURNING 1) "\n'
        '            f"UPDATE {p}conversations SET item_count = item_count - (SELECT count(*) FROM gone), '
        'updated_at = now(), "\n'
        '            "generation = generation WHERE id = $1"',
        "PostgreSQL: a pop leaves other sessions' read caches standing (they keep the popped message)",
        ("tests/test_store_speed_safety.py::test_a_reader_sees_appends_pops_and_clears_by_another_session",),
    ),
    Mutation(
        "mcp-destructive-without-approval",
        MCP_CONVERT,
        "    return bool(annotations and annotations.destructive_hint)",
        "    return False",
        "an MCP tool marked destructiveHint no longer pauses for a person",
        (
            "tests/test_mcp.py::test_the_policy_reads_the_annotations",
            "tests/test_mcp.py::test_destructive_tool_pauses_and_resumes_in_a_new_process",
        ),
    ),
    Mutation(
        "mcp-any-tool-rerun",
        MCP_CONVERT,
        "    return bool(annotations and (annotations.idempotent_hint or annotations.read_only_hint))",
        "    return True",
        "an MCP tool with no idempotentHint runs again after a crash",
        ("tests/test_mcp.py::test_a_crash_reruns_only_idempotent_tools",),
    ),
    Mutation(
        "delegates-by-name-only",
        STORES,
        "if _transfer_tool(c.agent_name) in called and c not in found:",
        "if c not in found:",
        "a conversation named like a delegate's is taken for one without its caller's transfer call",
        (_c("test_deleting_with_delegates_takes_only_its_own_delegates"),),
    ),
    Mutation(
        "server-two-runs-per-conversation",
        SERVER_RUNS,
        "        if conversation.run is not None and not conversation.run.done:\n            raise ConversationBusy(",
        "        if False:\n            raise ConversationBusy(",
        "the server starts a second run of a conversation instead of answering 409 at once",
        ("tests/test_server.py::test_a_message_while_a_run_goes_on_is_a_conflict",),
    ),
]


MUTATIONS: list[Mutation] = [*ISSUE_19, *MORE, *LATER, *CONVERSATION_GUARDS, *ISSUE_19_STORES_AND_MODEL, *NEWER_MODULES]
