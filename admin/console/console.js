// smsgate console: the admin API in a browser. Every text from the API is
// written with textContent (never as HTML): message bodies come from
// strangers' phones.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { channel: "", q: "", cursor: null, current: null, events: null, reload: null };

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
}

// "1 message", "2 messages": a count with its word agreeing.
function count(n, word) {
  return n + " " + word + (n === 1 ? "" : "s");
}

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const init = { method: options.method || "GET", credentials: "same-origin", headers: {} };
  if (options.body !== undefined || init.method !== "GET") {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.body === undefined ? {} : options.body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    showSignIn();
    throw new Unauthorized("signed out");
  }
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) throw new Error((data && data.detail) || response.statusText);
  return data;
}

// What only a signed-in operator sees: the app and the header's controls.
const SIGNED_IN_ONLY = ["app", "signout", "live", "channel"];

function showSignIn() {
  for (const id of SIGNED_IN_ONLY) $(id).hidden = true;
  $("signin").hidden = false;
  if (state.events) {
    state.events.close();
    state.events = null;
  }
  setLive(false);
}

async function signIn(event) {
  event.preventDefault();
  $("signin-error").textContent = "";
  try {
    const response = await fetch("/api/v1/session", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: $("token").value }),
    });
    if (!response.ok) {
      // 429 (too many attempts from this address) says how long to wait.
      const data = await response.json().catch(() => null);
      $("signin-error").textContent =
        response.status === 401 ? "That is not the admin token." : "Sign-in failed: " + ((data && data.detail) || response.status);
      return;
    }
    $("token").value = "";
    await start();
  } catch (e) {
    $("signin-error").textContent = "Sign-in failed: " + e.message;
  }
}

async function signOut() {
  await fetch("/api/v1/session", { method: "DELETE", credentials: "same-origin", headers: { "Content-Type": "application/json" } });
  showSignIn();
}

function setLive(on) {
  $("live").textContent = on ? "live" : "offline";
  $("live").classList.toggle("on", on);
}

async function start() {
  $("signin").hidden = true;
  for (const id of SIGNED_IN_ONLY) $(id).hidden = false;
  await Promise.all([loadChannels(), loadConversations(true), loadDead()]);
  followEvents();
}

async function loadChannels() {
  const data = await api("/api/v1/channels");
  const select = $("channel");
  const chosen = select.value;
  select.replaceChildren(el("option", "", "all channels"));
  select.firstChild.value = "";
  const list = $("channels");
  list.replaceChildren();
  for (const c of data.channels) {
    const option = el("option", "", c.channel_id);
    option.value = c.channel_id;
    select.append(option);
    const item = el("li", "channel");
    item.append(el("strong", "", c.channel_id), " ", el("span", "badge" + (c.health === "ok" ? " on" : ""), c.health));
    if (c.from_number) item.append(" ", el("span", "muted", c.from_number));
    if (c.source) item.append(" ", el("span", "muted", c.source));
    item.dataset.channel = c.channel_id;
    for (const p of c.problems) item.append(el("div", "muted", p));
    const status = el("button", "status", "Status");
    status.type = "button";
    const verdict = el("div", "verdict muted");
    status.addEventListener("click", async () => {
      verdict.textContent = "asking Twilio…";
      try {
        const s = await api("/api/v1/channels/" + encodeURIComponent(c.channel_id) + "/status");
        verdict.textContent = s.verdict;
        verdict.classList.toggle("error", !s.ok);
      } catch (e) {
        verdict.textContent = e.message;
      }
    });
    item.append(" ", status);
    if (c.source === "runtime") {
      const remove = el("button", "disconnect", "Disconnect");
      remove.type = "button";
      remove.addEventListener("click", async () => {
        if (!confirm("Disconnect " + c.channel_id + "? Its webhooks get 404 from now on.")) return;
        try {
          await api("/api/v1/channels/" + encodeURIComponent(c.channel_id), { method: "DELETE" });
        } catch (e) {
          verdict.textContent = e.message;
        }
        await loadChannels();
      });
      item.append(" ", remove);
    }
    item.append(verdict);
    list.append(item);
  }
  select.value = chosen;
}

function conversationQuery() {
  const params = new URLSearchParams({ limit: "50" });
  if (state.channel) params.set("channel_id", state.channel);
  if (state.q) params.set("q", state.q);
  if (state.cursor) params.set("cursor", state.cursor);
  return "/api/v1/conversations?" + params;
}

async function loadConversations(reset) {
  if (reset) state.cursor = null;
  const data = await api(conversationQuery());
  const list = $("conversations");
  if (reset) list.replaceChildren();
  for (const c of data.conversations) list.append(conversationRow(c));
  state.cursor = data.next_cursor || null;
  $("more").hidden = !state.cursor;
  $("list-total").textContent = count(data.total, "conversation");
}

function conversationRow(c) {
  const item = el("li", "conversation");
  item.dataset.channel = c.channel_id;
  item.dataset.peer = c.peer;
  if (state.current && state.current.channel === c.channel_id && state.current.peer === c.peer) item.classList.add("current");
  item.append(el("div", "peer", c.peer), el("div", "muted", c.channel_id + " · " + when(c.last_at) + " · " + count(c.messages, "message")));
  const last = c.last_message;
  if (last) item.append(el("div", "preview", (last.direction === "inbound" ? "← " : "→ ") + last.body + (last.media ? " [" + last.media + " media]" : "")));
  item.addEventListener("click", () => openConversation(c.channel_id, c.peer));
  return item;
}

function path(channel, peer) {
  return "/api/v1/conversations/" + encodeURIComponent(channel) + "/" + encodeURIComponent(peer);
}

async function openConversation(channel, peer) {
  state.current = { channel, peer };
  for (const row of document.querySelectorAll(".conversation")) {
    row.classList.toggle("current", row.dataset.channel === channel && row.dataset.peer === peer);
  }
  $("conversation").hidden = false;
  $("conversation-error").textContent = "";
  await loadConversation();
}

async function loadConversation() {
  if (!state.current) return;
  const { channel, peer } = state.current;
  const data = await api(path(channel, peer) + "?limit=200");
  $("peer").textContent = data.peer;
  $("conversation-channel").textContent = data.channel_id + " · " + count(data.messages, "message") + costText(data.cost);
  const paused = Boolean(data.paused_until);
  $("paused").hidden = !paused;
  $("paused").textContent = paused ? "bot paused until " + when(data.paused_until) : "";
  $("pause").hidden = paused;
  $("resume").hidden = !paused;
  const entries = $("entries");
  entries.replaceChildren();
  for (const e of data.entries) entries.append(entryRow(e));
  entries.lastElementChild && entries.lastElementChild.scrollIntoView({ block: "end" });
}

// " · cost $0.0241 (1 estimated)": Twilio's prices where known, else estimates.
function costText(cost) {
  if (!cost || !(cost.total_usd > 0)) return "";
  const estimated = cost.estimated > 0 ? " (" + cost.estimated + " estimated)" : "";
  return " · cost $" + cost.total_usd.toFixed(4) + estimated;
}

function entryRow(e) {
  let item;
  switch (e.kind) {
    case "inbound":
      item = el("li", "entry inbound", e.body);
      for (const m of e.media || []) item.append(el("span", "meta", "media: " + (m.content_type || "") + " " + m.url));
      break;
    case "outbound":
      item = el("li", "entry outbound" + (e.origin === "api" ? " operator" : ""), e.body);
      item.append(el("span", "meta", (e.origin === "api" ? "operator · " : "") + e.state));
      for (const u of e.media || []) item.append(el("span", "meta", "media: " + u));
      break;
    case "status":
      item = el("li", "entry status", "status " + e.status + (e.error_code ? " (" + e.error_code + ")" : ""));
      break;
    case "call":
      item = el("li", "entry call", "call " + e.direction + " " + e.status + (e.duration_secs != null ? ", " + e.duration_secs + " s" : "") + (e.detail ? ": " + e.detail : ""));
      break;
    case "call_turn":
      item = el("li", "entry call-turn");
      item.append(el("div", "heard", "☎ " + (e.heard || "(silence)")), el("div", "said", "↳ " + e.said));
      item.append(el("span", "meta", "turn " + e.turn + (e.origin !== "chat" ? " · " + e.origin : "")));
      break;
    case "cost":
      item = el("li", "entry note cost", e.item + " " + (e.usd != null ? "$" + e.usd.toFixed(4) : "usage unknown") + " (" + e.basis + ")" + (e.detail ? ": " + e.detail : ""));
      break;
    default:
      item = el("li", "entry note", e.reason + (e.detail ? ": " + e.detail : ""));
  }
  item.dataset.seq = e.seq;
  item.prepend(el("span", "meta", when(e.at)));
  return item;
}

async function pause() {
  const minutes = $("pause-minutes").value;
  const body = minutes ? { minutes: Number(minutes) } : {};
  await act(() => api(path(state.current.channel, state.current.peer) + "/pause", { method: "POST", body }));
}

async function resume() {
  await act(() => api(path(state.current.channel, state.current.peer) + "/resume", { method: "POST" }));
}

async function sendReply(event) {
  event.preventDefault();
  const text = $("reply").value;
  if (!text.trim() || !state.current) return;
  await act(async () => {
    await api("/api/v1/messages", { method: "POST", body: { channel_id: state.current.channel, to: state.current.peer, body: text } });
    $("reply").value = "";
  });
}

async function act(f) {
  $("conversation-error").textContent = "";
  try {
    await f();
    await loadConversation();
  } catch (e) {
    if (!(e instanceof Unauthorized)) $("conversation-error").textContent = e.message;
  }
}

async function connectChannel(event) {
  event.preventDefault();
  const result = $("connect-result");
  result.textContent = "";
  result.classList.remove("error");
  let channel;
  try {
    channel = JSON.parse($("connect-json").value);
  } catch (e) {
    result.textContent = "That is not JSON: " + e.message;
    result.classList.add("error");
    return;
  }
  try {
    const query = $("connect-webhook").checked ? "?set_webhook=true" : "";
    const answer = await api("/api/v1/channels" + query, { method: "POST", body: channel });
    let text = "Connected " + answer.channel.channel_id + ".";
    if (answer.webhook_set) text += " Twilio now sends its SMS to " + answer.webhook_set.url + ".";
    if (answer.ignored_keys && answer.ignored_keys.length) text += " Ignored keys: " + answer.ignored_keys.join(", ") + ".";
    result.textContent = text;
    $("connect-json").value = "";
    await loadChannels();
  } catch (e) {
    if (!(e instanceof Unauthorized)) {
      result.textContent = e.message;
      result.classList.add("error");
    }
  }
}

async function loadDead() {
  const data = await api("/api/v1/dead?limit=20");
  const list = $("dead");
  list.replaceChildren();
  if (!data.entries.length) list.append(el("li", "muted", "none"));
  for (const d of data.entries) {
    const item = el("li", "dead", "#" + d.seq + " " + d.stage + " " + d.channel_id + ": " + d.reason);
    const button = el("button", "replay", "Replay");
    button.type = "button";
    button.addEventListener("click", async () => {
      try {
        await api("/api/v1/dead/" + d.seq + "/replay", { method: "POST" });
      } catch (e) {
        item.append(el("div", "error", e.message));
      }
      await loadDead();
    });
    item.append(" ", button);
    list.append(item);
  }
}

const EVENT_NAMES = [
  "message.received", "message.sent", "message.status", "message.skipped", "message.media",
  "conversation.paused", "conversation.resumed", "call.started", "call.turn", "call.ended", "dead.letter",
];

function followEvents() {
  if (state.events) state.events.close();
  const query = state.channel ? "?channel_id=" + encodeURIComponent(state.channel) : "";
  const source = new EventSource("/api/v1/events" + query);
  state.events = source;
  source.onopen = () => setLive(true);
  source.onerror = async () => {
    setLive(false);
    // A 401 closes the source for good: find out whether we were signed out.
    if (source.readyState === EventSource.CLOSED) {
      try {
        await api("/api/v1/session");
        setTimeout(followEvents, 2000);
      } catch (e) {
        /* showSignIn ran */
      }
    }
  };
  for (const name of EVENT_NAMES) source.addEventListener(name, (m) => onEvent(name, JSON.parse(m.data)));
}

function onEvent(name, data) {
  const log = $("events");
  const detail = data.body || data.reason || data.heard || data.status || "";
  const text = name + " " + (data.channel_id || "") + " " + (data.peer || "") + (detail ? ": " + detail : "");
  const item = el("li", "event", text);
  item.dataset.type = name;
  log.prepend(item);
  while (log.children.length > 100) log.lastElementChild.remove();
  // Coalesce bursts: one reload of the list (and the open conversation) at most twice a second.
  clearTimeout(state.reload);
  const touchesCurrent = state.current && data.channel_id === state.current.channel && data.peer === state.current.peer;
  state.reload = setTimeout(async () => {
    try {
      if (!state.q) await loadConversations(true);
      if (touchesCurrent) await loadConversation();
      if (name === "dead.letter") await loadDead();
    } catch (e) {
      /* shown on the next action */
    }
  }, 500);
}

let searchTimer = null;
document.addEventListener("DOMContentLoaded", async () => {
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", signOut);
  $("more").addEventListener("click", () => loadConversations(false));
  $("pause").addEventListener("click", pause);
  $("resume").addEventListener("click", resume);
  $("reply-form").addEventListener("submit", sendReply);
  $("connect-form").addEventListener("submit", connectChannel);
  $("channel").addEventListener("change", () => {
    state.channel = $("channel").value;
    loadConversations(true);
    followEvents();
  });
  $("search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      state.q = $("search").value.replace(/[^0-9]/g, "");
      loadConversations(true).catch(() => {});
    }, 250);
  });
  try {
    await api("/api/v1/session");
    await start();
  } catch (e) {
    if (!(e instanceof Unauthorized)) showSignIn();
  }
});
