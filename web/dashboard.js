// The live dashboard (GET / of the admin server). It polls the server's aggregates
// (/api/v1/overview, /api/v1/history), pages through devices (/api/v1/devices), streams
// telemetry over SSE (/api/v1/telemetry/stream) and posts the control forms to the same
// routes as any client; a refused request shows the server's message next to its form.
"use strict";
(function () {
  const RUN = JSON.parse(document.getElementById("data").textContent);
  const app = document.getElementById("app");
  document.getElementById("headline").textContent = `run ${RUN.run_id} · seed ${RUN.seed} · ${RUN.clock} clock · v${RUN.version}`;
  let token = sessionStorage.getItem("iotSimToken") || "";

  async function getJson(url) {
    const r = await fetch(url, { cache: "no-store" });
    const body = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
    if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
    return body;
  }
  async function send(method, url, body) {
    const headers = { "content-type": "application/json" };
    if (token) headers.authorization = "Bearer " + token;
    const r = await fetch(url, { method, headers, body: JSON.stringify(body) });
    const out = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
    if (!r.ok) throw new Error(out.error || `HTTP ${r.status}`);
    return out;
  }
  // A selector box's value as the API's selector object (empty = every device).
  const selectorOf = (s) => (s.trim() ? { label_selector: s.trim() } : undefined);

  // Overview.
  const overview = el("div", { id: "overview", class: "kv" });
  const types = el("div", { id: "types" });
  const faults = el("div", { id: "faults" });
  const sinks = el("div", { id: "sinks" });
  const scenario = el("div", { id: "scenario" });
  const thresholds = el("div", { id: "thresholds" });
  const byLabel = el("div", { id: "by-label" });
  const labelForm = form("label", [["key", "count devices by label", { value: "device_type", size: 14 }], ["selector", "selector", { size: 16 }]], "count",
    async (v) => { await refreshLabels(v); return ""; });
  app.append(el("div", { class: "grid" },
    section("Fleet", overview),
    section("Scenario and thresholds", scenario, thresholds),
    section("Device types", types),
    section("Faults and sinks", faults, sinks),
    section("Devices by label", labelForm.node, byLabel)));
  async function refreshLabels(v) {
    const q = new URLSearchParams({ key: v.key });
    if (v.selector.trim()) q.set("selector", v.selector.trim());
    const r = await getJson("/api/v1/overview/labels?" + q);
    const rows = r.values.map((x) => [x.value === null ? "(no such label)" : x.value, x.devices]);
    if (r.other_values) rows.push([`${r.other_values} other values`, r.other_devices]);
    byLabel.replaceChildren(table([r.key, "devices"], rows, 1));
  }

  function kv(pairs) {
    return pairs.flatMap(([k, v, id]) => [el("div", {}, k), el("div", id ? { id } : {}, String(v))]);
  }
  async function refreshOverview() {
    const o = await getJson("/api/v1/overview");
    overview.replaceChildren(...kv([
      ["devices", o.devices, "devices-total"], ["running / paused", `${o.by_state.running} / ${o.by_state.paused}`, "devices-state"],
      ["messages", o.messages, "messages-total"], ["msg/s", o.msgs_per_s, "msgs-per-s"], ["errors", o.errors, "errors-total"],
      ["shards running", `${o.shards_running} of ${o.shards}`], ["uptime", Charts.fmtSeconds(o.uptime_s)],
      ["stream points dropped", o.telemetry_points_dropped]]));
    types.replaceChildren(table(["device type", "protocol", "devices", "messages", "errors", "dropped"],
      o.by_type.map((t) => [t.device_type, t.protocol, t.devices, t.messages, t.errors, t.dropped]), 2));
    const active = Object.entries(o.faults_active).filter(([, n]) => n > 0);
    faults.replaceChildren(el("div", { id: "faults-active" }, active.length ? "active faults: " + active.map(([k, n]) => `${k} on ${n}`).join(", ") : "no active faults"));
    sinks.replaceChildren(o.sinks.length
      ? table(["sink", "connected", "queue"], o.sinks.map((s) => [s.sink, `${s.connected} of ${s.connections}`, s.queue_depth]), 1)
      : el("div", { class: "muted" }, "no network sinks"),
      Object.keys(o.sink_events).length ? el("div", { class: "muted" }, "sink events: " + Object.entries(o.sink_events).map(([k, v]) => `${k}=${v}`).join(" ")) : "");
    scenario.replaceChildren(el("div", { id: "scenario-phase" }, o.scenario ? `scenario ${o.scenario.name}: phase ${o.scenario.phase}` : "no scenario phase"));
  }

  // Thresholds: "so far" on the running figures, the run's verdicts once it ended.
  const fmtValue = (v) => (v.unit === "µs" ? Charts.fmtUs(v.value) : v.unit === "ratio" ? (100 * v.value).toFixed(3) + "%" : String(v.value) + " " + v.unit);
  async function refreshThresholds() {
    const r = await getJson("/api/v1/thresholds");
    if (!r.thresholds.length) { thresholds.replaceChildren(el("div", { class: "muted" }, "no thresholds")); return; }
    const rows = r.thresholds.map((t) => {
      const scope = [t.phase ? "phase " + t.phase : "whole run", t.sink ? "sink " + t.sink : "", t.device_type ? "type " + t.device_type : ""].filter(Boolean).join(", ");
      const v = t.verdict;
      const status = t.status === "at_end" ? "at the end: " + t.reason
        : (v.passed ? "pass" : "FAIL") + (t.status === "so_far" ? " so far" : "") + (v.note ? ` (${v.note})` : "");
      return [t.metric, `${t.bound === "max" ? "≤" : "≥"} ${t.limit}`, scope, t.abort ? "abort" : "", v ? fmtValue(v) : "–", status];
    });
    thresholds.replaceChildren(el("div", { class: "muted", id: "thresholds-state" }, r.ended ? "run ended: final verdicts" : "running: whole-run thresholds judged so far"),
      table(["metric", "limit", "span", "abort", "value", "status"], rows, 4));
  }

  // Live charts of the last minutes (the server keeps the history).
  const c = {
    rate: el("canvas", { class: "small", id: "chart-rate" }),
    errors: el("canvas", { class: "small", id: "chart-errors" }),
    latency: el("canvas", { class: "small", id: "chart-latency" }),
    lateness: el("canvas", { class: "small", id: "chart-lateness" }),
  };
  app.append(section("Last minutes (x: seconds since the runtime started)", el("div", { class: "grid" },
    el("div", {}, el("div", { class: "muted" }, "messages per second"), c.rate),
    el("div", {}, el("div", { class: "muted" }, "errors and drops per second"), c.errors),
    el("div", {}, el("div", { class: "muted" }, "latency p50 / p99 per device type"), c.latency),
    el("div", {}, el("div", { class: "muted" }, "tick lateness p99"), c.lateness))));
  async function refreshCharts() {
    const h = await getJson("/api/v1/history");
    const P = h.points, xs = P.map((p) => p.t_s);
    const col = (f) => P.map(f);
    Charts.plot(c.rate, { series: [{ name: "msg/s", xs, ys: col((p) => p.msgs_per_s) }], xFmt: Charts.fmtSeconds });
    Charts.plot(c.errors, { series: [{ name: "errors/s", xs, ys: col((p) => p.errors_per_s), color: "#dc2626" }, { name: "drops/s", xs, ys: col((p) => p.drops_per_s), color: "#d97706" }], xFmt: Charts.fmtSeconds });
    const names = [...new Set(P.flatMap((p) => Object.keys(p.by_type)))].slice(0, 6);
    const lat = names.flatMap((n, i) => [
      { name: n + " p50", xs, ys: col((p) => (p.by_type[n] ? p.by_type[n].p50_us : NaN)), color: Charts.COLORS[(2 * i) % 8] },
      { name: n + " p99", xs, ys: col((p) => (p.by_type[n] ? p.by_type[n].p99_us : NaN)), color: Charts.COLORS[(2 * i + 1) % 8] }]);
    Charts.plot(c.latency, { series: lat, yFmt: Charts.fmtUs, xFmt: Charts.fmtSeconds });
    Charts.plot(c.lateness, { series: [{ name: "lateness p99", xs, ys: col((p) => p.lateness_p99_us), color: "#7c3aed" }], yFmt: Charts.fmtUs, xFmt: Charts.fmtSeconds });
  }

  // A form whose result (or the server's refusal) shows right under it.
  function form(id, fields, button, action) {
    const msg = el("div", { class: "error", id: id + "-error" });
    const ok = el("div", { class: "ok", id: id + "-ok" });
    const inputs = {};
    const f = el("form", { id },
      fields.map(([name, label, attrs]) => {
        const input = attrs && attrs.options
          ? el("select", { name, id: id + "-" + name }, attrs.options.map((o) => el("option", { value: o }, o)))
          : el("input", Object.assign({ name, id: id + "-" + name }, attrs || {}));
        inputs[name] = input;
        return el("label", {}, label, input);
      }),
      el("button", { type: "submit", id: id + "-submit" }, button));
    f.addEventListener("submit", async (e) => {
      e.preventDefault();
      msg.textContent = ""; ok.textContent = "";
      const values = Object.fromEntries(Object.entries(inputs).map(([k, i]) => [k, i.value]));
      try { ok.textContent = await action(values); refreshOverview().catch(() => {}); } catch (err) { msg.textContent = err.message; }
    });
    return { node: el("div", {}, f, msg, ok), inputs };
  }

  // Spawn: a device type the runtime runs, a count, an id prefix, labels.
  const spawn = form("spawn", [["device_type", "device type", { options: [] }], ["count", "count", { value: "10", size: 6 }],
    ["prefix", "id prefix", { value: "dash", size: 10 }], ["labels", "labels (k=v,k=v)", { value: "", size: 18 }]], "spawn",
    async (v) => {
      const [device_type, protocol] = v.device_type.split(" @ ");
      const count = Number(v.count);
      if (!Number.isInteger(count) || count < 1 || count > 10000) throw new Error(`count: expected 1 to 10000, got ${v.count}`);
      const labels = {};
      for (const kv of v.labels.split(",").map((s) => s.trim()).filter(Boolean)) {
        const i = kv.indexOf("=");
        if (i < 1) throw new Error(`labels: expected key=value, got ${kv}`);
        labels[kv.slice(0, i).trim()] = kv.slice(i + 1).trim();
      }
      const specs = [];
      for (let i = 0; i < count; i++) specs.push({ device_id: `${v.prefix}-${i}`, device_type, protocol: protocol || "", labels });
      const r = await send("POST", "/api/v1/spawn", { specs });
      const failed = Object.entries(r.failure_reasons || {});
      if (r.spawned === 0 && failed.length) throw new Error(failed.slice(0, 3).map(([id, why]) => `${id}: ${why}`).join("; "));
      return `spawned ${r.spawned}` + (failed.length ? `, ${failed.length} refused (${failed[0][0]}: ${failed[0][1]})` : "");
    });
  const spawnHint = el("div", { class: "muted", id: "spawn-hint" });
  const select = (verb, path, key) => form(verb, [["selector", "selector (empty = all)", { size: 24 }]], verb,
    async (v) => { const r = await send("POST", path, { selector: selectorOf(v.selector) }); return `${verb}: ${r[key]} device(s)`; });
  const stop = select("stop", "/api/v1/stop", "stopped");
  const pause = select("pause", "/api/v1/pause", "affected");
  const resume = select("resume", "/api/v1/resume", "affected");
  const fault = form("fault", [["selector", "selector (empty = all)", { size: 20 }],
    ["fault_type", "fault", { options: ["disconnect", "latency_spike", "data_corruption", "battery_drain", "clock_drift"] }],
    ["duration", "duration (empty = until cleared)", { size: 8 }], ["parameters", "parameters (JSON)", { size: 16 }]], "inject",
    async (v) => {
      const body = { selector: selectorOf(v.selector), fault_type: v.fault_type };
      if (v.duration.trim()) body.duration = v.duration.trim();
      if (v.parameters.trim()) {
        try { body.parameters = JSON.parse(v.parameters); } catch (e) { throw new Error("parameters: not JSON: " + e.message); }
      }
      const r = await send("POST", "/api/v1/faults", body);
      return `fault on ${r.affected} device(s)`;
    });
  const clear = form("clear", [["selector", "selector (empty = all)", { size: 20 }]], "clear faults",
    async (v) => { const r = await send("DELETE", "/api/v1/faults", { selector: selectorOf(v.selector) }); return `cleared on ${r.cleared} device(s)`; });
  const tokenBox = el("input", { id: "token", type: "password", size: 16, value: token, placeholder: "only if the server has one" });
  tokenBox.addEventListener("change", () => { token = tokenBox.value; sessionStorage.setItem("iotSimToken", token); });
  app.append(section("Control", el("label", {}, "bearer token (IOT_SIM_ADMIN_TOKEN)", tokenBox),
    el("h2", {}, "Spawn"), spawnHint, spawn.node, el("h2", {}, "Stop, pause, resume"), stop.node, pause.node, resume.node,
    el("h2", {}, "Faults"), fault.node, clear.node));

  // Device browser: a selector, pages of 20 by id.
  const browser = el("div", { id: "devices" });
  let cursors = [null], page = 0;
  const browse = form("browse", [["selector", "selector", { size: 28 }]], "show", async () => { cursors = [null]; page = 0; await showPage(); return ""; });
  const prev = el("button", { id: "devices-prev", type: "button" }, "◀ previous");
  const next = el("button", { id: "devices-next", type: "button" }, "next ▶");
  const pageInfo = el("span", { id: "devices-page", class: "muted" });
  prev.addEventListener("click", () => { if (page > 0) { page--; showPage().catch((e) => (browse.node.querySelector(".error").textContent = e.message)); } });
  next.addEventListener("click", () => { if (cursors[page + 1] !== undefined) { page++; showPage().catch((e) => (browse.node.querySelector(".error").textContent = e.message)); } });
  async function showPage() {
    const q = new URLSearchParams({ limit: "20" });
    if (browse.inputs.selector.value.trim()) q.set("selector", browse.inputs.selector.value.trim());
    if (cursors[page]) q.set("after", cursors[page]);
    const r = await getJson("/api/v1/devices?" + q);
    cursors[page + 1] = r.next_after || undefined;
    pageInfo.textContent = `page ${page + 1} · ${r.total} matching`;
    browser.replaceChildren(table(["id", "type", "state", "labels", "faults", "messages", ""],
      r.devices.map((d) => [d.id, d.type, d.state, Object.entries(d.labels).map(([k, v]) => `${k}=${v}`).join(","), d.faults.join(","), d.messages_sent,
        el("button", { type: "button", class: "watch", onclick: () => watchDevice(d.id) }, "watch")]), 5));
  }
  app.append(section("Devices", browse.node, el("div", {}, prev, " ", next, " ", pageInfo), browser));

  // Live telemetry (SSE) for a selector or one device, with pause.
  const live = el("tbody", { id: "live-rows" });
  const liveInfo = el("div", { class: "muted", id: "live-info" });
  const liveChart = el("canvas", { class: "small", id: "chart-device" });
  let source = null, paused = false;
  const rows = [];
  const series = new Map();
  const stream = form("stream", [["selector", "selector (or pick watch in Devices)", { size: 28 }]], "stream",
    async (v) => { openStream(new URLSearchParams(v.selector.trim() ? { selector: v.selector.trim() } : {})); return ""; });
  const pauseBtn = el("button", { id: "live-pause", type: "button" }, "pause");
  pauseBtn.addEventListener("click", () => { paused = !paused; pauseBtn.textContent = paused ? "resume" : "pause"; });
  function watchDevice(id) { openStream(new URLSearchParams({ device_id: id })); }
  function openStream(q) {
    if (source) source.close();
    rows.length = 0; series.clear(); live.replaceChildren();
    liveInfo.textContent = "connecting: " + q;
    source = new EventSource("/api/v1/telemetry/stream?" + q);
    source.addEventListener("points", (e) => {
      const b = JSON.parse(e.data);
      liveInfo.textContent = `${q} · ${b.points.length} points this flush · ${b.dropped} dropped so far`;
      if (paused) return;
      for (const p of b.points) {
        rows.unshift(p);
        if (typeof p.value === "number") {
          const k = p.device_id + " " + p.metric;
          if (!series.has(k) && series.size < 6) series.set(k, []);
          if (series.has(k)) { const s = series.get(k); s.push([Date.parse(p.at) / 1000, p.value]); if (s.length > 300) s.shift(); }
        }
      }
      rows.length = Math.min(rows.length, 50);
      live.replaceChildren(...rows.map((p) => el("tr", {}, el("td", { class: "l" }, p.at), el("td", { class: "l" }, p.device_id), el("td", { class: "l" }, p.metric), el("td", {}, JSON.stringify(p.value)))));
      const t0 = Math.min(...[...series.values()].map((s) => (s.length ? s[0][0] : Infinity)));
      Charts.plot(liveChart, { series: [...series.entries()].map(([k, s]) => ({ name: k, xs: s.map((p) => p[0] - t0), ys: s.map((p) => p[1]) })), xFmt: Charts.fmtSeconds });
    });
    // A stream ends at the server's request deadline and EventSource reconnects by itself;
    // a refused one (bad selector, too many streams) is closed: fetch it once for the reason.
    source.onerror = () => {
      if (source.readyState !== EventSource.CLOSED) return;
      const ctl = new AbortController();
      fetch("/api/v1/telemetry/stream?" + q, { signal: ctl.signal })
        .then(async (r) => { liveInfo.textContent = r.ok ? "stream interrupted: press stream again" : "stream refused: " + ((await r.json().catch(() => ({}))).error || r.status); ctl.abort(); })
        .catch((e) => (liveInfo.textContent = "stream closed: " + e.message));
    };
  }
  app.append(section("Live telemetry", stream.node, el("div", {}, pauseBtn), liveInfo, liveChart,
    el("div", { class: "scroll" }, el("table", {}, el("thead", {}, el("tr", {}, ["sim time", "device", "metric", "value"].map((h) => el("th", { class: "l" }, h)))), live))));

  async function loadProfiles() {
    const p = await getJson("/api/v1/profiles");
    spawn.inputs.device_type.replaceChildren(...p.profiles.map((x) => el("option", { value: `${x.device_type} @ ${x.protocol}` }, `${x.device_type} (${x.protocol})`)));
    // No profile anywhere: say so (and how to get one) instead of an empty select.
    spawnHint.textContent = p.profiles.length ? "" : "no device types yet: start with --config naming [profiles.*] (no [[fleet]] needed), or spawn one over gRPC or POST /api/v1/spawn with a device_type";
  }
  const status = el("div", { class: "error", id: "poll-error" });
  app.prepend(status);
  async function tick() {
    try {
      await refreshOverview(); await refreshThresholds(); await refreshCharts(); status.textContent = "";
      // A runtime that had no device type yet may have one now (spawned over gRPC or HTTP).
      if (!spawn.inputs.device_type.options.length) await loadProfiles();
    } catch (e) { status.textContent = "cannot reach the runtime: " + e.message; }
  }
  loadProfiles().catch((e) => (status.textContent = e.message));
  refreshLabels({ key: "device_type", selector: "" }).catch(() => {});
  tick();
  showPage().catch(() => {});
  setInterval(tick, 1000);
  window.dashboardReady = true;
})();
