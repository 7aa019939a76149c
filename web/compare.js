// compare.html: two reports side by side (the data is `report compare`'s output).
"use strict";
(function () {
  const C = JSON.parse(document.getElementById("data").textContent);
  const app = document.getElementById("app");
  document.getElementById("headline").textContent = `${C.old.path} → ${C.new.path}`;
  const pct = (d) => (d === null || d === undefined ? "–" : (d > 0 ? "+" : "") + d.toFixed(1) + "%");
  app.append(section("Runs", table(["", "report", "run id", "seed", "version", "config hash", "clock", "devices", "messages", "msg/s"],
    [["old", C.old.path, C.old.run_id, C.old.seed, C.old.version, C.old.config_hash, C.old.clock, C.old.devices, C.old.messages, C.old.msgs_per_s],
     ["new", C.new.path, C.new.run_id, C.new.seed, C.new.version, C.new.config_hash, C.new.clock, C.new.devices, C.new.messages, C.new.msgs_per_s]], 3)));
  const rows = [];
  for (const r of C.rows) {
    for (const m of r.metrics) {
      rows.push([`${r.sink} / ${r.device_type}`, m.name, m.old, m.new, el("span", { class: m.regression ? "worse" : "" }, pct(m.change_pct) + (m.regression ? " regression" : ""))]);
    }
  }
  app.append(section("Changes", table(["row", "metric", "old", "new", "change"], rows, 2)));
  if (C.not_compared.length) app.append(section("Not compared", el("ul", {}, C.not_compared.map((n) => el("li", {}, n)))));
  const grid = el("div", { class: "grid" });
  app.append(section("Latency percentile distributions (old and new)", grid));
  const draws = [];
  C.rows.forEach((r, i) => {
    const c = el("canvas", { class: "chart", id: "cmp-" + i });
    grid.append(el("div", {}, el("div", { class: "muted" }, `${r.sink} / ${r.device_type}`), c));
    draws.push(() => Charts.percentile(c, [
      { name: "old", points: r.old_distribution, color: "#6b7280" },
      { name: "new", points: r.new_distribution, color: "#2563eb" }], `${r.sink} / ${r.device_type}`));
  });
  for (const d of draws) d();
  window.chartsDrawn = draws.length;
})();
