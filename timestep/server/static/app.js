// The Timestep web chat: plain JavaScript against the server's own API, no build step.
//
// The page keeps nothing a server restart could lose: a conversation is drawn from what the
// session stores (GET .../conversations/ID), and then followed live on .../events from the cursor
// that answer gave. Paths are relative to the page, so the app works mounted under a prefix too. Messages and decisions start runs in the background (?background=true), so a
// reload or a closed tab never stops one; their events arrive on the same follower. Everything
// from the server is shown with textContent, never as HTML.
"use strict";

const state = { agent: null, conversation: null, follower: null, snapshot: [], live: null, tools: {}, outputs: {}, sent: null };
const FINAL_ANSWER = "final_answer"; // the tool a typed answer may come through (output_type)
const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function setStatus(text, isError) {
  $("status").textContent = text || "";
  $("status").classList.toggle("error", Boolean(isError));
}

// -- the API, with the token asked once --------------------------------------------------------

function askToken() {
  return new Promise((resolve) => {
    const dialog = $("token-dialog");
    $("token-form").onsubmit = () => {
      localStorage.setItem("timestep-token", $("token").value.trim());
      resolve();
    };
    dialog.showModal();
  });
}

async function api(path, options = {}) {
  for (;;) {
    const headers = { ...(options.headers || {}) };
    const token = localStorage.getItem("timestep-token");
    if (token) headers.Authorization = `Bearer ${token}`;
    if (options.json !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method: options.method || "GET",
      headers,
      body: options.json !== undefined ? JSON.stringify(options.json) : undefined,
      signal: options.signal,
    });
    if (response.status === 401) {
      await askToken();
      continue;
    }
    return response;
  }
}

async function errorOf(response) {
  try {
    const body = await response.json();
    return body.error || { type: "HTTPError", message: `HTTP ${response.status}` };
  } catch {
    return { type: "HTTPError", message: `HTTP ${response.status}` };
  }
}

const agentPath = () => `api/agents/${encodeURIComponent(state.agent)}/conversations`;
const convPath = (what) =>
  `${agentPath()}/${encodeURIComponent(state.conversation)}${what ? "/" + what : ""}`;

// -- conversations -----------------------------------------------------------------------------

async function loadAgents() {
  const response = await api("api/agents");
  const { agents } = await response.json();
  const select = $("agent");
  select.replaceChildren(...agents.map((a) => el("option", null, a.name)));
  for (const a of agents) {
    state.tools[a.name] = Object.fromEntries(a.tools.map((t) => [t.name, t.parameters]));
    state.outputs[a.name] = a.output || null;
  }
  const wanted = new URLSearchParams(location.hash.slice(1));
  state.agent = agents.some((a) => a.name === wanted.get("agent")) ? wanted.get("agent") : agents[0].name;
  select.value = state.agent;
  select.onchange = () => {
    state.agent = select.value;
    openConversation(null);
    loadConversations();
  };
  await loadConversations();
  if (wanted.get("c")) await openConversation(wanted.get("c"));
}

async function loadConversations() {
  const response = await api(agentPath());
  if (!response.ok) return setStatus((await errorOf(response)).message, true);
  const { conversations } = await response.json();
  $("conversations").replaceChildren(
    ...conversations.map((c) => {
      const item = el("li", c.conversation_id === state.conversation ? "active" : null, c.conversation_id);
      item.dataset.id = c.conversation_id;
      if (c.updated_at) item.append(el("span", "when", new Date(c.updated_at).toLocaleString()));
      item.onclick = () => openConversation(c.conversation_id);
      return item;
    }),
  );
}

async function newConversation() {
  const response = await api(agentPath(), { method: "POST", json: {} });
  if (!response.ok) return setStatus((await errorOf(response)).message, true);
  const made = await response.json();
  await loadConversations();
  await openConversation(made.conversation_id);
}

async function openConversation(id) {
  if (state.follower) state.follower.abort();
  state.follower = null;
  state.conversation = id;
  $("transcript").replaceChildren();
  $("pending").replaceChildren();
  for (const li of $("conversations").children) li.classList.toggle("active", li.dataset.id === id);
  if (!id) return;
  location.hash = new URLSearchParams({ agent: state.agent, c: id }).toString();
  const response = await api(convPath());
  if (!response.ok) return setStatus((await errorOf(response)).message, true);
  const shown = await response.json();
  state.live = null;
  state.sent = null;
  for (const m of shown.messages) renderMessage(m, $("transcript"), state.agent);
  state.snapshot = shown.messages.slice(-20).map((m) => JSON.stringify(m));
  renderPending(shown.pending);
  const stopped = "the last run stopped before its end (the server stopped): your next message continues it";
  setStatus(shown.running ? "running…" : shown.unfinished ? stopped : "");
  follow(shown.cursor);
}

// -- following the events ----------------------------------------------------------------------

async function follow(cursor) {
  const controller = new AbortController();
  state.follower = controller;
  let last = cursor;
  while (!controller.signal.aborted) {
    try {
      const response = await api(convPath("events"), {
        headers: { Accept: "text/event-stream", "Last-Event-ID": last },
        signal: controller.signal,
      });
      if (!response.ok) throw new Error((await errorOf(response)).message);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let id = null;
          const data = [];
          for (const line of frame.split("\n")) {
            if (line.startsWith("id:")) id = line.slice(3).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (id) last = id;
          if (data.length) onEvent(JSON.parse(data.join("\n")));
        }
      }
    } catch (error) {
      if (controller.signal.aborted) return;
      setStatus(`reconnecting… (${error.message})`, true);
    }
    await new Promise((r) => setTimeout(r, 1000)); // the server went away: try again, from the last id
  }
}

function container(depth) {
  // Events of a delegate (depth > 0) go inside the latest nested block of that depth.
  let node = $("transcript");
  for (let d = 1; d <= depth; d++) {
    const nested = node.querySelectorAll(`:scope > .nested[data-depth="${d}"]`);
    if (!nested.length) break;
    node = nested[nested.length - 1];
  }
  return node;
}

function onEvent(event) {
  const where = container(event.depth || 0);
  switch (event.type) {
    case "run_start":
      if (!event.depth) setStatus("running…");
      break;
    case "content_delta": {
      const key = `${event.depth}`;
      if (!state.live || state.live.key !== key || !state.live.node.isConnected) {
        state.live = { key, node: el("div", "msg assistant streaming", "") };
        where.append(state.live.node);
      }
      state.live.node.textContent += event.delta;
      scrollDown();
      break;
    }
    case "message": {
      const json = JSON.stringify(event.message);
      const seen = event.depth ? -1 : state.snapshot.indexOf(json);
      if (seen >= 0) {
        state.snapshot.splice(seen, 1); // already drawn from the stored conversation
        break;
      }
      if (event.message.role === "assistant" && state.live && state.live.node.isConnected) {
        state.live.node.remove();
        state.live = null;
      }
      renderMessage(event.message, where, event.agent);
      break;
    }
    case "tool_call":
      callBlock(event.tool_call_id, event.name, event.arguments, where);
      if (event.retry) note(event.tool_call_id, "running again: the server stopped while it ran");
      break;
    case "tool_result":
      settle(event.tool_call_id, "done", event.result);
      break;
    case "tool_error":
      settle(event.tool_call_id, event.declined ? "declined" : "failed", event.error);
      break;
    case "guardrail_blocked":
      settle(event.tool_call_id, "blocked", `blocked by ${event.guardrail}: ${event.reason}`);
      break;
    case "guardrail_modified":
      note(event.tool_call_id, `${event.guardrail} changed ${event.stage === "input" ? "the arguments" : "the result"}`);
      if (event.stage === "input") callBlock(event.tool_call_id, event.name, event.arguments, where);
      break;
    case "guardrail":
      conversationGuardrail(event, where);
      break;
    case "interrupt":
      if (event.kind === "message") heldMessage(event.tool_call_id, event.arguments.content, where);
      else settle(event.tool_call_id, "waiting", event.prompt);
      refreshPending();
      break;
    case "approval":
      approvalRecorded(event, where);
      break;
    case "handoff_start": {
      const nested = el("div", "nested");
      nested.dataset.depth = String((event.depth || 0) + 1);
      nested.append(el("div", "label", `handed to ${event.target}: ${event.message}`));
      where.append(nested);
      break;
    }
    case "handoff_end": {
      const nested = container((event.depth || 0) + 1);
      if (nested !== where && event.status !== "completed") nested.append(el("div", "label", `${event.target}: ${event.status}`));
      break;
    }
    case "error":
      where.append(el("div", "banner", `${event.error_type}: ${event.error}`));
      break;
    case "run_end":
      if (event.output !== undefined && event.output !== null) typedInPlace(event, where);
      if (!event.depth) {
        state.sent = null;
        setStatus(RUN_STATUS[event.status] ?? event.status);
        refreshPending();
        loadConversations();
      }
      break;
    default: {
      // A kind this page does not know yet: shown as it came, folded.
      const box = el("details", "event");
      box.dataset.type = String(event.type);
      box.append(el("summary", null, `${event.type} (${event.agent || "?"})`), el("pre", null, JSON.stringify(event, null, 2)));
      where.append(box);
    }
  }
  scrollDown();
}

const RUN_STATUS = { completed: "", interrupted: "waiting for a decision", blocked: "stopped by a guardrail", error: "the run failed" };

// -- the conversation's guardrails (on the user's message and on the answer) -------------------

function conversationGuardrail(event, where) {
  const why = event.reason ? `: ${event.reason}` : "";
  let text;
  if (event.stage === "message" && event.action === "block") {
    if (state.sent !== null && !event.depth) where.append(el("div", "msg user blocked", state.sent));
    text = `Your message was blocked by ${event.guardrail}${why}. The agent never saw it.`;
  } else if (event.stage === "message") {
    text = `${event.guardrail} changed your message before the agent saw it${why}. The agent got:`;
  } else {
    const draft = state.live && state.live.node.isConnected ? state.live.node : null;
    if (event.action === "block") {
      if (draft) draft.remove();
      const shown = event.released ? `after ${event.released} characters; nothing after them was shown` : "before any of it was shown";
      text = `The answer was blocked by ${event.guardrail}${why}, ${shown}.`;
    } else if (event.action === "retry") {
      if (draft) draft.classList.replace("streaming", "withdrawn");
      text = `${event.guardrail} asked the agent for another answer${why}.`;
    } else {
      text = `${event.guardrail} changed the answer${why}.`;
    }
    state.live = null;
  }
  const box = el("div", `guardrail-note ${event.action}`, text);
  box.dataset.stage = event.stage;
  where.append(box);
}

function heldMessage(id, content, where) {
  if (document.querySelector(`.msg.held[data-id="${CSS.escape(id)}"]`)) return;
  const bubble = el("div", "msg user held");
  bubble.dataset.id = id;
  bubble.append(el("span", "text", content), el("span", "hold", "waiting for a person's approval"));
  where.append(bubble);
}

function approvalRecorded(event, where) {
  if (event.name === "message" && String(event.tool_call_id).startsWith("msg_")) {
    const held = document.querySelector(`.msg.held[data-id="${CSS.escape(event.tool_call_id)}"]`);
    if (event.approved) {
      if (held) held.remove(); // the message, as approved (or edited), comes next
      const edited = event.edited_arguments ? " with edits" : "";
      where.append(el("div", "guardrail-note approved", `A person let your message through${edited}.`));
    } else {
      if (held) {
        held.classList.add("declined");
        held.querySelector(".hold").textContent = "declined";
      }
      const why = event.message ? `: ${event.message}` : "";
      where.append(el("div", "guardrail-note block", `A person declined your message${why}. The agent never saw it.`));
    }
    return;
  }
  if (event.edited_arguments) {
    callBlock(event.tool_call_id, event.name, event.edited_arguments, where);
    note(event.tool_call_id, "approved with edited arguments");
  } else if (event.approved) note(event.tool_call_id, "approved");
}

function note(id, text) {
  const block = document.querySelector(`.call[data-id="${CSS.escape(id)}"]`);
  if (block) block.insertBefore(el("div", "note", text), block.querySelector(".state"));
}

// -- typed answers (output_type) ---------------------------------------------------------------

function typedAnswer(value, name) {
  const box = el("div", "msg assistant typed");
  box.append(el("div", "type-name", name ? `answer: ${name}` : "answer"));
  if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    const table = el("dl");
    for (const [key, v] of Object.entries(value)) {
      table.append(el("dt", null, key));
      const cell = el("dd");
      if (v !== null && typeof v === "object") cell.append(el("pre", null, JSON.stringify(v, null, 2)));
      else cell.textContent = String(v);
      table.append(cell);
    }
    box.append(table);
  } else if (Array.isArray(value)) box.append(el("pre", null, JSON.stringify(value, null, 2)));
  else box.append(el("div", "value", String(value)));
  return box;
}

function parseTyped(text, output) {
  // A stored typed answer is its JSON text; a wrapped one (a type that is not an object) is {"value": ...}.
  try {
    const data = JSON.parse(text);
    if (output.wrapped) return data !== null && typeof data === "object" && "value" in data ? { value: data.value } : null;
    return { value: data };
  } catch {
    return null;
  }
}

function typedInPlace(event, where) {
  // A delegate's typed answer (its agent is not served here, so the page learns its type now).
  const last = [...where.querySelectorAll(":scope > .msg.assistant:not(.typed)")].pop();
  if (last && last.textContent === event.final_output) last.replaceWith(typedAnswer(event.output, null));
}

function scrollDown() {
  const t = $("transcript");
  t.scrollTop = t.scrollHeight;
}

// -- drawing messages and calls ----------------------------------------------------------------

function renderMessage(m, where, agent) {
  const output = state.outputs[agent] || null;
  if (m.role === "user") where.append(el("div", "msg user", m.content));
  else if (m.role === "assistant") {
    const typed = output && m.content ? parseTyped(m.content, output) : null;
    if (typed) where.append(typedAnswer(typed.value, output.name));
    else if (m.content) where.append(el("div", "msg assistant", m.content));
    for (const call of m.tool_calls || []) {
      if (output && call.function.name === FINAL_ANSWER) continue; // the typed answer follows as a message
      let args = call.function.arguments;
      try {
        args = JSON.parse(args);
      } catch {
        /* shown as sent */
      }
      callBlock(call.id, call.function.name, args, where);
    }
  } else if (m.role === "tool") {
    // The stored result; an error, decline or block already shown live says more than its text.
    const block = document.querySelector(`.call[data-id="${CSS.escape(m.tool_call_id)}"]`);
    if (!block || !block.matches(".failed, .declined, .blocked")) settle(m.tool_call_id, "done", m.content);
  }
  scrollDown();
}

function callBlock(id, name, args, where) {
  let block = document.querySelector(`.call[data-id="${CSS.escape(id)}"]`);
  if (!block) {
    block = el("div", "call");
    block.dataset.id = id;
    block.append(el("span", "name", name), el("pre", "args"), el("div", "state", "running…"));
    where.append(block);
  }
  block.querySelector(".args").textContent = JSON.stringify(args, null, 2);
  return block;
}

function settle(id, how, text) {
  const block = document.querySelector(`.call[data-id="${CSS.escape(id)}"]`);
  if (!block) return;
  block.classList.remove("done", "failed", "declined", "blocked", "waiting");
  block.classList.add(how);
  const label = { done: "→", failed: "error:", declined: "declined:", blocked: "", waiting: "waiting:" }[how];
  block.querySelector(".state").textContent = `${label} ${text}`.trim();
}

// -- approvals ---------------------------------------------------------------------------------

async function refreshPending() {
  if (!state.conversation) return;
  const response = await api(convPath("pending"));
  if (response.ok) renderPending((await response.json()).pending);
}

function renderPending(pending) {
  const box = $("pending");
  const shown = new Set([...box.children].map((c) => c.dataset.id));
  for (const card of [...box.children]) {
    if (!pending.some((p) => p.tool_call_id === card.dataset.id) && !card.dataset.outcome) {
      markTaken(card, "Decided elsewhere (another person, tab or program).");
    }
  }
  for (const p of pending) {
    if (p.kind === "message") heldMessage(p.tool_call_id, p.args.content, $("transcript"));
    if (!shown.has(p.tool_call_id)) box.append(approvalCard(p));
  }
}

function approvalCard(p) {
  // A paused user message (kind "message") is decided as a call is; its "arguments" are {content}.
  const isMessage = p.kind === "message";
  const card = el("div", isMessage ? "card message" : "card");
  card.dataset.id = p.tool_call_id;
  const what = isMessage
    ? `A message to ${p.agent} waits for a person before the agent sees it`
    : `${p.agent} wants to call ${p.tool_name}` + (p.kind === "unknown_outcome" ? " again (it may already have run)" : "");
  card.append(
    el("div", "prompt", p.prompt || (isMessage ? "Let this message through?" : `Run ${p.tool_name}?`)),
    el("div", "tool", what),
    el("pre", "args", isMessage ? p.args.content : JSON.stringify(p.args, null, 2)),
  );
  const actions = el("div", "actions");
  const approve = el("button", "primary", "Approve");
  const decline = el("button", "danger", "Decline");
  const edit = el("button", null, isMessage ? "Edit message" : "Edit arguments");
  const problem = el("div", "problem");
  const extra = el("div");
  approve.type = decline.type = edit.type = "button";
  actions.append(approve, decline);
  if (p.kind !== "unknown_outcome") actions.append(edit);
  card.append(actions, extra, problem);

  approve.onclick = () => decide(card, { tool_call_id: p.tool_call_id, approve: true });
  decline.onclick = () => {
    const reason = el("input");
    reason.type = "text";
    reason.placeholder = "Why? (the agent reads this)";
    reason.setAttribute("aria-label", "Reason");
    const send = el("button", "danger", "Decline with this reason");
    send.type = "button";
    send.onclick = () => decide(card, { tool_call_id: p.tool_call_id, approve: false, message: reason.value || null });
    extra.replaceChildren(reason, send);
    reason.focus();
  };
  edit.onclick = () => {
    if (isMessage) return extra.replaceChildren(...editMessage(p, card, problem));
    const area = el("textarea");
    area.rows = 6;
    area.value = JSON.stringify(p.args, null, 2);
    area.setAttribute("aria-label", "Arguments");
    const send = el("button", "primary", "Approve with these arguments");
    send.type = "button";
    send.onclick = () => {
      let args;
      try {
        args = JSON.parse(area.value);
      } catch (error) {
        problem.textContent = `not JSON: ${error.message}`;
        return;
      }
      const wrong = checkSchema(p.parameters || {}, args, "arguments");
      if (wrong.length) {
        problem.textContent = wrong.join("; ");
        return;
      }
      decide(card, { tool_call_id: p.tool_call_id, approve: true, args });
    };
    extra.replaceChildren(area, send);
  };
  return card;
}

function editMessage(p, card, problem) {
  const area = el("textarea");
  area.rows = 4;
  area.value = p.args.content;
  area.setAttribute("aria-label", "Message text");
  const send = el("button", "primary", "Approve the edited message");
  send.type = "button";
  send.onclick = () => {
    const args = { content: area.value };
    const wrong = checkSchema(p.parameters || {}, args, "message");
    if (wrong.length) {
      problem.textContent = wrong.join("; ");
      return;
    }
    decide(card, { tool_call_id: p.tool_call_id, approve: true, args });
  };
  return [area, send];
}

async function decide(card, decision) {
  const problem = card.querySelector(".problem");
  problem.textContent = "";
  for (const b of card.querySelectorAll("button")) b.disabled = true;
  const response = await api(`${convPath("decisions")}?background=true`, {
    method: "POST",
    json: { decisions: [decision] },
  });
  if (response.ok) {
    card.remove();
    return;
  }
  const error = await errorOf(response);
  if (response.status === 409 && error.type === "ApprovalError") {
    markTaken(card, "Already decided (by someone else, or in another tab).");
    refreshPending();
    return;
  }
  problem.textContent = error.message;
  for (const b of card.querySelectorAll("button")) b.disabled = false;
}

function markTaken(card, text) {
  card.dataset.outcome = "taken";
  for (const node of card.querySelectorAll(".actions, .problem")) node.remove();
  card.append(el("div", "outcome", text));
  setTimeout(() => card.remove(), 5000);
}

// The common part of JSON Schema a tool's parameters use: types, required, enum, nested objects
// and arrays, bounds. The server checks again, fully, before anything runs.
function checkSchema(schema, value, where, root = schema) {
  if (schema.$ref && schema.$ref.startsWith("#/$defs/")) schema = root.$defs[schema.$ref.slice(8)] || {};
  const problems = [];
  const options = schema.anyOf || schema.oneOf;
  if (options) {
    if (!options.some((s) => checkSchema(s, value, where, root).length === 0)) problems.push(`${where} does not fit any allowed form`);
    return problems;
  }
  const types = [].concat(schema.type || []);
  const is = {
    object: (v) => v !== null && typeof v === "object" && !Array.isArray(v),
    array: Array.isArray,
    string: (v) => typeof v === "string",
    integer: Number.isInteger,
    number: (v) => typeof v === "number",
    boolean: (v) => typeof v === "boolean",
    null: (v) => v === null,
  };
  if (types.length && !types.some((t) => is[t] && is[t](value))) return [`${where} must be ${types.join(" or ")}`];
  if (schema.enum && !schema.enum.some((e) => JSON.stringify(e) === JSON.stringify(value))) problems.push(`${where} must be one of ${schema.enum.map((e) => JSON.stringify(e)).join(", ")}`);
  if (typeof value === "string") {
    if (schema.minLength !== undefined && value.length < schema.minLength) problems.push(schema.minLength === 1 ? `${where} must not be empty` : `${where} must have at least ${schema.minLength} characters`);
    if (schema.maxLength !== undefined && value.length > schema.maxLength) problems.push(`${where} must have at most ${schema.maxLength} characters`);
  }
  if (typeof value === "number") {
    if (schema.minimum !== undefined && value < schema.minimum) problems.push(`${where} must be at least ${schema.minimum}`);
    if (schema.maximum !== undefined && value > schema.maximum) problems.push(`${where} must be at most ${schema.maximum}`);
  }
  if (is.object(value)) {
    for (const key of schema.required || []) if (!(key in value)) problems.push(`${where}.${key} is required`);
    const props = schema.properties || {};
    for (const [key, v] of Object.entries(value)) {
      if (props[key]) problems.push(...checkSchema(props[key], v, `${where}.${key}`, root));
      else if (schema.additionalProperties === false) problems.push(`${where}.${key} is not an argument of this tool`);
    }
  }
  if (Array.isArray(value) && schema.items) value.forEach((v, i) => problems.push(...checkSchema(schema.items, v, `${where}[${i}]`, root)));
  return problems;
}

// -- sending -----------------------------------------------------------------------------------

async function send(event) {
  event.preventDefault();
  const input = $("input");
  const content = input.value.trim();
  if (!content) return;
  if (!state.conversation) {
    const made = await api(agentPath(), { method: "POST", json: {} });
    if (!made.ok) return setStatus((await errorOf(made)).message, true);
    await openConversation((await made.json()).conversation_id);
  }
  state.sent = content; // shown again if a guardrail blocks it (a blocked message is not stored)
  const response = await api(`${convPath("messages")}?background=true`, { method: "POST", json: { content } });
  if (!response.ok) {
    state.sent = null;
    return setStatus((await errorOf(response)).message, true);
  }
  input.value = "";
}

$("composer").addEventListener("submit", send);
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) send(e);
});
$("new").addEventListener("click", newConversation);
loadAgents().catch((error) => setStatus(error.message, true));
