// tlsmta dev relay page. Mail is untrusted: every string goes in with
// textContent, never parsed as markup; HTML bodies load into <iframe sandbox>
// from an endpoint that adds Content-Security-Policy: sandbox.
//
// For other scripts (a "Checks" tab, ...): window.tlsmtaPage.addTab(name, label)
// adds a tab to the message view and returns its empty panel element; after a
// message is shown, document gets a "tlsmta:message-shown" CustomEvent whose
// detail is {id, message} (message: GET /api/messages/ID's JSON).
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE = 100;  // list entries per request; "More" fetches the next page
// selected: the message asked for last; shown: the one on screen, which Delete and Release act on.
const state = { messages: [], count: 0, selected: null, shown: null, tab: "html", query: "", loads: 0 };

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

async function api(path, options) {
  const response = await fetch(path, options);
  if (!response.ok) throw new Error(`${response.status} ${path}`);
  const type = response.headers.get("content-type") || "";
  return type.startsWith("application/json") ? response.json() : response.text();
}

const messageUrl = (id, rest = "") => `/api/messages/${encodeURIComponent(id)}${rest}`;

function when(iso) {
  const date = new Date(iso);
  const today = new Date().toDateString() === date.toDateString();
  return today ? date.toLocaleTimeString() : date.toLocaleString();
}

function size(bytes) {
  const units = ["bytes", "kB", "MB", "GB"];
  let value = bytes, unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit += 1; }
  return unit === 0 ? `${bytes} bytes` : `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

// used is null for a message stored without its facts of receipt: unknown, not plain text.
function tlsWords(receipt) {
  const tls = receipt.tls;
  return tls.used === null ? "unknown" : tls.used ? `${tls.protocol}` : "plain";
}

function tlsClass(tls) {
  return tls.used === null ? "unknown" : tls.used ? "ok" : "bad";
}

// -- the list ------------------------------------------------------------------------------

// The search box: words search everywhere (body too); from:, to:, subject:, tag:, since:, until:
// (a date) and is:unread / is:read filter, as the list API's parameters of the same names.
const FILTERS = ["from", "to", "subject", "tag", "since", "until"];

function listQuery(start) {
  const params = new URLSearchParams({ limit: String(PAGE), start: String(start) });
  const words = [];
  for (const token of state.query.split(/\s+/).filter(Boolean)) {
    const [name, ...rest] = token.split(":");
    const value = rest.join(":");
    if (FILTERS.includes(name) && value) params.set(name, value);
    else if (name === "is" && (value === "unread" || value === "read")) params.set("unread", String(value === "unread"));
    else words.push(token);
  }
  if (words.length) params.set("q", words.join(" "));
  return `/api/messages?${params}`;
}

// The first page, afresh: at start, after the event stream (re)connects, when the search changes.
async function loadList() {
  const load = ++state.loads;
  const data = await api(listQuery(0));
  if (load !== state.loads) return;  // a newer load was started meanwhile
  state.messages = data.messages;
  state.count = data.count;
  renderList();
}

async function loadMore() {
  const load = state.loads;
  const data = await api(listQuery(state.messages.length));
  if (load !== state.loads) return;
  const known = new Set(state.messages.map((m) => m.id));
  state.messages.push(...data.messages.filter((m) => !known.has(m.id)));
  state.count = data.count;
  renderList();
}

// One "changes" event: new entries, removed ids, changed entries, applied to the list in place.
function applyChanges(changes) {
  if (state.query && changes.added.length) { loadList(); return; }  // the server decides what matches
  const removed = new Set(changes.removed);
  const known = new Set(state.messages.map((m) => m.id));
  const added = changes.added.filter((m) => !known.has(m.id) && !removed.has(m.id)).reverse();
  const before = state.messages.length;
  state.messages = [...added, ...state.messages.filter((m) => !removed.has(m.id))];
  state.count += state.messages.length - before;
  for (const entry of changes.updated) {
    const index = state.messages.findIndex((m) => m.id === entry.id);
    if (index >= 0) state.messages[index] = entry;
  }
  renderList();
  if (state.shown && removed.has(state.shown)) showNothing();
}

function listItem(m) {
  const item = el("li");
  item.dataset.id = m.id;
  item.tabIndex = -1;
  if (m.id === state.selected) item.classList.add("selected");
  if (!m.read) item.classList.add("unread");
  const tags = el("span", "tags");
  for (const tag of m.tags || []) tags.append(el("span", "tag", tag));
  item.append(
    el("span", "subject", m.subject || "(no subject)"),
    el("span", "time", when(m.received_at)),
    el("span", "addr", `${m.envelope.from || "<>"} → ${m.envelope.to.join(", ")}`),
    m.receipt.tls.lab ? el("span", "badge plain", `${m.receipt.tls.protocol}: bad cert accepted`)
      : el("span", `badge ${m.receipt.tls.used === null ? "unknown" : m.receipt.tls.used ? "tls" : "plain"}`, tlsWords(m.receipt)),
    tags,
  );
  item.addEventListener("click", () => open(m.id));
  return item;
}

function renderList() {
  $("messages").replaceChildren(...state.messages.map(listItem));
  $("count").textContent = `${state.count} message${state.count === 1 ? "" : "s"}`;
  $("empty").hidden = state.count > 0;
  $("more").hidden = state.messages.length >= state.count;
}

// -- one message -----------------------------------------------------------------------------

function pairs(target, rows) {
  target.replaceChildren();
  for (const [name, value, className] of rows) {
    target.append(el("dt", null, name), el("dd", className || null, value === null || value === undefined || value === "" ? "—" : value));
  }
}

function showNothing() {
  state.selected = null;
  state.shown = null;
  $("view").hidden = true;
  $("placeholder").hidden = false;
  if (location.hash) history.replaceState(null, "", location.pathname);
  renderList();
}

function setTab(tab) {
  state.tab = tab;
  for (const button of document.querySelectorAll("#tabs button[data-tab]")) {
    button.classList.toggle("active", button.dataset.tab === tab);
    $(`tab-${button.dataset.tab}`).classList.toggle("active", button.dataset.tab === tab);
  }
}

// Each message has a URL (#/message/ID): opening one is navigating to it.
function open(id) {
  const hash = `#/message/${encodeURIComponent(id)}`;
  if (location.hash === hash) select(id); else location.hash = hash;
}

function idFromHash() {
  const match = /^#\/message\/(.+)$/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

// Text with its http(s) URLs as links (opened in a new tab, without a referrer).
function linkified(target, text) {
  target.replaceChildren();
  const pattern = /\bhttps?:\/\/[^\s<>"')\]]+/g;
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    target.append(text.slice(last, match.index));
    const link = el("a", null, match[0]);
    link.href = match[0];
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    target.append(link);
    last = match.index + match[0].length;
  }
  target.append(text.slice(last));
}

function renderAttachments(id, parts) {
  const attachments = $("v-attachments");
  attachments.replaceChildren();
  for (const part of parts.filter((p) => p.attachment)) {
    const item = el("li");
    const link = el("a", null, `📎 ${part.filename || "part " + part.index} (${size(part.size)})`);
    link.href = messageUrl(id, `/parts/${part.index}`);
    link.setAttribute("download", part.filename || `part-${part.index}`);
    if (part.thumbnail) {
      const image = el("img", "thumbnail");
      image.src = messageUrl(id, `/parts/${part.index}/thumbnail`);
      image.alt = part.filename || "image";
      link.prepend(image);
    }
    item.append(link);
    attachments.append(item);
  }
}

// Each release of the message shown, with what became of it (queued, deferred, delivered, bounced).
function renderReleases(releases) {
  const list = $("v-releases");
  list.replaceChildren(...releases.map((r) => el("li", `release ${r.state}`,
    `Released as ${r.queued_as} to ${r.smarthost}: ${r.state}${r.tls ? ` (TLS: ${r.tls === "tls" ? "yes" : "no"})` : ""}`
    + `${r.last && r.state !== "delivered" ? ` — ${r.last}` : ""}`)));
}

function render(id, m, source) {
  state.shown = id;
  $("placeholder").hidden = true;
  $("view").hidden = false;
  $("v-subject").textContent = m.subject || "(no subject)";
  const lab = m.receipt.tls.lab;
  pairs($("v-summary"), [
    ["From", m.from], ["To", m.to], ...(m.cc ? [["Cc", m.cc]] : []),
    ["Envelope", `${m.envelope.from || "<>"} → ${m.envelope.to.join(", ")}`],
    ["Received", `${when(m.received_at)} from ${m.receipt.helo || "?"} [${m.receipt.peer || "?"}]`],
    ["TLS", m.receipt.tls.used === null ? "unknown: no receipt stored with this message"
      : m.receipt.tls.used ? `${m.receipt.tls.protocol}, ${m.receipt.tls.cipher}` : "none: received in plain text",
      lab ? "bad" : tlsClass(m.receipt.tls)],
    ...(lab ? [["TLS lab", `your client accepted a bad certificate (lab mode: ${lab})`, "bad"]] : []),
    ...(m.receipt.auth_user ? [["AUTH user", m.receipt.auth_user]] : []),
    ["Size", size(m.size)],
    ["Tags", (m.tags || []).join(", ")],
  ]);
  const tls = m.receipt.tls;
  pairs($("v-tls"), [
    ["TLS", tls.used === null ? "unknown" : tls.used ? "yes" : "no (plain text)", tlsClass(tls)],
    ["Protocol", tls.protocol], ["Cipher", tls.cipher],
    ["Client certificate", tls.client_certificate],
    ["TLS lab", lab ? `${lab}: the client went on despite the bad certificate` : "off", lab ? "bad" : null],
    ["SMTP", m.receipt.smtp], ["Queue id", m.receipt.queue_id],
  ]);
  const frame = $("v-html");
  frame.setAttribute("sandbox", "allow-popups allow-popups-to-escape-sandbox");  // no scripts, opaque origin; links open a new tab
  frame.src = m.html_part === null ? "about:blank" : messageUrl(id, "/html");
  linkified($("v-text"), m.text === null ? "(no text/plain part)" : m.text);
  const table = $("v-headers");
  table.replaceChildren();
  for (const [name, value] of m.headers) {
    const row = el("tr");
    row.append(el("td", null, name), el("td", null, value));
    table.append(row);
  }
  $("v-raw").textContent = source;
  $("raw-download").href = messageUrl(id, "/raw");
  $("raw-download").setAttribute("download", `${id}.eml`);
  $("read").textContent = m.read ? "Mark unread" : "Mark read";
  renderAttachments(id, m.parts);
  renderReleases(m.releases || []);
  setTab(state.tab === "html" && m.html_part === null ? "text" : state.tab);
  document.dispatchEvent(new CustomEvent("tlsmta:message-shown", { detail: { id, message: m } }));  // extra tabs (checks.js)
}

// Answers can come back in any order: only the one for the message asked for last is shown.
async function select(id) {
  state.selected = id;
  renderList();
  const item = document.querySelector(`#messages li[data-id="${CSS.escape(id)}"]`);
  if (item) item.scrollIntoView({ block: "nearest" });
  const [m, source] = await Promise.all([api(messageUrl(id)), api(messageUrl(id, "/source"))]);
  if (state.selected !== id) return;
  render(id, m, source);
  if (!m.read) setRead(id, true);
}

async function setRead(id, read) {
  const entry = await api(messageUrl(id), {
    method: "PATCH", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ read }),
  });
  applyChanges({ added: [], removed: [], updated: [entry] });
  if (state.shown === id) $("read").textContent = entry.read ? "Mark unread" : "Mark read";
}

function step(offset) {
  const index = state.messages.findIndex((m) => m.id === state.selected);
  const next = state.messages[Math.max(0, Math.min(state.messages.length - 1, index + offset))];
  if (next) open(next.id);
}

async function deleteShown() {
  const id = state.shown;
  if (!id) return;
  const index = state.messages.findIndex((m) => m.id === id);
  await api(messageUrl(id), { method: "DELETE" });
  applyChanges({ added: [], removed: [id], updated: [] });
  const next = state.messages[Math.min(index, state.messages.length - 1)];
  if (next) open(next.id);
}

// -- the header: TLS lab, live updates -------------------------------------------------------

async function loadLab() {
  const lab = await api("/api/tls-lab");
  const select = $("lab");
  select.replaceChildren(el("option", null, "off"));
  select.firstChild.value = "";
  for (const mode of lab.modes) {
    const option = el("option", null, mode);
    option.value = mode;
    select.append(option);
  }
  const active = lab.listeners.find((l) => l.tls !== "no");
  select.disabled = !active;
  select.value = active && active.tls_lab ? active.tls_lab : "";
}

// "hello" opens every (re)connection: fetch the first page then, so the list catches up on
// whatever arrived while the stream was down; afterwards each "changes" event updates it in place.
function live() {
  const source = new EventSource("/api/events");
  source.addEventListener("hello", () => { $("live").textContent = "live"; $("live").classList.add("on"); loadList(); });
  source.addEventListener("changes", (event) => applyChanges(JSON.parse(event.data)));
  source.addEventListener("releases", (event) => {
    const { id, releases } = JSON.parse(event.data);
    if (state.shown === id) renderReleases(releases);
  });
  source.onerror = () => { $("live").textContent = "reconnecting…"; $("live").classList.remove("on"); };
}

function onKey(event) {
  if (event.target.closest("input, select, textarea") || event.ctrlKey || event.metaKey || event.altKey) return;
  const keys = {
    j: () => step(1), ArrowDown: () => step(1), k: () => step(-1), ArrowUp: () => step(-1),
    Delete: deleteShown, "#": deleteShown, u: () => state.shown && setRead(state.shown, false),
    "/": () => $("search").focus(), Escape: showNothing,
  };
  if (keys[event.key]) { event.preventDefault(); keys[event.key](); }
}

window.tlsmtaPage = {
  // A tab of the message view for another script: its button and its (empty) panel.
  addTab(name, label) {
    const button = el("button", null, label);
    button.type = "button";
    button.dataset.tab = name;
    button.addEventListener("click", () => setTab(name));
    $("tabs").insertBefore(button, $("release"));
    const panel = el("div", "tab");
    panel.id = `tab-${name}`;
    $("extra-tabs").append(panel);
    return panel;
  },
};

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("#tabs button[data-tab]")) {
    button.addEventListener("click", () => setTab(button.dataset.tab));
  }
  setTab(state.tab);
  let timer = null;
  $("search").addEventListener("input", (event) => {
    clearTimeout(timer);
    timer = setTimeout(() => { state.query = event.target.value.trim(); loadList(); }, 150);
  });
  $("more").addEventListener("click", loadMore);
  $("clear").addEventListener("click", async () => {
    if (confirm("Delete every message?")) { await api("/api/messages", { method: "DELETE" }); showNothing(); loadList(); }
  });
  $("delete").addEventListener("click", deleteShown);
  $("read").addEventListener("click", () => {
    const entry = state.messages.find((m) => m.id === state.shown);
    if (state.shown) setRead(state.shown, !(entry && entry.read));
  });
  $("tag").addEventListener("click", async () => {
    const id = state.shown;
    if (!id) return;
    const answer = prompt("Tags (comma-separated; automatic ones stay)", "");
    if (answer === null) return;
    const entry = await api(messageUrl(id), {
      method: "PATCH", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ tags: answer.split(",").map((t) => t.trim()).filter(Boolean) }),
    });
    applyChanges({ added: [], removed: [], updated: [entry] });
  });
  $("release").addEventListener("click", async () => {
    const id = state.shown;
    if (!id) return;
    const smarthost = prompt("Release to which smarthost? (HOST[:PORT]; the configured TLS policy applies)");
    if (!smarthost) return;
    const response = await fetch(messageUrl(id, "/release"), {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ smarthost }),
    });
    const answer = await response.json();
    if (!response.ok) alert(`Not released: ${answer.error}`);  // on success the release shows under the summary
  });
  $("lab").addEventListener("change", async (event) => {
    const mode = event.target.value || null;
    await api("/api/tls-lab", { method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ mode }) });
    loadLab();
  });
  document.addEventListener("keydown", onKey);
  window.addEventListener("hashchange", () => { const id = idFromHash(); if (id) select(id); else showNothing(); });
  if (idFromHash()) select(idFromHash());
  loadLab();
  live();
});
