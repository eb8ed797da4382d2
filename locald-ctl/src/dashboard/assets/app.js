// The locald dashboard page. Plain JavaScript, no libraries, no build step.
//
// Rules this file keeps: text from the daemon or the journal only ever
// reaches the page as text nodes (textContent, createTextNode), never as
// HTML; no eval, no inline handlers (the server's CSP forbids both); every
// request carries the token from the URL fragment.
"use strict";

(() => {
  const token = new URLSearchParams(location.hash.slice(1)).get("token") || "";
  const $ = (id) => document.getElementById(id);

  // ---- small DOM helpers --------------------------------------------------
  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (k === "dataset") Object.assign(e.dataset, v);
        else if (k === "class") e.className = v;
        else if (k === "text") e.textContent = v;
        else if (k.startsWith("aria-") || k === "role" || k === "title") e.setAttribute(k, v);
        else e[k] = v;
      }
    }
    for (const c of children) {
      if (c == null) continue;
      e.append(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return e;
  }

  // ---- formatting ---------------------------------------------------------
  // The same short ages as `locald-ctl status`: 42s, 3m12s, 5h03m, 2d04h.
  function short(secs) {
    secs = Math.max(0, Math.floor(secs));
    const p2 = (n) => String(n).padStart(2, "0");
    if (secs < 60) return `${secs}s`;
    if (secs < 3600) return `${Math.floor(secs / 60)}m${p2(secs % 60)}s`;
    if (secs < 86400) return `${Math.floor(secs / 3600)}h${p2(Math.floor((secs % 3600) / 60))}m`;
    return `${Math.floor(secs / 86400)}d${p2(Math.floor((secs % 86400) / 3600))}h`;
  }
  function duration(b) {
    if (!b.finished_at || !b.started_at) return "";
    const s = (b.finished_at - b.started_at) / 1e6;
    return s < 60 ? `${s.toFixed(1)}s` : short(s);
  }
  function clock(usec) {
    if (!usec) return "";
    const d = new Date(usec / 1000);
    const p2 = (n) => String(n).padStart(2, "0");
    return `${p2(d.getHours())}:${p2(d.getMinutes())}:${p2(d.getSeconds())}`;
  }
  // As `locald-ctl status`: the reason, unless it only repeats the state.
  function reason(s) {
    return s.state_reason && s.state_reason !== s.state ? s.state_reason : "";
  }
  // A finished build as one line: ✓/✗, duration, what it decided.
  function buildLine(b) {
    if (!b || !b.result) return { mark: "", text: "-" };
    if (b.result === "running") return { mark: "…", text: "running", cls: "running" };
    const ok = b.result !== "failed";
    const what = b.result === "skipped" ? "up to date" : b.result;
    const d = duration(b);
    return {
      mark: ok ? "✓" : "✗",
      text: [what, d].filter(Boolean).join(" "),
      reason: b.reason || "",
      cls: ok ? "ok" : "fail",
    };
  }

  // ---- ANSI colours (SGR only; every other escape is dropped) -------------
  const ESC = /\x1b\[([0-9;:]*)([@-~])|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]/g;
  function xterm256(n) {
    if (n < 16) return null;
    if (n >= 232) {
      const g = 8 + (n - 232) * 10;
      return `rgb(${g},${g},${g})`;
    }
    n -= 16;
    const c = (x) => (x === 0 ? 0 : 55 + x * 40);
    return `rgb(${c(Math.floor(n / 36))},${c(Math.floor(n / 6) % 6)},${c(n % 6)})`;
  }
  function applySgr(st, params) {
    const p = params === "" ? [0] : params.split(/[;:]/).map((x) => parseInt(x || "0", 10));
    for (let i = 0; i < p.length; i++) {
      const n = p[i];
      if (n === 0) Object.assign(st, { fg: null, bg: null, fgRgb: null, bgRgb: null, bold: false, dim: false, italic: false, under: false });
      else if (n === 1) st.bold = true;
      else if (n === 2) st.dim = true;
      else if (n === 3) st.italic = true;
      else if (n === 4) st.under = true;
      else if (n === 22) st.bold = st.dim = false;
      else if (n === 23) st.italic = false;
      else if (n === 24) st.under = false;
      else if (n >= 30 && n <= 37) { st.fg = n - 30; st.fgRgb = null; }
      else if (n >= 90 && n <= 97) { st.fg = n - 90 + 8; st.fgRgb = null; }
      else if (n === 39) st.fg = st.fgRgb = null;
      else if (n >= 40 && n <= 47) { st.bg = n - 40; st.bgRgb = null; }
      else if (n >= 100 && n <= 107) { st.bg = n - 100 + 8; st.bgRgb = null; }
      else if (n === 49) st.bg = st.bgRgb = null;
      else if (n === 38 || n === 48) {
        const fg = n === 38;
        let idx = null, rgb = null;
        if (p[i + 1] === 5) { idx = p[i + 2]; i += 2; }
        else if (p[i + 1] === 2) { rgb = `rgb(${p[i + 2] & 255},${p[i + 3] & 255},${p[i + 4] & 255})`; i += 4; }
        if (idx != null && idx < 16) { if (fg) { st.fg = idx; st.fgRgb = null; } else { st.bg = idx; st.bgRgb = null; } }
        else if (idx != null) rgb = xterm256(idx);
        if (rgb) { if (fg) { st.fgRgb = rgb; st.fg = null; } else { st.bgRgb = rgb; st.bg = null; } }
      }
    }
  }
  // Text with ANSI escapes as DOM nodes: spans with classes (and CSSOM
  // colours for 256/true colour), the text always as text nodes.
  function ansi(text) {
    const frag = document.createDocumentFragment();
    const st = {};
    applySgr(st, "0");
    let last = 0;
    const push = (s) => {
      if (!s) return;
      const plain = st.fg == null && st.bg == null && !st.fgRgb && !st.bgRgb && !st.bold && !st.dim && !st.italic && !st.under;
      if (plain) { frag.append(document.createTextNode(s)); return; }
      const span = document.createElement("span");
      const cls = [];
      if (st.fg != null) cls.push(`fg${st.fg}`);
      if (st.bg != null) cls.push(`bg${st.bg}`);
      if (st.bold) cls.push("b");
      if (st.dim) cls.push("dim");
      if (st.italic) cls.push("i");
      if (st.under) cls.push("u");
      span.className = cls.join(" ");
      if (st.fgRgb) span.style.color = st.fgRgb;
      if (st.bgRgb) span.style.backgroundColor = st.bgRgb;
      span.textContent = s;
      frag.append(span);
    };
    ESC.lastIndex = 0;
    let m;
    while ((m = ESC.exec(text)) !== null) {
      push(text.slice(last, m.index));
      if (m[2] === "m") applySgr(st, m[1]);
      last = ESC.lastIndex;
    }
    push(text.slice(last));
    return frag;
  }

  // ---- talking to the server ---------------------------------------------
  async function api(path, opts = {}) {
    const headers = Object.assign({ "X-Locald-Token": token }, opts.headers || {});
    const r = await fetch(path, Object.assign({}, opts, { headers, cache: "no-store" }));
    let body = null;
    try { body = await r.json(); } catch (_) { body = null; }
    if (!r.ok) {
      const e = (body && body.error) || { name: `HTTP ${r.status}`, message: r.statusText };
      throw e;
    }
    return body;
  }

  function showError(e) {
    $("error-name").textContent = e.name || "Error";
    $("error-message").textContent = e.message || String(e);
    const rep = $("error-report");
    rep.textContent = e.report || "";
    rep.hidden = !e.report;
    $("error").hidden = false;
  }
  $("error-close").addEventListener("click", () => { $("error").hidden = true; });

  async function act(action, project, service, force, button) {
    if (button) button.disabled = true;
    try {
      await api("/api/action", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ action, project, service, force: !!force }),
      });
      $("error").hidden = true;
    } catch (e) {
      showError(e);
    } finally {
      if (button) button.disabled = false;
    }
  }

  // ---- the model and the project cards -----------------------------------
  const state = { projects: {}, connected: false };
  const cards = new Map(); // project name → {card, rows: Map(service → row)}

  function badge(text, cls) {
    return el("span", { class: `badge st-${cls}`, text });
  }

  function actionButton(label, title, onClick) {
    const b = el("button", { type: "button", class: "act", text: label, title });
    b.addEventListener("click", () => onClick(b));
    return b;
  }

  function projectCard(p) {
    const stateBadge = badge(p.state, p.state);
    let armed = null;
    const down = actionButton("Down", "Stop every service and forget the project (click twice)", (b) => {
      if (armed) {
        clearTimeout(armed);
        armed = null;
        b.textContent = "Down";
        act("down", p.name, null, false, b);
        return;
      }
      b.textContent = "Confirm down";
      armed = setTimeout(() => { armed = null; b.textContent = "Down"; }, 4000);
    });
    const head = el("header", { class: "phead" },
      el("h2", null, el("button", { type: "button", class: "link pname", text: p.name, title: "Show this project's logs" })),
      stateBadge,
      el("span", { class: "path", text: p.path }),
      el("span", { class: "spacer" }),
      actionButton("Reload", "Re-read locald.toml", (b) => act("reload", p.name, null, false, b)),
      down);
    head.querySelector(".pname").addEventListener("click", () => select(p.name, null));
    const tbody = el("tbody");
    const table = el("table", { class: "services" },
      el("thead", null, el("tr", null,
        ...["Service", "State", "PID", "Uptime", "Restarts", "Last build", "Status", ""].map((h) => el("th", { scope: "col", text: h })))),
      tbody);
    const card = el("article", { class: "project", dataset: { project: p.name } }, head, table);
    const entry = { card, tbody, stateBadge, rows: new Map() };
    cards.set(p.name, entry);
    return entry;
  }

  function serviceRow(project, name) {
    const cell = (cls, label) => el("td", { class: cls, dataset: { label } });
    const r = {
      name: cell("name", "Service"),
      state: cell("state", "State"),
      pid: cell("pid", "PID"),
      uptime: cell("uptime", "Uptime"),
      restarts: cell("restarts", "Restarts"),
      build: cell("build", "Last build"),
      status: cell("status", "Status"),
      actions: cell("actions", ""),
    };
    const nameButton = el("button", { type: "button", class: "link sname", text: name, title: "Show this service's logs" });
    nameButton.addEventListener("click", () => select(project, name));
    r.name.append(nameButton);
    r.actions.append(
      actionButton("Start", "Start", (b) => act("start", project, name, false, b)),
      actionButton("Stop", "Stop", (b) => act("stop", project, name, false, b)),
      actionButton("Restart", "Restart (runs its build again)", (b) => act("restart", project, name, false, b)),
      actionButton("Build", "Build if the sources changed", (b) => act("build", project, name, false, b)),
      actionButton("Force", "Build even if nothing changed (build --force)", (b) => act("build", project, name, true, b)));
    r.row = el("tr", { class: "svc", dataset: { service: name } },
      r.name, r.state, r.pid, r.uptime, r.restarts, r.build, r.status, r.actions);
    r.progress = el("div", { class: "progress", hidden: true });
    r.history = el("ol", { class: "history", "aria-label": `Builds of ${name}` });
    r.extra = el("tr", { class: "svc-builds", dataset: { service: name } },
      el("td", { colSpan: 8 }, r.progress, r.history));
    return r;
  }

  function fillService(r, s) {
    r.state.replaceChildren(badge(s.state, s.state));
    const why = reason(s);
    if (why) r.state.append(el("span", { class: "reason", text: why }));
    r.pid.textContent = s.main_pid ? String(s.main_pid) : "-";
    r.row.dataset.started = s.main_pid ? String(s.started_at) : "0";
    r.uptime.textContent = uptime(r.row.dataset.started);
    r.restarts.textContent = String(s.restart_count);
    const b = buildLine(s.last_build);
    r.build.replaceChildren(
      el("span", { class: `mark ${b.cls || ""}`, text: b.mark }),
      el("span", { text: ` ${b.text}` }));
    if (b.reason) r.build.title = b.reason; else r.build.removeAttribute("title");
    r.status.textContent = s.status_text || "";
    // The running build: "Building: step k/n – PHASE" over a bar.
    const pr = s.progress;
    if (pr) {
      const bar = el("progress", { max: Math.max(pr.total, 1), value: Math.min(pr.step, pr.total) });
      bar.setAttribute("aria-label", "Build progress");
      r.progress.replaceChildren(bar, el("span", { class: "ptext", text: `Building: step ${pr.step}/${pr.total} – ${pr.label}` }));
      r.progress.hidden = false;
    } else {
      r.progress.hidden = true;
      r.progress.replaceChildren();
    }
    // The history, newest first; each finished build is one ✓/✗ line.
    const items = (s.builds || []).slice(-5).reverse().map((h) => {
      const l = buildLine(h);
      return el("li", { class: `hist ${l.cls || ""}`, dataset: { build: h.build_id || "" } },
        el("span", { class: "mark", text: l.mark }),
        ` ${clock(h.finished_at)} ${l.text}`,
        l.reason ? el("span", { class: "hreason", text: ` — ${l.reason}` }) : null);
    });
    r.history.replaceChildren(...items);
    r.extra.hidden = !pr && items.length === 0;
  }

  function uptime(started) {
    const us = Number(started);
    return us ? short(Date.now() / 1000 - us / 1e6) : "-";
  }

  function renderProject(p) {
    let entry = cards.get(p.name);
    if (!entry) {
      entry = projectCard(p);
      $("projects").append(entry.card);
    }
    entry.stateBadge.textContent = p.state;
    entry.stateBadge.className = `badge st-${p.state}`;
    const seen = new Set();
    for (const s of p.services) {
      seen.add(s.name);
      let r = entry.rows.get(s.name);
      if (!r) {
        r = serviceRow(p.name, s.name);
        entry.rows.set(s.name, r);
      }
      // Keep file order: append moves an existing row to the end.
      entry.tbody.append(r.row, r.extra);
      fillService(r, s);
    }
    for (const [name, r] of entry.rows) {
      if (!seen.has(name)) { r.row.remove(); r.extra.remove(); entry.rows.delete(name); }
    }
  }

  function render() {
    for (const [name, entry] of cards) {
      if (!state.projects[name]) { entry.card.remove(); cards.delete(name); }
    }
    for (const name of Object.keys(state.projects).sort()) renderProject(state.projects[name]);
    $("empty").hidden = Object.keys(state.projects).length > 0;
    setConn();
    if (!sel.project || !state.projects[sel.project]) {
      const first = Object.keys(state.projects).sort()[0];
      if (first) select(first, null);
      else if (sel.project) {
        // The project went down: nothing to show logs of.
        sel.project = sel.service = null;
        generation++;
        $("logs-title").textContent = "Logs";
        $("lines").replaceChildren($("older"));
      }
    }
  }

  function setConn() {
    const c = $("conn");
    if (!live) { c.textContent = "reconnecting…"; c.className = "conn bad"; }
    else if (!state.connected) { c.textContent = "daemon not reachable"; c.className = "conn bad"; }
    else { c.textContent = "live"; c.className = "conn ok"; }
  }

  setInterval(() => {
    for (const entry of cards.values()) {
      for (const r of entry.rows.values()) r.uptime.textContent = uptime(r.row.dataset.started);
    }
  }, 1000);

  // ---- logs ----------------------------------------------------------------
  const sel = { project: null, service: null, phase: "both", follow: true, search: "" };
  const MAX_DOM_LINES = 5000;
  let oldest = null; // cursor of the oldest line shown
  let exhausted = false;
  let loading = false;
  let pending = null; // live lines that came while history loads
  let generation = 0;

  function lineMatches(l) {
    if (l.project !== sel.project) return false;
    if (sel.service && l.service !== sel.service) return false;
    if (sel.phase !== "both" && l.phase !== sel.phase) return false;
    return true;
  }

  function lineNode(l) {
    const stderr = l.stream === "stderr";
    const prio = l.priority == null ? "" : ` prio${l.priority}`;
    const d = el("div", {
      class: `line ph-${l.phase}${stderr ? " stderr" : ""}${prio}`,
      dataset: { phase: l.phase, stream: l.stream, service: l.service },
    },
    el("span", { class: "ts", text: clock(l.time) }),
    el("span", { class: "svc", text: l.service }),
    el("span", { class: `tag ${l.phase}`, text: l.phase === "build" ? "build" : "run" }),
    stderr ? el("span", { class: "err", text: "stderr", title: "written to stderr" }) : null,
    el("span", { class: "msg" }));
    d.lastChild.append(ansi(l.text));
    d.dataset.text = l.text.toLowerCase();
    if (sel.search && !d.dataset.text.includes(sel.search)) d.hidden = true;
    return d;
  }

  function atBottom(box) {
    return box.scrollHeight - box.scrollTop - box.clientHeight < 30;
  }

  function appendLive(l) {
    if (!lineMatches(l)) return;
    if (pending) { pending.push(l); return; }
    const box = $("lines");
    box.append(lineNode(l));
    while (box.childElementCount > MAX_DOM_LINES + 1) box.children[1].remove();
    if (sel.follow) box.scrollTop = box.scrollHeight;
  }

  function logsQuery(before) {
    const q = new URLSearchParams({ project: sel.project, lines: "200" });
    if (sel.service) q.set("service", sel.service);
    if (sel.phase !== "both") q.set("phase", sel.phase);
    if (before) q.set("before", before);
    return `/api/logs?${q}`;
  }

  async function loadLogs() {
    const gen = ++generation;
    const box = $("lines");
    box.replaceChildren($("older"));
    oldest = null;
    exhausted = false;
    if (!sel.project) return;
    pending = [];
    loading = true;
    try {
      const r = await api(logsQuery(null));
      if (gen !== generation) return;
      const lines = r.lines.slice().reverse();
      for (const l of lines) box.append(lineNode(l));
      oldest = r.lines.length ? r.lines[r.lines.length - 1].cursor : null;
      exhausted = r.lines.length < 200;
      // Live lines that came meanwhile, unless the journal had them already.
      const recent = new Set(lines.slice(-200).map((l) => `${l.service}\u0000${l.phase}\u0000${l.text}`));
      const waiting = pending;
      pending = null;
      for (const l of waiting) {
        if (!recent.has(`${l.service}\u0000${l.phase}\u0000${l.text}`)) appendLive(l);
      }
    } catch (e) {
      pending = null;
      showError(e);
    } finally {
      if (gen === generation) loading = false;
      $("older").textContent = exhausted ? "no older lines" : "scroll up for older lines";
      if (sel.follow) box.scrollTop = box.scrollHeight;
    }
  }

  async function loadOlder() {
    if (loading || exhausted || !oldest) return;
    const gen = generation;
    loading = true;
    const box = $("lines");
    try {
      const r = await api(logsQuery(oldest));
      if (gen !== generation) return;
      const before = box.scrollHeight;
      const frag = document.createDocumentFragment();
      for (const l of r.lines.slice().reverse()) frag.append(lineNode(l));
      $("older").after(frag);
      box.scrollTop += box.scrollHeight - before;
      if (r.lines.length) oldest = r.lines[r.lines.length - 1].cursor;
      exhausted = r.lines.length < 200;
      $("older").textContent = exhausted ? "no older lines" : "scroll up for older lines";
    } catch (e) {
      showError(e);
    } finally {
      if (gen === generation) loading = false;
    }
  }

  function select(project, service) {
    if (sel.project === project && sel.service === service) return;
    sel.project = project;
    sel.service = service;
    $("logs-title").textContent = service ? `Logs — ${project}/${service}` : `Logs — ${project}`;
    for (const b of document.querySelectorAll(".link[aria-current]")) b.removeAttribute("aria-current");
    const entry = cards.get(project);
    if (entry) {
      const target = service ? entry.rows.get(service)?.name.querySelector("button") : entry.card.querySelector(".pname");
      if (target) target.setAttribute("aria-current", "true");
    }
    loadLogs();
  }

  function setPhase(phase) {
    sel.phase = phase;
    for (const b of document.querySelectorAll(".seg button")) {
      b.setAttribute("aria-pressed", String(b.dataset.phase === phase));
    }
    loadLogs();
  }
  for (const b of document.querySelectorAll(".seg button")) {
    b.addEventListener("click", () => setPhase(b.dataset.phase));
  }
  $("follow").addEventListener("change", (e) => {
    sel.follow = e.target.checked;
    if (sel.follow) $("lines").scrollTop = $("lines").scrollHeight;
  });
  function applySearch() {
    sel.search = $("search").value.toLowerCase();
    for (const d of $("lines").querySelectorAll(".line")) {
      d.hidden = !!sel.search && !d.dataset.text.includes(sel.search);
    }
  }
  // "search" is the clear button of a search field; "change" catches the rest.
  for (const ev of ["input", "search", "change"]) $("search").addEventListener(ev, applySearch);
  $("lines").addEventListener("scroll", () => {
    const box = $("lines");
    if (box.scrollTop < 40) loadOlder();
    // Scrolling up stops following; back at the bottom it follows again.
    const bottom = atBottom(box);
    if (bottom !== sel.follow && !loading) {
      sel.follow = bottom;
      $("follow").checked = bottom;
    }
  });

  // ---- keyboard -----------------------------------------------------------
  document.addEventListener("keydown", (e) => {
    const t = e.target;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (t instanceof HTMLInputElement || t instanceof HTMLTextAreaElement) {
      if (e.key === "Escape") t.blur();
      return;
    }
    if (e.key === "/") { e.preventDefault(); $("search").focus(); }
    else if (e.key === "f") $("follow").click();
    else if (e.key === "1") setPhase("run");
    else if (e.key === "2") setPhase("build");
    else if (e.key === "3") setPhase("both");
    else if (e.key === "Escape") $("error").hidden = true;
  });

  // ---- theme ----------------------------------------------------------------
  function applyTheme(t) {
    document.documentElement.dataset.theme = t;
    $("theme").textContent = t === "dark" ? "Light" : "Dark";
  }
  let theme = null;
  try { theme = localStorage.getItem("locald-theme"); } catch (_) { theme = null; }
  applyTheme(theme || (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light"));
  $("theme").addEventListener("click", () => {
    const t = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    applyTheme(t);
    try { localStorage.setItem("locald-theme", t); } catch (_) { /* private mode */ }
  });

  // ---- the event stream -------------------------------------------------------
  let live = false;
  function onEvent(ev) {
    switch (ev.type) {
      case "snapshot":
        state.projects = ev.projects;
        state.connected = ev.connected;
        render();
        break;
      case "service": {
        const p = state.projects[ev.project];
        if (!p) break;
        const i = p.services.findIndex((s) => s.name === ev.service.name);
        if (i >= 0) p.services[i] = ev.service; else p.services.push(ev.service);
        renderProject(p);
        break;
      }
      case "project": {
        const p = state.projects[ev.project];
        if (p) { p.state = ev.state; renderProject(p); }
        break;
      }
      case "log":
        appendLive(ev);
        break;
      case "resync":
        api("/api/state").then((s) => onEvent(Object.assign({ type: "snapshot" }, s))).catch(showError);
        loadLogs();
        break;
      default:
        break;
    }
  }

  if (!token) {
    showError({ name: "No token", message: "Open the address locald-ctl dashboard printed, with its #token=… part." });
    return;
  }
  const es = new EventSource(`/api/events?token=${encodeURIComponent(token)}`);
  es.onopen = () => { live = true; setConn(); };
  es.onerror = () => {
    live = false;
    setConn();
    // A dashboard started again has a new token: this page's is refused
    // for good, and the browser stops retrying. Say what to do.
    api("/api/state").catch((e) => {
      if (e && e.name === "Http" && /token/.test(e.message || "")) {
        showError({ name: "Token refused", message: "The dashboard was restarted: open the new address it printed." });
      }
    });
  };
  es.onmessage = (m) => {
    let ev;
    try { ev = JSON.parse(m.data); } catch (_) { return; }
    onEvent(ev);
  };
})();
