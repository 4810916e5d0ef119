/* The course app after the launch: finish the token exchange (fhirclient keeps the token in this tab's
 * sessionStorage), read the patient's record from the FHIR server the launch named, and draw it.
 * Nothing about the patient is sent to the service: its only request here is terminology.json. */
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);

  const PANELS = [
    // scale id, title lines (name, unit), series (group -> label, colour), stack weight
    { id: "yCreat", title: ["Creatinine", "mg/dL"], weight: 3, series: [["creatinine", "Creatinine", "#1f4e9c"]] },
    { id: "yEgfr", title: ["eGFR", "mL/min/1.73 m²"], weight: 2, series: [["egfr", "eGFR", "#2a7f62"]] },
    { id: "yTac", title: ["Tacrolimus", "ng/mL"], weight: 2, series: [["tacrolimus-level", "Tacrolimus level", "#7a3a9a"]] },
    { id: "yUpcr", title: ["UPCR", "g/g"], weight: 2, series: [["upcr", "UPCR", "#9c5a1f"]] },
    { id: "yBp", title: ["BP", "mmHg"], weight: 2, series: [["systolic-bp", "Systolic BP", "#b22a2a"], ["diastolic-bp", "Diastolic BP", "#e07b7b"]] },
    { id: "yK", title: ["Potassium", "mmol/L"], weight: 1.5, series: [["potassium", "Potassium", "#5a6d00"]] },
    { id: "yMg", title: ["Magnesium", "mg/dL"], weight: 1.5, series: [["magnesium", "Magnesium", "#00808a"]] },
  ];
  // The drug rows come from the service (terminology.json "drugClasses": the rule registry's drug classes).
  const PALETTE = ["#7a3a9a", "#b8336a", "#1f4e9c", "#9c1f4e", "#2a7f62", "#6b4c9a", "#8c6d1f", "#b35c00",
    "#c98a2e", "#6b6b00", "#8a2020", "#00808a", "#555555"];
  const DAY = 86400000;
  const WINDOW_DAYS = 365;
  const COLOURS = { baseline: "#1f4e9c", warning: "#d98a19", critical: "#d95319", band: "rgba(217, 83, 25, 0.08)",
    levelMax: "#b22a2a", levelWithMycophenolate: "#c98a2e" };
  let DRUGS = [];  // [group, label, colour, anchor]

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
    return UNIT_TEXT[u] || String(u || "").replace(/^u(?=(mol|g)\/)/, "µ");
  }

  /* A value as the laboratory reported it, with the rules' unit beside it when that differs (71 µmol/L (0.8 mg/dL)). */
  function valueText(v, group) {
    const reported = fmt(v.reported.value) + " " + unitText(v.reported.unit);
    const key = (u) => Course.normalise(group, u);
    const same = v.reported.unit && [key(v.unit), key(unitText(v.unit))].includes(key(v.reported.unit));
    return same ? reported : reported + " (" + fmt(v.value) + " " + unitText(v.unit) + ")";
  }

  /* A label broken into lines of at most `width` characters (axis labels of a narrow frame); a longer word
   * is hyphenated. */
  function wrap(label, width) {
    const lines = [];
    const words = label.split(" ").flatMap((w) => {
      const parts = [];
      while (w.length > width) { parts.push(w.slice(0, width - 1) + "-"); w = w.slice(width - 1); }
      return [...parts, w];
    });
    for (const word of words) {
      const last = lines.length - 1;
      if (last >= 0 && (lines[last] + " " + word).length <= width) lines[last] += " " + word;
      else lines.push(word);
    }
    return lines;
  }

  function drugClasses(terms) {
    return (terms.drugClasses || []).map((c, i) => [c.group, c.label, PALETTE[i % PALETTE.length], c.anchor]);
  }

  function endText(bar) {
    return bar.ongoing ? "ongoing" : isoDay(bar.end);
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
      const title = Object.prototype.hasOwnProperty.call(known, id) ? " (" + known[id].title + ")" : "";
      const li = text("li", id + title + (names.length ? ": " + names.join(", ") : ""));
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
      const t = Date.parse(ctx.baseline.date);
      return { ...ctx.baseline, t: isFinite(t) ? t : undefined, source: "from the card (the value the rules used)", thresholds };
    }
    const computed = Course.baseline(series, bars, thresholds, now);
    return { ...computed, source: "computed in the app by the rules' definition", thresholds };
  }

  /* "No creatinine baseline" only when there is none; a baseline without a recent value to compare says so. */
  function baselineText(base, series, ctx) {
    if (typeof base.value !== "number") {
      return "No creatinine baseline: " + (base.missing || (ctx && ctx.baselineMissing) || "not available") + ".";
    }
    const observed = series.creatinine.find((v) => v.id === base.observation);
    const value = observed ? valueText(observed, "creatinine") : fmt(base.value) + " mg/dL";
    const th = base.thresholds;
    let out = "Baseline creatinine " + value + " on " + base.date + " (" + base.rule + "; " + base.source + "). Bands: +" +
      Math.round(th.creatinine_rise_warning * 100) + " % and +" + Math.round(th.creatinine_rise_critical * 100) + " %.";
    if (base.noRecent) out += " Nothing to compare yet: " + base.noRecent + ".";
    else if (ctx && ctx.baselineMissing && !ctx.baseline) out += " On the card: " + ctx.baselineMissing + ".";
    return out;
  }

  /* The first view: the last 12 months, or since tacrolimus began if that is shorter, the baseline kept in
   * view; the whole record one click away. */
  function windows(series, bars, base, now) {
    const times = [now];
    for (const g of Object.keys(series)) for (const v of series[g]) times.push(v.t);
    for (const b of bars) times.push(b.start, b.end);
    const first = Math.min(...times);
    const padded = (from) => { const pad = Math.max(DAY * 3, (now - from) * 0.02); return [from - pad, now + pad]; };
    const tacrolimus = bars.filter((b) => b.group === "tacrolimus").map((b) => b.start);
    let from = now - WINDOW_DAYS * DAY, why = "the last 12 months";
    if (tacrolimus.length && Math.min(...tacrolimus) > from) {
      from = Math.min(...tacrolimus);
      why = "since tacrolimus began on " + isoDay(from);
    }
    if (typeof base.t === "number" && base.t < from) {
      from = base.t;
      why += " and the baseline of " + base.date;
    }
    const all = padded(first);
    if (from <= first) return { all, shown: all, why: "the whole record", whole: true, first };
    return { all, shown: padded(from), why, whole: false, first };
  }

  function draftsOf(ctx) {
    const drafts = ctx && Array.isArray(ctx.drafts) ? ctx.drafts : [];
    return drafts.filter((d) => d && typeof d.name === "string" && Array.isArray(d.groups));
  }

  /* The rows of the exposure panel: the anchors (calcineurin inhibitors, the regimen), and any class the record,
   * a draft or a finding on the card names. */
  function drugRowsFor(bars, drafts, highlighted) {
    return DRUGS.filter(([g, , , anchor]) => anchor || highlighted.has(g) ||
      bars.some((b) => b.group === g) || drafts.some((d) => d.groups.includes(g)));
  }

  /* The periods the lower tacrolimus limit applies: while mycophenolate is given (or is being ordered). */
  function mycophenolatePeriods(bars, drafts, range, now) {
    const periods = bars.filter((b) => b.group === "mycophenolate").map((b) => [b.start, b.ongoing ? range[1] : b.end]);
    if (drafts.some((d) => d.groups.includes("mycophenolate"))) periods.push([now, range[1]]);
    return periods;
  }

  function buildChart(series, bars, base, highlighted, range, view, drafts, now) {
    const datasets = [];
    const narrow = $("course-chart").parentNode.clientWidth < 600;
    const axisWidth = narrow ? 92 : 150;
    const fit = (scale) => { scale.width = axisWidth; };  // stacked panels share one left edge
    const font = { size: narrow ? 11 : 12 };
    const titleFont = { size: narrow ? 11 : 12, weight: "bold", lineHeight: 1.15 };
    const scales = {
      x: {
        type: "time", min: view[0], max: view[1], position: "bottom",
        time: { tooltipFormat: "yyyy-MM-dd", displayFormats: { day: "d MMM", week: "d MMM", month: "MMM yyyy" } },
        ticks: { maxRotation: 0, autoSkip: true, autoSkipPadding: 12, font },
      },
    };
    const drugRows = drugRowsFor(bars, drafts, highlighted);
    const rowLabels = drugRows.map(([, label]) => wrap(label, narrow ? 13 : 24));
    scales.yDrug = {
      type: "linear", stack: "course", stackWeight: Math.max(1.2, rowLabels.flat().length * 0.42), offset: true,
      min: -0.6, max: drugRows.length - 0.4, reverse: true, position: "left",
      title: { display: false }, afterFit: fit,
      afterBuildTicks: (axis) => { axis.ticks = drugRows.map((_, i) => ({ value: i })); },
      ticks: { autoSkip: false, font: { size: narrow ? 10 : 12, lineHeight: 1.1 }, callback: (v) => rowLabels[v] || "" },
      grid: { display: false },
    };
    for (const p of PANELS.slice().reverse()) {
      scales[p.id] = {
        type: "linear", stack: "course", stackWeight: p.weight, offset: true, position: "left",
        title: { display: true, text: p.title, font: titleFont, color: "#1b1b1b", padding: 2 },
        grace: "10%", grid: { color: "#e6e6e6" }, ticks: { font, maxTicksLimit: 5 }, afterFit: fit,
      };
    }
    for (const p of PANELS) {
      for (const [group, label, colour] of p.series) {
        const hl = highlighted.has(group);
        datasets.push({
          label, group, yAxisID: p.id, type: "line", borderColor: colour, backgroundColor: colour,
          borderWidth: hl ? 3 : 1.5, pointRadius: hl ? 4 : 3, pointHoverRadius: 6, pointHitRadius: 8,
          highlighted: hl,
          data: series[group].map((v) => ({ x: v.t, y: v.value, date: v.date, id: v.id, shown: valueText(v, group) })),
        });
      }
    }
    const reference = (label, yAxisID, colour, data, more) => Object.assign({
      label, yAxisID, type: "line", borderColor: colour, borderWidth: 1.5, pointRadius: 0, pointHitRadius: 0,
      reference: true, spanGaps: false, data,
    }, more);
    const across = (y) => [{ x: range[0], y }, { x: range[1], y }];
    const legend = [];
    if (typeof base.value === "number") {
      const th = base.thresholds;
      const warning = "+" + Math.round(th.creatinine_rise_warning * 100) + " %";
      const critical = "+" + Math.round(th.creatinine_rise_critical * 100) + " %";
      datasets.push(reference("Baseline", "yCreat", COLOURS.baseline, across(base.value), { fill: false }));
      datasets.push(reference(warning, "yCreat", COLOURS.warning, across(base.value * (1 + th.creatinine_rise_warning)), { borderDash: [6, 4], fill: false }));
      datasets.push(reference(critical, "yCreat", COLOURS.critical, across(base.value * (1 + th.creatinine_rise_critical)),
        { borderDash: [6, 4], fill: "-1", backgroundColor: COLOURS.band }));
      legend.push({ key: "baseline", colour: COLOURS.baseline, text: "Baseline creatinine " + fmt(base.value) + " mg/dL" });
      legend.push({ key: "band", colour: COLOURS.critical, dash: true, band: true,
        text: warning + " and " + critical + " above the baseline (shaded between them)" });
    }
    const th = base.thresholds;
    if (typeof th.tacrolimus_level_max === "number") {
      datasets.push(reference(th.tacrolimus_level_max + " ng/mL", "yTac", COLOURS.levelMax, across(th.tacrolimus_level_max), { borderDash: [4, 4] }));
      legend.push({ key: "level-max", colour: COLOURS.levelMax, dash: true, text: th.tacrolimus_level_max + " ng/mL: upper tacrolimus level" });
    }
    const withMycophenolate = mycophenolatePeriods(bars, drafts, range, now);
    const lower = th.tacrolimus_level_max_with_mycophenolate;
    if (typeof lower === "number" && withMycophenolate.length) {
      const data = withMycophenolate.flatMap(([a, b]) => [{ x: a, y: lower }, { x: b, y: lower }, { x: b + 1, y: null }]);
      datasets.push(reference(lower + " ng/mL", "yTac", COLOURS.levelWithMycophenolate, data, { borderDash: [2, 3], borderWidth: 2 }));
      legend.push({ key: "level-mycophenolate", colour: COLOURS.levelWithMycophenolate, dash: true,
        text: lower + " ng/mL: upper tacrolimus level while mycophenolate is given" });
    }
    drugRows.forEach(([group, label, colour], row) => {
      const own = bars.filter((b) => b.group === group);
      const hl = highlighted.has(group);
      const data = [];
      for (const b of own) {
        const bar = { name: b.name, status: b.status, start: b.start, end: b.end, ongoing: b.ongoing, id: b.id };
        data.push({ x: b.start, y: row, bar }, { x: Math.max(b.end, b.start + DAY / 2), y: row, bar }, { x: b.end + 1, y: null });
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
    if (drafts.length) legend.push({ key: "draft", colour: "#000", marker: "▲", text: "being ordered now (this session's drafts)" });
    if (bars.some((b) => b.ongoing)) legend.push({ key: "ongoing", colour: "#555", text: "an active order's bar runs to today: ongoing" });
    showLegend(legend);

    const canvas = $("course-chart");
    return new Chart(canvas, {
      type: "line",
      data: { datasets },
      options: {
        responsive: true, maintainAspectRatio: false, animation: false, parsing: true,
        interaction: { mode: "nearest", intersect: false, axis: "xy" },
        plugins: {
          legend: { display: false },  // the legend is the list under the chart (#legend), readable at any width
          tooltip: {
            filter: (item) => !item.dataset.reference && item.raw && item.raw.y !== null,
            callbacks: {
              title: (items) => (items[0] && items[0].raw.bar ? items[0].dataset.label : items[0] ? items[0].raw.date : ""),
              label: (item) => {
                if (item.raw.draft) return item.raw.draft.name + ": being ordered now (draft" + (item.raw.draft.trigger ? ", this order)" : ")");
                if (item.raw.bar) {
                  const b = item.raw.bar;
                  return b.name + ": " + isoDay(b.start) + (b.ongoing ? ", ongoing" : " to " + isoDay(b.end)) + " (" + b.status + ")";
                }
                return item.dataset.label + ": " + item.raw.shown;
              },
            },
          },
        },
        scales,
      },
    });
  }

  function showLegend(items) {
    const list = $("legend");
    list.replaceChildren();
    for (const item of items) {
      const li = document.createElement("li");
      li.dataset.line = item.key;
      const swatch = text("span", item.marker || "", "swatch");
      swatch.setAttribute("aria-hidden", "true");
      if (!item.marker) swatch.style.borderTop = "3px " + (item.dash ? "dashed " : "solid ") + item.colour;
      if (item.band) swatch.style.background = COLOURS.band;
      li.append(swatch, document.createTextNode(item.text));
      list.appendChild(li);
    }
    list.hidden = items.length === 0;
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
          cells: [v.date, valueText(v, group), v.id === base.observation ? "baseline" : ""],
          numeric: [1], highlight: highlighted.has(group) || v.id === base.observation,
        }));
        list.appendChild(table(label + (highlighted.has(group) ? " (on the card)" : ""), ["Date", "As reported (in " + p.title[1] + ")", "Note"], rows, group));
      }
    }
    const rows = bars.map((b) => ({
      cells: [labelOf(b.group) || b.group, b.name, isoDay(b.start), endText(b), b.status],
      highlight: highlighted.has(b.group),
    }));
    for (const d of drafts) {
      rows.push({ cells: [d.groups.map(labelOf).join(", "), d.name, "now", "", d.trigger ? "draft (this order)" : "draft (this session)"],
        highlight: d.groups.some((g) => highlighted.has(g)) });
    }
    list.appendChild(table("Drug exposure periods", ["Class", "Drug", "From", "To", "Order status"], rows, "exposure"));
    $("tables").hidden = false;
  }

  /* One button switches between the first view and the whole record. */
  function windowControl(chart, span) {
    const note = $("window-note"), button = $("window-toggle");
    let whole = span.whole;
    const show = () => {
      const [min, max] = whole ? span.all : span.shown;
      chart.options.scales.x.min = min;
      chart.options.scales.x.max = max;
      chart.update("none");
      note.textContent = "Showing " + (whole ? "the whole record (from " + isoDay(span.first || span.all[0]) + ")" : span.why) + ".";
      note.dataset.window = whole ? "all" : "recent";
      button.textContent = whole ? "Show " + span.why : "Show the whole record";
    };
    button.hidden = span.whole;
    button.addEventListener("click", () => { whole = !whole; show(); });
    show();
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
      DRUGS = drugClasses(terms);
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
      baseText.textContent = baselineText(base, series, ctx);
      const span = windows(series, bars, base, now);
      $("chart-figure").hidden = false;
      const drafts = draftsOf(ctx);
      const chart = buildChart(series, bars, base, highlighted, span.all, span.shown, drafts, now);
      windowControl(chart, span);
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
