// tlsmta dev relay page. Mail is untrusted: every string goes in with
// textContent, never parsed as markup; HTML bodies load into <iframe sandbox>
// from an endpoint that adds Content-Security-Policy: sandbox.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { messages: [], selected: null, tab: "html", query: "" };

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

function when(iso) {
  const date = new Date(iso);
  const today = new Date().toDateString() === date.toDateString();
  return today ? date.toLocaleTimeString() : date.toLocaleString();
}

// used is null for a message stored without its facts of receipt: unknown, not plain text.
function tlsWords(receipt) {
  const tls = receipt.tls;
  return tls.used === null ? "unknown" : tls.used ? `${tls.protocol}` : "plain";
}

function tlsClass(tls) {
  return tls.used === null ? "unknown" : tls.used ? "ok" : "bad";
}

async function loadList() {
  const q = state.query ? `?q=${encodeURIComponent(state.query)}` : "";
  const data = await api(`/api/messages${q}`);
  state.messages = data.messages;
  renderList();
  if (state.selected && !state.messages.some((m) => m.id === state.selected)) showNothing();
}

function renderList() {
  const list = $("messages");
  list.replaceChildren();
  for (const m of state.messages) {
    const item = el("li");
    item.dataset.id = m.id;
    if (m.id === state.selected) item.classList.add("selected");
    item.append(
      el("span", "subject", m.subject || "(no subject)"),
      el("span", "time", when(m.received_at)),
      el("span", "addr", `${m.envelope.from || "<>"} → ${m.envelope.to.join(", ")}`),
      el("span", `badge ${m.receipt.tls.used === null ? "unknown" : m.receipt.tls.used ? "tls" : "plain"}`, tlsWords(m.receipt)),
    );
    item.addEventListener("click", () => select(m.id));
    list.append(item);
  }
  $("count").textContent = `${state.messages.length} message${state.messages.length === 1 ? "" : "s"}`;
  $("empty").hidden = state.messages.length > 0;
}

function pairs(target, rows) {
  target.replaceChildren();
  for (const [name, value, className] of rows) {
    target.append(el("dt", null, name), el("dd", className || null, value === null || value === undefined || value === "" ? "—" : value));
  }
}

function showNothing() {
  state.selected = null;
  $("view").hidden = true;
  $("placeholder").hidden = false;
  renderList();
}

function setTab(tab) {
  state.tab = tab;
  for (const button of document.querySelectorAll("#tabs button[data-tab]")) {
    button.classList.toggle("active", button.dataset.tab === tab);
    $(`tab-${button.dataset.tab}`).classList.toggle("active", button.dataset.tab === tab);
  }
}

async function select(id) {
  state.selected = id;
  renderList();
  const m = await api(`/api/messages/${encodeURIComponent(id)}`);
  $("placeholder").hidden = true;
  $("view").hidden = false;
  $("v-subject").textContent = m.subject || "(no subject)";
  pairs($("v-summary"), [
    ["From", m.from], ["To", m.to], ...(m.cc ? [["Cc", m.cc]] : []),
    ["Envelope", `${m.envelope.from || "<>"} → ${m.envelope.to.join(", ")}`],
    ["Received", `${when(m.received_at)} from ${m.receipt.helo || "?"} [${m.receipt.peer || "?"}]`],
    ["TLS", m.receipt.tls.used === null ? "unknown: no receipt stored with this message"
      : m.receipt.tls.used ? `${m.receipt.tls.protocol}, ${m.receipt.tls.cipher}` : "none: received in plain text",
      tlsClass(m.receipt.tls)],
    ...(m.receipt.auth_user ? [["AUTH user", m.receipt.auth_user]] : []),
    ["Size", `${m.size} bytes`],
  ]);
  const tls = m.receipt.tls;
  pairs($("v-tls"), [
    ["TLS", tls.used === null ? "unknown" : tls.used ? "yes" : "no (plain text)", tlsClass(tls)],
    ["Protocol", tls.protocol], ["Cipher", tls.cipher],
    ["Client certificate", tls.client_certificate],
    ["SMTP", m.receipt.smtp], ["Queue id", m.receipt.queue_id],
  ]);
  const frame = $("v-html");
  frame.setAttribute("sandbox", "");  // no scripts, opaque origin
  frame.src = m.html_part === null ? "about:blank" : `/api/messages/${encodeURIComponent(id)}/html`;
  $("v-text").textContent = m.text === null ? "(no text/plain part)" : m.text;
  const table = $("v-headers");
  table.replaceChildren();
  for (const [name, value] of m.headers) {
    const row = el("tr");
    row.append(el("td", null, name), el("td", null, value));
    table.append(row);
  }
  $("v-raw").textContent = await api(`/api/messages/${encodeURIComponent(id)}/raw`);
  const attachments = $("v-attachments");
  attachments.replaceChildren();
  for (const part of m.parts.filter((p) => p.attachment)) {
    const link = el("a", null, `📎 ${part.filename || "part " + part.index} (${part.size} bytes)`);
    link.href = `/api/messages/${encodeURIComponent(id)}/parts/${part.index}`;
    link.setAttribute("download", part.filename || `part-${part.index}`);
    const item = el("li");
    item.append(link);
    attachments.append(item);
  }
  setTab(state.tab === "html" && m.html_part === null ? "text" : state.tab);
  document.dispatchEvent(new CustomEvent("tlsmta:message-shown", { detail: { id } }));  // extra tabs (checks.js)
}

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

function live() {
  const source = new EventSource("/api/events");
  source.addEventListener("hello", () => { $("live").textContent = "live"; $("live").classList.add("on"); });
  source.addEventListener("changed", () => loadList());
  source.onerror = () => { $("live").textContent = "reconnecting…"; $("live").classList.remove("on"); };
}

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
  $("clear").addEventListener("click", async () => {
    if (confirm("Delete every message?")) { await api("/api/messages", { method: "DELETE" }); showNothing(); loadList(); }
  });
  $("delete").addEventListener("click", async () => {
    if (state.selected) { await api(`/api/messages/${encodeURIComponent(state.selected)}`, { method: "DELETE" }); showNothing(); loadList(); }
  });
  $("release").addEventListener("click", async () => {
    if (!state.selected) return;
    const smarthost = prompt("Release to which smarthost? (HOST[:PORT]; the configured TLS policy applies)");
    if (!smarthost) return;
    const response = await fetch(`/api/messages/${encodeURIComponent(state.selected)}/release`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ smarthost }),
    });
    const answer = await response.json();
    alert(response.ok ? `Queued as ${answer.queued_as} for ${answer.route}` : `Not released: ${answer.error}`);
  });
  $("lab").addEventListener("change", async (event) => {
    const mode = event.target.value || null;
    await api("/api/tls-lab", { method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ mode }) });
    loadLab();
  });
  loadList();
  loadLab();
  live();
});
