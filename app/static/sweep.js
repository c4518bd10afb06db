// The sweep page (/sweeps/{id}): the recommended setting (a line linking to its member job,
// and a button launching the real run like it), then its stability map as a grid of cells,
// each a link to its member job, laid out as the PNG map: the largest y value on top. Above
// them x/y axis selectors and (three axes or more) the held value of each other axis; the
// choice is the page URL's query (?x=..&y=..&at.<path>=..), so a link reproduces the view; a
// query naming no axis or no member's value is named in a note and replaced by a valid view.
// Only the latest view wins: a grid or map answer overtaken by a later change is dropped.
// While the sweep runs, the page polls its light form (?members=false: status, progress,
// verdict counts) and reads the whole sweep, and redraws, only when what it shows changed.
// Uses h(), getJSON(), fmt() and problemText() from dashboard.js (loaded after this file;
// they are only called once the page starts).
"use strict";

// the map's colours (app/stability_plot.py VERDICT_COLORS)
const VERDICT_COLORS = {
  healthy: "#43a047", unstable: "#fdd835", exploding: "#e53935",
  vanishing: "#1e88e5", stalled: "#9e9e9e",
};

async function showSweep(root, sweepId) {
  // the light form first: the whole sweep read after it is at least as new as `seen`
  let seen = shownState(await getJSON(`/v1/sweeps/${sweepId}?members=false`));
  const sweep = await getJSON(`/v1/sweeps/${sweepId}`);
  const title = h("h1", {}, sweep.name || `sweep ${sweep.id.slice(0, 8)}`);
  const status = h("p", { id: "sweep-status" });
  const cancel = sweepCancel(sweepId); // app/static/actions.js; shown while queued or running
  const recommended = h("p", { id: "sweep-recommended" });
  const grid = h("div", { id: "stability-grid" });
  const img = h("img", { id: "stability-plot", alt: "stability map" });
  const distinct = axisValues(sweep);
  const { view, ignored } = viewFromURL(sweep, distinct);
  const note = h("p", { id: "view-note", class: "notice", hidden: ignored.length === 0 },
    ignored.length ? `Not in this sweep: ${ignored.join("; ")}.` : "");
  const showView = () => history.replaceState(null, "", `${location.pathname}?${viewQuery(view, sweep)}`);
  if (ignored.length) showView();  // the address shows the view drawn
  let latest = sweep;
  let finished = false;
  let drawn = false;
  // a change of axes re-renders the grid (and the map once the sweep ended) with it; the
  // refresh loop below reads the same `view`
  const controls = axisControls(sweep, distinct, view, async () => {
    showView();
    note.hidden = true;
    const r = await renderGrid(grid, latest, recommended, view, controls);
    if (r === null) return;  // a later change drew its own grid
    drawn = r;
    if (finished) await drawMap();
  });
  // the map of the current view; data-query says which view the image shows. A map that
  // arrives after a later view asked for its own is dropped (data-dropped counts them).
  const drawMap = async () => {
    const query = viewQuery(view, sweep);
    const mine = String(Number(img.dataset.seq || 0) + 1);
    img.dataset.seq = mine;
    const current = () => img.dataset.seq === mine;
    if (!drawn) {
      img.removeAttribute("src");
      img.dataset.query = "";
      return;
    }
    let shown;
    try {
      shown = await imageInto(img, `/v1/sweeps/${sweepId}/plots/stability?${query}`, current);
    } catch (err) {
      if (current()) throw err;
      shown = false;
    }
    if (shown) img.dataset.query = query;
    else img.dataset.dropped = String(Number(img.dataset.dropped || 0) + 1);
  };
  root.replaceChildren(h("section", {}, title, status, cancel, note, controls, recommended, grid, img));
  for (;;) {
    showStatus(status, latest, cancel);
    const r = await renderGrid(grid, latest, recommended, view, controls);
    if (r !== null) drawn = r;
    if (latest.status !== "queued" && latest.status !== "running") break;
    seen = await untilChanged(sweepId, seen, status, cancel);
    latest = await getJSON(`/v1/sweeps/${sweepId}`);
  }
  finished = true;
  cancel.sync(false, latest.status);
  await drawMap();
}

// the status line, and the Cancel button (a cancelControl) while the sweep is queued or running
const showStatus = (el, s, cancel) => {
  el.textContent = `${s.status}: ${s.progress.members_done} / ${s.progress.members} members done`;
  cancel.sync(s.status === "queued" || s.status === "running", s.status);
};

// What the page shows of a light sweep (status, members done, verdict counts) as one string;
// the step count is not shown, so steps alone do not make the page read the whole sweep.
const shownState = (light) => JSON.stringify([light.status, light.progress.members_done,
  Object.entries(light.verdicts).filter(([, n]) => n > 0).sort()]);

// Polls the light form every 2 s until what the page shows differs from `seen`; answers the
// new state (the status line already shows it).
async function untilChanged(sweepId, seen, statusEl, cancel) {
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, 2000));
    const light = await getJSON(`/v1/sweeps/${sweepId}?members=false`);
    showStatus(statusEl, light, cancel);
    const state = shownState(light);
    if (state !== seen) return state;
  }
}

// An axis value as the API's `at.<path>=` takes it: numbers as numbers, true/false, strings as is.
const atValue = (v) => (typeof v === "string" ? v : JSON.stringify(v));

// The distinct values the members carry per axis, in member order: path -> Map(atValue -> value).
function axisValues(sweep) {
  const distinct = new Map(sweep.axes.map((a) => [a.path, new Map()]));
  for (const m of sweep.members) {
    for (const [p, values] of distinct) {
      if (m.values && p in m.values && !values.has(atValue(m.values[p]))) {
        values.set(atValue(m.values[p]), m.values[p]);
      }
    }
  }
  return distinct;
}

// The atValue key of `values` (an axisValues map) that the URL text `raw` names (the same
// text, or the same number written differently: 0.010 for 0.01); null when none does.
function matchValue(values, raw) {
  if (values.has(raw)) return raw;
  const n = raw.trim() === "" ? NaN : Number(raw);
  for (const [k, v] of values) if (typeof v === "number" && v === n) return k;
  return null;
}

// The view: x and y axis paths and the explicitly held values of other axes (path -> the
// atValue string); what is not chosen the server defaults (x last axis, y first, others held
// where /stability holds them). Read from the page URL (?x=..&y=..&at.<path>=..). `ignored`:
// what the URL asked that names no axis or no member's value, each said in words: an axis
// that is not one is left out, a value no member has is replaced by the axis's first value.
function viewFromURL(sweep, distinct) {
  const paths = sweep.axes.map((a) => a.path);
  const q = new URLSearchParams(location.search);
  const view = { x: paths[paths.length - 1], y: paths[0], at: {} };
  const ignored = [];
  for (const key of ["x", "y"]) {
    if (q.has(key) && !paths.includes(q.get(key))) ignored.push(`${key}=${q.get(key)} is not an axis`);
  }
  if (paths.includes(q.get("x"))) view.x = q.get("x");
  if (paths.includes(q.get("y")) && q.get("y") !== view.x) view.y = q.get("y");
  if (view.x === view.y) view.y = paths.find((p) => p !== view.x);
  for (const [k, v] of q) {
    if (!k.startsWith("at.")) continue;
    const p = k.slice(3);
    const values = distinct.get(p);
    if (!values) {
      ignored.push(`${k}: ${p} is not an axis`);
    } else if (values.size === 0) {
      view.at[p] = v;
    } else if (matchValue(values, v) === null) {
      const [first, firstValue] = values.entries().next().value;
      const all = [...values.values()].map(fmt).join(", ");
      ignored.push(`${k}=${v} matches no member (${p} is one of ${all}); showing ${p} = ${fmt(firstValue)}`);
      view.at[p] = first;
    } else {
      view.at[p] = matchValue(values, v);
    }
  }
  return { view, ignored };
}

function viewQuery(view, sweep) {
  const q = new URLSearchParams({ x: view.x, y: view.y });
  for (const a of sweep.axes) {
    if (a.path !== view.x && a.path !== view.y && a.path in view.at) q.set(`at.${a.path}`, view.at[a.path]);
  }
  return q.toString();
}

// The control row (two axes or more): x and y selectors over the axis paths (choosing the
// other's axis swaps them) and, with three axes or more, a selector of each other axis's
// values (`distinct`: the values its members carry, in member order).
function axisControls(sweep, distinct, view, onChange) {
  const paths = sweep.axes.map((a) => a.path);
  const row = h("div", { id: "axis-controls", class: "axis-controls" });
  if (paths.length < 2) return row;
  const axisSelect = (id, key) => h("select", { id, onchange: (e) => {
    const other = key === "x" ? "y" : "x";
    if (e.target.value === view[other]) view[other] = view[key];
    view[key] = e.target.value;
    delete view.at[view.x];
    delete view.at[view.y];
    onChange();
  } }, ...paths.map((p) => h("option", { value: p }, p)));
  const build = () => {
    const parts = [h("label", {}, "x ", axisSelect("axis-x", "x")),
                   h("label", {}, "y ", axisSelect("axis-y", "y"))];
    for (const p of paths.filter((q) => q !== view.x && q !== view.y)) {
      parts.push(h("label", {}, `${p} `, h("select", {
        class: "axis-at", "data-path": p,
        onchange: (e) => { view.at[p] = e.target.value; onChange(); },
      }, ...[...distinct.get(p)].map(([k, v]) => h("option", { value: k }, fmt(v))))));
    }
    fill(row, ...parts);
  };
  // rebuilt when x/y change (the held axes change); the selects show the grid drawn
  row.sync = (grid) => {
    const held = [...row.querySelectorAll("select.axis-at")].map((s) => s.dataset.path);
    const others = paths.filter((q) => q !== view.x && q !== view.y);
    if (!row.firstChild || held.join("\n") !== others.join("\n")) build();
    row.querySelector("#axis-x").value = view.x;
    row.querySelector("#axis-y").value = view.y;
    for (const s of row.querySelectorAll("select.axis-at")) {
      const p = s.dataset.path;
      const shown = p in view.at ? view.at[p]
        : grid && grid.fixed && p in grid.fixed ? atValue(grid.fixed[p]) : null;
      if (shown !== null) s.value = shown;
    }
  };
  row.sync(null);
  return row;
}

// The grid of a sweep with two axes or more once a member has a verdict (true when drawn);
// until then (the stability endpoint's 409 sweep-not-ready) a note, not an error; null when a
// later render overtook this one.
async function renderGrid(el, sweep, recEl, view, controls) {
  if (sweep.axes.length < 2) {
    drawMembers(el, sweep);
    return false;
  }
  const waiting = "Waiting for the first member to finish; the map appears as members finish.";
  if (sweep.progress.members_done === 0) {
    fill(el, h("p", { class: "muted", id: "sweep-waiting" }, waiting));
    return false;
  }
  // a response overtaken by a later render (the view changed meanwhile) is dropped: null
  const mine = String(Number(el.dataset.seq || 0) + 1);
  el.dataset.seq = mine;
  let grid;
  try {
    grid = await getJSON(`/v1/sweeps/${sweep.id}/stability?${viewQuery(view, sweep)}`);
    if (el.dataset.seq !== mine) return null;
  } catch (err) {
    if (el.dataset.seq !== mine) return null;
    if (err instanceof ApiError && err.status === 422) {  // a view the API refuses: said here
      fill(el, h("pre", { class: "error", id: "grid-error" }, problemText(err)));
      return false;
    }
    if (!(err instanceof ApiError && err.status === 409)) throw err;
    fill(el, h("p", { class: "muted", id: "sweep-waiting" },
      sweep.status === "queued" || sweep.status === "running" ? waiting
        : "No member finished with a verdict: there is no map to draw."));
    return false;
  }
  drawGrid(el, grid, sweep, recEl);
  if (controls.sync) controls.sync(grid);
  return true;
}

function drawGrid(el, grid, sweep, recEl) {
  const jobOf = new Map(sweep.members.map((m) => [m.index, m]));
  renderRecommendation(recEl, grid, jobOf, sweep);
  const star = grid.recommended ? grid.recommended.index : null;
  const head = h("tr", {}, h("th", {}, `${grid.y} \\ ${grid.x}`),
    ...grid.x_values.map((x) => h("th", {}, fmt(x))));
  // rows top to bottom from the last y value to the first, as the PNG map draws them
  const rows = grid.y_values.map((y, j) => h("tr", {}, h("th", {}, fmt(y)),
    ...grid.x_values.map((x, i) => {
      const member = jobOf.get(grid.member[j][i]);
      const verdict = grid.verdict[j][i];
      if (!member || !member.job_id) return h("td", { class: "cell" }, "");
      const label = verdict || member.status;
      const mark = member.index === star ? ";outline:3px solid #1a237e;outline-offset:-3px" : "";
      return h("td", { class: member.index === star ? "cell recommended" : "cell",
                       style: `background:${VERDICT_COLORS[verdict] || "#fff"}${mark}` },
        h("a", { href: `/jobs/${member.job_id}`, class: "member-link",
                 title: `${grid.x}=${fmt(x)}, ${grid.y}=${fmt(y)}: ${label}` }, label));
    }))).reverse();
  fill(el, h("table", { class: "stability" }, h("thead", {}, head), h("tbody", {}, ...rows)));
}

// A one-axis sweep has no map: its members one per row in the axis' order, each verdict
// coloured as on a map and linked to the member's job, with what the sweep knows of the run.
function drawMembers(el, sweep) {
  const path = sweep.axes.length ? sweep.axes[0].path : "member";
  const rows = sweep.members.map((m) => h("tr", {},
    h("th", {}, fmt(m.values && path in m.values ? m.values[path] : m.index)),
    h("td", { class: "cell", style: `background:${VERDICT_COLORS[m.verdict] || "#fff"}` },
      m.job_id ? h("a", { href: `/jobs/${m.job_id}`, class: "member-link" }, m.verdict || m.status)
        : m.status),
    h("td", {}, fmt(m.final_loss)), h("td", {}, fmt(m.first_bad_step)), h("td", {}, m.stop_reason || "")));
  fill(el, h("p", { class: "muted" }, "A stability map needs two axes; the members one by one:"),
    h("table", { class: "stability", id: "sweep-members" },
      h("thead", {}, h("tr", {}, [path, "verdict", "final loss", "first bad step", "stop reason"]
        .map((c) => h("th", {}, c)))),
      h("tbody", {}, rows)));
}

// "Recommended: lr 0.00268, init std 0.277" linking to that member's job, then the reason
// (core.stability.recommend); or why there is none. While members still run: "so far".
function renderRecommendation(el, grid, jobOf, sweep) {
  const status = sweep.status;
  const rec = grid.recommended;
  const sofar = status === "queued" || status === "running" ? " (so far)" : "";
  if (!rec) {
    fill(el, `No recommendation${sofar}: ${grid.recommended_reason}.`);
    return;
  }
  const jobId = rec.job_id || (jobOf.get(rec.index) || {}).job_id;
  const setting = [grid.x, grid.y].map((p) => `${p} = ${fmt(rec.values[p])}`).join(", ");
  const link = jobId ? h("a", { href: `/jobs/${jobId}`, id: "recommended-link" }, setting)
    : h("span", {}, setting);
  const margin = rec.margin === "none" ? " (no safety margin)" : "";
  const launch = h("button", { class: "primary", id: "launch-recommended",
    title: "Train a new job with this member's spec (POST /v1/sweeps/{id}/launch)",
    onclick: (e) => launchRecommended(e.target, sweep.id, grid) }, "Launch this setting");
  fill(el, h("strong", {}, `Recommended${sofar}${margin}: `), link, ` — ${rec.reason}. `, launch);
}

// POST launch (the recommended member of this grid, no patch) with the page's API key
// handling (api() in dashboard.js), then open the new job's page. One Idempotency-Key per
// page: a second click, or a retry, answers the same job.
let launchKey = null;
async function launchRecommended(button, sweepId, grid) {
  launchKey = launchKey || `page-${Date.now()}-${Math.random().toString(36).slice(2)}`;
  button.disabled = true;
  button.textContent = "Launching…";
  try {
    const job = await getJSON(`/v1/sweeps/${sweepId}/launch`, {
      method: "POST", headers: { "Idempotency-Key": launchKey },
      json: { member: "recommended", x: grid.x, y: grid.y, at: grid.fixed },
    });
    location.assign(`/jobs/${job.id}`);
  } catch (err) {
    button.disabled = false;
    button.textContent = "Launch this setting";
    button.after(h("pre", { class: "error", id: "launch-error" }, problemText(err)));
  }
}
