// gradwatch dashboard: the job and sweep lists and a job page with a live chart
// (live_chart.js), the diagnosis, "Run this fix" and the before/after comparison. Plain
// browser JavaScript, no build step; every number comes from the /v1 API. Text is inserted
// with textContent only (no HTML from the server is ever parsed).
"use strict";

const KEY = "gradwatch.apiKey";
const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
const VERDICTS = ["healthy", "exploding", "vanishing", "unstable", "stalled"];
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
  "#7f7f7f", "#bcbd22", "#17becf"];

// ------------------------------------------------------------------ helpers
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
// replaceChildren, skipping the null/undefined of conditional parts (it would print "null")
function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// The API writes NaN and ±Inf as strings: back to numbers.
function num(v) {
  if (v === "NaN") return NaN;
  if (v === "Infinity") return Infinity;
  if (v === "-Infinity") return -Infinity;
  return v;
}
function fmt(v) {
  v = num(v);
  if (v === null || v === undefined) return "–";
  if (typeof v !== "number") return String(v);
  if (!Number.isFinite(v)) return String(v);
  return Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(3) : String(+v.toPrecision(4));
}
const badge = (text) => h("span", { class: `badge ${text || ""}` }, text || "–");
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

class ApiError extends Error {
  constructor(status, problem) {
    super(`${status} ${problem.title || ""}: ${problem.detail || ""}`);
    this.status = status;
    this.problem = problem;
  }
}

// ------------------------------------------------------------------ API key + fetch
let keyPrompt = null;
function askForKey(rejected) {
  if (keyPrompt) return keyPrompt;
  const dialog = document.getElementById("key-dialog");
  document.getElementById("key-error").hidden = !rejected;
  keyPrompt = new Promise((resolve) => {
    document.getElementById("key-form").addEventListener("submit", () => {
      sessionStorage.setItem(KEY, document.getElementById("key-input").value.trim());
      document.getElementById("forget-key").hidden = false;
      keyPrompt = null;
      resolve();
    }, { once: true });
  });
  dialog.showModal();
  return keyPrompt;
}

async function api(path, opts = {}) {
  const headers = new Headers(opts.headers || {});
  const key = sessionStorage.getItem(KEY);
  if (key) headers.set("X-API-Key", key); // a header, never the URL
  const init = { method: opts.method || "GET", headers, signal: opts.signal };
  if (opts.json !== undefined) {
    headers.set("Content-Type", "application/json");
    init.body = JSON.stringify(opts.json);
  }
  const resp = await fetch(path, init);
  if (resp.status === 401) {
    await askForKey(Boolean(key));
    return api(path, opts);
  }
  if (!resp.ok) {
    let problem = { title: resp.statusText };
    try { problem = await resp.json(); } catch (e) { /* not JSON */ }
    throw new ApiError(resp.status, problem);
  }
  return resp;
}
const getJSON = async (path, opts) => (await api(path, opts)).json();

// `current` (optional) is asked once the image arrived: false leaves img as it was (a later
// request for the same img superseded this one); imageInto then answers false.
async function imageInto(img, path, current = () => true) {
  const blob = await (await api(path)).blob();
  if (!current()) return false;
  if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
  img.dataset.url = URL.createObjectURL(blob);
  img.src = img.dataset.url;
  return true;
}

// Server-sent events over fetch (EventSource cannot send the key header); resumes with
// Last-Event-ID after a dropped connection. onEvent returning "stop" ends the stream.
async function followEvents(jobId, onEvent, signal) {
  let last = null;
  while (!signal.aborted) {
    const headers = { Accept: "text/event-stream" };
    if (last !== null) headers["Last-Event-ID"] = String(last);
    try {
      const resp = await api(`/v1/jobs/${jobId}/events`, { headers, signal });
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      let ev = { event: "message", data: [], id: null };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, i).replace(/\r$/, "");
          buf = buf.slice(i + 1);
          if (line === "") {
            if (ev.data.length) {
              if (ev.id !== null) last = Number(ev.id);
              const stop = onEvent({ id: ev.id, event: ev.event, data: JSON.parse(ev.data.join("\n")) });
              if (stop === "stop") return;
            }
            ev = { event: "message", data: [], id: null };
          } else if (!line.startsWith(":")) {
            const c = line.indexOf(":");
            const name = c < 0 ? line : line.slice(0, c);
            let val = c < 0 ? "" : line.slice(c + 1);
            if (val.startsWith(" ")) val = val.slice(1);
            if (name === "data") ev.data.push(val);
            else if (name === "event") ev.event = val;
            else if (name === "id") ev.id = val;
          }
        }
      }
    } catch (err) {
      if (signal.aborted || (err instanceof ApiError && err.status !== 503)) return;
    }
    await sleep(1000);
  }
}

// ------------------------------------------------------------------ job list
async function showList(root) {
  const params = new URLSearchParams(location.search);
  const status = h("select", { id: "filter-status", onchange: () => applyFilters() },
    h("option", { value: "" }, "any status"), STATUSES.map((s) => h("option", { value: s, selected: params.get("status") === s }, s)));
  const verdict = h("select", { id: "filter-verdict", onchange: () => applyFilters() },
    h("option", { value: "" }, "any verdict"), VERDICTS.map((v) => h("option", { value: v, selected: params.get("verdict") === v }, v)));
  // a sweep's members (often dozens) are listed on its page: here only when asked for
  const showMembers = h("input", { type: "checkbox", id: "filter-sweep-members", onchange: () => applyFilters(),
    checked: params.get("sweep_members") === "1" });
  const body = h("tbody", { id: "job-rows" });
  // the list shows `pages` pages of 100 (the newest first); "Older jobs" adds the next one
  let pages = 1;
  let reads = 0;
  const older = h("button", { type: "button", id: "older-jobs",
    onclick: () => { pages += 1; older.disabled = true; refresh().catch(showListError); } }, "Older jobs");
  const olderRow = h("p", { hidden: true }, older);
  const sweepBody = h("tbody", { id: "sweep-rows" });
  const spec = h("textarea", { id: "spec-input", spellcheck: "false" }, JSON.stringify(
    { data: { source: "synthetic", name: "spirals" }, model: { hidden: [{ units: 32 }, { units: 32 }] } }, null, 2));
  const submitError = h("p", { class: "error", hidden: true });
  root.replaceChildren(
    h("section", {}, h("h1", {}, "Jobs"),
      h("div", { class: "filters" }, status, verdict, h("label", {}, showMembers, " sweep members"),
        h("span", { class: "muted" }, "refreshes every 2 s")),
      h("table", {}, h("thead", {}, h("tr", {}, ["name", "status", "verdict", "progress", "created", "id"].map((c) => h("th", {}, c)))), body),
      olderRow),
    h("section", { id: "sweeps" }, h("h2", {}, "Recent sweeps"),
      h("table", {}, h("thead", {}, h("tr", {}, ["name", "status", "progress", "members", "verdicts", "created"].map((c) => h("th", {}, c)))), sweepBody)),
    h("section", {}, h("h2", {}, "Submit a spec"), spec, submitError,
      h("button", { class: "primary", id: "submit-spec", onclick: async () => {
        try {
          const job = await getJSON("/v1/jobs", { method: "POST", json: JSON.parse(spec.value) });
          location.assign(`/jobs/${job.id}`);
        } catch (err) { submitError.hidden = false; submitError.textContent = problemText(err); }
      } }, "Submit"),
      sweepForm(spec))); // app/static/sweep_form.js

  function applyFilters() {
    const q = new URLSearchParams();
    if (status.value) q.set("status", status.value);
    if (verdict.value) q.set("verdict", verdict.value);
    if (showMembers.checked) q.set("sweep_members", "1");
    history.replaceState(null, "", q.toString() ? `/?${q}` : "/");
    pages = 1; // other filters: another list, from its newest job
    refresh().catch(showListError);
  }
  function showListError(err) {
    body.replaceChildren(h("tr", {}, h("td", { colspan: 6, class: "error" }, problemText(err))));
  }
  // The first `pages` pages of the filtered list, read again from the newest (the cursor of
  // each page, with the same filters, gives the next), so a job that arrives does not push
  // one out of sight between two pages; a read overtaken by a later one is dropped.
  async function refresh() {
    const mine = ++reads;
    const q = new URLSearchParams({ limit: "100" });
    if (status.value) q.set("status", status.value);
    if (verdict.value) q.set("verdict", verdict.value);
    if (!showMembers.checked) q.set("sweep_members", "false");
    const items = [];
    let cursor = null;
    for (let n = 0; n < pages; n++) {
      if (cursor) q.set("cursor", cursor);
      const page = await getJSON(`/v1/jobs?${q}`);
      items.push(...page.items);
      cursor = page.next_cursor;
      if (!cursor) break;
    }
    if (mine !== reads) return;
    olderRow.hidden = !cursor;
    older.disabled = false;
    body.replaceChildren(...items.map((j) => h("tr", { "data-job-id": j.id },
      h("td", {}, h("a", { href: `/jobs/${j.id}` }, j.name || "(unnamed)"), j.parent_id ? h("span", { class: "muted" }, " (repair)") : null,
        j.parent_sweep_id ? h("span", { class: "muted" }, " (sweep ", h("a", { href: `/sweeps/${j.parent_sweep_id}`, class: "member-sweep-link" }, j.parent_sweep_id.slice(0, 8)), ")") : null),
      h("td", {}, badge(j.status)), h("td", {}, badge(j.verdict)),
      h("td", {}, `${j.progress.step} / ${j.progress.total_steps}`),
      h("td", {}, new Date(j.created_at).toLocaleString()),
      h("td", { class: "muted" }, j.id.slice(0, 8)))));
    if (!items.length) body.replaceChildren(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No jobs yet.")));
  }
  // the 20 newest sweeps (GET /v1/sweeps), each linking to its page (/sweeps/{id})
  async function refreshSweeps() {
    const page = await getJSON("/v1/sweeps?limit=20");
    sweepBody.replaceChildren(...page.items.map((s) => h("tr", { "data-sweep-id": s.id },
      h("td", {}, h("a", { href: `/sweeps/${s.id}`, class: "sweep-link" }, s.name || "(unnamed sweep)")),
      h("td", {}, badge(s.status)),
      h("td", {}, `${s.progress.members_done} / ${s.progress.members} done · ${Math.round(100 * s.progress.fraction)}% of steps`),
      h("td", {}, s.member_count),
      h("td", {}, Object.entries(s.verdicts).flatMap(([v, n]) => [badge(v), ` ${n} `])),
      h("td", {}, new Date(s.created_at).toLocaleString()))));
    if (!page.items.length) sweepBody.replaceChildren(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No sweeps yet (POST /v1/sweeps).")));
  }
  for (;;) {
    try { await refresh(); } catch (err) { showListError(err); }
    try { await refreshSweeps(); } catch (err) { sweepBody.replaceChildren(h("tr", {}, h("td", { colspan: 6, class: "error" }, problemText(err)))); }
    await sleep(2000);
  }
}

function problemText(err) {
  if (!(err instanceof ApiError)) return String(err);
  const fields = (err.problem.errors || []).map((e) => `${(e.loc || []).join(".")}: ${e.msg}`);
  return [`${err.status} ${err.problem.title || ""}: ${err.problem.detail || ""}`, ...fields].join("\n");
}

// ------------------------------------------------------------------ live chart notes
// "exactly 0, not drawn on the log axis: layers 0–7 from step 145 (155 points)", or null: a
// dead network's gradients are 0, a perfectly fitted loss is 0, and their lines would just
// stop (app/plots.py zero_note says the same under the static plots)
function zeroNote(labels, zeros) {
  const groups = new Map(); // "first:count" -> labels
  zeros.forEach((steps, i) => {
    if (!steps.size) return;
    let first = Infinity;
    for (const step of steps) if (step < first) first = step; // no spread: a long run has many
    const key = `${first}:${steps.size}`;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(labels[i]);
  });
  if (!groups.size) return null;
  const parts = [...groups].map(([key, names]) => {
    const [first, n] = key.split(":");
    return `${layerRuns(names)} from step ${first} (${n} point${n === "1" ? "" : "s"})`;
  });
  return `exactly 0, not drawn on the log axis: ${parts.join("; ")}`;
}
// ["layer 0", …, "layer 7"] as "layers 0–7" (runs of consecutive layers joined)
function layerRuns(names) {
  const numbers = names.map((n) => /^layer (\d+)$/.exec(n)).map((m) => (m ? Number(m[1]) : null));
  if (names.length < 2 || numbers.includes(null)) return names.join(", ");
  const runs = [];
  for (const n of numbers) {
    if (runs.length && n === runs[runs.length - 1][1] + 1) runs[runs.length - 1][1] = n;
    else runs.push([n, n]);
  }
  return `layers ${runs.map(([a, b]) => (a === b ? `${a}` : `${a}–${b}`)).join(", ")}`;
}

// ------------------------------------------------------------------ job page
// "Job not found", the API's problem detail and the way back to the list: a job that does not
// exist, or one deleted while its page was open (a later read of it answers 404)
function jobNotFound(root, err) {
  root.replaceChildren(h("section", { id: "job-not-found" }, h("h1", {}, "Job not found"),
    h("p", { class: "error" }, problemText(err)), h("a", { href: "/", id: "all-jobs" }, "All jobs")));
}

async function showJob(root, jobId) {
  try {
    await jobPage(root, jobId);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404)) throw err;
    jobNotFound(root, err);
  }
}

async function jobPage(root, jobId) {
  let job;
  try { job = await getJSON(`/v1/jobs/${jobId}`); } catch (err) {
    jobNotFound(root, err);
    return;
  }
  const nLayers = job.spec.model.hidden.length + 1;
  const head = h("section", { id: "job-head" });
  const cancel = jobCancel(job.id); // app/static/actions.js; shown while queued or running
  const gradEl = h("div", { class: "chart", id: "grad-chart" });
  const lossEl = h("div", { class: "chart", id: "loss-chart" });
  const zeroNoteEl = h("p", { class: "muted", id: "grad-zero-note", hidden: true });
  const lossZeroNoteEl = h("p", { class: "muted", id: "loss-zero-note", hidden: true });
  const nonFinite = h("div", { class: "banner", id: "non-finite", hidden: true });
  const diagnosis = h("section", { id: "diagnosis" }, h("h2", {}, "Diagnosis"), h("p", { class: "muted" }, "Waiting for the first records…"));
  const comparison = h("section", { id: "comparison", hidden: true });
  const downloads = h("section", { id: "downloads", hidden: true });
  const gradPlot = h("img", { class: "plot", id: "gradients-plot", alt: "gradient norms plot" });
  const heatPlot = h("img", { class: "plot", id: "heatmap-plot", alt: "gradient heatmap" });
  const plotsNote = h("p", { class: "muted", id: "plots-note" }, "Drawn when the job has finished.");
  root.replaceChildren(head,
    h("section", {}, h("h2", {}, "Gradient norms before clipping (live)"), nonFinite, gradEl, zeroNoteEl, lossEl, lossZeroNoteEl),
    diagnosis, downloads, comparison,
    h("section", {}, h("h2", {}, "Plots"), plotsNote, gradPlot, heatPlot));
  const layerLabels = Array.from({ length: nLayers }, (_, i) => `layer ${i}`);
  const grad = new LiveChart(gradEl, "pre-clip gradient L2 norm", ["global", ...layerLabels], "norm (log)", zeroNoteEl);
  const loss = new LiveChart(lossEl, "training loss", ["loss"], "loss (log)", lossZeroNoteEl);

  renderHead(head, job, cancel);
  await loadHistory(job, grad, loss);
  if (TERMINAL.has(job.status)) {
    await finished(job);
    return;
  }
  const controller = new AbortController();
  let lastDiagnosis = 0;
  // An event carries one record (the latest) per flush: thousands of steps, and any spike in
  // them, may pass between two. While the job runs the history (downsampled, spikes kept) is
  // read again every 2 s, so the chart does not join two distant records with a straight line.
  let lastHistory = Date.now();
  await followEvents(job.id, (ev) => {
    const d = ev.data;
    if (d.latest) {
      grad.add(d.latest.step, [d.latest.grad_norm, ...(d.latest.layer_grad_norms || [])]);
      loss.add(d.latest.step, [d.latest.loss]);
      grad.draw(); loss.draw();
    }
    if (Date.now() - lastHistory > 2000) {
      lastHistory = Date.now();
      loadHistory(job, grad, loss).catch(() => {});
    }
    if (d.progress || d.status) {
      job = { ...job, ...(ev.event === "snapshot" ? d : {}), status: d.status || job.status,
              progress: d.progress || job.progress, latest: d.latest || job.latest };
      renderHead(head, job, cancel);
    }
    if (ev.event === "alert" || Date.now() - lastDiagnosis > 3000) {
      lastDiagnosis = Date.now();
      renderDiagnosis(diagnosis, job).catch(() => {});
    }
    const terminal = ev.event === "snapshot" ? TERMINAL.has(d.status) : ev.event === "status" && d.terminal;
    return terminal ? "stop" : undefined;
  }, controller.signal);
  job = await getJSON(`/v1/jobs/${job.id}`);
  renderHead(head, job, cancel);
  await loadHistory(job, grad, loss);
  await finished(job);

  async function finished(j) {
    if (j.first_non_finite) {
      const nf = j.first_non_finite;
      nonFinite.hidden = false;
      nonFinite.textContent = `First NaN/Inf at step ${nf.step}${nf.layer !== null ? `, layer ${nf.layer}` : ""}: ${nf.description}`;
    }
    renderDownloads(downloads, j);
    plotsNote.remove();
    await Promise.all([
      renderDiagnosis(diagnosis, j),
      renderComparison(comparison, j),
      imageInto(gradPlot, `/v1/jobs/${j.id}/plots/gradients`),
      imageInto(heatPlot, `/v1/jobs/${j.id}/plots/heatmap`),
    ].map((p) => p.catch((err) => console.warn(err))));
  }
}

async function loadHistory(job, grad, loss) {
  const mine = (grad.reads = (grad.reads || 0) + 1);
  const [g, m] = await Promise.all([
    getJSON(`/v1/jobs/${job.id}/gradients?metrics=grad_norm&max_points=1000`),
    getJSON(`/v1/jobs/${job.id}/metrics?metrics=grad_norm,loss&max_points=1000`),
  ]);
  if (grad.reads !== mine) return; // a later read (the final one) overtook this one
  grad.reset(); loss.reset();
  const layerValues = g.layers.map((ly) => new Map(ly.series.grad_norm.steps.map((s, i) => [s, ly.series.grad_norm.values[i]])));
  const gs = m.series.grad_norm || { steps: [], values: [] };
  gs.steps.forEach((step, i) => grad.add(step, [gs.values[i], ...layerValues.map((mp) => mp.get(step) ?? null)]));
  const ls = m.series.loss || { steps: [], values: [] };
  ls.steps.forEach((step, i) => loss.add(step, [ls.values[i]]));
  grad.draw(); loss.draw();
}

// the job's name, status, verdict and progress; `cancel` (a cancelControl) while it is queued
// or running
function renderHead(el, job, cancel) {
  const p = job.progress || { step: 0, total_steps: 0 };
  cancel.sync(!TERMINAL.has(job.status), job.status);
  fill(el,
    h("h1", {}, job.name || "(unnamed job)", " ", badge(job.status), " ",
      h("span", { id: "job-verdict", class: `badge ${job.verdict || ""}` }, job.verdict || "no verdict yet")),
    h("p", { class: "muted" }, `id ${job.id}`, job.parent_id ? " · repair of " : "",
      job.parent_id ? h("a", { href: `/jobs/${job.parent_id}`, id: "parent-link" }, job.parent_id.slice(0, 8)) : null,
      job.parent_sweep_id ? " · member of sweep " : "",
      job.parent_sweep_id ? h("a", { href: `/sweeps/${job.parent_sweep_id}`, id: "sweep-link" }, job.parent_sweep_id.slice(0, 8)) : null,
      job.launched_from ? ` · launched like member ${job.launched_from.member} of sweep ` : "",
      job.launched_from ? h("a", { href: `/sweeps/${job.launched_from.sweep_id}`, id: "launched-from-link" }, job.launched_from.sweep_id.slice(0, 8)) : null),
    h("p", { id: "job-progress" }, `step ${p.step} / ${p.total_steps}`,
      job.latest ? ` · loss ${fmt(job.latest.loss)} · global gradient norm ${fmt(job.latest.grad_norm)}` : "",
      job.stop_reason ? ` · stopped: ${job.stop_reason}` : "",
      job.runtime_seconds ? ` · ${job.runtime_seconds.toFixed(2)} s` : ""),
    job.error ? h("p", { class: "error" }, job.error) : null,
    cancel);
}

async function renderDiagnosis(el, job) {
  const d = await getJSON(`/v1/jobs/${job.id}/diagnostics`);
  const findings = h("ul", { class: "findings" }, d.findings.map((f) => h("li", {},
    badge(f.severity), " ", h("strong", {}, f.kind.replaceAll("_", " ")),
    f.step !== null ? ` at step ${f.step}` : "", f.layers.length ? ` in layer${f.layers.length > 1 ? "s" : ""} ${f.layers.join(", ")}` : "",
    h("div", {}, f.message))));
  const canRepair = TERMINAL.has(job.status);
  const recs = h("ol", { class: "recs", start: 0 }, d.recommendations.map((r, i) => h("li", {},
    h("strong", {}, r.action.replaceAll("_", " ")), " — ", r.rationale,
    r.expected_effect ? h("div", { class: "muted" }, r.expected_effect) : null,
    h("pre", {}, JSON.stringify(r.spec_patch, null, 1)),
    h("button", { class: "primary run-fix", "data-recommendation": i, disabled: !canRepair,
      title: canRepair ? "Run the job again with this change" : "Available when the job has finished",
      onclick: (e) => runFix(e.target, job.id, i) }, "Run this fix"))));
  fill(el, h("h2", {}, "Diagnosis", d.final ? "" : " (provisional)"),
    // no step recorded (cancelled while queued, or not started): no verdict to show
    h("p", {}, d.steps_analyzed ? [badge(d.verdict), " "] : null,
      h("span", { id: "diagnosis-summary" }, d.summary)),
    d.first_bad_step !== null ? h("p", {}, `Problem starts at step ${d.first_bad_step}.`) : null,
    d.findings.length ? h("h3", {}, "Findings") : null, findings,
    d.recommendations.length ? h("h3", {}, "Recommended fixes (best first)") : null, recs);
}

async function renderComparison(el, job) {
  let path = null;
  if (job.parent_id) path = `/v1/jobs/${job.id}/comparison`;
  else {
    const children = await getJSON(`/v1/jobs?parent_id=${job.id}&limit=1`);
    if (children.items.length) path = `/v1/jobs/${job.id}/comparison?other=${children.items[0].id}`;
  }
  if (!path) return;
  const c = await getJSON(path);
  const rows = [["verdict", "verdict"], ["status", "status"], ["stop reason", "stop_reason"],
    ["final loss", "final_loss"], ["peak gradient norm", "max_grad_norm"], ["first bad step", "first_bad_step"],
    ["first NaN/Inf step", "first_non_finite_step"], ["final validation loss", "final_val_loss"]];
  const img = h("img", { class: "plot", id: "comparison-plot", alt: "before/after comparison" });
  el.hidden = false;
  fill(el, h("h2", {}, "Before and after the repair"),
    h("p", { id: "comparison-summary" }, c.summary),
    c.spec_patch ? h("pre", {}, JSON.stringify(c.spec_patch, null, 1)) : null,
    h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, ""),
      h("th", {}, h("a", { href: `/jobs/${c.original.job_id}` }, "original")),
      h("th", {}, h("a", { href: `/jobs/${c.repair.job_id}` }, "repair")))),
    h("tbody", {}, rows.map(([label, key]) => h("tr", {}, h("td", {}, label), h("td", {}, fmt(c.original[key])), h("td", {}, fmt(c.repair[key])))))),
    img);
  const other = job.parent_id ? "" : `?other=${c.repair.job_id}`;
  await imageInto(img, `/v1/jobs/${job.id}/plots/comparison${other}`);
}

// ------------------------------------------------------------------ start
document.getElementById("forget-key").hidden = !sessionStorage.getItem(KEY);
document.getElementById("forget-key").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  location.reload();
});
const match = location.pathname.match(/^\/jobs\/([^/]+)$/);
const sweepMatch = location.pathname.match(/^\/sweeps\/([^/]+)$/);
const root = document.getElementById("app");
(match ? showJob(root, decodeURIComponent(match[1]))
  : sweepMatch ? showSweep(root, decodeURIComponent(sweepMatch[1])) : showList(root)).catch((err) => {
  root.replaceChildren(h("section", {}, h("p", { class: "error" }, problemText(err))));
});
