// The job page's live charts (gradient norms per layer, loss) on uPlot's log axis: the class
// LiveChart and its y ticks (logTicks, tickLabel). Uses num(), PALETTE and zeroNote() (the note
// of exact zeros a log axis cannot draw) from dashboard.js (loaded after this file; they are
// only used once the page starts).
"use strict";

class LiveChart {
  // zeroEl (optional): where to say which series hold exact zeros (gaps on the log axis)
  constructor(el, title, labels, yLabel, zeroEl = null) {
    this.el = el;
    this.zeroEl = zeroEl;
    this.labels = labels;
    this.zeros = labels.map(() => new Set()); // per series, the steps whose value is exactly 0
    this.index = new Map();
    this.data = [[], ...labels.map(() => [])];
    // "layer k" in the colour the static plots below give it (matplotlib's cycle: C0 layer 0)
    let colour = 0;
    const series = [{ label: "step" }, ...labels.map((label) => ({
      label, stroke: label === "global" ? "#101828" : PALETTE[colour++ % PALETTE.length],
      width: label === "global" ? 2.5 : 1.2, spanGaps: false }))];
    this.plot = new uPlot({
      title, width: Math.max(280, el.clientWidth || 900), height: 300,
      scales: { x: { time: false }, y: { distr: 3 } },
      axes: [{ label: "step" }, { label: yLabel, size: 72,
        incrs: DECADES, splits: (u, axis, min, max) => logTicks(u, min, max), filter: (u, ticks) => ticks,
        values: (u, ticks) => {
          const labels = ticks.map((v) => (v === null ? "" : tickLabel(v)));
          el.dataset.yTicks = labels.join(" "); // the y labels drawn (for scripts and tests)
          return labels;
        } }], series,
    }, this.data, el);
    el.dataset.points = "0";
    el.liveChart = this; // for scripts and tests: the steps and values drawn (this.data)
  }
  // values: one per series; non-finite or non-positive values are gaps on a log axis
  add(step, values) {
    let row = this.index.get(step);
    if (row === undefined) {
      if (this.data[0].length && step < this.data[0][this.data[0].length - 1]) return; // out of order
      row = this.data[0].length;
      this.index.set(step, row);
      this.data[0].push(step);
      for (let s = 1; s < this.data.length; s++) this.data[s].push(null);
    }
    values.forEach((v, i) => {
      v = num(v);
      if (v === null || v === undefined) return;
      this.data[i + 1][row] = Number.isFinite(v) && v > 0 ? v : null;
      if (v === 0) this.zeros[i].add(step); else this.zeros[i].delete(step);
    });
  }
  draw() {
    this.plot.setData(this.data);
    this.el.dataset.points = String(this.data[0].length);
    if (this.zeroEl) {
      const note = zeroNote(this.labels, this.zeros);
      this.zeroEl.hidden = !note;
      this.zeroEl.textContent = note || "";
    }
  }
  reset() {
    this.index.clear();
    this.data = this.data.map(() => []);
    this.zeros = this.labels.map(() => new Set());
  }
}

// uPlot draws no ticks at all when none of an axis' increments fits its range: all decades
const DECADES = Array.from({ length: 601 }, (_, i) => 10 ** (i - 300));
// The y ticks of a live chart's log axis between min and max. uPlot's own log ticks fail on
// a diverging run: past ~20 decades they fall between powers of ten (1.1e24), past ~34 (the
// norms reach 1e80 before the Inf) there are none and the axis has no numbers at all. Here:
// powers of ten, every `stride` decades, with labels at least 28 px apart; over a decade or
// two also some of their multiples (1, 2, 3, 5, 7 as uPlot labels them).
function logTicks(u, min, max) {
  if (!(min > 0 && max >= min)) return [];
  const room = Math.max(2, Math.floor((u.bbox.height / devicePixelRatio || 200) / 28));
  const lo = Math.floor(Math.log10(min) + 1e-9), hi = Math.ceil(Math.log10(max) - 1e-9);
  const inRange = (v) => v >= min * (1 - 1e-9) && v <= max * (1 + 1e-9);
  for (const mults of [[1, 2, 3, 5, 7], [1, 2, 5], [1, 3], [1]]) {
    const ticks = [];
    for (let k = lo; k <= hi; k++) {
      for (const m of mults) if (inRange(m * 10 ** k)) ticks.push(m * 10 ** k);
    }
    if (ticks.length <= room) return ticks;
  }
  const needed = (hi - lo + 1) / room;
  const stride = [2, 3, 5, 10, 20, 25, 50, 100].find((n) => n >= needed) || Math.ceil(needed);
  const ticks = [];
  for (let k = Math.ceil(lo / stride) * stride; k <= hi; k += stride) {
    if (inRange(10 ** k)) ticks.push(10 ** k);
  }
  return ticks;
}

// a log tick (m × 10^k, one significant digit) as 1e+80, 3e-5, 0.2 or 300: fits the axis
const tickLabel = (v) => (v >= 1e4 || v < 1e-3 ? v.toExponential(0) : String(+v.toPrecision(1)));
