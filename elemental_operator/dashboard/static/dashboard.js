// Elemental fleet dashboard: progressive enhancement only. Every page works without this file;
// with it the machines table filters and sorts in place and every page follows the operator's
// changes over one Server-Sent Events stream (GET <prefix>/events) without reloading.
"use strict";
(function () {
  const body = document.body;
  const prefix = body.dataset.prefix || "/dashboard";
  const status = document.getElementById("live-status");
  const say = (text) => { if (status) status.textContent = text; };

  // ---- copy buttons ------------------------------------------------------------------------
  function wireCopy(root) {
    root.querySelectorAll("button[data-copy]").forEach((btn) => {
      btn.hidden = false;
      btn.addEventListener("click", async () => {
        const field = document.getElementById(btn.dataset.copy);
        if (!field) return;
        try { await navigator.clipboard.writeText(field.value); }
        catch (e) { field.select(); document.execCommand("copy"); }
        btn.textContent = "Copied"; say("Copied to the clipboard");
        setTimeout(() => { btn.textContent = "Copy"; }, 2000);
      });
    });
  }
  wireCopy(document);

  // ---- the machines table: filter, sort, live rows ------------------------------------------
  const table = document.getElementById("machines");
  const tbody = table ? table.tBodies[0] : null;
  const q = document.getElementById("q");
  const labelBox = document.getElementById("label");

  function labelFilter() {
    const out = [];
    (labelBox ? labelBox.value : "").split(",").forEach((part) => {
      part = part.trim(); if (!part) return;
      const i = part.indexOf("=");
      out.push(i < 0 ? [part, null] : [part.slice(0, i).trim(), part.slice(i + 1).trim()]);
    });
    return out;
  }
  function matches(tr, words, labels) {
    const text = tr.dataset.search || "";
    if (!words.every((w) => text.includes(w))) return false;
    if (!labels.length) return true;
    let have = {};
    try { have = JSON.parse(tr.dataset.labels || "{}"); } catch (e) { /* shown unfiltered */ }
    return labels.every(([k, v]) => k in have && (v === null || have[k] === v));
  }
  function applyFilter() {
    if (!tbody) return;
    const words = (q ? q.value : "").toLowerCase().split(/\s+/).filter(Boolean);
    const labels = labelFilter();
    for (const tr of tbody.rows) tr.hidden = !matches(tr, words, labels);
    countRows();
  }
  function sortKey(tr, key) { return tr.dataset["s" + key.charAt(0).toUpperCase() + key.slice(1)] || ""; }
  function sortRows() {
    if (!tbody) return;
    const key = table.dataset.sort || "name", desc = table.dataset.dir === "desc";
    const rows = Array.from(tbody.rows);
    rows.sort((a, b) => {
      const x = sortKey(a, key), y = sortKey(b, key);
      const c = x < y ? -1 : x > y ? 1 : (a.dataset.sName < b.dataset.sName ? -1 : 1);
      return desc ? -c : c;
    });
    const frag = document.createDocumentFragment();
    rows.forEach((r) => frag.appendChild(r));
    tbody.appendChild(frag);
  }
  function placeRow(tr) {
    // Insert a new row where the current sort puts it (binary search over the sorted rows).
    const key = table.dataset.sort || "name", desc = table.dataset.dir === "desc";
    const rows = tbody.rows, k = sortKey(tr, key);
    let lo = 0, hi = rows.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1, m = sortKey(rows[mid], key);
      if (desc ? m > k : m <= k) lo = mid + 1; else hi = mid;
    }
    tbody.insertBefore(tr, rows[lo] || null);
  }
  if (table) {
    let timer = 0;
    const later = () => { clearTimeout(timer); timer = setTimeout(() => { applyFilter(); syncUrl(); }, 120); };
    if (q) q.addEventListener("input", later);
    if (labelBox) labelBox.addEventListener("input", later);
    table.querySelectorAll("th[data-key] a.sort").forEach((a) => {
      a.addEventListener("click", (ev) => {
        ev.preventDefault();
        const th = a.closest("th"), key = th.dataset.key;
        table.dataset.dir = table.dataset.sort === key && table.dataset.dir === "asc" ? "desc" : "asc";
        table.dataset.sort = key;
        table.querySelectorAll("th[data-key]").forEach((h) => h.setAttribute("aria-sort", "none"));
        th.setAttribute("aria-sort", table.dataset.dir === "desc" ? "descending" : "ascending");
        sortRows(); syncUrl();
      });
    });
  }
  function syncUrl() {
    const p = new URLSearchParams();
    if (q && q.value) p.set("q", q.value);
    if (labelBox && labelBox.value) p.set("label", labelBox.value);
    if (table.dataset.sort !== "name") p.set("sort", table.dataset.sort);
    if (table.dataset.dir === "desc") p.set("dir", "desc");
    history.replaceState(null, "", location.pathname + (p.toString() ? "?" + p : ""));
  }
  // Rows arriving within one frame (16 ms) are applied together, with one filter pass: a burst of
  // a thousand changes costs a few frames, not a thousand full-table passes.
  const pendingRows = new Map();
  let flushTimer = 0;
  function liveRow(msg) {
    pendingRows.set(msg.namespace + "/" + msg.name, msg);
    if (!flushTimer) flushTimer = setTimeout(flushRows, 16);
  }
  function flushRows() {
    flushTimer = 0;
    const words = (q ? q.value : "").toLowerCase().split(/\s+/).filter(Boolean);
    const labels = labelFilter();
    for (const msg of pendingRows.values()) applyRow(msg, words, labels);
    pendingRows.clear();
    countRows();
  }
  function applyRow(msg, words, labels) {
    const id = "mi-" + (msg.namespace + "--" + msg.name).replace(/[^a-z0-9-]/g, "-");
    const old = document.getElementById(id);
    if (msg.type === "DELETED") { if (old) old.remove(); return; }
    if (!msg.row) return;
    const tpl = document.createElement("template");
    tpl.innerHTML = msg.row.trim();  // server-rendered and escaped by the template engine
    const tr = tpl.content.firstElementChild;
    if (!tr) return;
    if (old) {
      const moved = sortKey(old, table.dataset.sort || "name") !== sortKey(tr, table.dataset.sort || "name");
      old.replaceWith(tr);
      if (moved) { tr.remove(); placeRow(tr); }
    } else {
      placeRow(tr);
    }
    tr.classList.add("flash");
    tr.hidden = !matches(tr, words, labels);
  }
  function countRows() {
    let shown = 0;
    for (const tr of tbody.rows) if (!tr.hidden) shown++;
    document.getElementById("shown").textContent = shown;
    document.getElementById("total").textContent = tbody.rows.length;
    const empty = document.getElementById("empty");
    if (empty) empty.hidden = tbody.rows.length > 0;
  }

  // ---- other pages: re-render <main> when a watched object changes --------------------------
  const watch = (body.dataset.watch || "").split(/\s+/).filter(Boolean);
  let dirty = false, pending = 0;
  document.addEventListener("input", (ev) => { if (ev.target.closest("main form")) dirty = true; });
  function watched(msg) {
    return watch.some((w) => w === msg.kind || w === msg.kind + "/" + msg.namespace + "/" + msg.name);
  }
  async function refresh() {
    if (dirty) { say("Changed on the server: reload to see it"); return; }
    const resp = await fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html" } });
    if (resp.redirected || !resp.ok) { if (resp.status === 404 || resp.redirected) location.reload(); return; }
    const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
    const next = doc.getElementById("main"), main = document.getElementById("main");
    if (!next || !main) return;
    const open = new Set(Array.from(main.querySelectorAll("details[open] summary")).map((s) => s.textContent));
    main.replaceChildren(...Array.from(next.childNodes));
    main.querySelectorAll("details summary").forEach((s) => { if (open.has(s.textContent)) s.parentElement.open = true; });
    wireCopy(main);
  }

  // ---- the stream ----------------------------------------------------------------------------
  if (!window.EventSource || (!table && !watch.length)) return;
  let connected = false;
  // since: the store version this page was rendered at, so nothing between render and connect is lost
  const es = new EventSource(prefix + "/events?since=" + encodeURIComponent(body.dataset.rv || ""));
  es.addEventListener("open", () => {
    say("Live");
    if (connected && !table) refresh();  // reconnected: catch up on what was missed
    if (connected && table) location.reload();
    connected = true;
  });
  es.addEventListener("error", () => { say("Reconnecting…"); });
  es.addEventListener("change", (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.type === "reload") { location.reload(); return; }
    if (table && msg.kind === "MachineInventory") { liveRow(msg); return; }
    if (!table && watched(msg)) {
      clearTimeout(pending);
      pending = setTimeout(refresh, 250);
    }
  });
  window.dashboardStream = es;  // tests and the bench wait on readyState
})();
