// Charts with axes, gridlines and the values under the cursor, drawn by uPlot (vendor/uplot) from the JSON the
// page carries in a <script type="application/json"> block. Each chart's numbers are also in a table beside it,
// so the page says everything without this file.
//
// <div class="chart-box" data-chart="ID"> reads the block with id ID:
//   {"kind": "bars" | "lines", "labels": [...] (the x axis: days, tiers or adapters),
//    "y_label": "text", "y_prefix": "$", "y_suffix": " ms", "y_decimals": 2,
//    "series": [{"label": "text", "values": [...], "dash": false}]}
(function () {
  "use strict";

  var COLOURS = ["#3730a3", "#b45309", "#0f766e", "#be123c", "#6d28d9", "#1d4ed8"];
  var number = new Intl.NumberFormat(undefined, { maximumFractionDigits: 6 });

  function formatter(spec) {
    var decimals = spec.y_decimals == null ? null : spec.y_decimals;
    var fmt = decimals == null ? number : new Intl.NumberFormat(undefined, {
      minimumFractionDigits: decimals, maximumFractionDigits: decimals });
    return function (value) {
      if (value == null || isNaN(value)) return "—";
      return (spec.y_prefix || "") + fmt.format(value) + (spec.y_suffix || "");
    };
  }

  function build(box) {
    var source = document.getElementById(box.dataset.chart);
    if (!source || !window.uPlot) return;
    var spec = JSON.parse(source.textContent);
    var category = true;  // every chart's x axis is labelled categories (days, tiers, adapters)
    var xs = spec.labels.map(function (_, i) { return i; });
    var compact = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 2 });
    var tick = function (value) {
      return (spec.y_prefix || "") + (Math.abs(value) >= 10000 ? compact.format(value)
        : number.format(Number(value.toPrecision(4)))) + (spec.y_suffix || "");
    };
    var yText = formatter(spec);
    var bars = spec.kind === "bars";
    var bar = bars ? uPlot.paths.bars({ size: [0.6, 48], align: 0 }) : null;

    var series = [{
      label: spec.x_label || "",
      value: function (u, i) { return i == null ? "—" : spec.labels[i]; }
    }];
    spec.series.forEach(function (s, i) {
      var colour = COLOURS[i % COLOURS.length];
      series.push({
        label: s.label, stroke: colour, width: bars ? 1 : 2, dash: s.dash ? [6, 4] : undefined,
        fill: bars ? colour + "cc" : undefined, paths: bar || undefined,
        points: { show: !bars && xs.length < 40, size: 5 },
        value: function (u, v) { return yText(v); }
      });
    });

    var axisStroke = "#4b5563", grid = { stroke: "#e5e7eb", width: 1 };
    var opts = {
      width: Math.max(box.clientWidth, 200), height: Number(box.dataset.height || 240),
      scales: { x: { time: false, range: [-0.5, xs.length - 0.5] },
                y: { range: function (u, min, max) { return [Math.min(0, min), max > 0 ? max * 1.1 : 1]; } } },
      axes: [
        { stroke: axisStroke, grid: grid, ticks: grid,
          // one label in every `step`, so that labels never overlap however narrow the chart
          values: function (u, splits) {
            var step = Math.max(1, Math.ceil(xs.length * 70 / Math.max(u.bbox.width / devicePixelRatio, 1)));
            return splits.map(function (i) {
              var text = spec.labels[i];
              if (text == null || i % step) return "";
              return text.length > 14 ? text.slice(0, 13) + "…" : text;
            });
          },
          splits: function () { return xs; } },
        { stroke: axisStroke, grid: grid, ticks: grid, size: 64, label: spec.y_label, labelSize: 18, gap: 4,
          values: function (u, splits) { return splits.map(tick); } }
      ],
      series: series,
      cursor: { drag: { x: false, y: false }, points: { size: 7 } },
      legend: { live: true }
    };
    var data = [xs].concat(spec.series.map(function (s) { return s.values; }));
    box.replaceChildren();
    var plot = new uPlot(opts, data, box);
    box.dataset.chartReady = "true";
    if (window.ResizeObserver) {
      new ResizeObserver(function () {
        if (box.clientWidth && Math.abs(box.clientWidth - plot.width) > 4) {
          plot.setSize({ width: box.clientWidth, height: plot.height });
        }
      }).observe(box);
    }
    return plot;
  }

  window.vajraChart = build;
  document.querySelectorAll("[data-chart]").forEach(build);
})();
