// Sovryn's dashboard: plain JavaScript on the file API (/api/v1), signed in
// with a session cookie; every change sends the session's CSRF token.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "onclick") e.addEventListener("click", v);
    else if (k === "text") e.textContent = v;
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids) e.append(k);
  return e;
};
const enc = (p) => p.split("/").map(encodeURIComponent).join("/");
const human = (n) => n >= 1 << 30 ? (n / (1 << 30)).toFixed(1) + " GiB" : n >= 1 << 20 ? (n / (1 << 20)).toFixed(1) + " MiB"
  : n >= 1024 ? (n / 1024).toFixed(1) + " KiB" : n + " B";
const when = (t) => t ? new Date(t).toLocaleString() : "";
const nameOf = (p) => p.split("/").pop();
const parentOf = (p) => p.includes("/") ? p.slice(0, p.lastIndexOf("/")) : "";
const say = (msg) => { $("#live").textContent = msg; };

const state = { me: null, csrf: "", cwd: "", root: "", sort: "name", asc: true, view: "files" };

async function api(method, path, body, raw) {
  const headers = {};
  if (method !== "GET") headers["X-CSRF-Token"] = state.csrf;
  let payload = body;
  if (body !== undefined && !raw) { headers["Content-Type"] = "application/json"; payload = JSON.stringify(body); }
  const r = await fetch("/api/v1/" + path, { method, headers, body: payload, credentials: "same-origin" });
  if (r.status === 401 && path !== "login") { showLogin(); throw new Error("signed out"); }
  const type = r.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new Error((data && data.error) || r.statusText);
  return data;
}

// ---------- signing in ----------

function showLogin() {
  $("#top").hidden = true; $("#view").hidden = true; $("#login").hidden = false;
  $("#login-name").focus();
}

async function start() {
  try {
    state.me = await api("GET", "me");
  } catch (e) { showLogin(); return; }
  state.csrf = state.me.csrf || "";
  state.root = state.me.workspace || "";
  state.cwd = state.root;
  $("#login").hidden = true; $("#top").hidden = false; $("#view").hidden = false;
  $("#who").textContent = state.me.name.replace(/^user:/, "");
  for (const b of document.querySelectorAll("header nav button")) {
    const needsStatus = ["devices", "status"].includes(b.dataset.view);
    const needsAccount = ["tokens", "audit"].includes(b.dataset.view);
    b.hidden = (needsStatus && !state.me.capabilities.includes("status"))
      || (needsAccount && !state.me.workspace && !state.me.admin && !state.me.capabilities.includes("admin"));
  }
  follow();
  show("files");
}

$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("#login-error").textContent = "";
  try {
    await api("POST", "login", { name: $("#login-name").value, password: $("#login-password").value });
    $("#login-password").value = "";
    start();
  } catch (e) { $("#login-error").textContent = e.message; }
});

$("#logout").addEventListener("click", async () => {
  try { await api("POST", "logout"); } finally { location.reload(); }
});

for (const b of document.querySelectorAll("header nav button")) {
  b.addEventListener("click", () => show(b.dataset.view));
}

function show(view) {
  state.view = view;
  for (const b of document.querySelectorAll("header nav button")) {
    if (b.dataset.view === view) b.setAttribute("aria-current", "page"); else b.removeAttribute("aria-current");
  }
  clearInterval(state.poll);
  ({ files: files, shares: shares, conflicts: conflicts, devices: devices, status: status, tokens: tokens, audit: audit })[view]();
  $("#main").focus();
}

// ---------- live updates ----------

let source = null, reloadSoon = null;
function follow() {
  if (source) source.close();
  source = new EventSource("/api/v1/events");
  source.addEventListener("change", (ev) => {
    const path = JSON.parse(ev.data).path;
    if (state.view === "files" && (parentOf(path) === state.cwd || path === state.cwd)) {
      clearTimeout(reloadSoon);
      reloadSoon = setTimeout(() => { if (state.view === "files") files(true); }, 150);
    }
  });
}

// ---------- files ----------

async function files(quiet) {
  const view = $("#view");
  let listing;
  try { listing = await api("GET", "files" + (state.cwd ? "/" + enc(state.cwd) : "")); }
  catch (e) { view.replaceChildren(el("p", { class: "error", role: "alert", text: e.message })); return; }
  // The person moved on while this loaded: their view stays.
  if (state.view !== "files") return;
  const entries = listing.entries.slice().sort((a, b) => {
    if ((a.kind === "directory") !== (b.kind === "directory")) return a.kind === "directory" ? -1 : 1;
    const k = state.sort, d = state.asc ? 1 : -1;
    return (k === "name" ? a.name.localeCompare(b.name) : (a[k] > b[k] ? 1 : a[k] < b[k] ? -1 : 0)) * d;
  });
  const crumbs = el("nav", { class: "crumbs", "aria-label": "Where you are" });
  const rootName = state.root ? "My files" : "Folder";
  crumbs.append(el("button", { onclick: () => go(state.root), text: rootName }));
  const rel = state.root ? state.cwd.slice(state.root.length).replace(/^\//, "") : state.cwd;
  let acc = state.root;
  for (const part of rel ? rel.split("/") : []) {
    acc = acc ? acc + "/" + part : part;
    const to = acc;
    crumbs.append(" / ", el("button", { onclick: () => go(to), text: part }));
  }
  const input = el("input", { type: "file", id: "upload-input", multiple: true, class: "sr-only" });
  input.addEventListener("change", () => upload([...input.files]));
  const drop = el("div", { class: "drop", id: "drop" }, "Drop files here to upload them");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); upload([...e.dataTransfer.files]); });
  const toolbar = el("div", { class: "toolbar" },
    el("label", { for: "upload-input", class: "button", tabindex: "0", id: "upload-button", role: "button" }, "Upload files"),
    input,
    el("button", { class: "plain", id: "new-folder", onclick: newFolder, text: "New folder" }));
  $("label[for=upload-input]", toolbar).addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  const head = (key, label, cls) => el("th", { class: cls, "aria-sort": state.sort === key ? (state.asc ? "ascending" : "descending") : "none" },
    el("button", { onclick: () => { state.asc = state.sort === key ? !state.asc : true; state.sort = key; files(); }, text: label }));
  const table = el("table", { id: "files" },
    el("thead", {}, el("tr", {}, head("name", "Name"), head("size", "Size", "hide-narrow"), head("modified", "Modified", "hide-narrow"),
      el("th", { class: "hide-narrow", text: "Version" }), el("th", { class: "actions" }, el("span", { class: "sr-only", text: "Actions" })))));
  const body = el("tbody");
  if (state.cwd !== state.root) {
    body.append(el("tr", {}, el("td", { class: "name" }, el("button", { onclick: () => go(parentOf(state.cwd)), text: "⬑ .." })), el("td"), el("td"), el("td"), el("td")));
  }
  for (const e of entries) {
    const isDir = e.kind === "directory";
    const open = el("button", { onclick: () => isDir ? go(e.path) : viewFile(e), text: (isDir ? "📁 " : "") + e.name, "data-path": e.path });
    const actions = el("td", { class: "actions" });
    if (!isDir) {
      actions.append(el("a", { class: "button plain", href: "/api/v1/files/" + enc(e.path), download: e.name, text: "Download" }),
        el("button", { class: "plain", onclick: () => history(e.path), text: "History", "aria-label": "History of " + e.name }));
    }
    actions.append(el("button", { class: "plain", onclick: () => shareDialog(e.path), text: "Share", "aria-label": "Share " + e.name }),
      el("button", { class: "plain", onclick: () => rename(e), text: "Rename", "aria-label": "Rename " + e.name }),
      el("button", { class: "danger", onclick: () => remove(e), text: "Delete", "aria-label": "Delete " + e.name }));
    body.append(el("tr", { "data-name": e.name }, el("td", { class: "name" }, open),
      el("td", { class: "hide-narrow", text: isDir ? "" : human(e.size) }),
      el("td", { class: "hide-narrow", text: when(e.modified) }),
      el("td", { class: "hide-narrow", text: isDir ? "" : e.version }), actions));
  }
  table.append(body);
  const quota = state.me.quota ? el("p", { id: "quota" }) : "";
  view.replaceChildren(el("h1", { text: "Files" }), crumbs, toolbar, drop, el("ul", { class: "uploads", id: "uploads" }), table, quota);
  if (state.me.quota) {
    api("GET", "me").then((me) => {
      $("#quota").replaceChildren(`${human(me.used)} of ${human(me.quota)} used `,
        el("span", { class: "bar", role: "img", "aria-label": "quota used" }, el("span", { style: `width:${Math.min(100, 100 * me.used / me.quota)}%` })));
    }).catch(() => {});
  }
  if (!quiet) say(`${entries.length} entries in ${state.cwd || "the folder"}`);
}

function go(path) { state.cwd = path; files(); }

function upload(list) {
  for (const f of list) {
    const path = (state.cwd ? state.cwd + "/" : "") + f.name;
    const bar = el("progress", { max: "100", value: "0", "aria-label": "Uploading " + f.name });
    const note = el("span");
    const item = el("li", {}, f.name + " ", bar, " ", note);
    $("#uploads").append(item);
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", "/api/v1/files/" + enc(path));
    xhr.setRequestHeader("X-CSRF-Token", state.csrf);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = Math.round(100 * e.loaded / e.total); };
    xhr.onload = () => {
      if (xhr.status < 300) { bar.value = 100; note.className = "ok"; note.textContent = "uploaded"; say(f.name + " uploaded"); files(true); }
      else { let m = xhr.statusText; try { m = JSON.parse(xhr.responseText).error; } catch (_) {} note.className = "error upload-error"; note.setAttribute("role", "alert"); note.textContent = m; }
    };
    xhr.onerror = () => { note.className = "error upload-error"; note.textContent = "the upload was cut"; };
    xhr.send(f);
  }
}

async function newFolder() {
  const name = prompt("Name of the new folder");
  if (!name) return;
  try { await api("POST", "mkdir", { path: (state.cwd ? state.cwd + "/" : "") + name }); files(); }
  catch (e) { alert(e.message); }
}

async function rename(e) {
  const to = prompt("New name", e.name);
  if (!to || to === e.name) return;
  try { await api("POST", "move", { from: e.path, to: (parentOf(e.path) ? parentOf(e.path) + "/" : "") + to }); files(); }
  catch (err) { alert(err.message); }
}

async function remove(e) {
  if (!confirm(`Delete ${e.name}? Its history stays and it can be restored.`)) return;
  try { await api("DELETE", "files/" + enc(e.path) + (e.kind === "directory" ? "?recursive=true" : "")); files(); }
  catch (err) { alert(err.message); }
}

// ---------- dialogs: viewer, history, share ----------

function dialog(title, ...content) {
  $("#dialog-title").textContent = title;
  $("#dialog-body").replaceChildren(...content);
  const d = $("#dialog");
  if (!d.open) d.showModal();
  return d;
}
$("#dialog-close").addEventListener("click", () => $("#dialog").close());

const TEXT = /\.(txt|md|markdown|rs|py|js|ts|json|toml|yaml|yml|csv|html|css|sh|c|h|go|java|log|xml|ini|conf)$/i;
async function viewFile(e) {
  const url = "/api/v1/files/" + enc(e.path);
  const box = el("div", { class: "viewer" });
  if (/\.(png|jpe?g|gif|webp|svg)$/i.test(e.name)) box.append(el("img", { src: url, alt: e.name }));
  else if (/\.pdf$/i.test(e.name)) box.append(el("iframe", { src: url, title: e.name }));
  else if (TEXT.test(e.name) || e.size < 256 * 1024) {
    const r = await fetch(url, { credentials: "same-origin" });
    const text = await r.text();
    box.append(/\.(md|markdown)$/i.test(e.name) ? markdown(text) : el("pre", { id: "viewer-text", text }));
  } else box.append(el("p", { text: `${human(e.size)}, no preview.` }));
  dialog(e.name, box, el("p", {}, el("a", { class: "button", href: url, download: e.name, text: "Download" }), " ",
    el("button", { class: "plain", onclick: () => history(e.path), text: "History" })));
}

function markdown(text) {
  // Headings, lists, code blocks and paragraphs; everything as text (no HTML passes through).
  const out = el("div", { class: "markdown" });
  let code = null;
  for (const line of text.split("\n")) {
    if (line.startsWith("```")) { if (code) { out.append(code); code = null; } else code = el("pre"); continue; }
    if (code) { code.textContent += line + "\n"; continue; }
    const h = line.match(/^(#{1,6})\s+(.*)$/);
    if (h) out.append(el("h" + Math.min(6, h[1].length + 1), { text: h[2] }));
    else if (/^\s*[-*]\s+/.test(line)) out.append(el("li", { text: line.replace(/^\s*[-*]\s+/, "") }));
    else if (line.trim()) out.append(el("p", { text: line }));
  }
  if (code) out.append(code);
  return out;
}

async function history(path) {
  let v;
  try { v = await api("GET", "versions/" + enc(path)); } catch (e) { alert(e.message); return; }
  const list = el("table", { id: "versions" }, el("thead", {}, el("tr", {}, el("th", { text: "Version" }), el("th", { text: "When" }),
    el("th", { class: "hide-narrow", text: "Size" }), el("th", { class: "hide-narrow", text: "By" }), el("th"))));
  const body = el("tbody");
  const diffBox = el("pre", { id: "diff", hidden: true });
  v.versions.forEach((x, i) => {
    const older = v.versions[i + 1];
    const actions = el("td", { class: "actions" });
    if (older) actions.append(el("button", { class: "plain", onclick: () => showDiff(path, older.version, x.version, diffBox), text: "Changes" }));
    if (i > 0) actions.append(el("button", { onclick: () => restore(path, x.version), text: "Restore", "data-version": x.version, "aria-label": "Restore " + x.version }));
    body.append(el("tr", {}, el("td", { text: x.version + (i === 0 ? " (current)" : "") }), el("td", { text: when(x.time || x.modified) }),
      el("td", { class: "hide-narrow", text: x.deleted ? "deleted" : human(x.size || 0) }),
      el("td", { class: "hide-narrow", text: x.actor || x.author || "" }), actions));
  });
  list.append(body);
  dialog("History of " + nameOf(path), list, diffBox);
}

async function showDiff(path, from, to, box) {
  try {
    const d = await api("GET", `diff/${enc(path)}?from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`);
    box.replaceChildren(...d.diff.split("\n").map((l) => el("span", { class: l.startsWith("+") ? "add" : l.startsWith("-") ? "del" : "", text: l + "\n" })));
    box.hidden = false;
  } catch (e) { box.textContent = e.message; box.hidden = false; }
}

async function restore(path, version) {
  try {
    const r = await api("POST", "restore", { path, version });
    say(`${nameOf(path)}: ${version} restored as ${r.restored.version}`);
    history(path);
    files(true);
  } catch (e) { alert(e.message); }
}

function shareDialog(path) {
  const form = el("form", { id: "share-form" },
    el("label", { for: "share-expires", text: "Works for" }),
    el("select", { id: "share-expires" }, el("option", { value: "1h", text: "1 hour" }), el("option", { value: "24h", text: "1 day", selected: true }),
      el("option", { value: "7d", text: "7 days" }), el("option", { value: "30d", text: "30 days" }), el("option", { value: "", text: "until revoked" })),
    el("label", { for: "share-password", text: "Password (optional, 8 characters or more)" }),
    el("input", { id: "share-password", type: "password", autocomplete: "new-password", minlength: "8" }),
    el("label", { for: "share-max", text: "Downloads at most (optional)" }),
    el("input", { id: "share-max", type: "number", min: "1" }),
    el("button", { type: "submit", text: "Make the link" }),
    el("p", { id: "share-error", class: "error", role: "alert" }));
  const result = el("div", { id: "share-result" });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = { path };
    if ($("#share-expires").value) body.expires = $("#share-expires").value;
    if ($("#share-password").value) body.password = $("#share-password").value;
    if ($("#share-max").value) body.max_downloads = Number($("#share-max").value);
    try {
      const r = await api("POST", "shares", body);
      const url = el("input", { id: "share-url", readonly: true, value: r.url, "aria-label": "The link" });
      result.replaceChildren(el("p", { text: "The link (shown only now):" }), url,
        el("button", { class: "plain", onclick: () => { url.select(); navigator.clipboard && navigator.clipboard.writeText(r.url); say("link copied"); }, text: "Copy link" }),
        el("p", { text: r.expires ? "Works until " + when(r.expires) : "Works until revoked" }));
    } catch (e) { $("#share-error").textContent = e.message; }
  });
  dialog("Share " + nameOf(path), form, result);
}

// ---------- other views ----------

async function shares() {
  const view = $("#view");
  let r;
  try { r = await api("GET", "shares"); } catch (e) { view.replaceChildren(el("p", { class: "error", text: e.message })); return; }
  const body = el("tbody");
  for (const s of r.shares) {
    const state_ = s.revoked ? "revoked" : s.expires && new Date(s.expires) < new Date() ? "expired" : "works";
    body.append(el("tr", { "data-id": s.id }, el("td", { text: "/" + s.path }), el("td", { text: state_ }),
      el("td", { class: "hide-narrow", text: s.expires ? when(s.expires) : "never" }),
      el("td", { class: "hide-narrow", text: `${s.downloads}${s.max_downloads ? " of " + s.max_downloads : ""}` }),
      el("td", { class: "hide-narrow", text: s.password ? "yes" : "no" }),
      el("td", { class: "actions" }, s.revoked ? "" : el("button", { class: "danger", onclick: async () => { await api("DELETE", "shares/" + s.id); shares(); }, text: "Revoke", "aria-label": "Revoke the link to " + s.path }))));
  }
  if (state.view !== "shares") return;
  view.replaceChildren(el("h1", { text: "Share links" }), r.shares.length ? el("table", { id: "shares" },
    el("thead", {}, el("tr", {}, el("th", { text: "Path" }), el("th", { text: "State" }), el("th", { class: "hide-narrow", text: "Expires" }),
      el("th", { class: "hide-narrow", text: "Downloads" }), el("th", { class: "hide-narrow", text: "Password" }), el("th"))), body)
    : el("p", { text: "No links yet: use Share on a file or folder." }));
}

async function conflicts() {
  const view = $("#view");
  let r;
  try { r = await api("GET", "conflicts"); } catch (e) { view.replaceChildren(el("p", { class: "error", text: e.message })); return; }
  const items = [];
  for (const c of r.conflicts) {
    const [mine, theirs] = await Promise.all([c.original, c.path].map((p) => fetch("/api/v1/files/" + enc(p)).then((x) => x.ok ? x.text() : "(gone)")));
    const resolve = (keep) => async () => { await api("POST", "conflicts/resolve", { path: c.path, keep }); conflicts(); };
    items.push(el("section", { class: "card" }, el("h2", { text: c.original }),
      el("div", { class: "side" }, el("div", {}, el("h3", { text: "This copy" }), el("pre", { text: mine.slice(0, 20000) })),
        el("div", {}, el("h3", { text: "From " + (c.author ? c.author.slice(0, 10) : "another device") + " at " + when(c.time) }), el("pre", { text: theirs.slice(0, 20000) }))),
      el("div", { class: "toolbar" }, el("button", { onclick: resolve("local"), text: "Keep this copy", "data-keep": "local" }),
        el("button", { class: "plain", onclick: resolve("remote"), text: "Keep theirs", "data-keep": "remote" }),
        el("button", { class: "plain", onclick: resolve("both"), text: "Keep both", "data-keep": "both" }))));
  }
  if (state.view !== "conflicts") return;
  view.replaceChildren(el("h1", { text: "Conflicts" }), ...(items.length ? items : [el("p", { text: "No conflicts." })]));
}

async function devices() {
  const view = $("#view");
  const draw = async () => {
    try {
      const r = await api("GET", "peers");
      const body = el("tbody");
      for (const p of r.peers) {
        const l = p.live || {};
        const up = l.connected > 0;
        const moving = (l.to_receive_bytes || 0) + (l.to_send_bytes || 0);
        body.append(el("tr", { "data-peer": p.id }, el("td", { text: p.name || p.id.slice(0, 10) }),
          el("td", { class: up ? "ok" : "error", text: up ? "connected" : (l.state || "not connected") }),
          el("td", { text: moving ? `${human(l.to_receive_bytes || 0)} in, ${human(l.to_send_bytes || 0)} out` : "in sync" }),
          el("td", { class: "hide-narrow", text: `${human(l.receive_rate || 0)}/s in, ${human(l.send_rate || 0)}/s out` }),
          el("td", { class: "hide-narrow", text: (p.addresses || []).join(", ") }), el("td", { text: p.read_only ? "read-only" : "full" })));
      }
      view.replaceChildren(el("h1", { text: "Devices" }), el("table", { id: "devices" }, el("thead", {}, el("tr", {}, el("th", { text: "Device" }),
        el("th", { text: "Link" }), el("th", { text: "Transfers" }), el("th", { class: "hide-narrow", text: "Rates" }),
        el("th", { class: "hide-narrow", text: "Addresses" }), el("th", { text: "Rights" }))), body));
    } catch (e) { view.replaceChildren(el("p", { class: "error", text: e.message })); clearInterval(state.poll); }
  };
  await draw();
  state.poll = setInterval(() => { if (state.view === "devices") draw(); }, 2000);
}

async function tokens() {
  const view = $("#view");
  let r;
  try { r = await api("GET", "tokens"); } catch (e) { view.replaceChildren(el("p", { class: "error", text: e.message })); return; }
  const body = el("tbody");
  for (const t of r.tokens) {
    body.append(el("tr", {}, el("td", { text: t.name }), el("td", { text: t.capabilities.join(", ") }),
      el("td", { class: "hide-narrow", text: t.paths.length ? t.paths.join(", ") : "everything" }),
      el("td", { text: t.revoked ? "revoked" : t.expires ? "until " + when(t.expires * 1000) : "no expiry" }),
      el("td", { class: "actions" }, t.revoked ? "" : el("button", { class: "danger", onclick: async () => { await api("DELETE", "tokens/" + encodeURIComponent(t.name)); tokens(); }, text: "Revoke", "aria-label": "Revoke " + t.name }))));
  }
  const caps = ["read", "write", "status"].map((c) => el("label", { class: "check" }, el("input", { type: "checkbox", value: c, checked: c === "read" }), " " + c));
  const form = el("form", { id: "token-form" }, el("h2", { text: "New token for an agent" }),
    el("label", { for: "token-name", text: "Name" }), el("input", { id: "token-name", required: true, pattern: "[A-Za-z0-9._\\-]+" }),
    el("fieldset", {}, el("legend", { text: "It may" }), ...caps),
    el("label", { for: "token-paths", text: "Only these paths (globs, comma-separated; empty: everything you may reach)" }),
    el("input", { id: "token-paths", placeholder: "docs/**" }),
    el("button", { type: "submit", text: "Create token" }), el("p", { id: "token-out", role: "status" }));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const paths = $("#token-paths").value.split(",").map((x) => x.trim()).filter(Boolean);
      const made = await api("POST", "tokens", { name: $("#token-name").value, paths,
        capabilities: [...form.querySelectorAll("fieldset input:checked")].map((x) => x.value) });
      $("#token-out").replaceChildren(`Token ${made.name} (shown only now): `, el("input", { id: "token-secret", readonly: true, value: made.token, "aria-label": "The token" }));
    } catch (e) { $("#token-out").textContent = e.message; }
  });
  view.replaceChildren(el("h1", { text: "MCP tokens" }), el("table", { id: "tokens" }, el("thead", {}, el("tr", {},
    el("th", { text: "Name" }), el("th", { text: "May" }), el("th", { class: "hide-narrow", text: "Paths" }), el("th", { text: "State" }), el("th"))), body), form);
}

async function audit() {
  const view = $("#view");
  try {
    const r = await api("GET", "audit?limit=300");
    const body = el("tbody");
    for (const l of r.lines) body.append(el("tr", {}, el("td", { text: when(l.time) }), el("td", { text: l.token }), el("td", { text: l.tool }),
      el("td", { class: "hide-narrow", text: (l.paths || []).join(", ") }), el("td", { class: l.outcome === "ok" ? "ok" : "error", text: l.outcome })));
    view.replaceChildren(el("h1", { text: "Audit log" }), el("table", { id: "audit" }, el("thead", {}, el("tr", {}, el("th", { text: "When" }),
      el("th", { text: "Who" }), el("th", { text: "What" }), el("th", { class: "hide-narrow", text: "Paths" }), el("th", { text: "Outcome" }))), body));
  } catch (e) { view.replaceChildren(el("p", { class: "error", text: e.message })); }
}

const hist = { stored: [], files: [], versions: [] };
function spark(values) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark"); svg.setAttribute("viewBox", "0 0 100 30"); svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img"); svg.setAttribute("aria-label", "trend over the last minutes");
  const lo = Math.min(...values), hi = Math.max(...values), span = hi - lo || 1;
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", values.map((v, i) => `${values.length > 1 ? (100 * i) / (values.length - 1) : 50},${28 - (26 * (v - lo)) / span}`).join(" "));
  svg.append(line);
  return svg;
}

async function status() {
  const view = $("#view");
  const draw = async () => {
    try {
      const r = await api("GET", "status");
      const s = r.stats;
      for (const [k, v] of [["stored", s.stored_bytes], ["files", s.files], ["versions", s.versions]]) {
        hist[k].push(v); if (hist[k].length > 60) hist[k].shift();
      }
      const card = (label, value, trend) => el("div", { class: "card" }, el("b", { text: value }), label, trend ? spark(trend) : "");
      view.replaceChildren(el("h1", { text: "Status of " + r.node }), el("div", { class: "cards", id: "status" },
        card("files", String(s.files), hist.files), card("versions", String(s.versions), hist.versions),
        card("in the folder", human(s.tree_bytes)), card("stored (deduplicated, compressed)", human(s.stored_bytes), hist.stored),
        card("dedup ratio", (s.dedup_ratio || 1).toFixed(2) + "×"), card("compression ratio", (s.compression_ratio || 1).toFixed(2) + "×"),
        card("peers", String(r.peers)), card("conflicts", String(r.conflicts)), card("sync", r.paused ? "paused" : "running")));
    } catch (e) { view.replaceChildren(el("p", { class: "error", text: e.message })); clearInterval(state.poll); }
  };
  await draw();
  state.poll = setInterval(() => { if (state.view === "status") draw(); }, 5000);
}

start();
