// cityctl control-room page: plain JavaScript, no framework, no build step, no CDN.
//
// Everything comes from the controller's own API (/api/v1, bearer token from the login box,
// kept in sessionStorage). Live state is polled every 2 s; the schedule editor keeps a *draft*
// of one program that only changes when the engineer types, and a preview of the night that
// follows the draft. Text is always set with textContent (never innerHTML): names come from
// config files and incident notes, and the page's CSP forbids inline scripts anyway.

const API = "/api/v1";
const POLL_MS = 2000;
const PREVIEW_DEBOUNCE_MS = 250;
const SVG_NS = "http://www.w3.org/2000/svg";
const TOKEN_KEY = "cityctl.token";

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  site: null,
  groups: [],
  nodes: [],
  intersections: [],
  incidents: [],
  current: null, // the schedule version running now (with its document)
  history: [],
  serverPreview: null, // does the controller serve POST /previews/night? (from /openapi.json)
  pollTimer: null,
  polling: false,
  editor: {
    group: "",
    program: "",
    base: null, // the version the draft was taken from
    saved: null, // the program as it is in `base`
    draft: null, // what the engineer is editing
    reviewed: false,
    previewTimer: null,
    previewSeq: 0,
    baselineKey: "",
    baseline: null, // preview of the saved program, drawn behind the draft's
  },
};

// -- small helpers ---------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  for (const c of children) {
    if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  if (text !== undefined) el.textContent = text;
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
}

function fmtNum(x, digits = 0) {
  return x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits);
}

function fmtEnergy(wh) {
  if (wh === null || wh === undefined) return "–";
  return wh >= 1000 ? `${(wh / 1000).toFixed(2)} kWh` : `${wh.toFixed(0)} Wh`;
}

function tz() {
  return (state.site && state.site.timezone) || undefined;
}

function fmtTime(iso, withDate = false) {
  if (!iso) return "–";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const opts = { hour: "2-digit", minute: "2-digit", hourCycle: "h23", timeZone: tz() };
  if (withDate) Object.assign(opts, { year: "numeric", month: "2-digit", day: "2-digit" });
  return new Intl.DateTimeFormat("en-GB", opts).format(d);
}

function clone(x) {
  return JSON.parse(JSON.stringify(x));
}

function same(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

// Keyed list rendering: existing elements are updated in place, so focus, typed notes and
// buttons under the pointer survive the 2 s refresh.
function syncChildren(container, items, key, create, update) {
  const old = new Map();
  for (const el of Array.from(container.children)) old.set(el.dataset.key, el);
  let prev = null;
  for (const item of items) {
    const k = String(key(item));
    let el = old.get(k);
    if (el) old.delete(k);
    else {
      el = create(item);
      el.dataset.key = k;
    }
    update(el, item);
    const want = prev ? prev.nextSibling : container.firstChild;
    if (want !== el) container.insertBefore(el, want);
    prev = el;
  }
  for (const el of old.values()) el.remove();
}

// -- the API ---------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

async function api(method, path, body) {
  const init = { method, headers: { Authorization: `Bearer ${state.token}` } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(API + path, init);
  let data = null;
  const text = await r.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (r.status === 401) {
    logout("The token was refused (401): log in again.");
    throw new ApiError(401, data && data.detail);
  }
  if (!r.ok) throw new ApiError(r.status, data && data.detail !== undefined ? data.detail : data);
  return data;
}

// FastAPI's 422 shape → "field: message" lines, and the shape of our 409s → one line.
function describeError(e) {
  if (!(e instanceof ApiError)) return String(e && e.message ? e.message : e);
  const d = e.detail;
  if (Array.isArray(d)) return d.map((x) => `${(x.loc || []).join(".")}: ${x.msg}`).join("; ");
  if (d && typeof d === "object") {
    let s = d.msg || JSON.stringify(d);
    if (d.current_version) s += ` (current: version ${d.current_version} by ${d.current_author})`;
    if (d.users) s += ` (used by ${d.users.join(", ")})`;
    return `${e.status}: ${s}`;
  }
  return `${e.status}: ${d || e.message}`;
}

// -- login -----------------------------------------------------------------------------------

async function login(token) {
  state.token = token.trim();
  $("login-error").textContent = "";
  try {
    state.site = await api("GET", "/site");
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) $("login-error").textContent = describeError(e);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, state.token);
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  state.serverPreview = await hasServerPreview();
  await refresh();
  if (!state.editor.group && state.groups.length) openGroup(state.groups[0].id);
  schedulePoll();
}

function logout(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = "";
  clearTimeout(state.pollTimer);
  state.pollTimer = null;
  $("app").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
}

async function hasServerPreview() {
  // The schema is public; asking it avoids a 404 (and a console error) on an older controller.
  try {
    const r = await fetch("/openapi.json");
    if (!r.ok) return false;
    const schema = await r.json();
    return Boolean(schema.paths && schema.paths[`${API}/previews/night`]);
  } catch {
    return false;
  }
}

// -- live state ------------------------------------------------------------------------------

function schedulePoll() {
  clearTimeout(state.pollTimer);
  state.pollTimer = setTimeout(async () => {
    await refresh();
    if (state.token) schedulePoll();
  }, POLL_MS);
}

async function refresh() {
  if (state.polling || !state.token) return;
  state.polling = true;
  try {
    const open = $("incidents-open").checked ? "?open=true" : "";
    const [site, groups, nodes, intersections, incidents, current, history] = await Promise.all([
      api("GET", "/site"),
      api("GET", "/groups"),
      api("GET", "/nodes"),
      api("GET", "/intersections"),
      api("GET", `/incidents${open}`).catch((e) => {
        $("incidents-error").textContent = describeError(e);
        return [];
      }),
      api("GET", "/schedules").catch(() => null),
      api("GET", "/schedules/versions?limit=30").catch(() => []),
    ]);
    Object.assign(state, { site, groups, nodes, intersections, incidents, history });
    $("live").textContent = `live · ${fmtTime(site.now)}`;
    $("live").classList.remove("stale");
    $("site").textContent = `${site.name} · ${site.controller}`;
    $("clock").textContent = fmtTime(site.now, true);
    renderMap();
    renderGroups();
    renderIntersections();
    renderIncidents();
    scheduleChanged(current);
    renderHistory();
  } catch (e) {
    if (state.token) {
      $("live").textContent = `not updating: ${describeError(e)}`;
      $("live").classList.add("stale");
    }
  } finally {
    state.polling = false;
  }
}

// -- map -------------------------------------------------------------------------------------

function nodeState(n) {
  if (n.alarms && n.alarms.length) return "alarm";
  if (!n.online) return "offline";
  return (n.level || 0) > 0 ? "on" : "off";
}

// Nodes without their own position sit at their group's point; spread them around it
// (a sunflower pattern) so each stays visible and can be pointed at.
function nodePositions() {
  const byGroup = new Map(state.groups.map((g) => [g.id, g]));
  const count = new Map();
  return state.nodes.map((n) => {
    const g = byGroup.get(n.group);
    let loc = n.location;
    if (loc && g && g.location && loc.lat === g.location.lat && loc.lon === g.location.lon) {
      const i = count.get(n.group) || 0;
      count.set(n.group, i + 1);
      const r = 0.00011 * Math.sqrt(i + 0.5);
      const a = i * 2.39996;
      loc = { lat: loc.lat + r * Math.sin(a), lon: loc.lon + r * Math.cos(a) };
    }
    return { node: n, loc };
  });
}

function renderMap() {
  const map = $("map");
  const W = 600;
  const H = 420;
  const pad = 24;
  const placed = nodePositions().filter((p) => p.loc);
  const xs = state.intersections.filter((x) => x.location);
  const pts = [...placed.map((p) => p.loc), ...xs.map((x) => x.location)];
  map.replaceChildren();
  if (!pts.length) {
    map.append(svg("text", { x: 20, y: 30, class: "muted" }, "No positions in the configuration."));
    return;
  }
  const lat0 = Math.min(...pts.map((p) => p.lat));
  const lat1 = Math.max(...pts.map((p) => p.lat));
  const lon0 = Math.min(...pts.map((p) => p.lon));
  const lon1 = Math.max(...pts.map((p) => p.lon));
  const k = Math.cos(((lat0 + lat1) / 2) * (Math.PI / 180)); // metres per degree of longitude
  const spanX = Math.max((lon1 - lon0) * k, 1e-6);
  const spanY = Math.max(lat1 - lat0, 1e-6);
  const scale = Math.min((W - 2 * pad) / spanX, (H - 2 * pad) / spanY);
  const ox = (W - spanX * scale) / 2;
  const oy = (H - spanY * scale) / 2;
  const project = (p) => [ox + (p.lon - lon0) * k * scale, H - oy - (p.lat - lat0) * scale];

  const selected = state.editor.group;
  for (const g of state.groups) {
    if (!g.location) continue;
    const [x, y] = project(g.location);
    map.append(
      svg(
        "text",
        {
          x: x + 8,
          y: y - 8,
          class: g.id === selected ? "group-label selected" : "group-label",
          "data-testid": `map-group-${g.id}`,
        },
        `${g.id} ${fmtNum(g.level)} %`,
      ),
    );
  }
  for (const { node, loc } of placed) {
    const [x, y] = project(loc);
    const st = nodeState(node);
    const c = svg("circle", {
      cx: x.toFixed(1),
      cy: y.toFixed(1),
      r: 4,
      class: `node ${st}${node.group === selected ? " selected" : ""}`,
      "data-testid": `map-node-${node.id}`,
      "data-state": st,
    });
    c.append(svg("title", {}, describeNode(node, st)));
    c.addEventListener("mouseenter", () => ($("map-hover").textContent = describeNode(node, st)));
    c.addEventListener("click", () => openGroup(node.group));
    map.append(c);
  }
  for (const xi of xs) {
    const [x, y] = project(xi.location);
    const cab = xi.cabinet || {};
    const bad = Object.keys(xi.alarms || {}).length > 0 || Boolean(cab.fault) || !cab.up;
    const r = svg("rect", {
      x: (x - 6).toFixed(1),
      y: (y - 6).toFixed(1),
      width: 12,
      height: 12,
      class: bad ? "intersection alarm" : "intersection",
      "data-testid": `map-intersection-${xi.intersection}`,
    });
    r.append(svg("title", {}, `${xi.intersection}: ${xi.sync}, stage ${xi.stage ?? "–"}`));
    map.append(r, svg("text", { x: x + 9, y: y + 14, class: "x-label" }, xi.intersection));
  }
}

function describeNode(n, st) {
  const alarms = n.alarms && n.alarms.length ? ` · alarms: ${n.alarms.join(", ")}` : "";
  return `${n.id} (${n.group}) ${st}: level ${fmtNum(n.level)} % → ${fmtNum(n.target)} %, ${fmtNum(n.power_w)} W${alarms}`;
}

// -- groups ----------------------------------------------------------------------------------

function renderGroups() {
  syncChildren(
    $("groups"),
    state.groups,
    (g) => g.id,
    (g) => {
      const tr = h("tr", { "data-testid": `group-${g.id}` });
      for (const name of ["name", "level", "source", "class", "nodes", "offline"]) {
        tr.append(h("td", { class: `g-${name}`, "data-testid": `group-${g.id}-${name}` }));
      }
      tr.append(
        h(
          "td",
          {},
          h(
            "button",
            { type: "button", "data-testid": `open-group-${g.id}`, onclick: () => openGroup(g.id) },
            "Edit schedule",
          ),
        ),
      );
      return tr;
    },
    (tr, g) => {
      const cell = (name) => tr.querySelector(`.g-${name}`);
      cell("name").textContent = "";
      cell("name").append(h("strong", {}, g.id), h("br"), h("span", { class: "muted" }, g.name));
      cell("level").textContent = `${fmtNum(g.level)} %`;
      cell("source").textContent = g.detail ? `${g.source}: ${g.detail}` : g.source;
      cell("class").textContent = g.class_now || g.lighting_class;
      cell("nodes").textContent = `${g.nodes_following}/${g.nodes} following`;
      cell("offline").textContent = String(g.nodes_offline);
      tr.classList.toggle("selected", g.id === state.editor.group);
      tr.classList.toggle("warn", g.nodes_offline > 0);
    },
  );
}

// -- intersections ---------------------------------------------------------------------------

function renderIntersections() {
  const box = $("intersections");
  if (!state.intersections.length) {
    box.replaceChildren(h("p", { class: "muted" }, "No intersections run by this controller."));
    return;
  }
  box.replaceChildren(
    ...state.intersections.map((x) => {
      const alarms = Object.entries(x.alarms || {});
      const cab = x.cabinet || {};
      const card = h(
        "article",
        {
          class: alarms.length || cab.fault || !cab.up ? "card alarm" : "card",
          "data-testid": `intersection-${x.intersection}`,
        },
        h("h3", {}, x.intersection),
        h(
          "p",
          {},
          h("span", { class: `sync sync-${x.sync}`, "data-testid": `intersection-${x.intersection}-sync` }, x.sync),
          ` · stage ${x.stage ?? "–"} · ${x.strategy || ""}`,
        ),
        h(
          "p",
          { class: "muted" },
          `cabinet ${cab.up ? "up" : "down"}${cab.mode ? `, ${cab.mode}` : ""}${cab.fault ? `, fault ${cab.fault}` : ""}`,
        ),
      );
      const sigs = h("ul", { class: "signals" });
      for (const [g, s] of Object.entries(x.signals || {})) {
        sigs.append(h("li", { class: `sig sig-${s}`, title: `${g}: ${s}` }, g));
      }
      card.append(sigs);
      const queues = Object.entries(x.queues || {});
      if (queues.length) {
        card.append(h("p", { class: "muted" }, `queues: ${queues.map(([g, q]) => `${g} ${q}`).join(", ")}`));
      }
      const badDetectors = Object.entries(x.detectors || {}).filter(([, s]) => s !== "ok");
      if (badDetectors.length) {
        card.append(h("p", { class: "warn" }, `detectors: ${badDetectors.map(([d, s]) => `${d} ${s}`).join(", ")}`));
      }
      for (const [k, v] of alarms) card.append(h("p", { class: "error" }, `${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`));
      return card;
    }),
  );
}

// -- incidents -------------------------------------------------------------------------------

function renderIncidents() {
  const list = $("incidents");
  if (!state.incidents.length) {
    list.replaceChildren(h("li", { class: "muted", "data-key": "none" }, "No incidents."));
    return;
  }
  const none = list.querySelector('[data-key="none"]');
  if (none) none.remove();
  syncChildren(
    list,
    state.incidents,
    (i) => i.id,
    (i) => {
      const li = h("li", { "data-testid": `incident-${i.id}` });
      const head = h("div", { class: "inc-head" });
      const note = h("input", { type: "text", placeholder: "note", size: 24, class: "inc-note", "data-testid": `incident-note-${i.id}` });
      const ack = h("button", { type: "button", class: "inc-ack", "data-testid": `ack-${i.id}` }, "Acknowledge");
      const res = h("button", { type: "button", class: "inc-resolve", "data-testid": `resolve-${i.id}` }, "Resolve");
      const msg = h("span", { class: "error inc-msg" });
      ack.addEventListener("click", () => incidentAction(i.id, "acknowledge", { note: note.value }, msg));
      res.addEventListener("click", () =>
        incidentAction(i.id, "resolve", { note: note.value || "resolved from the control room" }, msg),
      );
      li.append(head, h("div", { class: "inc-actions" }, note, ack, res, msg));
      return li;
    },
    (li, i) => {
      const head = li.querySelector(".inc-head");
      head.replaceChildren(
        h("span", { class: `sev sev-${i.severity}` }, i.severity),
        " ",
        h("strong", {}, i.device_id || "report"),
        ` ${i.kind} · ${i.state} · since ${fmtTime(i.opened_at, true)}`,
        i.acked_by ? ` · ack ${i.acked_by}` : "",
        i.detail ? h("div", { class: "muted" }, typeof i.detail === "string" ? i.detail : JSON.stringify(i.detail)) : "",
      );
      li.querySelector(".inc-ack").hidden = !i.open || Boolean(i.acked_at);
      li.querySelector(".inc-resolve").hidden = !i.open;
      li.className = i.open ? `open severity-${i.severity}` : "closed";
    },
  );
}

async function incidentAction(id, action, body, msg) {
  msg.textContent = "";
  try {
    await api("POST", `/incidents/${encodeURIComponent(id)}/${action}`, body);
    await refresh();
  } catch (e) {
    msg.textContent = describeError(e);
  }
}

// -- schedule editor -------------------------------------------------------------------------

function doc() {
  return state.current ? state.current.document : { programs: [], calendars: [], assignments: {} };
}

function assignmentOf(group) {
  return (doc().assignments || {})[group] || {};
}

function programOf(group) {
  const a = assignmentOf(group);
  if (a.program) return a.program;
  const cal = (doc().calendars || []).find((c) => c.name === a.calendar);
  return cal ? cal.default : "";
}

function findProgram(name, d = doc()) {
  return (d.programs || []).find((p) => p.name === name) || null;
}

function dirty() {
  const ed = state.editor;
  return ed.draft !== null && ed.saved !== null && !same(ed.draft, ed.saved);
}

// A new current version arrived (after our own write, someone else's, or at login).
function scheduleChanged(current) {
  const before = state.current ? state.current.version : null;
  state.current = current;
  if (!current) {
    $("editor-base").textContent = "This controller keeps no schedule versions.";
    return;
  }
  if (current.version !== before) {
    fillGroupSelect();
    fillProgramSelect();
    if (state.editor.program && !dirty()) loadProgram(state.editor.program);
  }
  showBase();
}

function showBase() {
  const ed = state.editor;
  const cur = state.current;
  if (!cur) return;
  const el = $("editor-base");
  if (ed.base !== null && ed.base !== cur.version && dirty()) {
    el.textContent = `Your draft is on version ${ed.base}; version ${cur.version} (${cur.author}) is current now. Apply will be refused: discard the draft and redo the change.`;
    el.className = "warn";
  } else {
    el.textContent = `Current version ${cur.version} by ${cur.author}, ${fmtTime(cur.created_at, true)}${cur.comment ? ` — ${cur.comment}` : ""}`;
    el.className = "muted";
  }
}

function fillGroupSelect() {
  const sel = $("editor-group");
  const want = state.groups.map((g) => g.id);
  if (!same(Array.from(sel.options).map((o) => o.value), want)) {
    sel.replaceChildren(...state.groups.map((g) => h("option", { value: g.id }, `${g.id} — ${g.name}`)));
  }
  sel.value = state.editor.group;
}

function fillProgramSelect() {
  const sel = $("editor-program");
  const names = (doc().programs || []).map((p) => p.name);
  if (!same(Array.from(sel.options).map((o) => o.value), names)) {
    sel.replaceChildren(...names.map((n) => h("option", { value: n }, n)));
  }
  sel.value = state.editor.program;
  const a = assignmentOf(state.editor.group);
  let text = "";
  if (a.program) text = `runs program ${a.program}`;
  else if (a.calendar) {
    const cal = (doc().calendars || []).find((c) => c.name === a.calendar);
    const others = cal ? [...new Set((cal.rules || []).map((r) => r.program))] : [];
    text = `runs calendar ${a.calendar}: ${cal ? cal.default : "?"} by default${others.length ? `; rules use ${others.join(", ")}` : ""}`;
  }
  $("editor-assignment").textContent = text;
}

function openGroup(id) {
  if (dirty() && state.editor.group !== id && !window.confirm("Discard the draft of this program?")) return;
  state.editor.group = id;
  fillGroupSelect();
  loadProgram(programOf(id));
  renderGroups();
  renderMap();
  $("editor-group").scrollIntoView({ block: "nearest" });
}

function loadProgram(name) {
  const ed = state.editor;
  ed.program = name;
  const p = findProgram(name);
  ed.saved = p ? clone(p) : null;
  ed.draft = p ? clone(p) : null;
  ed.base = state.current ? state.current.version : null;
  ed.reviewed = false;
  ed.baseline = null;
  ed.baselineKey = "";
  fillProgramSelect();
  renderSteps();
  hideDiff();
  setStatus("");
  showBase();
  updatePreview(true);
}

function renderSteps() {
  const body = $("steps");
  const ed = state.editor;
  body.replaceChildren();
  if (!ed.draft) {
    body.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No program.")));
    return;
  }
  ed.draft.steps.forEach((s, i) => {
    const input = (field, attrs) => {
      const el = h("input", {
        ...attrs,
        "data-testid": `step-${field}-${i}`,
        "aria-label": `step ${i + 1} ${field}`,
        value: s[field] ?? "",
        placeholder: field === "ramp_s" ? "0" : "",
      });
      el.addEventListener("input", () => editStep(i, field, el));
      return h("td", {}, el, h("span", { class: "field-error", "data-testid": `error-step-${i}-${field}` }));
    };
    body.append(
      h(
        "tr",
        { "data-testid": `step-${i}` },
        h("td", {}, String(i + 1)),
        input("at", { type: "text", size: 14, spellcheck: "false" }),
        input("level", { type: "number", min: 0, max: 100, step: "any" }),
        input("ramp_s", { type: "number", min: 0, max: 3600, step: "any" }),
        h(
          "td",
          {},
          h(
            "button",
            {
              type: "button",
              title: "remove this step",
              "data-testid": `remove-step-${i}`,
              onclick: () => {
                ed.draft.steps.splice(i, 1);
                renderSteps();
                edited();
              },
            },
            "✕",
          ),
        ),
      ),
    );
  });
}

// Quick local checks, so the preview is only asked about drafts that can make sense; the
// server's rules (cityctl validate) stay the judge on Apply.
function localError(field, raw) {
  if (field === "at") return raw.trim() ? "" : "give a time (23:00) or sun ± offset (sunset+10min)";
  if (raw.trim() === "") return field === "ramp_s" ? "" : "a number is needed";
  const x = Number(raw);
  if (!Number.isFinite(x)) return "not a number";
  if (field === "level" && (x < 0 || x > 100)) return "0 to 100";
  if (field === "ramp_s" && (x < 0 || x > 3600)) return "0 to 3600 s";
  return "";
}

function editStep(i, field, el) {
  const ed = state.editor;
  const err = localError(field, el.value);
  fieldError(i, field, err);
  const step = ed.draft.steps[i];
  if (field === "at") step.at = el.value.trim();
  else if (field === "ramp_s" && el.value.trim() === "") delete step.ramp_s; // the default, 0 s
  else step[field] = err ? el.value : Number(el.value);
  edited();
}

function fieldError(i, field, msg) {
  const span = document.querySelector(`[data-testid="error-step-${i}-${field}"]`);
  if (span) span.textContent = msg;
  const input = document.querySelector(`[data-testid="step-${field}-${i}"]`);
  if (input) input.classList.toggle("invalid", Boolean(msg));
}

function clearFieldErrors() {
  for (const el of document.querySelectorAll("#steps .field-error")) el.textContent = "";
  for (const el of document.querySelectorAll("#steps input.invalid")) el.classList.remove("invalid");
}

function draftValid() {
  const d = state.editor.draft;
  return (
    d &&
    d.steps.length > 0 &&
    d.steps.every((s) => !localError("at", String(s.at)) && !localError("level", String(s.level)) && !localError("ramp_s", String(s.ramp_s ?? 0)))
  );
}

function edited() {
  state.editor.reviewed = false;
  $("apply").disabled = true;
  hideDiff();
  showBase();
  setStatus(dirty() ? "Draft changed: Review, then Apply." : "");
  updatePreview(false);
}

// Errors in FastAPI's shape whose loc points into the program's steps go next to the field.
function showFieldErrors(detail, root) {
  const rest = [];
  for (const x of Array.isArray(detail) ? detail : []) {
    const loc = x.loc || [];
    const at = loc.indexOf("steps");
    if (loc[1] === root && at >= 0 && Number.isInteger(loc[at + 1]) && loc[at + 2]) {
      fieldError(loc[at + 1], loc[at + 2], x.msg);
    } else rest.push(`${loc.join(".")}: ${x.msg}`);
  }
  return rest;
}

// -- preview ---------------------------------------------------------------------------------

function updatePreview(now) {
  const ed = state.editor;
  clearTimeout(ed.previewTimer);
  ed.previewTimer = setTimeout(() => runPreview(), now ? 0 : PREVIEW_DEBOUNCE_MS);
}

async function previewOf(program) {
  const body = { group: state.editor.group, program };
  return api("POST", "/previews/night", body);
}

async function runPreview() {
  const ed = state.editor;
  const seq = ++ed.previewSeq;
  if (!ed.draft || !ed.group) {
    drawPreview(null, null);
    return;
  }
  if (!draftValid()) {
    $("preview-note").textContent = "(fix the marked fields to see the preview)";
    return;
  }
  const draft = clone(ed.draft);
  if (!state.serverPreview) {
    if (seq !== ed.previewSeq) return;
    $("preview-note").textContent = "(approximate: this controller has no preview endpoint; sun times assumed 17:30 and 06:00)";
    drawPreview(localPreview(draft), ed.saved ? localPreview(ed.saved) : null);
    return;
  }
  try {
    const key = `${ed.group}|${ed.base}|${ed.program}`;
    if (ed.baselineKey !== key && ed.saved) {
      ed.baseline = await previewOf(ed.saved);
      ed.baselineKey = key;
    }
    const p = same(draft, ed.saved) && ed.baseline ? ed.baseline : await previewOf(draft);
    if (seq !== ed.previewSeq) return; // the engineer typed again meanwhile
    clearFieldErrors(); // the server took the draft: earlier refusals are fixed
    $("preview-note").textContent = p.night ? `(night of ${p.night}, group ${ed.group})` : `(group ${ed.group})`;
    drawPreview(p, ed.baseline);
  } catch (e) {
    if (seq !== ed.previewSeq) return;
    const rest = e instanceof ApiError && e.status === 422 ? showFieldErrors(e.detail, "program") : [describeError(e)];
    $("preview-note").textContent = rest.length ? `(no preview: ${rest.join("; ")})` : "(no preview: see the marked fields)";
  }
}

// Fallback only: the step function of a draft over one night (noon to noon) with assumed sun
// times; the server's preview (real sun times, the group's lamps) is preferred whenever served.
function localPreview(program) {
  const base = Date.UTC(2000, 0, 1, 12);
  const sun = { sunset: 17.5, dusk: 17.9, sunrise: 6, dawn: 5.6 };
  const hourAfterNoon = (at) => {
    const s = String(at).toLowerCase().replace(/\s+/g, "");
    const m = /^(sunset|sunrise|dusk|dawn)(?:([+-])(\d+(?:\.\d+)?)(h|min|m|s)?)?$/.exec(s);
    let hod;
    if (m) {
      const unit = { h: 1, min: 1 / 60, m: 1 / 60, s: 1 / 3600 }[m[4] || "min"];
      hod = sun[m[1]] + (m[2] ? (m[2] === "-" ? -1 : 1) * Number(m[3]) * unit : 0);
    } else {
      const t = /^(\d{1,2}):(\d{2})(?::(\d{2}))?$/.exec(s);
      if (!t) return null;
      hod = Number(t[1]) + Number(t[2]) / 60 + Number(t[3] || 0) / 3600;
    }
    return (((hod - 12) % 24) + 24) % 24;
  };
  const steps = program.steps
    .map((s) => ({ t: hourAfterNoon(s.at), level: Number(s.level), ramp: Number(s.ramp_s || 0) / 3600 }))
    .filter((s) => s.t !== null)
    .sort((a, b) => a.t - b.t);
  const samples = [];
  let level = steps.length ? steps[steps.length - 1].level : 0;
  let from = level;
  let stepAt = -1;
  let ramp = 0;
  let target = level;
  let i = 0;
  for (let t = 0; t <= 24; t += 1 / 12) {
    while (i < steps.length && steps[i].t <= t) {
      from = level;
      target = steps[i].level;
      stepAt = steps[i].t;
      ramp = steps[i].ramp;
      i++;
    }
    level = ramp > 0 && t - stepAt < ramp ? from + ((target - from) * (t - stepAt)) / ramp : target;
    samples.push({ t: base + t * 3600e3, level });
  }
  const levelHours = samples.reduce((a, s) => a + s.level / 100 / 12, 0);
  return { samples, energy_wh: null, level_hours: levelHours, tz: "UTC", transitions: [] };
}

function samplePoints(p) {
  return (p.samples || [])
    .map((s) => [typeof s.t === "number" ? s.t : Date.parse(s.t), Number(s.level)])
    .filter(([t, l]) => Number.isFinite(t) && Number.isFinite(l));
}

function drawPreview(p, baseline) {
  const chart = $("preview");
  chart.replaceChildren();
  const W = 600;
  const H = 200;
  const L = 36;
  const R = 8;
  const T = 10;
  const B = 24;
  const pts = p ? samplePoints(p) : [];
  const basePts = baseline ? samplePoints(baseline) : [];
  const all = [...pts, ...basePts];
  for (const y of [0, 25, 50, 75, 100]) {
    const yy = T + ((100 - y) / 100) * (H - T - B);
    chart.append(svg("line", { x1: L, x2: W - R, y1: yy, y2: yy, class: "grid" }));
    chart.append(svg("text", { x: L - 4, y: yy + 4, class: "axis", "text-anchor": "end" }, `${y}`));
  }
  if (!all.length) {
    $("preview-energy").textContent = "–";
    return;
  }
  const t0 = Math.min(...all.map((x) => x[0]));
  const t1 = Math.max(...all.map((x) => x[0]), t0 + 1);
  const X = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const Y = (l) => T + ((100 - Math.max(0, Math.min(100, l))) / 100) * (H - T - B);
  const zone = (p && p.tz) || tz();
  const hourFmt = new Intl.DateTimeFormat("en-GB", { hour: "2-digit", hourCycle: "h23", timeZone: zone });
  const firstHour = Math.ceil(t0 / 3600e3) * 3600e3;
  for (let t = firstHour; t <= t1; t += 3600e3) {
    const label = hourFmt.format(new Date(t));
    if (Number(label) % 2) continue;
    chart.append(svg("line", { x1: X(t), x2: X(t), y1: T, y2: H - B, class: "grid" }));
    chart.append(svg("text", { x: X(t), y: H - 8, class: "axis", "text-anchor": "middle" }, label));
  }
  const path = (ps) => ps.map(([t, l], i) => `${i ? "L" : "M"}${X(t).toFixed(1)} ${Y(l).toFixed(1)}`).join(" ");
  if (basePts.length && !same(basePts, pts)) {
    chart.append(svg("path", { d: path(basePts), class: "baseline", "data-testid": "preview-baseline" }));
  }
  if (pts.length) chart.append(svg("path", { d: path(pts), class: "line", "data-testid": "preview-line" }));
  const now = Date.now();
  if (zone !== "UTC" && now > t0 && now < t1) {
    chart.append(svg("line", { x1: X(now), x2: X(now), y1: T, y2: H - B, class: "now" }));
  }
  const energy = p && p.energy_wh !== null && p.energy_wh !== undefined ? p.energy_wh : null;
  if (energy !== null) {
    $("preview-energy").textContent = fmtEnergy(energy);
    const b = baseline && baseline.energy_wh;
    $("preview-current").textContent =
      b && Math.abs(b - energy) > 0.05 ? `(saved program: ${fmtEnergy(b)}, ${(((energy - b) / b) * 100).toFixed(1)} %)` : "";
  } else if (p && p.level_hours !== undefined) {
    $("preview-energy").textContent = `${p.level_hours.toFixed(2)} full-light hours (approx.)`;
    $("preview-current").textContent = "";
  }
  const list = $("preview-transitions");
  list.replaceChildren(
    ...((p && p.transitions) || []).slice(0, 12).map((tr) =>
      h("li", {}, `${fmtTime(tr.at)} → ${fmtNum(tr.level)} %${tr.ramp_s ? ` over ${fmtNum(tr.ramp_s)} s` : ""}${tr.source ? ` (${tr.source})` : ""}`),
    ),
  );
}

// -- review, apply, history ------------------------------------------------------------------

// The changes of the draft against the program in its base version, with the same paths the
// server's diff uses (programs[name].steps[1].level).
function draftChanges() {
  const ed = state.editor;
  const out = [];
  const pre = `programs[${ed.program}]`;
  const a = ed.saved || { steps: [] };
  const b = ed.draft;
  if ((a.description || "") !== (b.description || "")) {
    out.push({ path: `${pre}.description`, old: a.description || "", new: b.description || "" });
  }
  const n = Math.max(a.steps.length, b.steps.length);
  for (let i = 0; i < n; i++) {
    const sa = a.steps[i];
    const sb = b.steps[i];
    if (!sa) out.push({ path: `${pre}.steps[${i}]`, kind: "added", new: sb });
    else if (!sb) out.push({ path: `${pre}.steps[${i}]`, kind: "removed", old: sa });
    else {
      for (const f of ["at", "level", "ramp_s"]) {
        const dflt = f === "ramp_s" ? 0 : ""; // an absent ramp is 0 s
        const [x, y] = [sa[f] ?? dflt, sb[f] ?? dflt];
        if (String(x) !== String(y)) out.push({ path: `${pre}.steps[${i}].${f}`, old: x, new: y });
      }
    }
  }
  return out;
}

function showStep(s) {
  return s ? `{at: ${s.at}, level: ${s.level}, ramp_s: ${s.ramp_s ?? 0}}` : "–";
}

function review() {
  const ed = state.editor;
  const box = $("diff");
  if (!ed.draft) return;
  const changes = draftChanges();
  box.hidden = false;
  box.replaceChildren(h("h3", {}, `Changes against version ${ed.base}`));
  if (!changes.length) {
    box.append(h("p", { class: "muted" }, "No changes."));
    ed.reviewed = false;
    $("apply").disabled = true;
    return;
  }
  const ul = h("ul", {});
  for (const c of changes) {
    const text =
      c.kind === "added"
        ? `${c.path}: added ${showStep(c.new)}`
        : c.kind === "removed"
          ? `${c.path}: removed ${showStep(c.old)}`
          : `${c.path}: ${c.old} → ${c.new}`;
    ul.append(h("li", { class: c.kind || "changed", "data-testid": "diff-change" }, text));
  }
  box.append(ul);
  if (state.current && state.current.version !== ed.base) {
    box.append(h("p", { class: "warn" }, `Version ${state.current.version} is current now: Apply will be refused.`));
  }
  ed.reviewed = draftValid();
  $("apply").disabled = !ed.reviewed;
  setStatus(ed.reviewed ? "Reviewed: Apply saves a new version and runs it at once." : "Fix the marked fields first.");
}

function hideDiff() {
  $("diff").hidden = true;
  $("diff").replaceChildren();
}

function setStatus(text, kind = "") {
  const el = $("editor-status");
  el.replaceChildren();
  el.textContent = text;
  el.className = `status ${kind}`;
}

async function apply() {
  const ed = state.editor;
  if (!ed.reviewed || !ed.draft) return;
  $("apply").disabled = true;
  clearFieldErrors();
  try {
    const r = await api("PUT", `/schedules/programs/${encodeURIComponent(ed.program)}`, {
      base_version: ed.base,
      item: ed.draft,
      comment: $("comment").value,
    });
    const warnings = (r.warnings || []).length ? ` Warnings: ${r.warnings.join("; ")}` : "";
    $("comment").value = "";
    await reloadSchedule();
    loadProgram(ed.program);
    setStatus(
      r.created ? `Applied as version ${r.version}: the nodes follow now.${warnings}` : `Nothing changed (same as version ${r.version}).${warnings}`,
      "ok",
    );
  } catch (e) {
    ed.reviewed = false;
    if (e instanceof ApiError && e.status === 409) {
      const el = $("editor-status");
      setStatus(`Refused (409): ${describeError(e).replace(/^409: /, "")}. Your draft is kept; reload to redo it on the current version.`, "error");
      el.append(" ", h("button", { type: "button", "data-testid": "reload-current", onclick: () => reloadAndDiscard() }, "Reload current version"));
    } else if (e instanceof ApiError && e.status === 422) {
      const rest = showFieldErrors(e.detail, "item");
      setStatus(`Refused (422): ${rest.length ? rest.join("; ") : "see the marked fields"}. Nothing changed.`, "error");
    } else {
      setStatus(`Refused: ${describeError(e)}. Nothing changed.`, "error");
    }
  }
}

async function reloadSchedule() {
  const [current, history] = await Promise.all([api("GET", "/schedules"), api("GET", "/schedules/versions?limit=30")]);
  state.history = history;
  scheduleChanged(current);
  renderHistory();
}

async function reloadAndDiscard() {
  await reloadSchedule();
  loadProgram(state.editor.program);
}

function renderHistory() {
  const cur = state.current ? state.current.version : null;
  syncChildren(
    $("history"),
    state.history,
    (v) => `${v.version}|${v.version === cur}`,
    (v) => {
      const tr = h(
        "tr",
        { "data-testid": `version-${v.version}`, class: v.version === cur ? "current" : "" },
        h("td", {}, `v${v.version}${v.version === cur ? " (current)" : ""}`),
        h("td", {}, fmtTime(v.created_at, true)),
        h("td", {}, v.author),
        h("td", {}, v.source),
        h("td", {}, v.comment),
      );
      const actions = h("td", {});
      if (v.version > 1) {
        actions.append(
          h("button", { type: "button", "data-testid": `changes-${v.version}`, onclick: () => showVersionDiff(v.version) }, "Changes"),
        );
      }
      if (v.version !== cur) {
        const btn = h("button", { type: "button", class: "danger", "data-testid": `rollback-${v.version}` }, "Roll back to this");
        btn.addEventListener("click", () => rollback(v.version, btn));
        actions.append(" ", btn);
      }
      tr.append(actions);
      return tr;
    },
    () => {},
  );
}

async function showVersionDiff(v) {
  const pre = $("history-diff");
  pre.hidden = false;
  try {
    const d = await api("GET", `/schedules/diff?from=${v - 1}&to=${v}`);
    const lines = d.changes.map((c) => `${c.path}: ${JSON.stringify(c.old)} → ${JSON.stringify(c.new)}`);
    pre.textContent = `v${v - 1} → v${v}\n${lines.join("\n") || "(no changes)"}\n\n${d.text}`;
  } catch (e) {
    pre.textContent = describeError(e);
  }
}

// Two clicks: the first arms the button (it says what it will do), the second rolls back.
async function rollback(v, btn) {
  if (!btn.classList.contains("armed")) {
    btn.classList.add("armed");
    btn.textContent = `Confirm: roll back to v${v}`;
    setTimeout(() => {
      btn.classList.remove("armed");
      btn.textContent = "Roll back to this";
    }, 6000);
    return;
  }
  btn.disabled = true;
  try {
    const r = await api("POST", "/schedules/rollback", {
      to_version: v,
      base_version: state.current.version,
      comment: `rolled back to v${v} from the control-room page`,
    });
    const wasDirty = dirty();
    await reloadSchedule();
    if (!wasDirty) loadProgram(state.editor.program);
    setStatus(`Rolled back: version ${r.version} has version ${v}'s schedule and runs now.`, "ok");
    btn.classList.remove("armed");
    btn.textContent = "Roll back to this";
    btn.disabled = false;
  } catch (e) {
    setStatus(`Rollback refused: ${describeError(e)}`, "error");
    btn.disabled = false;
  }
}

// -- wiring ----------------------------------------------------------------------------------

function init() {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    login($("token").value);
  });
  $("logout").addEventListener("click", () => logout(""));
  $("editor-group").addEventListener("change", (ev) => openGroup(ev.target.value));
  $("editor-program").addEventListener("change", (ev) => {
    if (dirty() && !window.confirm("Discard the draft of this program?")) {
      ev.target.value = state.editor.program;
      return;
    }
    loadProgram(ev.target.value);
  });
  $("add-step").addEventListener("click", () => {
    const d = state.editor.draft;
    if (!d) return;
    const last = d.steps[d.steps.length - 1];
    d.steps.push({ at: "", level: last ? last.level : 0, ramp_s: 0 });
    renderSteps();
    edited();
  });
  $("discard").addEventListener("click", () => loadProgram(state.editor.program));
  $("review").addEventListener("click", review);
  $("apply").addEventListener("click", apply);
  $("incidents-open").addEventListener("change", refresh);
  if (state.token) login(state.token);
  else $("token").focus();
}

init();
