// The sweep page (/sweeps/{id}): the recommended setting (a line linking to its member job,
// and a button launching the real run like it), then its stability map as a grid of cells,
// each a link to its member job, laid out as the PNG map: the largest y value on top. Uses h(), getJSON(), fmt() and problemText() from dashboard.js (loaded after
// this file; they are only called once the page starts).
"use strict";

// the map's colours (app/stability_plot.py VERDICT_COLORS)
const VERDICT_COLORS = {
  healthy: "#43a047", unstable: "#fdd835", exploding: "#e53935",
  vanishing: "#1e88e5", stalled: "#9e9e9e",
};

async function showSweep(root, sweepId) {
  const sweep = await getJSON(`/v1/sweeps/${sweepId}`);
  const title = h("h1", {}, sweep.name || `sweep ${sweep.id.slice(0, 8)}`);
  const status = h("p", { id: "sweep-status" });
  const recommended = h("p", { id: "sweep-recommended" });
  const grid = h("div", { id: "stability-grid" });
  const img = h("img", { id: "stability-plot", alt: "stability map" });
  root.replaceChildren(h("section", {}, title, status, recommended, grid, img));
  let drawn = false;
  for (;;) {
    const s = await getJSON(`/v1/sweeps/${sweepId}`);
    status.textContent = `${s.status}: ${s.progress.members_done} / ${s.progress.members} members done`;
    drawn = await renderGrid(grid, s, recommended);
    if (s.status !== "queued" && s.status !== "running") break;
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
  if (drawn) await imageInto(img, `/v1/sweeps/${sweepId}/plots/stability`);
}

// The grid of a sweep with two axes or more once a member has a verdict (true when drawn);
// until then (the stability endpoint's 409 sweep-not-ready) a note, not an error.
async function renderGrid(el, sweep, recEl) {
  if (sweep.axes.length < 2) {
    fill(el, h("p", { class: "muted" }, "A stability map needs two axes."));
    return false;
  }
  const waiting = "Waiting for the first member to finish; the map appears as members finish.";
  if (sweep.progress.members_done === 0) {
    fill(el, h("p", { class: "muted", id: "sweep-waiting" }, waiting));
    return false;
  }
  let grid;
  try {
    grid = await getJSON(`/v1/sweeps/${sweep.id}/stability`);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 409)) throw err;
    fill(el, h("p", { class: "muted", id: "sweep-waiting" },
      sweep.status === "queued" || sweep.status === "running" ? waiting
        : "No member finished with a verdict: there is no map to draw."));
    return false;
  }
  drawGrid(el, grid, sweep, recEl);
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
