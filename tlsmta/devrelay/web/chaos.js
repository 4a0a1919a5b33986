// The "Break" menu: one place to break TLS (the TLS lab select, moved in here)
// or SMTP (chaos rules: GET/POST/DELETE /api/chaos). Every string goes in with
// textContent, as in app.js.
"use strict";

(() => {
  const node = (tag, text, props) => {
    const made = document.createElement(tag);
    if (text !== undefined && text !== null) made.textContent = String(text);
    return Object.assign(made, props || {});
  };

  async function call(method, path, body) {
    const options = { method };
    if (body !== undefined) Object.assign(options, { headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const response = await fetch(path, options);
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || `${response.status} ${path}`);
    return answer;
  }

  function field(label, input) {
    const wrap = node("label", label);
    wrap.append(input);
    return wrap;
  }

  function ruleWords(rule) {
    const how = [];
    if (rule.probability < 1) how.push(`${Math.round(rule.probability * 100)} %`);
    if (rule.times_left !== null) how.push(`${rule.times_left} more`);
    if (rule.recipient) how.push(`to ${rule.recipient}`);
    return `${rule.stage}: ${rule.reply}${how.length ? ` (${how.join(", ")})` : ""}`;
  }

  function build() {
    const menu = node("details", null, { id: "break", className: "break" });
    const summary = node("summary", "Break…", { title: "make the relay a bad TLS or SMTP peer" });
    const panel = node("div", null, { className: "break-panel" });
    const lab = document.querySelector("header .lab");
    if (lab) panel.append(node("h3", "TLS"), lab);

    const stage = node("select", null, { id: "chaos-stage" });
    const code = node("input", null, { id: "chaos-code", type: "number", min: 400, max: 559, value: 451 });
    const status = node("input", null, { id: "chaos-status", placeholder: "4.0.0" });
    const text = node("input", null, { id: "chaos-text", placeholder: "reply text" });
    const probability = node("input", null, { id: "chaos-probability", type: "number", min: 1, max: 100, value: 100 });
    const times = node("input", null, { id: "chaos-times", type: "number", min: 1, placeholder: "always" });
    const recipient = node("input", null, { id: "chaos-recipient", placeholder: "*@example.test" });
    const add = node("button", "Add failure", { id: "chaos-add", type: "submit" });
    const form = node("form", null, { id: "chaos-form" });
    form.append(field("Stage", stage), field("Code", code), field("Status", status), field("Text", text),
      field("Chance %", probability), field("Times", times), field("Recipient", recipient), add);
    const rules = node("ul", null, { id: "chaos-rules" });
    const problem = node("p", null, { id: "chaos-problem", className: "chaos-problem" });
    const clear = node("button", "Stop all SMTP failures", { id: "chaos-clear", type: "button" });
    panel.append(node("h3", "SMTP"), form, problem, rules, clear);
    menu.append(summary, panel);
    const anchor = document.querySelector("header .button");
    document.querySelector("header").insertBefore(menu, anchor);

    const optional = (input) => (input.value.trim() === "" ? undefined : input.value.trim());
    async function refresh() {
      const state = await call("GET", "/api/chaos");
      if (!stage.options.length) for (const name of state.stages) stage.append(node("option", name, { value: name }));
      rules.replaceChildren(...state.rules.map((rule) => {
        const item = node("li", ruleWords(rule));
        const remove = node("button", "×", { type: "button", title: "stop this failure" });
        remove.addEventListener("click", () => call("DELETE", `/api/chaos/${rule.id}`).then(refresh));
        item.append(remove);
        return item;
      }));
      summary.classList.toggle("active", state.rules.length > 0);
    }
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const rule = { stage: stage.value, code: Number(code.value), status: optional(status), text: optional(text),
        probability: Number(probability.value) / 100, times: optional(times) && Number(times.value), recipient: optional(recipient) };
      try {
        await call("POST", "/api/chaos", rule);
        problem.textContent = "";
      } catch (error) {
        problem.textContent = error.message;
      }
      refresh();
    });
    clear.addEventListener("click", () => call("DELETE", "/api/chaos").then(refresh));
    menu.addEventListener("toggle", () => { if (menu.open) refresh(); });
    refresh().catch(() => menu.remove()); // no chaos here (not a dev relay)
  }

  document.addEventListener("DOMContentLoaded", build);
})();
