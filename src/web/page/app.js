// tim's web chat page: a reference client of `Chat.Session` over a WebSocket (proto3 JSON,
// subprotocol `tim.v1.json`) and of the JSON Gateway calls.
//
// What it keeps so that nothing is lost or shown twice:
// - per user and device, in localStorage: the inbox epoch and the last seq it processed, with
//   that message's id; Hello sends them, so a new stream resumes after it;
// - messages are acked once shown, and a message at or below the last seq is acked, not shown;
// - sends not yet acked stay pending and go again, with the same client id, on every new
//   stream: the server stores a retry once and answers with the first ack.
"use strict";

const $ = (id) => document.getElementById(id);
const UNAVAILABLE = 14;
const RESOURCE_EXHAUSTED = 8;
const UNAUTHENTICATED = 16;

const state = {
  user: "", device: "", jwt: "", token: "",
  ws: null, online: false, stopped: true, backoff: 0, timer: null,
  resume: { epoch: "", after: 0, msgId: "" },
  pending: [],            // sends not yet acked, in order: {clientMsgId, to, group, body}
  messages: new Map(),    // key -> {key, conversation, convSeq, from, body, mine, mark}
  order: [],              // keys in arrival order
  conversations: new Map(), // id -> ConversationSummary
  selected: "",           // a conversation id, or "" for everything
  typing: new Map(),      // "conversation/user" -> expiry (ms)
  lastTyping: 0,
};

// What the page did lately (connects, closes, refusals), for the console and for tests.
const journal = [];
window.timJournal = journal;
function note(...what) {
  const line = what.join(" ");
  console.info("tim:", line);
  journal.push(line);
  if (journal.length > 100) journal.shift();
}

// ---- storage -------------------------------------------------------------------------------

function deviceId() {
  let id = sessionStorage.getItem("tim.device");
  if (!id) {
    id = "web-" + Math.random().toString(36).slice(2, 10);
    sessionStorage.setItem("tim.device", id);
  }
  return id;
}

const resumeKey = () => `tim.resume.${state.user}.${state.device}`;

function loadResume() {
  try {
    const saved = JSON.parse(localStorage.getItem(resumeKey()) || "null");
    if (saved && typeof saved.after === "number") return saved;
  } catch (_) { /* a damaged entry: start from the stored ack cursor */ }
  return { epoch: "", after: 0, msgId: "" };
}

function saveResume() {
  localStorage.setItem(resumeKey(), JSON.stringify(state.resume));
}

// ---- JSON calls ----------------------------------------------------------------------------

async function call(method, body, token) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = "Bearer " + token;
  const resp = await fetch("/v1/" + method, { method: "POST", headers, body: JSON.stringify(body) });
  const answer = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const err = new Error(answer.message || resp.statusText);
    err.code = answer.code;
    throw err;
  }
  return answer;
}

async function login() {
  const req = { userId: state.user, device: state.device };
  if (state.jwt) req.jwt = state.jwt;
  const answer = await call("Gateway/Login", req);
  state.token = answer.token;
  return answer;
}

// ---- the stream ----------------------------------------------------------------------------

// Login's endpoint is `host:port` (plaintext), `http://host:port` or `https://host:port` (TLS).
function socketUrl(endpoint) {
  let base = endpoint || location.host;
  const tls = base.startsWith("https://") || (!base.startsWith("http://") && location.protocol === "https:");
  base = base.replace(/^https?:\/\//, "").replace(/\/$/, "");
  return (tls ? "wss://" : "ws://") + base + "/v1/chat";
}

function setStatus(kind, text) {
  $("status").dataset.state = kind;
  $("status").textContent = text;
}

function send(frame) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(frame));
}

async function connect() {
  clearTimeout(state.timer);
  if (state.stopped) return;
  setStatus("connecting", "connecting…");
  let answer;
  try {
    answer = await login();
  } catch (err) {
    note("login failed:", err.code, err.message);
    if (err.code !== undefined && err.code !== UNAVAILABLE && err.code !== RESOURCE_EXHAUSTED) {
      stop("offline", "login refused: " + err.message);
      $("login-error").textContent = err.message;
      return;
    }
    return retry();
  }
  if (state.stopped) return;
  const url = socketUrl(answer.endpoint);
  note("connecting to", url);
  const ws = new WebSocket(url, "tim.v1.json");
  state.ws = ws;
  ws.onopen = () => {
    const hello = { token: state.token, device: state.device };
    if (state.resume.after > 0) {
      hello.resumeAfter = String(state.resume.after);
      hello.inboxEpoch = state.resume.epoch;
      hello.resumeMsgId = state.resume.msgId;
    }
    ws.send(JSON.stringify({ hello }));
  };
  ws.onmessage = (event) => {
    if (ws !== state.ws) return;
    let frame;
    try { frame = JSON.parse(event.data); } catch (_) { return; }
    onFrame(frame);
  };
  ws.onclose = (event) => {
    if (ws !== state.ws) return;
    note("closed:", event.code, event.reason);
    state.ws = null;
    state.online = false;
    if (state.stopped) return;
    // 4000 + a gRPC code: the server's reason; 4016 (UNAUTHENTICATED) logs in again.
    if (event.code >= 4000 && event.code !== 4000 + UNAUTHENTICATED &&
        event.code !== 4000 + UNAVAILABLE && event.code !== 4000 + RESOURCE_EXHAUSTED) {
      return stop("offline", `ended: ${event.reason || event.code}`);
    }
    retry();
  };
}

function retry(delay) {
  if (state.stopped) return;
  state.backoff = Math.min(state.backoff ? state.backoff * 2 : 250, 8000);
  const wait = delay !== undefined ? delay : state.backoff / 2 + Math.random() * state.backoff / 2;
  setStatus("offline", "reconnecting…");
  clearTimeout(state.timer);
  state.timer = setTimeout(connect, wait);
}

function stop(kind, text) {
  state.stopped = true;
  clearTimeout(state.timer);
  setStatus(kind, text);
  if (state.ws) { const ws = state.ws; state.ws = null; ws.close(1000); }
}

function onFrame(frame) {
  if (frame.welcome) onWelcome(frame.welcome);
  else if (frame.message) onMessage(frame.message);
  else if (frame.sendAck) onSendAck(frame.sendAck);
  else if (frame.sendError) onSendError(frame.sendError);
  else if (frame.signal) onSignal(frame.signal);
  else if (frame.kicked) stop("offline", "signed in elsewhere");
  else if (frame.drain) {
    const ws = state.ws;
    state.ws = null;
    if (ws) ws.close(1000);
    retry(Number(frame.drain.reconnectAfterMs || 0) * Math.random());
  } else if (frame.sessionEnded) {
    if (frame.sessionEnded.reason === "LOGGED_OUT") stop("offline", "logged out");
    // TOKEN_EXPIRED: the stream closes; a new login follows.
  }
}

function onWelcome(welcome) {
  note("welcome: session", welcome.sessionId, "resume from", welcome.resumeFrom || 0);
  state.online = true;
  state.backoff = 0;
  const epoch = welcome.inboxEpoch || "";
  const from = Number(welcome.resumeFrom || 0);
  if (epoch !== state.resume.epoch || from > state.resume.after) {
    state.resume = { epoch, after: from, msgId: epoch === state.resume.epoch ? state.resume.msgId : "" };
    saveResume();
  }
  const unread = welcome.unreadTotal !== undefined ? ` · ${welcome.unreadTotal} unread` : "";
  setStatus("online", `${state.user} on ${welcome.nodeId}${unread}`);
  for (const p of state.pending) send({ send: frameOf(p) });
  refreshConversations();
}

function onMessage(m) {
  const seq = Number(m.seq || 0);
  if (seq > 0) {
    if (seq <= state.resume.after) return send({ ack: { upTo: String(seq) } });
    state.resume.after = seq;
    state.resume.msgId = m.msgId || "";
    saveResume();
  }
  show(m);
  if (seq > 0) send({ ack: { upTo: String(seq) } });
  else send({ ack: { conversation: m.conversation, convSeq: String(m.convSeq || 0) } });
}

function onSendAck(ack) {
  const i = state.pending.findIndex((p) => p.clientMsgId === ack.clientMsgId);
  if (i >= 0) state.pending.splice(i, 1);
  const entry = state.messages.get(ownKey(ack.clientMsgId));
  if (entry) {
    entry.conversation = ack.conversation;
    entry.convSeq = Number(ack.convSeq || 0);
    if (entry.mark !== "✓✓") entry.mark = "✓";
    render();
  }
}

function onSendError(err) {
  const code = Number(err.code || 0);
  if (code === UNAVAILABLE || code === RESOURCE_EXHAUSTED) {
    // Everything pending goes again, in order, once the hint has passed.
    setTimeout(() => { for (const p of state.pending) send({ send: frameOf(p) }); },
      Math.max(Number(err.retryAfterMs || 0), 200));
    return;
  }
  const i = state.pending.findIndex((p) => p.clientMsgId === err.clientMsgId);
  if (i >= 0) state.pending.splice(i, 1);
  const entry = state.messages.get(ownKey(err.clientMsgId));
  if (entry) { entry.mark = "not sent: " + (err.reason || code); render(); }
}

function onSignal(signal) {
  const conv = signal.conversation || "";
  if (signal.kind === "TYPING" && signal.userId !== state.user) {
    state.typing.set(`${conv}/${signal.userId}`, Date.now() + Number(signal.expiresInMs || 3000));
    renderTyping();
    setTimeout(renderTyping, Number(signal.expiresInMs || 3000) + 50);
  } else if (signal.kind === "READ") {
    const upTo = Number(signal.convSeq || 0);
    if (signal.userId === state.user) {
      const c = state.conversations.get(conv);
      if (c) { c.unread = "0"; renderConversations(); }
      return;
    }
    for (const entry of state.messages.values()) {
      if (entry.mine && entry.conversation === conv && entry.convSeq && entry.convSeq <= upTo) entry.mark = "✓✓";
    }
    render();
  }
}

// ---- messages ------------------------------------------------------------------------------

const ownKey = (clientMsgId) => `${state.user}/${clientMsgId}`;

function keyOf(m) {
  return m.clientMsgId ? `${m.from}/${m.clientMsgId}` : m.msgId;
}

function describe(m) {
  const ev = m.event;
  if (!ev) return m.body || "";
  const kind = ev.kind || "";
  if (kind === "EDITED" || kind === "DELETED" || kind === "RECALLED") {
    const target = [...state.messages.values()].find((e) => e.conversation === m.conversation && e.convSeq === Number(ev.targetSeq));
    if (target) {
      target.body = kind === "EDITED" ? (m.body || "") + " (edited)" : `(${kind.toLowerCase()})`;
    }
    return null;
  }
  const who = (ev.users || []).join(", ");
  return `(${kind.toLowerCase().replace(/_/g, " ")}${who ? ": " + who : ""}${ev.name ? " " + ev.name : ""})`;
}

function show(m, fromHistory) {
  const key = keyOf(m);
  const text = describe(m);
  if (text !== null && !state.messages.has(key)) {
    state.messages.set(key, {
      key, conversation: m.conversation || "", convSeq: Number(m.convSeq || 0),
      from: m.from || "", body: text, mine: m.from === state.user, mark: m.from === state.user ? "✓" : "",
      seq: Number(m.seq || 0), sentAt: Number(m.sentAt || Date.now()),
    });
    state.order.push(key);
  } else if (text !== null) {
    const entry = state.messages.get(key);
    if (!entry.conversation) entry.conversation = m.conversation || "";
    if (!entry.convSeq) entry.convSeq = Number(m.convSeq || 0);
  }
  if (!fromHistory) noteConversation(m);
  render();
}

function noteConversation(m) {
  const id = m.conversation;
  if (!id) return;
  let c = state.conversations.get(id);
  if (!c) {
    // New here: shown at once, named properly by the next listing (which may lag the message).
    c = { id, kind: id.startsWith("g:") ? "GROUP" : "DIRECT", title: titleOf(id), unread: "0" };
    state.conversations.set(id, c);
    setTimeout(refreshConversations, 1000);
  }
  c.lastMessage = m;
  c.lastActiveAt = m.sentAt;
  if (m.from !== state.user && id !== state.selected) c.unread = String(Number(c.unread || 0) + 1);
  if (id === state.selected && m.from !== state.user) markRead(id, Number(m.convSeq || 0));
  renderConversations();
}

function render() {
  const list = $("messages");
  const keys = state.order.filter((k) => {
    const e = state.messages.get(k);
    return !state.selected || e.conversation === state.selected;
  });
  keys.sort((a, b) => {
    const x = state.messages.get(a), y = state.messages.get(b);
    if (state.selected && x.convSeq && y.convSeq) return x.convSeq - y.convSeq;
    return 0;
  });
  list.replaceChildren(...keys.slice(-500).map((k) => {
    const e = state.messages.get(k);
    const li = document.createElement("li");
    li.className = "msg" + (e.mine ? " mine" : "");
    li.dataset.key = e.key;
    if (e.seq) li.dataset.seq = String(e.seq);
    if (e.convSeq) li.dataset.convSeq = String(e.convSeq);
    li.textContent = `${e.from}: ${e.body}`;
    if (e.mark) {
      const mark = document.createElement("span");
      mark.className = "mark";
      mark.textContent = e.mark;
      li.append(mark);
    }
    return li;
  }));
  list.scrollTop = list.scrollHeight;
}

function renderTyping() {
  const now = Date.now();
  const who = [];
  for (const [key, until] of state.typing) {
    if (until <= now) { state.typing.delete(key); continue; }
    const [conv, user] = [key.slice(0, key.lastIndexOf("/")), key.slice(key.lastIndexOf("/") + 1)];
    if (!state.selected || conv === state.selected) who.push(user);
  }
  $("typing").textContent = who.length ? `${who.join(", ")} ${who.length > 1 ? "are" : "is"} typing…` : "";
}

// ---- conversations -------------------------------------------------------------------------

async function refreshConversations() {
  if (!state.token) return;
  try {
    const answer = await call("Gateway/ListConversations", { limit: 100 }, state.token);
    state.conversations = new Map((answer.conversations || []).map((c) => [c.id, c]));
    renderConversations();
  } catch (_) { /* shown again at the next Welcome */ }
}

function renderConversations() {
  const items = [...state.conversations.values()]
    .sort((a, b) => Number(b.lastActiveAt || 0) - Number(a.lastActiveAt || 0))
    .map((c) => {
      const li = document.createElement("li");
      li.dataset.id = c.id;
      if (c.id === state.selected) li.className = "selected";
      const title = document.createElement("div");
      title.textContent = c.title || c.id;
      const unread = Number(c.unread || 0);
      if (unread > 0) {
        const badge = document.createElement("span");
        badge.className = "unread";
        badge.textContent = String(unread);
        title.append(badge);
      }
      const last = document.createElement("div");
      last.className = "last";
      const m = c.lastMessage;
      last.textContent = m ? `${m.from}: ${m.body || ""}` : "";
      li.append(title, last);
      li.onclick = () => select(c);
      return li;
    });
  $("conversations").replaceChildren(...items);
}

async function select(c) {
  state.selected = c.id;
  $("title").textContent = c.title || c.id;
  $("to").value = c.kind === "GROUP" ? c.id : c.title;
  c.unread = "0";
  renderConversations();
  render();
  try {
    const answer = await call("Gateway/History", { conversation: c.id, limit: 50 }, state.token);
    for (const m of answer.messages || []) show(m, true);
    const last = (answer.messages || []).reduce((n, m) => Math.max(n, Number(m.convSeq || 0)), 0);
    if (last) markRead(c.id, last);
  } catch (err) {
    $("title").textContent = `${c.title || c.id} (history: ${err.message})`;
  }
}

function markRead(conversation, convSeq) {
  call("Gateway/MarkRead", { conversation, convSeq: String(convSeq) }, state.token).catch(() => {});
}

// A direct conversation `d:<length of the smaller id>:<smaller>:<larger>` is titled with the
// other user's id; a group with its id until the listing gives its name.
function titleOf(id) {
  const m = /^d:(\d+):/.exec(id);
  if (!m) return id;
  const rest = id.slice(m[0].length);
  const first = rest.slice(0, Number(m[1]));
  const second = rest.slice(Number(m[1]) + 1);
  return first === state.user ? second : first;
}

function directId(a, b) {
  const [x, y] = a < b ? [a, b] : [b, a];
  return `d:${x.length}:${x}:${y}`;
}

function currentConversation() {
  const to = $("to").value.trim();
  if (!to) return "";
  return to.startsWith("g:") ? to : directId(state.user, to);
}

// ---- the forms -----------------------------------------------------------------------------

function frameOf(p) {
  const frame = { clientMsgId: p.clientMsgId, body: p.body };
  if (p.group) frame.group = p.group; else frame.to = p.to;
  return frame;
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  stop("offline", "signed out");
  state.user = $("user").value.trim();
  state.device = $("device").value.trim() || deviceId();
  state.jwt = $("jwt").value.trim();
  $("login-error").textContent = "";
  state.resume = loadResume();
  state.pending = [];
  state.messages.clear();
  state.order = [];
  state.selected = "";
  state.stopped = false;
  state.backoff = 0;
  $("send-form").hidden = false;
  render();
  connect();
});

$("send-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const to = $("to").value.trim();
  const body = $("text").value;
  if (!to || !body) return;
  const clientMsgId = `${state.device}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
  const p = to.startsWith("g:") ? { clientMsgId, group: to, body } : { clientMsgId, to, body };
  state.pending.push(p);
  const key = ownKey(clientMsgId);
  state.messages.set(key, {
    key, conversation: currentConversation(), convSeq: 0, from: state.user, body, mine: true,
    mark: "…", seq: 0, sentAt: Date.now(),
  });
  state.order.push(key);
  render();
  send({ send: frameOf(p) });
  $("text").value = "";
});

$("text").addEventListener("input", () => {
  const conversation = currentConversation();
  const now = Date.now();
  if (!conversation || !state.online || now - state.lastTyping < 1000) return;
  state.lastTyping = now;
  send({ typing: { conversation } });
});
