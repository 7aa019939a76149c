// iot-sim charts: small hand-written canvas charts shared by report.html, compare.html and the
// live dashboard (no library, no network). Every chart records how many points it drew in
// `canvas.dataset.points` (the browser tests read it).
"use strict";
const Charts = (function () {
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];

  function setup(canvas) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 640, h = canvas.clientHeight || 220;
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = "11px system-ui, sans-serif";
    return { ctx, w, h };
  }

  // Round tick steps (1, 2, 5 x 10^n) covering [min, max] with about n ticks.
  function ticks(min, max, n) {
    if (!(max > min)) return [min];
    const raw = (max - min) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const out = [];
    for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) out.push(v);
    return out;
  }

  function fmt(v) {
    const a = Math.abs(v);
    if (a >= 1e9) return +(v / 1e9).toPrecision(3) + "G";
    if (a >= 1e6) return +(v / 1e6).toPrecision(3) + "M";
    if (a >= 1e3) return +(v / 1e3).toPrecision(3) + "k";
    return String(+v.toPrecision(3));
  }

  function fmtUs(v) {
    const a = Math.abs(v);
    if (a >= 1e6) return +(v / 1e6).toPrecision(3) + " s";
    if (a >= 1e3) return +(v / 1e3).toPrecision(3) + " ms";
    return +v.toPrecision(3) + " µs";
  }

  function fmtSeconds(v) {
    if (Math.abs(v) >= 3600) return +(v / 3600).toPrecision(3) + "h";
    if (Math.abs(v) >= 120) return +(v / 60).toPrecision(3) + "m";
    return +v.toPrecision(3) + "s";
  }

  // opts: series [{name, xs, ys, color}], xFmt, yFmt, xTicks [{v, label}], marks [{x, label,
  // color}], bands [{x0, x1, label, color}], title.
  function plot(canvas, opts) {
    const { ctx, w, h } = setup(canvas);
    const pad = { l: 62, r: 14, t: 22, b: 30 };
    const xFmt = opts.xFmt || fmt, yFmt = opts.yFmt || fmt;
    let xmin = Infinity, xmax = -Infinity, ymax = 0, n = 0;
    for (const s of opts.series) {
      for (let i = 0; i < s.xs.length; i++) {
        const x = s.xs[i], y = s.ys[i];
        if (!Number.isFinite(x) || !Number.isFinite(y)) continue;
        xmin = Math.min(xmin, x); xmax = Math.max(xmax, x); ymax = Math.max(ymax, y); n++;
      }
    }
    canvas.dataset.points = String(n);
    ctx.fillStyle = "#6b7280";
    if (n === 0) {
      ctx.fillText("no data yet", w / 2 - 30, h / 2);
      return;
    }
    if (xmax === xmin) { xmax = xmin + 1; }
    if (ymax === 0) ymax = 1;
    ymax *= 1.08;
    const X = (x) => pad.l + ((x - xmin) / (xmax - xmin)) * (w - pad.l - pad.r);
    const Y = (y) => h - pad.b - (y / ymax) * (h - pad.t - pad.b);
    for (const b of opts.bands || []) {
      const x0 = X(Math.max(b.x0, xmin)), x1 = X(Math.min(b.x1, xmax));
      if (x1 < x0) continue;
      ctx.fillStyle = b.color || "rgba(220,38,38,0.10)";
      ctx.fillRect(x0, pad.t, Math.max(1, x1 - x0), h - pad.t - pad.b);
      if (b.label) { ctx.fillStyle = "#374151"; ctx.fillText(b.label, x0 + 2, pad.t + 10); }
    }
    ctx.strokeStyle = "#e5e7eb"; ctx.fillStyle = "#6b7280"; ctx.lineWidth = 1;
    for (const v of ticks(0, ymax, 4)) {
      ctx.beginPath(); ctx.moveTo(pad.l, Y(v)); ctx.lineTo(w - pad.r, Y(v)); ctx.stroke();
      ctx.fillText(yFmt(v), 4, Y(v) + 4);
    }
    // Time axes tick on whole minutes or hours once they span that much.
    const span = xmax - xmin;
    const unit = xFmt === fmtSeconds ? (span >= 7200 ? 3600 : span >= 120 ? 60 : 1) : 1;
    const xt = opts.xTicks || ticks(xmin / unit, xmax / unit, 6).map((v) => ({ v: v * unit, label: xFmt(v * unit) }));
    for (const t of xt) {
      if (t.v < xmin - 1e-9 || t.v > xmax + 1e-9) continue;
      ctx.beginPath(); ctx.moveTo(X(t.v), pad.t); ctx.lineTo(X(t.v), h - pad.b); ctx.stroke();
      ctx.fillText(t.label, X(t.v) - 10, h - pad.b + 14);
    }
    ctx.strokeStyle = "#9ca3af";
    ctx.strokeRect(pad.l, pad.t, w - pad.l - pad.r, h - pad.t - pad.b);
    for (const m of opts.marks || []) {
      if (m.x < xmin || m.x > xmax) continue;
      ctx.strokeStyle = m.color || "#d97706"; ctx.setLineDash([4, 3]);
      ctx.beginPath(); ctx.moveTo(X(m.x), pad.t); ctx.lineTo(X(m.x), h - pad.b); ctx.stroke();
      ctx.setLineDash([]);
      if (m.label) { ctx.fillStyle = m.color || "#d97706"; ctx.fillText(m.label, X(m.x) + 2, h - pad.b - 4); }
    }
    let lx = pad.l + 4;
    opts.series.forEach((s, k) => {
      const color = s.color || COLORS[k % COLORS.length];
      ctx.strokeStyle = color; ctx.lineWidth = 1.6; ctx.beginPath();
      let started = false;
      for (let i = 0; i < s.xs.length; i++) {
        const x = s.xs[i], y = s.ys[i];
        if (!Number.isFinite(x) || !Number.isFinite(y)) { started = false; continue; }
        if (started) ctx.lineTo(X(x), Y(y)); else { ctx.moveTo(X(x), Y(y)); started = true; }
      }
      ctx.stroke(); ctx.lineWidth = 1;
      ctx.fillStyle = color; ctx.fillRect(lx, 6, 10, 10);
      ctx.fillStyle = "#111827"; ctx.fillText(s.name, lx + 13, 15);
      lx += 20 + ctx.measureText(s.name).width;
    });
    if (opts.title) { ctx.fillStyle = "#111827"; ctx.fillText(opts.title, w - pad.r - ctx.measureText(opts.title).width, 15); }
  }

  // HdrHistogram's percentile-distribution plot: x = log10(1/(1-p)) labelled 90%, 99%,
  // 99.9%...; the max (p = 1) sits a quarter step right of the last finite point.
  // series: [{name, points: [[p, µs], ...]}]
  function percentile(canvas, series, title) {
    let far = 0;
    const prepared = series.map((s) => {
      const xs = [], ys = [];
      for (const [p, v] of s.points) {
        if (p < 1) { const x = Math.log10(1 / (1 - p)); xs.push(x); far = Math.max(far, x); } else xs.push(null);
        ys.push(v);
      }
      return { name: s.name, xs, ys, color: s.color };
    });
    for (const s of prepared) for (let i = 0; i < s.xs.length; i++) if (s.xs[i] === null) s.xs[i] = far + 0.25;
    const top = Math.max(1, Math.ceil(far + 0.25));
    const xTicks = [];
    for (let k = 0; k <= top; k++) {
      const pct = 100 - 100 / Math.pow(10, k);
      xTicks.push({ v: k, label: k === 0 ? "0%" : String(+pct.toFixed(k)) + "%" });
    }
    plot(canvas, { series: prepared, xTicks, yFmt: fmtUs, title });
  }

  return { plot, percentile, fmt, fmtUs, fmtSeconds, COLORS };
})();

// Small DOM helpers shared by the pages: el("td", {class: "l"}, "text", child, ...).
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// A table from a header row and rows of cells (the first `left` columns left-aligned).
function table(head, rows, left) {
  const cls = (i) => (i < (left || 0) ? { class: "l" } : {});
  return el("table", {},
    el("thead", {}, el("tr", {}, head.map((t, i) => el("th", cls(i), t)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c, i) => el("td", cls(i), c))))));
}

function section(title, ...children) {
  return el("section", {}, el("h2", {}, title), ...children);
}
