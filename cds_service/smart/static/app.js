/* The course app after the launch: finish the token exchange (fhirclient keeps the token in this tab's
 * sessionStorage), read the patient's record from the FHIR server the launch named, and draw it.
 * Nothing about the patient is sent to the service: its only request here is terminology.json. */
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);

  const PANELS = [
    // scale id, title, series (group -> label, colour), stack weight
    { id: "yCreat", title: "Creatinine mg/dL", weight: 3, series: [["creatinine", "Creatinine", "#1f4e9c"]] },
    { id: "yEgfr", title: "eGFR mL/min/1.73 m²", weight: 2, series: [["egfr", "eGFR", "#2a7f62"]] },
    { id: "yTac", title: "Tacrolimus ng/mL", weight: 2, series: [["tacrolimus-level", "Tacrolimus level", "#7a3a9a"]] },
    { id: "yUpcr", title: "UPCR g/g", weight: 2, series: [["upcr", "UPCR", "#9c5a1f"]] },
    { id: "yBp", title: "BP mmHg", weight: 2, series: [["systolic-bp", "Systolic BP", "#b22a2a"], ["diastolic-bp", "Diastolic BP", "#e07b7b"]] },
    { id: "yElec", title: "K mmol/L · Mg mg/dL", weight: 2, series: [["potassium", "Potassium", "#5a6d00"], ["magnesium", "Magnesium", "#00808a"]] },
  ];
  const DRUGS = [  // group, label, colour, short label for the axis of a narrow frame
    ["tacrolimus", "Tacrolimus", "#7a3a9a", "Tacrolimus"],
    ["mycophenolate", "Mycophenolate", "#1f4e9c", "Mycophenol."],
    ["cyclophosphamide", "Cyclophosphamide", "#9c1f4e", "Cyclophosph."],
    ["rituximab", "Rituximab", "#2a7f62", "Rituximab"],
    ["cyp3a4-strong-inhibitors", "Strong CYP3A4 inhibitor", "#b35c00", "3A4 inhib. ++"],
    ["cyp3a4-moderate-inhibitors", "Moderate CYP3A4 inhibitor", "#c98a2e", "3A4 inhib. +"],
    ["cyp3a4-strong-inducers", "Strong CYP3A4 inducer", "#6b6b00", "3A4 inducer"],
    ["nephrotoxins", "Nephrotoxic drug", "#8a2020", "Nephrotoxic"],
  ];
  function fail(message) {
    const status = $("status");
    status.textContent = message;
    status.classList.add("error");
  }

  function text(tag, content, cls) {
    const el = document.createElement(tag);
    el.textContent = content;
    if (cls) el.className = cls;
    return el;
  }

  const UNIT_TEXT = { "mm[Hg]": "mmHg", "mL/min/{1.73_m2}": "mL/min/1.73 m²" };
  function unitText(u) {
    return UNIT_TEXT[u] || u;
  }

  function fmt(v) {
    return Number.isInteger(v) ? String(v) : String(Math.round(v * 1000) / 1000);
  }

  function isoDay(t) {
    const d = new Date(t);
    return d.getFullYear() + "-" + String(d.getMonth() + 1).padStart(2, "0") + "-" + String(d.getDate()).padStart(2, "0");
  }

  function parseAppContext(raw) {
    if (typeof raw !== "string" || !raw) return null;
    try {
      const value = JSON.parse(raw);
      return value && typeof value === "object" ? value : null;
    } catch (e) {
      return null;
    }
  }

  function codeQuery(terms, groups) {
    const codes = new Set();
    for (const g of groups) for (const [s, c] of terms.labs[g] || []) codes.add(s + "|" + c);
    return [...codes].map(encodeURIComponent).join(",");
  }

  async function read(client, terms) {
    const pid = encodeURIComponent(client.patient.id);
    const all = { pages: 0, flat: true };
    const groups = Object.keys(terms.labs);
    const [patient, observations, orders, conditions] = await Promise.all([
      client.request("Patient/" + pid),
      client.request("Observation?patient=" + pid + "&code=" + codeQuery(terms, groups) + "&_count=200", all),
      client.request("MedicationRequest?patient=" + pid + "&_count=200", all),
      client.request("Condition?patient=" + pid + "&_count=200", all).catch(() => []),
    ]);
    const resolved = {};
    const refs = new Set(orders.map((o) => (o.medicationReference || {}).reference).filter((r) => r && /^Medication\/[A-Za-z0-9\-.]{1,64}$/.test(r)));
    await Promise.all([...refs].map((ref) => client.request(ref).then((m) => { resolved[ref] = m; }).catch(() => null)));
    return { patient, observations, orders, conditions, resolved };
  }

  function banner(patient, conditions) {
    const name = (patient.name || [{}])[0];
    const shown = name.text || [...(name.given || []), name.family || ""].join(" ").trim() || patient.id;
    $("patient").textContent = [shown, patient.gender, patient.birthDate ? "born " + patient.birthDate : null].filter(Boolean).join(" · ");
    const active = conditions
      .filter((c) => c && c.resourceType === "Condition" && !["inactive", "remission", "resolved"].includes((((c.clinicalStatus || {}).coding || [])[0] || {}).code))
      .map((c) => (c.code || {}).text || ((((c.code || {}).coding) || [])[0] || {}).display)
      .filter(Boolean);
    $("conditions").textContent = active.length ? "Active conditions: " + active.join("; ") : "";
  }

  // What each finding highlights comes from the service's rule registry (terminology.json "findings").
  function showFindings(ctx, known) {
    const findings = (ctx && Array.isArray(ctx.findings)) ? ctx.findings.filter((f) => typeof f === "string") : [];
    const targetsOf = (id) => (Object.prototype.hasOwnProperty.call(known, id) && known[id].highlights) || [];
    const list = $("findings-list");
    for (const id of findings) {
      const names = targetsOf(id).map((g) => labelOf(g)).filter(Boolean);
      const li = text("li", id + (names.length ? ": " + names.join(", ") : ""));
      li.dataset.finding = id;
      if (Object.prototype.hasOwnProperty.call(known, id)) li.title = known[id].title;
      list.appendChild(li);
    }
    $("findings").hidden = findings.length === 0;
    return new Set(findings.flatMap(targetsOf));
  }

  function labelOf(group) {
    for (const p of PANELS) for (const [g, label] of p.series) if (g === group) return label;
    const d = DRUGS.find(([g]) => g === group);
    return d ? d[1] : null;
  }

  function chooseBaseline(ctx, series, bars, terms, now) {
    const thresholds = Object.assign({}, terms.thresholds, (ctx && ctx.thresholds) || {});
    if (ctx && ctx.baseline && typeof ctx.baseline.value === "number") {
      return { ...ctx.baseline, source: "from the card (the value the rules used)", thresholds };
    }
    const computed = Course.baseline(series, bars, thresholds, now);
    return { ...computed, source: "computed in the app by the rules' definition", thresholds };
  }

  function draftsOf(ctx) {
    const drafts = ctx && Array.isArray(ctx.drafts) ? ctx.drafts : [];
    return drafts.filter((d) => d && typeof d.name === "string" && Array.isArray(d.groups));
  }

  function buildChart(series, bars, base, highlighted, range, drafts, now) {
    const datasets = [];
    const narrow = $("course-chart").parentNode.clientWidth < 600;
    const axisWidth = narrow ? 84 : 132;
    const fit = (scale) => { scale.width = axisWidth; };  // stacked panels share one left edge
    const font = { size: narrow ? 10 : 12 };
    const scales = {
      x: {
        type: "time", min: range[0], max: range[1], position: "bottom",
        time: { tooltipFormat: "yyyy-MM-dd", displayFormats: { day: "d MMM", week: "d MMM", month: "MMM yyyy" } },
        ticks: { maxRotation: 0, autoSkip: true, autoSkipPadding: 12, font },
      },
    };
    const drugRows = DRUGS.filter(([g]) => ["tacrolimus", "mycophenolate", "cyclophosphamide", "rituximab"].includes(g) ||
      bars.some((b) => b.group === g) || drafts.some((d) => d.groups.includes(g)));
    scales.yDrug = {
      type: "linear", stack: "course", stackWeight: Math.max(1.2, drugRows.length * 0.45), offset: true,
      min: -0.6, max: drugRows.length - 0.4, reverse: true, position: "left",
      title: { display: false }, afterFit: fit,
      afterBuildTicks: (axis) => { axis.ticks = drugRows.map((_, i) => ({ value: i })); },
      ticks: { autoSkip: false, font, callback: (v) => (drugRows[v] ? drugRows[v][narrow ? 3 : 1].replace(" CYP3A4 ", " 3A4 ") : "") },
      grid: { display: false },
    };
    for (const p of PANELS.slice().reverse()) {
      scales[p.id] = {
        type: "linear", stack: "course", stackWeight: p.weight, offset: true, position: "left",
        title: { display: true, text: p.title, font }, grace: "10%", grid: { color: "#e6e6e6" },
        ticks: { font, maxTicksLimit: 5 }, afterFit: fit,
      };
    }
    for (const p of PANELS) {
      for (const [group, label, colour] of p.series) {
        const hl = highlighted.has(group);
        datasets.push({
          label, group, yAxisID: p.id, type: "line", borderColor: colour, backgroundColor: colour,
          borderWidth: hl ? 3 : 1.5, pointRadius: hl ? 4 : 3, pointHoverRadius: 6, pointHitRadius: 8,
          highlighted: hl, unit: series[group][0] ? series[group][0].unit : "",
          data: series[group].map((v) => ({ x: v.t, y: v.value, date: v.date, unit: v.unit, id: v.id })),
        });
      }
    }
    if (typeof base.value === "number") {
      const th = base.thresholds;
      const line = (factor, label, colour, dash, fill) => ({
        label, yAxisID: "yCreat", type: "line", borderColor: colour, backgroundColor: "rgba(217, 83, 25, 0.08)",
        borderWidth: 1.5, borderDash: dash, pointRadius: 0, pointHitRadius: 0, fill, reference: true,
        data: [{ x: range[0], y: base.value * factor }, { x: range[1], y: base.value * factor }],
      });
      datasets.push(line(1, "Baseline", "#1f4e9c", [], false));
      datasets.push(line(1 + th.creatinine_rise_warning, "+" + Math.round(th.creatinine_rise_warning * 100) + " %", "#d98a19", [6, 4], false));
      datasets.push(line(1 + th.creatinine_rise_critical, "+" + Math.round(th.creatinine_rise_critical * 100) + " %", "#d95319", [6, 4], "-1"));
    }
    const th = base.thresholds;
    for (const [key, colour] of [["tacrolimus_level_max_with_mycophenolate", "#c98a2e"], ["tacrolimus_level_max", "#b22a2a"]]) {
      if (typeof th[key] !== "number") continue;
      datasets.push({
        label: th[key] + " ng/mL", yAxisID: "yTac", type: "line", borderColor: colour, borderDash: [4, 4],
        borderWidth: 1.2, pointRadius: 0, pointHitRadius: 0, reference: true,
        data: [{ x: range[0], y: th[key] }, { x: range[1], y: th[key] }],
      });
    }
    drugRows.forEach(([group, label, colour], row) => {
      const own = bars.filter((b) => b.group === group);
      const hl = highlighted.has(group);
      const data = [];
      for (const b of own) {
        const bar = { name: b.name, status: b.status, start: b.start, end: b.end, id: b.id };
        data.push({ x: b.start, y: row, bar }, { x: Math.max(b.end, b.start + 86400000 / 2), y: row, bar }, { x: b.end + 1, y: null });
      }
      const ordered = drafts.filter((d) => d.groups.includes(group));
      if (ordered.length) {
        datasets.push({
          label: label + " (being ordered)", group, draft: true, yAxisID: "yDrug", type: "line", showLine: false,
          pointStyle: "triangle", pointRadius: 8, pointHoverRadius: 10, borderColor: "#000", backgroundColor: colour,
          data: ordered.map((d) => ({ x: now, y: row, draft: d })),
        });
      }
      datasets.push({
        label, group, exposure: true, yAxisID: "yDrug", type: "line", borderColor: colour, backgroundColor: colour,
        borderWidth: hl ? 12 : 9, borderCapStyle: "butt", pointRadius: 0, pointHitRadius: 6, spanGaps: false,
        highlighted: hl, data,
      });
    });

    const canvas = $("course-chart");
    return new Chart(canvas, {
      type: "line",
      data: { datasets },
      options: {
        responsive: true, maintainAspectRatio: false, animation: false, parsing: true,
        interaction: { mode: "nearest", intersect: false, axis: "xy" },
        plugins: {
          legend: { display: false },
          tooltip: {
            filter: (item) => !item.dataset.reference && item.raw && item.raw.y !== null,
            callbacks: {
              title: (items) => (items[0] && items[0].raw.bar ? items[0].dataset.label : items[0] ? items[0].raw.date : ""),
              label: (item) => {
                if (item.raw.draft) return item.raw.draft.name + ": being ordered now (draft" + (item.raw.draft.trigger ? ", this order)" : ")");
                if (item.raw.bar) {
                  const b = item.raw.bar;
                  return b.name + ": " + isoDay(b.start) + " to " + isoDay(b.end) + " (" + b.status + ")";
                }
                return item.dataset.label + ": " + fmt(item.raw.y) + " " + unitText(item.raw.unit);
              },
            },
          },
        },
        scales,
      },
    });
  }

  function table(caption, headers, rows, groupKey) {
    const t = document.createElement("table");
    t.dataset.series = groupKey;
    t.appendChild(text("caption", caption));
    const head = document.createElement("tr");
    for (const h of headers) { const th = text("th", h); th.scope = "col"; head.appendChild(th); }
    const thead = document.createElement("thead");
    thead.appendChild(head);
    t.appendChild(thead);
    const body = document.createElement("tbody");
    for (const row of rows) {
      const tr = document.createElement("tr");
      if (row.highlight) tr.className = "highlight";
      row.cells.forEach((c, i) => tr.appendChild(text("td", c, row.numeric && row.numeric.includes(i) ? "num" : "")));
      body.appendChild(tr);
    }
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = text("td", "none on record");
      td.colSpan = headers.length;
      tr.appendChild(td);
      body.appendChild(tr);
    }
    t.appendChild(body);
    return t;
  }

  function tables(series, bars, base, highlighted, drafts) {
    const list = $("table-list");
    for (const p of PANELS) {
      for (const [group, label] of p.series) {
        const rows = series[group].map((v) => ({
          cells: [v.date, fmt(v.value), unitText(v.unit), v.original, v.id === base.observation ? "baseline" : ""],
          numeric: [1], highlight: highlighted.has(group) || v.id === base.observation,
        }));
        list.appendChild(table(label + (highlighted.has(group) ? " (on the card)" : ""), ["Date", "Value", "Unit", "As reported", "Note"], rows, group));
      }
    }
    const rows = bars.map((b) => ({
      cells: [labelOf(b.group) || b.group, b.name, isoDay(b.start), isoDay(b.end), b.status],
      highlight: highlighted.has(b.group),
    }));
    for (const d of drafts) {
      rows.push({ cells: [d.groups.map(labelOf).join(", "), d.name, "now", "", d.trigger ? "draft (this order)" : "draft (this session)"],
        highlight: d.groups.some((g) => highlighted.has(g)) });
    }
    list.appendChild(table("Drug exposure periods", ["Class", "Drug", "From", "To", "Order status"], rows, "exposure"));
    $("tables").hidden = false;
  }

  async function main() {
    let client;
    try {
      client = await FHIR.oauth2.ready();
    } catch (error) {
      fail("Not launched from an EHR, or the authorization failed: " + (error && error.message ? error.message : error));
      return;
    }
    try {
      const terms = await (await fetch("terminology.json", { credentials: "same-origin" })).json();
      const ctx = parseAppContext((client.state.tokenResponse || {}).appContext);
      const record = await read(client, terms);
      const now = Date.now();
      banner(record.patient, record.conditions);
      const { series, unusable } = Course.labs(terms, record.observations);
      const bars = Course.exposures(terms, record.orders, now, record.resolved);
      const highlighted = showFindings(ctx, terms.findings || {});
      const base = chooseBaseline(ctx, series, bars, terms, now);
      const baseText = $("baseline");
      baseText.hidden = false;
      baseText.dataset.value = typeof base.value === "number" ? String(base.value) : "";
      baseText.textContent = typeof base.value === "number"
        ? "Baseline creatinine " + fmt(base.value) + " mg/dL on " + base.date + " (" + base.rule + "; " + base.source + "). Bands: +" +
          Math.round(base.thresholds.creatinine_rise_warning * 100) + " % and +" + Math.round(base.thresholds.creatinine_rise_critical * 100) + " %."
        : "No creatinine baseline: " + (base.missing || (ctx && ctx.baselineMissing) || "not available") + ".";
      const times = [now];
      for (const g of Object.keys(series)) for (const v of series[g]) times.push(v.t);
      for (const b of bars) times.push(b.start, b.end);
      const from = Math.min(...times), pad = Math.max(86400000 * 3, (now - from) * 0.02);
      $("chart-figure").hidden = false;
      const drafts = draftsOf(ctx);
      buildChart(series, bars, base, highlighted, [from - pad, now + pad], drafts, now);
      tables(series, bars, base, highlighted, drafts);
      if (unusable.length) {
        $("left-out").hidden = false;
        $("left-out").textContent = "Left out: " + unusable.map((u) => u.id + " (" + u.reason + ")").join("; ") + ".";
      }
      $("status").textContent = "";
      document.body.dataset.ready = "true";
    } catch (error) {
      fail("The record could not be read: " + (error && error.message ? error.message : error));
    }
  }

  main();
})();
