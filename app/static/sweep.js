// The sweep page (/sweeps/{id}): its stability map as a grid of cells, each a link to its
// member job. Uses h(), getJSON(), fmt() and problemText() from dashboard.js (loaded after
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
  const grid = h("div", { id: "stability-grid" });
  const img = h("img", { id: "stability-plot", alt: "stability map" });
  root.replaceChildren(h("section", {}, title, status, grid, img));
  for (;;) {
    const s = await getJSON(`/v1/sweeps/${sweepId}`);
    status.textContent = `${s.status}: ${s.progress.members_done} / ${s.progress.members} members done`;
    if (s.axes.length >= 2 || s.status !== "queued") await renderGrid(grid, s);
    if (s.status !== "queued" && s.status !== "running") break;
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
  if (sweep.axes.length >= 2) await imageInto(img, `/v1/sweeps/${sweepId}/plots/stability`);
}

async function renderGrid(el, sweep) {
  if (sweep.axes.length < 2) {
    fill(el, h("p", { class: "muted" }, "A stability map needs two axes."));
    return;
  }
  const grid = await getJSON(`/v1/sweeps/${sweep.id}/stability`);
  const jobOf = new Map(sweep.members.map((m) => [m.index, m]));
  const head = h("tr", {}, h("th", {}, `${grid.y} \\ ${grid.x}`),
    ...grid.x_values.map((x) => h("th", {}, fmt(x))));
  const rows = grid.y_values.map((y, j) => h("tr", {}, h("th", {}, fmt(y)),
    ...grid.x_values.map((x, i) => {
      const member = jobOf.get(grid.member[j][i]);
      const verdict = grid.verdict[j][i];
      if (!member || !member.job_id) return h("td", { class: "cell" }, "");
      const label = verdict || member.status;
      return h("td", { class: "cell", style: `background:${VERDICT_COLORS[verdict] || "#fff"}` },
        h("a", { href: `/jobs/${member.job_id}`, class: "member-link",
                 title: `${grid.x}=${fmt(x)}, ${grid.y}=${fmt(y)}: ${label}` }, label));
    })));
  fill(el, h("table", { class: "stability" }, h("thead", {}, head), h("tbody", {}, ...rows)));
}
