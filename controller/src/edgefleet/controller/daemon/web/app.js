// The fleet page: reads /api/v1 every few seconds and redraws. All data goes in with
// textContent, never as HTML.
"use strict";

const REFRESH_MS = 3000;
const COLOURS = ["#2f6fde", "#e8590c", "#2b8a3e", "#ae3ec9", "#c92a2a", "#1098ad", "#5c940d"];
const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}

async function api(path) {
  const answer = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (answer.status === 401) { window.location.assign("/"); throw new Error("logged out"); }
  if (!answer.ok) throw new Error(path + ": " + answer.status);
  return answer.json();
}

function drawSummary(s) {
  const box = $("summary");
  box.replaceChildren(el("span", s.devices + " devices"), el("span", s.online + " online", "online"));
  for (const [state, n] of Object.entries(s.states)) box.append(el("span", n + " " + state, state));
  const select = $("profile");
  const known = new Set(Array.from(select.options).map((o) => o.value));
  for (const profile of Object.keys(s.profiles)) {
    if (!known.has(profile)) select.append(new Option(profile, profile));
  }
}

function drawDevices(devices) {
  const body = $("devices").tBodies[0];
  body.replaceChildren(...devices.map((d) => {
    const row = el("tr");
    row.dataset.device = d.device;
    row.append(
      el("td", d.device),
      el("td", d.online ? "online" : "offline", d.online ? "online" : "offline"),
      el("td", d.profile),
      el("td", d.desired || "—"),
      el("td", d.serving || "—"),
      el("td", d.state || "—", d.state || ""),
      el("td", d.p95_ms == null ? "—" : d.p95_ms.toFixed(2)),
      el("td", d.cpu_percent == null ? "—" : d.cpu_percent.toFixed(0)),
      el("td", ago(d.last_seen)),
    );
    return row;
  }));
}

function drawDeployments(deployments) {
  const box = $("deployments");
  if (!deployments.length) { box.replaceChildren(el("p", "No deployments yet.")); return; }
  box.replaceChildren(...deployments.map((dep) => {
    const card = el("div", null, "deployment");
    card.dataset.deployment = dep.deployment_id;
    const title = el("div");
    title.append(el("strong", dep.model + " "), el("span", dep.state, dep.state),
      el("span", " · " + dep.finished + "/" + dep.total + " devices finished · " + dep.deployment_id
        + (dep.started_by ? " · by " + dep.started_by : "")));
    if (dep.reason) title.append(el("div", dep.reason));
    const bar = el("div", null, "bar");
    const fill = el("div");
    fill.style.width = (dep.total ? (100 * dep.finished) / dep.total : 0) + "%";
    bar.append(fill);
    const counts = el("div", Object.entries(dep.states).map(([k, v]) => v + " " + k).join(", "));
    const details = el("details");
    details.append(el("summary", "devices, waves and gates"));
    for (const wave of dep.waves) {
      const table = el("table");
      for (const d of wave.devices) {
        const row = el("tr");
        row.append(el("td", "wave " + wave.index), el("td", d.device), el("td", d.profile),
          el("td", d.state, d.state), el("td", d.error_code ? d.error_code + ": " + (d.error_message || "") : ""));
        table.append(row);
      }
      details.append(table);
      if (wave.state) details.append(el("p", "wave " + wave.index + ": " + wave.state));
      if (!wave.gates.length) {
        details.append(el("p", dep.kind === "rollout" ? "no gate evaluated yet" : "no gates (a deployment is one wave)"));
      }
      for (const g of wave.gates) {
        details.append(el("p", g.gate + " " + g.decision + ": " + g.detail, g.decision));
      }
    }
    card.append(title, bar, counts, details);
    return card;
  }));
}

function drawChart(chart) {
  const svg = $("chart");
  const NS = "http://www.w3.org/2000/svg";
  const W = 900, H = 260, L = 50, B = 24, T = 10, R = 10;
  const node = (tag, attrs, text) => {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
    if (text !== undefined) n.textContent = text;
    return n;
  };
  const all = chart.series.flatMap((s) => s.points.filter((p) => p[1] != null));
  const parts = [node("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#98a2b3" }),
    node("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#98a2b3" })];
  const legend = $("legend");
  legend.replaceChildren();
  if (!all.length) {
    parts.push(node("text", { x: L + 10, y: H / 2 }, "no latency reported in the last 30 minutes"));
    svg.replaceChildren(...parts);
    return;
  }
  const t0 = Date.parse(chart.since), t1 = Date.now();
  const ymax = Math.max(...all.map((p) => p[1])) * 1.15 || 1;
  const x = (iso) => L + ((Date.parse(iso) - t0) / Math.max(1, t1 - t0)) * (W - L - R);
  const y = (v) => H - B - (v / ymax) * (H - B - T);
  for (let i = 0; i <= 4; i++) {
    const v = (ymax * i) / 4;
    parts.push(node("text", { x: 4, y: y(v) + 4 }, v.toFixed(v < 10 ? 2 : 0) + " ms"));
  }
  parts.push(node("text", { x: L, y: H - 6 }, new Date(t0).toLocaleTimeString()));
  parts.push(node("text", { x: W - R - 60, y: H - 6 }, new Date(t1).toLocaleTimeString()));
  chart.series.forEach((s, i) => {
    const colour = COLOURS[i % COLOURS.length];
    const points = s.points.filter((p) => p[1] != null).map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1));
    parts.push(node("polyline", { points: points.join(" "), fill: "none", stroke: colour, "stroke-width": 2, "data-model": s.model }));
    for (const p of points) {
      const [cx, cy] = p.split(",");
      parts.push(node("circle", { cx, cy, r: 2.5, fill: colour }));
    }
    const key = el("span");
    const swatch = el("i");
    swatch.style.background = colour;
    key.append(swatch, document.createTextNode(s.model));
    legend.append(key);
  });
  svg.replaceChildren(...parts);
}

function drawEvents(events) {
  const body = $("events").tBodies[0];
  body.replaceChildren(...events.slice().reverse().map((e) => {
    const row = el("tr");
    row.append(el("td", new Date(e.at).toLocaleTimeString()), el("td", e.device),
      el("td", e.deployment_id || ""), el("td", e.state, e.ok ? e.state : "error"),
      el("td", e.error_code ? e.error_code + ": " + e.message : ""));
    return row;
  }));
}

async function refresh() {
  const filters = new URLSearchParams();
  if ($("q").value) filters.set("q", $("q").value);
  if ($("profile").value) filters.set("profile", $("profile").value);
  if ($("online").value) filters.set("online", $("online").value);
  try {
    const [status, deployments, latency, events] = await Promise.all([
      api("/api/v1/status?" + filters), api("/api/v1/deployments?limit=10"),
      api("/api/v1/latency?minutes=30"), api("/api/v1/events?limit=30"),
    ]);
    drawSummary(status.summary);
    drawDevices(status.devices);
    drawDeployments(deployments);
    drawChart(latency);
    drawEvents(events);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
  } catch (err) {
    $("updated").textContent = "cannot refresh: " + err.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const id of ["q", "profile", "online"]) $(id).addEventListener("input", refresh);
  refresh();
  setInterval(refresh, REFRESH_MS);
});
