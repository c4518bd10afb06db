// "Sweep this spec" on the dashboard home: the spec textarea above is the base spec, the axes
// editor below turns it into POST /v1/sweeps, then the page opens /sweeps/{id} (which refreshes
// until the sweep ends and shows the stability map). Checked here only what the browser can
// know (numbers parse, lo < hi, points >= 2, 1-3 axes, the spec is JSON); everything else
// (member and step limits, unknown paths, an invalid member spec) is the server's 422, shown
// with problemText(). Uses h(), getJSON() and problemText() from dashboard.js (loaded after
// this file; they are only called once the page starts).
"use strict";

// the documented axis paths (README "Stability maps (sweeps)", core/sweep.py)
const SWEEP_PATHS = ["optimizer.lr", "model.init.std", "model.init.scheme", "clipping.max_norm",
  "seed", "model.depth", "model.hidden.0.units"];
const MAX_AXES = 3;
// the common question: which learning rate for which init scale. The last axis is the map's
// x (columns), the first its y (rows), so the learning rate runs across as in the README's map.
const DEFAULT_AXES = [
  { path: "model.init.std", kind: "log", lo: "0.01", hi: "1", points: "8" },
  { path: "optimizer.lr", kind: "log", lo: "1e-3", hi: "1", points: "8" },
];
const NUMBER_RE = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

function parseNumber(text) {
  const t = text.trim();
  return NUMBER_RE.test(t) ? Number(t) : NaN;
}

// "0.1, 0.3, he_normal" -> [0.1, 0.3, "he_normal"]: numbers as JSON numbers (an integer stays
// an integer), anything else as a string.
function parseValues(text) {
  const parts = text.split(",").map((s) => s.trim());
  if (parts.some((s) => s === "")) throw new Error("values: a comma-separated list with no empty entries");
  return parts.map((s) => (NUMBER_RE.test(s) ? Number(s) : s));
}

// log-spaced, ends included, to 6 significant digits (core.sweep.SweepAxis.grid)
function logGrid(lo, hi, n) {
  const a = Math.log(lo), b = Math.log(hi);
  return Array.from({ length: n }, (_, i) => Number(Math.exp(a + (b - a) * i / (n - 1)).toPrecision(6)));
}

// One axis row's JSON for the API, or an Error saying what the browser can tell is wrong.
function axisOf(row) {
  const path = row.path.value.trim();
  if (!path) throw new Error("path: choose a spec path (e.g. optimizer.lr)");
  if (row.kind.value === "values") return { path, values: parseValues(row.values.value) };
  const lo = parseNumber(row.lo.value), hi = parseNumber(row.hi.value);
  const points = parseNumber(row.points.value);
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) throw new Error("lo and hi must be numbers");
  if (!(lo > 0)) throw new Error("lo must be > 0 (a log range)");
  if (!(lo < hi)) throw new Error("lo must be smaller than hi");
  if (!Number.isInteger(points) || points < 2) throw new Error("points: a whole number ≥ 2");
  return { path, log_range: [lo, hi], points };
}

// POST /v1/sweeps; while the server says the same key's first request is still being
// processed (409 idempotency-in-flight) or the database is busy (503), retry with that key
async function postSweep(body, key) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await getJSON("/v1/sweeps", { method: "POST", json: body, headers: { "Idempotency-Key": key } });
    } catch (err) {
      const again = err instanceof ApiError && attempt < 5 && ((err.status === 409 &&
        String(err.problem.type || "").endsWith("idempotency-in-flight")) || err.status === 503);
      if (!again) throw err;
      await sleep(1000);
    }
  }
}

function randomKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16)); // also outside secure contexts
  return `dashboard-sweep-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

// The "Sweep this spec" part; `spec` is the home page's spec textarea.
function sweepForm(spec) {
  const rowsEl = h("tbody", { id: "sweep-axes" });
  const rows = [];
  const members = h("strong", { id: "sweep-members" });
  const name = h("input", { id: "sweep-name", type: "text", maxlength: 200, placeholder: "optional", size: 30 });
  const error = h("pre", { class: "error", id: "sweep-error", hidden: true });
  // a new axis goes before the last one: the map keeps its x and y, the new axis held fixed
  const addButton = h("button", { type: "button", id: "add-axis", onclick: () => { addRow({ path: "", kind: "values", values: "" }, rows.length - 1); changed(); } }, "Add axis");
  const start = h("button", { type: "button", class: "primary", id: "start-sweep", onclick: () => startSweep() }, "Start sweep");
  // one Idempotency-Key per form fill: kept while the form is unchanged (a double click or a
  // retry after a lost answer makes one sweep), a new one once anything is edited
  let key = null;

  function addRow(init, at = rows.length) {
    const input = (cls, value, attrs) => h("input", { type: "text", class: cls, value, inputmode: "decimal", ...attrs });
    const row = {
      path: h("input", { type: "text", class: "axis-path", list: "sweep-paths", value: init.path, placeholder: "spec path", size: 20 }),
      kind: h("select", { class: "axis-kind", onchange: () => switchKind(row) },
        h("option", { value: "log", selected: init.kind === "log" }, "log range"),
        h("option", { value: "values", selected: init.kind === "values" }, "values")),
      lo: input("axis-lo", init.lo ?? "", { size: 7, placeholder: "lo" }),
      hi: input("axis-hi", init.hi ?? "", { size: 7, placeholder: "hi" }),
      points: input("axis-points", init.points ?? "", { size: 4, placeholder: "points", inputmode: "numeric" }),
      values: h("input", { type: "text", class: "axis-values", value: init.values ?? "", size: 36, placeholder: "comma-separated, e.g. 0.001, 0.01, 0.1" }),
      role: h("td", { class: "muted axis-role" }),
      note: h("td", { class: "axis-note muted" }),
    };
    row.logPart = h("span", { class: "axis-log" }, row.lo, " to ", row.hi, ", ", row.points, " points");
    row.valuesPart = h("span", { class: "axis-values-part" }, row.values);
    row.remove = h("button", { type: "button", class: "remove-axis", title: "Remove this axis",
      onclick: () => { rows.splice(rows.indexOf(row), 1); row.tr.remove(); changed(); } }, "Remove");
    row.tr = h("tr", { class: "axis-row" }, row.role, h("td", {}, row.path), h("td", {}, row.kind),
      h("td", {}, row.logPart, row.valuesPart), row.note, h("td", {}, row.remove));
    if (at < rows.length) rows[at].tr.before(row.tr);
    else rowsEl.append(row.tr);
    rows.splice(at, 0, row);
    showKind(row);
  }

  function showKind(row) {
    const log = row.kind.value === "log";
    row.logPart.hidden = !log;
    row.valuesPart.hidden = log;
  }

  // switching kinds carries the axis over: a log range becomes its values, numeric values
  // their range (min to max, as many points)
  function switchKind(row) {
    if (row.kind.value === "values" && !row.values.value.trim()) {
      const lo = parseNumber(row.lo.value), hi = parseNumber(row.hi.value), n = parseNumber(row.points.value);
      if (lo > 0 && lo < hi && Number.isInteger(n) && n >= 2) row.values.value = logGrid(lo, hi, n).join(", ");
    } else if (row.kind.value === "log" && !row.lo.value.trim() && !row.hi.value.trim()) {
      try {
        const v = parseValues(row.values.value);
        if (v.length >= 2 && v.every((x) => typeof x === "number" && x > 0)) {
          row.lo.value = String(Math.min(...v));
          row.hi.value = String(Math.max(...v));
          row.points.value = String(v.length);
        }
      } catch (e) { /* nothing to carry over */ }
    }
    showKind(row);
    changed();
  }

  // after any edit: a new key, each row's role on the map and its values (or what is wrong),
  // the member count
  function changed() {
    key = null;
    error.hidden = true;
    error.textContent = "";
    let total = 1, ok = true;
    rows.forEach((row, i) => {
      row.role.textContent = rows.length === 1 ? "axis"
        : i === rows.length - 1 ? "map x (columns)" : i === 0 ? "map y (rows)" : "held at its first value on the map";
      row.remove.disabled = rows.length <= 1;
      try {
        const axis = axisOf(row);
        const values = axis.values || logGrid(axis.log_range[0], axis.log_range[1], axis.points);
        total *= values.length;
        const shown = values.length > 6 ? [...values.slice(0, 3), "…", ...values.slice(-2)] : values;
        row.note.className = "axis-note muted";
        row.note.textContent = `${values.length}: ${shown.map((v) => (typeof v === "number" ? fmt(v) : v)).join(", ")}`;
      } catch (err) {
        ok = false;
        row.note.className = "axis-note error";
        row.note.textContent = err.message;
      }
    });
    addButton.disabled = rows.length >= MAX_AXES;
    members.textContent = ok ? `${total.toLocaleString("en")} member${total === 1 ? "" : "s"}` : "– members";
    members.dataset.count = ok ? String(total) : "";
  }

  async function startSweep() {
    error.hidden = true;
    error.textContent = "";
    let body;
    try {
      let base;
      try { base = JSON.parse(spec.value); } catch (err) { throw new Error(`spec: not valid JSON (${err.message})`); }
      const axes = rows.map((row, i) => {
        try { return axisOf(row); } catch (err) { throw new Error(`axis ${i + 1}: ${err.message}`); }
      });
      body = { spec: base, axes };
      if (name.value.trim()) body.name = name.value.trim();
    } catch (err) {
      error.hidden = false;
      error.textContent = err.message;
      return;
    }
    if (key === null) key = randomKey();
    start.disabled = true;
    start.textContent = "Starting…";
    try {
      const sweep = await postSweep(body, key);
      location.assign(`/sweeps/${sweep.id}`);
    } catch (err) {
      start.disabled = false;
      start.textContent = "Start sweep";
      error.hidden = false;
      error.textContent = problemText(err);
    }
  }

  DEFAULT_AXES.forEach((axis) => addRow(axis));
  const section = h("div", { id: "sweep-form", oninput: changed },
    h("h3", {}, "Sweep this spec"),
    h("p", { class: "muted" }, "Trains the spec above once per grid point (all axes' values combined) and draws where ",
      "it explodes: the stability map. Axes are dotted paths into the spec; ", h("code", {}, "model.depth"),
      " repeats the first hidden layer."),
    h("datalist", { id: "sweep-paths" }, SWEEP_PATHS.map((p) => h("option", { value: p }))),
    h("table", { class: "axes" }, h("thead", {}, h("tr", {}, ["axis", "spec path", "kind", "range or values", "grid", ""].map((c) => h("th", {}, c)))), rowsEl),
    h("div", { class: "sweep-actions" }, addButton, " ", members,
      h("label", {}, " Name ", name), " ", start),
    error);
  spec.addEventListener("input", changed);
  // back from the sweep page (the browser's page cache keeps this page as it was): the button
  // works again; the form and its key are unchanged, so starting again answers the same sweep
  window.addEventListener("pageshow", (e) => {
    if (e.persisted) { start.disabled = false; start.textContent = "Start sweep"; }
  });
  changed();
  return section;
}
