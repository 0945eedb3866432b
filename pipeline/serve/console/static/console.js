/* The billing console's pages: fetch the read-only JSON endpoints, fill tables, draw ECharts.
 * Every value is put in the page as text (never as HTML): account ids and rejected records are
 * user input. Money arrives as exact decimal strings (CNY, 6 decimals) and is shown as such; only
 * the charts turn it into numbers. Times arrive in +08:00 and are shown as they are. */
"use strict";

const Console = (() => {
  const charts = {};
  window.consoleCharts = charts; // the browser tests read the drawn series here

  async function getJSON(url) {
    const response = await fetch(url, { credentials: "same-origin" });
    const body = await response.json().catch(() => ({ error: response.statusText }));
    if (!response.ok) throw new Error(body.error || response.statusText);
    return body;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "href") node.setAttribute("href", v);
      else node.setAttribute(k, v);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setText(id, value) {
    const node = document.getElementById(id);
    if (node) node.textContent = value === null || value === undefined || value === "" ? "—" : String(value);
  }

  function showError(message) {
    const box = document.getElementById("error");
    if (box) { box.textContent = message; box.hidden = false; }
  }

  function clearError() {
    const box = document.getElementById("error");
    if (box) { box.textContent = ""; box.hidden = true; }
  }

  function accountLink(id) {
    return el("a", { href: "/console/account/" + encodeURIComponent(id) }, id);
  }

  /* columns: [[key, label, (row) => cell?, "num"?]] */
  function table(id, rows, columns, cut) {
    const target = document.getElementById(id);
    if (!target) return;
    target.replaceChildren();
    if (!rows.length) { target.append(el("p", { class: "empty" }, "none")); return; }
    const head = el("tr", {}, ...columns.map(([, label, , kind]) => el("th", { class: kind || "" }, label)));
    const body = rows.map((row) => el("tr", {}, ...columns.map(([key, , render, kind]) => {
      const value = render ? render(row) : row[key];
      return el("td", { class: kind || "" }, value === null || value === undefined ? "" :
        (typeof value === "object" && !(value instanceof Node) ? JSON.stringify(value) : value));
    })));
    target.append(el("table", { class: "rows" }, el("thead", {}, head), el("tbody", {}, ...body)));
    if (cut) target.append(el("p", { class: "cut" }, `only the first ${rows.length} rows are shown`));
  }

  function shortHour(ts) { return ts.slice(5, 13).replace("T", " ") + "h"; } // MM-DD HHh (+08:00)

  function draw(id, option) {
    const node = document.getElementById(id);
    if (!node) return null;
    const chart = charts[id] || echarts.init(node, null, { renderer: "canvas" });
    chart.setOption(option, true);
    charts[id] = chart;
    return chart;
  }

  window.addEventListener("resize", () => Object.values(charts).forEach((c) => c.resize()));

  function rangeQuery() {
    const from = document.getElementById("from").value.trim();
    const to = document.getElementById("to").value.trim();
    const params = new URLSearchParams();
    if (from) params.set("from", from);
    if (to) params.set("to", to);
    return params;
  }

  function keepRange(data) {
    document.getElementById("from").value = data.from;
    document.getElementById("to").value = data.to;
    const url = new URL(window.location.href);
    url.searchParams.set("from", data.from);
    url.searchParams.set("to", data.to);
    window.history.replaceState(null, "", url);
  }

  function initRange() {
    const url = new URL(window.location.href);
    for (const name of ["from", "to"]) {
      const value = url.searchParams.get(name);
      if (value) document.getElementById(name).value = value;
    }
  }

  /* ---- operator page ---- */
  async function operator() {
    initRange();
    document.getElementById("range-form").addEventListener("submit", (e) => { e.preventDefault(); loadOverview(); });
    document.getElementById("account-filter").addEventListener("input", debounce(loadAccounts, 250));
    await Promise.all([loadOverview(), loadAccounts(), loadHealth()]);
    setInterval(loadHealth, 5000);
    document.body.dataset.loaded = "1";
  }

  async function loadOverview() {
    clearError();
    let data;
    try { data = await getJSON("/api/console/overview?" + rangeQuery()); } catch (e) { showError(e.message); return; }
    keepRange(data);
    setText("computed-at", new Date(data.computed_at * 1000).toISOString().slice(11, 19) + " UTC");
    setText("kpi-accounts", data.accounts);
    setText("kpi-arrears", data.in_arrears);
    setText("kpi-calls", data.totals.calls);
    setText("kpi-tokens", data.totals.tokens);
    setText("kpi-amount", data.totals.amount);
    draw("chart-revenue", {
      tooltip: { trigger: "axis" },
      legend: { data: ["amount (CNY)", "calls"] },
      grid: { left: 60, right: 60, top: 40, bottom: 40 },
      xAxis: { type: "category", data: data.hours.map(shortHour) },
      yAxis: [{ type: "value", name: "CNY" }, { type: "value", name: "calls" }],
      series: [
        { name: "amount (CNY)", type: "bar", data: data.amount.map(Number) },
        { name: "calls", type: "line", yAxisIndex: 1, data: data.calls, showSymbol: false },
      ],
    });
    draw("chart-rejections", {
      tooltip: { trigger: "axis" },
      grid: { left: 170, right: 20, top: 10, bottom: 30 },
      xAxis: { type: "value" },
      yAxis: { type: "category", data: data.rejections_by_reason.map((r) => r.reason).reverse() },
      series: [{ name: "records", type: "bar", data: data.rejections_by_reason.map((r) => r.records).reverse() }],
    });
    table("top-accounts", data.top_accounts, [
      ["account_id", "account", (r) => accountLink(r.account_id)], ["calls", "calls", null, "num"],
      ["tokens", "tokens", null, "num"], ["amount", "amount (CNY)", null, "num"]]);
    table("arrears", data.arrears, [
      ["account_id", "account", (r) => accountLink(r.account_id)], ["debt", "debt (CNY)", null, "num"],
      ["cash_balance", "cash (CNY)", null, "num"], ["status_since", "in arrears since"]]);
    table("rejection-reasons", data.rejections_by_reason, [["reason", "reason"], ["records", "records", null, "num"]]);
    table("rebills", data.rebills, [
      ["run_id", "run"], ["run_at", "at"], ["run_by", "by"], ["range_from", "from"], ["range_to", "to"],
      ["catalog_version", "catalog"], ["records_read", "records", null, "num"], ["lines_changed", "lines changed", null, "num"]]);
  }

  async function loadAccounts() {
    const prefix = document.getElementById("account-filter").value.trim();
    let rows;
    try { rows = await getJSON("/api/console/accounts?" + new URLSearchParams(prefix ? { prefix } : {})); } catch (e) { showError(e.message); return; }
    table("accounts", rows, [
      ["account_id", "account", (r) => accountLink(r.account_id)], ["status", "status"],
      ["cash_balance", "cash (CNY)", null, "num"], ["voucher_balance", "vouchers (CNY)", null, "num"],
      ["debt", "debt (CNY)", null, "num"], ["free_tokens_used", "free tokens used", null, "num"],
      ["last_event_at", "last event"]]);
  }

  let lastHealth = null;
  async function loadHealth() {
    let h;
    try { h = await getJSON("/api/console/health"); } catch (e) { return; }
    const now = performance.now();
    if (!h.available) {
      setText("health-note", "No worker in this process: the pipeline's health is on each worker's /metrics.");
      return;
    }
    setText("health-note", `epoch ${h.epoch}`);
    setText("health-records", h.records);
    setText("health-batches", h.batches);
    setText("health-batch-ms", h.mean_batch_ms === null ? "" : h.mean_batch_ms + " ms");
    setText("health-failures", h.batch_failures);
    if (lastHealth) {
      const seconds = (now - lastHealth.at) / 1000;
      setText("health-rate", Math.max(0, Math.round((h.records - lastHealth.records) / seconds)) + " records/s");
    }
    lastHealth = { at: now, records: h.records };
    table("health-partitions", h.partitions, [
      ["partition", "partition", null, "num"], ["offset", "processed offset", null, "num"],
      ["committed_offset", "committed offset", null, "num"], ["lag", "lag (records)", null, "num"],
      ["watermark", "event-time watermark", (r) => h.watermarks[String(r.partition)] || ""]]);
  }

  /* ---- account page ---- */
  function accountId() {
    const parts = window.location.pathname.split("/");
    return decodeURIComponent(parts[parts.length - 1]);
  }

  async function account() {
    const id = accountId();
    document.title = `${id} — billing console`;
    setText("account-id", id);
    initRange();
    const url = new URL(window.location.href);
    if (url.searchParams.get("by")) document.getElementById("by").value = url.searchParams.get("by");
    document.getElementById("range-form").addEventListener("submit", (e) => { e.preventDefault(); loadAccountRange(id); });
    document.getElementById("by").addEventListener("change", () => loadUsage(id));
    await loadSummary(id);
    await loadAccountRange(id);
    document.body.dataset.loaded = "1";
  }

  async function loadSummary(id) {
    let a;
    try { a = await getJSON("/api/console/accounts/" + encodeURIComponent(id)); } catch (e) { showError(`${id}: ${e.message}`); return; }
    setText("acct-status", a.status);
    document.getElementById("acct-status").className = "status " + a.status;
    setText("acct-status-since", a.status_since ? `since ${a.status_since}` : "");
    setText("acct-cash", a.cash_balance);
    setText("acct-debt", a.debt);
    setText("acct-free", a.free_tokens_left);
    setText("acct-free-quota", `of ${a.free_quota_tokens}`);
    setText("acct-settled", a.last_settled_hour);
    setText("acct-clock", a.clock);
    setText("acct-limits", `QPS ${a.limits.qps} · QPM ${a.limits.qpm} · TPM ${a.limits.tpm} (${a.limits.source})`);
    table("vouchers", a.vouchers, [["voucher_id", "voucher"], ["remaining", "remaining (CNY)", null, "num"],
      ["expires_at", "expires", (r) => r.expires_at || "never"]]);
    table("keys", a.key_states, [["api_key_id", "API key"], ["state", "state"], ["created_at", "created"],
      ["revoked_at", "revoked", (r) => r.revoked_at || ""]]);
  }

  async function loadAccountRange(id) {
    clearError();
    await loadUsage(id);
    let d;
    try { d = await getJSON(`/api/console/accounts/${encodeURIComponent(id)}/details?` + rangeQuery()); } catch (e) { showError(e.message); return; }
    setText("bills-total", d.bills_total);
    setText("bills-count", d.bills.length);
    table("bills", d.bills, [["hour", "hour"], ["api_key_id", "API key"], ["item", "item"], ["requests", "requests", null, "num"],
      ["input_tokens", "input", null, "num"], ["output_tokens", "output", null, "num"], ["free_tokens", "free", null, "num"],
      ["billed_input_tokens", "billed in", null, "num"], ["billed_output_tokens", "billed out", null, "num"],
      ["quantity", "quantity", null, "num"], ["amount", "amount (CNY)", null, "num"]], d.bills_cut);
    table("settlements", d.settlements, [["hour", "hour"], ["kind", "kind"], ["amount", "amount", null, "num"],
      ["voucher_part", "from vouchers", null, "num"], ["cash_part", "from cash", null, "num"], ["debt_added", "debt added", null, "num"],
      ["debt_after", "debt after", null, "num"], ["balance_after", "cash after", null, "num"]], d.settlements_cut);
    table("rejections", d.rejections, [["timestamp", "time"], ["event_id", "event"], ["reason", "reason"], ["detail", "detail"]],
      d.rejections_cut);
    table("violations", d.violations, [["ts", "time"], ["event_id", "event"], ["limit_name", "limit"],
      ["window_start", "window"], ["observed", "observed", null, "num"], ["allowed", "allowed", null, "num"]], d.violations_cut);
    const month = d.from.slice(0, 7);
    const statement = document.getElementById("statement-link");
    statement.href = `/console/statement/${encodeURIComponent(id)}?month=${month}`;
    statement.textContent = `statement ${month}`;
    const csv = document.getElementById("statement-csv");
    csv.href = `/api/console/accounts/${encodeURIComponent(id)}/statement.csv?month=${month}`;
  }

  async function loadUsage(id) {
    const by = document.getElementById("by").value;
    const params = rangeQuery();
    params.set("by", by);
    let u;
    try { u = await getJSON(`/api/console/accounts/${encodeURIComponent(id)}/usage?` + params); } catch (e) { showError(e.message); return; }
    keepRange(u);
    const url = new URL(window.location.href);
    url.searchParams.set("by", by);
    window.history.replaceState(null, "", url);
    setText("range-calls", u.totals.calls);
    setText("range-tokens", u.totals.tokens);
    setText("range-amount", u.totals.amount);
    const names = Object.keys(u.series);
    const hours = u.hours.map(shortHour);
    for (const [metric, title] of [["calls", "calls"], ["tokens", by === "plugin" ? "units" : "tokens"], ["amount", "amount (CNY)"]]) {
      const key = metric === "tokens" && by === "plugin" ? "quantity" : metric;
      draw(`chart-${metric}`, {
        title: { text: `${title} per hour by ${by}`, textStyle: { fontSize: 13 } },
        tooltip: { trigger: "axis" },
        legend: { type: "scroll", top: 22, data: names },
        grid: { left: 70, right: 20, top: 60, bottom: 30 },
        xAxis: { type: "category", data: hours },
        yAxis: { type: "value" },
        series: names.map((name) => ({ name, type: "bar", stack: "all", data: u.series[name][key].map(Number) })),
      });
    }
  }

  /* ---- statement page ---- */
  async function statementPage() {
    const id = accountId();
    const month = new URL(window.location.href).searchParams.get("month") || new Date().toISOString().slice(0, 7);
    let s;
    try {
      s = await getJSON(`/api/console/accounts/${encodeURIComponent(id)}/statement?month=${encodeURIComponent(month)}`);
    } catch (e) { showError(e.message); return; }
    document.title = `Statement ${s.month} — ${s.account_id}`;
    setText("st-account", s.account_id);
    setText("st-month", s.month);
    setText("st-period", `${s.from} – ${s.to}`);
    setText("st-total", s.total);
    setText("st-settled", s.payments.settled);
    setText("st-vouchers", s.payments.vouchers);
    setText("st-cash", s.payments.cash);
    setText("st-debt", s.payments.debt_added);
    table("st-lines", s.lines, [["item", "item"], ["api_key_id", "API key"], ["requests", "requests", null, "num"],
      ["input_tokens", "input tokens", null, "num"], ["output_tokens", "output tokens", null, "num"],
      ["free_tokens", "free tokens", null, "num"], ["billed_input_tokens", "billed input", null, "num"],
      ["billed_output_tokens", "billed output", null, "num"], ["quantity", "quantity", null, "num"],
      ["amount", "amount (CNY)", null, "num"]]);
    document.getElementById("st-csv").href = `/api/console/accounts/${encodeURIComponent(id)}/statement.csv?month=${s.month}`;
    document.getElementById("st-back").href = `/console/account/${encodeURIComponent(id)}`;
    document.body.dataset.loaded = "1";
  }

  function debounce(fn, ms) {
    let timer = null;
    return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
  }

  return { operator, account, statement: statementPage };
})();

document.addEventListener("DOMContentLoaded", () => {
  const which = document.body.dataset.page;
  Console[which]().catch((e) => {
    const box = document.getElementById("error");
    if (box) { box.textContent = e.message; box.hidden = false; }
  });
});
