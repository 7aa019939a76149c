// report.html: draws the run's report.json (embedded in the page) offline.
"use strict";
(function () {
  const R = JSON.parse(document.getElementById("data").textContent);
  const app = document.getElementById("app");
  const us = Charts.fmtUs;
  document.getElementById("headline").textContent =
    `run ${R.run_id} · seed ${R.seed} · ${R.devices} devices · ${R.messages} messages`;

  const meta = [
    ["run id", R.run_id], ["seed", R.seed], ["version", R.version], ["config hash", R.config_hash],
    ["cores", `${R.cores} (${R.pinned_shards} pinned)`], ["clock", `${R.clock} (speed ${R.speed})`],
    ["start", R.start_time], ["end", R.end_time],
    ["duration", `${R.sim_seconds} sim-s, ${R.wall_seconds} wall-s (${R.sim_speed_ratio} sim-s per wall-s)`],
    ["devices", R.devices], ["messages / errors / dropped", `${R.messages} / ${R.errors} / ${R.dropped}`],
    ["msg/s", R.msgs_per_s], ["peak RSS", `${(R.peak_rss_bytes / 1048576).toFixed(1)} MiB`],
    ["CPU", `${R.cpu_seconds} s`], ["interrupted", R.interrupted],
  ];
  app.append(section("Run", el("div", { class: "kv" }, meta.map(([k, v]) => [el("div", {}, k), el("div", { id: "meta-" + k.replace(/\W+/g, "-") }, String(v))]))));

  // Per-row table and one percentile-distribution chart per row.
  const rowName = (r) => `${r.sink} / ${r.device_type}` + (r.requested_protocol ? ` (asked ${r.requested_protocol})` : "");
  app.append(section("Sinks and device types",
    table(["sink", "device type", "devices", "messages", "errors", "dropped", "msg/s", "p50", "p90", "p99", "p99.9", "max"],
      R.runs.map((r) => [r.sink, r.device_type, r.devices, r.messages, r.errors, r.dropped, r.msgs_per_s,
        us(r.latency_us.p50), us(r.latency_us.p90), us(r.latency_us.p99), us(r.latency_us.p999), us(r.latency_us.max)]), 2)));
  const dist = el("div", { class: "grid" });
  app.append(section("Latency percentile distribution (intended send time → completion)", dist));
  const charts = [];
  R.runs.forEach((r, i) => {
    const c = el("canvas", { class: "chart", id: "dist-" + i });
    dist.append(el("div", {}, el("div", { class: "muted" }, rowName(r)), c));
    charts.push(() => Charts.percentile(c, [{ name: "latency", points: r.latency_distribution || [] }], rowName(r)));
  });

  // Time series with sink events, fault windows and phases on the time axis.
  const T = R.timeline || { t_s: [] };
  const axis = T.axis === "sim" ? "sim seconds" : "wall seconds";
  const t0 = Date.parse(R.start_time);
  const toAxis = (iso) => {
    const s = (Date.parse(iso) - t0) / 1000;
    return T.axis === "sim" ? s : s / (R.speed || 1);
  };
  const marks = [], bands = [];
  (T.sink_events || []).forEach((n, i) => { if (n > 0) marks.push({ x: T.t_s[i], label: `${n} sink ev`, color: "#d97706" }); });
  let open = null;
  (T.faults_active || []).forEach((n, i) => {
    const x0 = i > 0 ? T.t_s[i - 1] : T.t_s[i];
    if (n > 0 && open === null) open = x0;
    if (n === 0 && open !== null) { bands.push({ x0: open, x1: x0, label: "faults", color: "rgba(220,38,38,0.12)" }); open = null; }
  });
  if (open !== null) bands.push({ x0: open, x1: T.t_s[T.t_s.length - 1], label: "faults", color: "rgba(220,38,38,0.12)" });
  (R.phases || []).forEach((p, k) => bands.push({ x0: toAxis(p.start_time), x1: toAxis(p.end_time), label: p.name, color: k % 2 ? "rgba(37,99,235,0.05)" : "rgba(22,163,74,0.06)" }));
  ((R.scenario && R.scenario.log) || []).forEach((l) => marks.push({ x: toAxis(l.sim_time), label: l.message.slice(0, 24), color: "#7c3aed" }));
  const series = (name, ys, color) => ({ name, xs: T.t_s, ys, color });
  const ts = el("div", { class: "grid" });
  // A virtual run is sampled by sim time: its throughput is per sim second of each point.
  const sim = T.axis === "sim";
  const perSim = (T.messages || []).map((m, i) => { const dt = T.t_s[i] - (i > 0 ? T.t_s[i - 1] : 0); return dt > 0 ? m / dt : NaN; });
  const every = sim ? "sampled by sim time" : "one point per wall second";
  app.append(section(`Over time (x: ${axis}; ${T.merged > 1 ? "each point merges " + T.merged + " raw points" : every})`, ts));
  const timeCharts = [
    sim ? ["ts-throughput", "throughput (msg per sim second)", [series("msg/sim-s", perSim)], Charts.fmt]
      : ["ts-throughput", "throughput (msg per wall second)", [series("msg/s", T.msgs_per_s)], Charts.fmt],
    ["ts-latency", "latency", [series("p50", T.p50_us), series("p99", T.p99_us, "#dc2626")], us],
    ["ts-errors", "errors and drops per point", [series("errors", T.errors, "#dc2626"), series("dropped", T.dropped, "#d97706")], Charts.fmt],
  ];
  if ((T.lateness_p99_us || []).length) timeCharts.push(["ts-lateness", "tick lateness p99", [series("lateness p99", T.lateness_p99_us, "#7c3aed")], us]);
  for (const [id, title, s, yFmt] of timeCharts) {
    const c = el("canvas", { class: "chart", id });
    ts.append(el("div", {}, el("div", { class: "muted" }, title), c));
    charts.push(() => Charts.plot(c, { series: s, yFmt, xFmt: Charts.fmtSeconds, marks, bands }));
  }

  if (R.tick_lateness_us) {
    const l = R.tick_lateness_us;
    app.append(section("Tick lateness", table(["p50", "p90", "p99", "p99.9", "max", "n"], [[us(l.p50), us(l.p90), us(l.p99), us(l.p999), us(l.max), l.count]])));
  }
  const ev = Object.entries(R.sink_events || {});
  if (ev.length) app.append(section("Sink events", table(["event", "count"], ev, 1)));
  if ((R.phases || []).length) {
    app.append(section("Phases", table(["phase", "start", "end", "sim-s", "messages", "errors", "dropped", "msg per sim-s"],
      R.phases.map((p) => [p.name, p.start_time, p.end_time, p.sim_seconds, p.messages, p.errors, p.dropped, p.msgs_per_sim_s]), 3)));
  }
  if ((R.thresholds || []).length) {
    app.append(section("Thresholds", table(["metric", "value", "limit", "verdict"],
      R.thresholds.map((v) => [v.metric + (v.phase ? ` (phase ${v.phase})` : ""), `${v.value} ${v.unit || ""}`, String(v.limit),
        el("span", { class: v.passed ? "pass" : "fail" }, v.passed ? "pass" : "FAIL")]), 1)));
  }
  if (R.scenario) {
    const sc = R.scenario;
    app.append(section("Scenario " + sc.name, el("div", { class: "muted" }, `${sc.file}: ${sc.steps} steps, ${sc.actions_applied} of ${sc.actions} actions applied`),
      table(["sim time", "step", "log"], (sc.log || []).map((l) => [l.sim_time, l.step, l.message]), 3)));
  }
  // Draw once laid out (canvas sizes come from CSS).
  for (const draw of charts) draw();
  window.addEventListener("resize", () => { for (const draw of charts) draw(); });
  window.chartsDrawn = charts.length;
})();
