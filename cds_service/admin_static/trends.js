// The /admin/trends charts: drawn with the vendored Chart.js from the numbers the page embeds as JSON
// (#trend-data), the same numbers as its data tables. No inline script: the page's CSP allows only its
// nonce-tagged scripts.
"use strict";

(function () {
  const data = JSON.parse(document.getElementById("trend-data").textContent);
  const colors = { shown: "#b9c3cd", overridden: "#d9822b", accepted: "#2e8540", rate: "#a11" };
  Chart.defaults.animation = false;
  Chart.defaults.font.family = "system-ui, sans-serif";

  for (const f of data.findings) {
    const canvas = document.getElementById("chart-" + f.finding);
    if (!canvas) continue;
    new Chart(canvas, {
      data: {
        labels: f.weeks.map((w) => w.start),
        datasets: [
          { type: "bar", label: "cards shown", data: f.weeks.map((w) => w.shown), backgroundColor: colors.shown, yAxisID: "y" },
          { type: "bar", label: "overridden", data: f.weeks.map((w) => w.overridden), backgroundColor: colors.overridden, yAxisID: "y" },
          { type: "bar", label: "accepted", data: f.weeks.map((w) => w.accepted), backgroundColor: colors.accepted, yAxisID: "y" },
          {
            type: "line",
            label: "override rate %",
            data: f.weeks.map((w) => (w.override_rate === null ? null : Math.round(w.override_rate * 1000) / 10)),
            borderColor: colors.rate,
            backgroundColor: colors.rate,
            spanGaps: true,
            yAxisID: "rate",
          },
        ],
      },
      options: {
        maintainAspectRatio: false,
        scales: {
          y: { beginAtZero: true, title: { display: true, text: "cards" }, ticks: { precision: 0 } },
          rate: { position: "right", min: 0, max: 100, title: { display: true, text: "override rate %" }, grid: { drawOnChartArea: false } },
        },
      },
    });
  }

  const reasons = document.getElementById("chart-reasons");
  if (reasons) {
    new Chart(reasons, {
      type: "bar",
      data: {
        labels: data.top_reasons.map((r) => (r.display ? r.code + " (" + r.display + ")" : r.code)),
        datasets: [{ label: "overrides", data: data.top_reasons.map((r) => r.count), backgroundColor: colors.overridden }],
      },
      options: { indexAxis: "y", maintainAspectRatio: false, scales: { x: { beginAtZero: true, ticks: { precision: 0 } } } },
    });
  }
  document.body.dataset.ready = "true";
})();
