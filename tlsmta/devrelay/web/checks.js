// The message view's "Checks" tab: size, MIME structure, header problems, which HTML and
// CSS the major mail clients do not support (caniemail's data), and the links, whose HTTP
// status is asked only on a click ("Check links") and only for [http] link_check_hosts.
//
// The tab comes from app.js's window.tlsmtaPage.addTab; app.js dispatches
// "tlsmta:message-shown" (detail: {id, message}) after it shows a message.
// Mail is untrusted: every string goes in with textContent.
"use strict";

(() => {
  const checks = { id: null, loaded: null };
  const make = (tag, className, text) => {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  };
  const path = (id, what) => `/api/messages/${encodeURIComponent(id)}/${what}`;

  function readable(bytes) {
    if (bytes < 1024) return `${bytes} B`;
    const units = ["KB", "MB", "GB"];
    let value = bytes / 1024;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
    return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]} (${bytes} bytes)`;
  }

  const panel = window.tlsmtaPage.addTab("checks", "Checks");
  const button = document.querySelector('#tabs button[data-tab="checks"]');

  function tree(node) {
    const item = make("li");
    const facts = [node.content_type, node.charset, node.encoding, node.disposition, node.filename]
      .filter((fact) => fact).join(", ");
    item.append(make("span", null, `#${node.index} ${facts}${node.size !== undefined ? ` — ${readable(node.size)}` : ""}`));
    if (node.parts && node.parts.length) {
      const children = make("ul");
      for (const child of node.parts) children.append(tree(child));
      item.append(children);
    }
    return item;
  }

  function problemsList(problems) {
    if (!problems.length) return make("p", "ok", "No problems found.");
    const list = make("ul", "problems");
    for (const problem of problems) {
      const item = make("li", problem.severity === "error" ? "bad" : "warn");
      item.append(make("strong", null, `${problem.severity}: `), make("span", null, problem.message));
      list.append(item);
    }
    return list;
  }

  function htmlTable(problems) {
    if (problems === null) return make("p", "muted", "No HTML body.");
    if (!problems.length) return make("p", "ok", "Nothing the major clients lack.");
    const table = make("table", "checks-html");
    for (const problem of problems) {
      const row = make("tr");
      const name = make("td");
      const link = make("a", null, problem.title);
      link.href = problem.url;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      name.append(link, make("div", "muted", `${problem.found.join(", ")} ×${problem.count}`));
      const clients = make("td");
      if (problem.unsupported.length) clients.append(make("div", "bad", `Not supported: ${problem.unsupported.join(", ")}`));
      for (const partial of problem.partial) clients.append(make("div", "warn", `Partial in ${partial.client}: ${partial.note}`));
      row.append(name, clients);
      table.append(row);
    }
    return table;
  }

  function linksTable(links) {
    const table = make("table", "checks-links");
    for (const link of links) {
      const row = make("tr");
      let status = link.skipped ? `not checked: ${link.skipped}` : "—";
      if (link.error) status = `error: ${link.error}`;
      else if (link.status) status = `${link.status}${link.location ? ` → ${link.location}` : ""}`;
      const good = link.status && link.status < 400;
      row.append(make("td", null, link.kind), make("td", null, link.url),
        make("td", link.error || link.status >= 400 ? "bad" : good ? "ok" : "muted", status));
      table.append(row);
    }
    return table;
  }

  function render(report) {
    const links = make("section");
    const check = make("button", null, "Check links");
    check.type = "button";
    check.id = "check-links";
    check.disabled = report.links.every((link) => link.skipped);
    check.title = "request each allowed link once (HEAD); hosts not in [http] link_check_hosts are left alone";
    const linkList = make("div");
    linkList.append(report.links.length ? linksTable(report.links) : make("p", "muted", "No links."));
    check.addEventListener("click", async () => {
      const id = checks.id;
      check.disabled = true;
      const response = await fetch(path(id, "linkcheck"), { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
      const answer = await response.json();
      if (id !== checks.id) return;  // another message is shown now
      linkList.replaceChildren(response.ok ? linksTable(answer.links) : make("p", "bad", answer.error));
      check.disabled = false;
    });
    links.append(make("h3", null, `Links (${report.links.length})`), check, linkList);
    const structure = make("ul", "mime-tree");
    structure.append(tree(report.structure));
    panel.replaceChildren(
      make("h3", null, `Size: ${readable(report.size)}`),
      make("h3", null, "Headers and MIME"), problemsList(report.problems),
      make("h3", null, "MIME structure"), structure,
      make("h3", null, "HTML and CSS support"), htmlTable(report.html),
      make("p", "muted", "Support data: caniemail.com (MIT licence)."),
      links,
    );
  }

  async function load() {
    const id = checks.id;
    if (!id || checks.loaded === id) return;
    checks.loaded = id;
    panel.replaceChildren(make("p", "muted", "Checking…"));
    const response = await fetch(path(id, "checks"));
    const report = await response.json();
    if (id !== checks.id) return;  // a later message was shown meanwhile
    if (response.ok) render(report);
    else panel.replaceChildren(make("p", "bad", report.error));
  }

  button.addEventListener("click", load);
  document.addEventListener("tlsmta:message-shown", (event) => {
    checks.id = event.detail.id;
    checks.loaded = null;
    if (button.classList.contains("active")) load();
  });
})();
