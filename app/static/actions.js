// What a person does to a job or a sweep from its page: cancel it while it is queued or running
// (job page and sweep page), run a recommended fix, download a finished job's files. Every
// request goes through api() / getJSON() of dashboard.js (the page's API key handling: a 401
// asks for the key and retries) and an API error is shown as its problem detail
// (problemText()). Uses h(), fill(), api(), getJSON(), problemText() and KEY from dashboard.js
// (loaded after this file; they are only called once the page starts).
"use strict";

// A "Cancel" button and the outcome beside it. Confirmed first (confirm()); then POST `path`
// and say what `outcome(answer)` says, or the API's problem detail (a 409 when the job or
// sweep finished meanwhile). `el.sync(active, status)`: the button is shown only while the job
// or sweep is queued or running (the page calls it as the status changes); once it has
// finished, a cancel that was asked for says how it ended.
function cancelControl(id, question, path, outcome) {
  const said = h("span", { id: `${id}-outcome`, class: "muted" });
  let asked = false; // the cancel was accepted (202)
  let ended = null; // the final status, once the page saw it
  const sayHowItEnded = () => {
    if (!asked || !ended) return;
    said.className = "muted";
    said.textContent = ended === "cancelled" ? "Cancelled." : `It finished first: ${ended}.`;
  };
  const button = h("button", { type: "button", id, class: "cancel", onclick: async () => {
    if (!confirm(question)) return;
    button.disabled = true;
    said.className = "muted";
    said.textContent = "Cancelling…";
    try {
      said.textContent = outcome(await getJSON(path, { method: "POST" }));
      asked = true;
      sayHowItEnded(); // the events may have told the end before this answer
    } catch (err) {
      button.disabled = err instanceof ApiError && err.status === 409; // finished meanwhile
      said.className = "error";
      said.textContent = problemText(err);
    }
  } }, "Cancel");
  const el = h("div", { class: "cancel-control" }, button, " ", said);
  el.sync = (active, status) => {
    button.hidden = !active;
    ended = active ? null : status;
    sayHowItEnded();
    el.hidden = !active && !said.textContent;
  };
  return el;
}

// POST /v1/jobs/{id}/cancel: a queued job is cancelled at once, a running one stops within
// one flush (the page follows its events, so its status changes when it does)
const jobCancel = (jobId) => cancelControl("cancel-job",
  "Cancel this job? A running job stops within one flush and keeps what it recorded.",
  `/v1/jobs/${jobId}/cancel`,
  (job) => (job.status === "cancelled" ? "Cancelled."
    : "Cancel requested: the job stops at its next flush and keeps what it recorded."));

// POST /v1/sweeps/{id}/cancel: queued members are cancelled at once, running ones stop
// within one flush
const sweepCancel = (sweepId) => cancelControl("cancel-sweep",
  "Cancel this sweep? Its queued members are cancelled now, running ones stop within one flush.",
  `/v1/sweeps/${sweepId}/cancel`,
  (sweep) => (sweep.status === "cancelled" ? "Cancelled."
    : "Cancel requested: queued members are cancelled, running ones stop at their next flush."));

async function runFix(button, jobId, index) {
  button.disabled = true;
  button.textContent = "Starting…";
  try {
    const child = await getJSON(`/v1/jobs/${jobId}/repair`, { method: "POST", json: { recommendation: index } });
    location.assign(`/jobs/${child.id}`);
  } catch (err) {
    button.disabled = false;
    button.textContent = "Run this fix";
    button.after(h("pre", { class: "error" }, problemText(err)));
  }
}

// A finished job's files. The links are plain downloads (the server names the file); with an
// API key they are fetched with the key header instead (never in a URL) and saved from a blob.
// The model is always fetched first, so a missing or exploded model shows the server's problem
// detail here instead of downloading it as a file.
function renderDownloads(el, job) {
  const link = (id, path, file, text, always) => h("a", { id, href: path, download: file,
    class: "download", onclick: (e) => {
      if (!always && !sessionStorage.getItem(KEY)) return; // the browser streams it
      e.preventDefault();
      saveFrom(e.currentTarget, path, file);
    } }, text);
  const exports = ["metrics", "gradients"].flatMap((t) => [
    link(`export-${t}-csv`, `/v1/jobs/${job.id}/${t}.csv`, `${job.id}-${t}.csv`, `${t}.csv`),
    " ",
    link(`export-${t}-parquet`, `/v1/jobs/${job.id}/${t}.parquet`, `${job.id}-${t}.parquet`, `${t}.parquet`),
    " "]);
  el.hidden = false;
  fill(el, h("h2", {}, "Downloads"),
    h("p", {}, link("download-model", `/v1/jobs/${job.id}/model`, `${job.id}-final.npz`, "Download model", true),
      h("span", { class: "muted" }, " (.npz; load it with core.load_model)")),
    h("p", {}, "Export CSV / Parquet (every recorded point): ", ...exports));
}

async function saveFrom(a, path, file) {
  a.parentElement.querySelectorAll(".error").forEach((e) => e.remove());
  try {
    const url = URL.createObjectURL(await (await api(path)).blob());
    const save = h("a", { href: url, download: file, hidden: true });
    document.body.append(save);
    save.click();
    save.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (err) {
    a.parentElement.append(h("span", { class: "error" }, " ", problemText(err)));
  }
}
