// Charts with axes, gridlines and the values under the cursor, drawn by uPlot (vendor/uplot) from the JSON the
// page carries in a <script type="application/json"> block. Each chart's numbers are also in a table beside it,
// so the page says everything without this file.
//
// <div class="chart-box" data-chart="ID"> reads the block with id ID:
//   {"kind": "bars" | "lines", "labels": [...] (the x axis: days, tiers or adapters),
//    "y_label": "text", "y_prefix": "$", "y_suffix": " ms", "y_decimals": 2,
//    "series": [{"label": "text", "values": [...], "dash": false}]}
// A chart over a number line of whole numbers (training steps) gives "x": [...] instead of "labels", with "x_label", "x_max" (the
// axis runs from 0 to at least this) and "y_zero": false for a y axis that fits the values instead of starting at
// 0. window.vajraChart.update(box, x, seriesValues, xMax) redraws such a chart with new points; a series that
// arrives later (an eval loss) is added the first time its values do.
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

  // a number line's points show where uPlot finds room for them (its default); categories' up to 40 of them
  function seriesOptions(s, i, how) {
    var colour = COLOURS[i % COLOURS.length], bars = how.bars;
    return {
      label: s.label, stroke: colour, width: bars ? 1 : 2, dash: s.dash ? [6, 4] : undefined,
      fill: bars ? colour + "cc" : undefined, paths: how.bar || undefined,
      points: how.numeric ? { size: 5 } : { show: !bars && how.count < 40, size: 5 }, spanGaps: how.numeric,
      value: function (u, v) { return how.yText(v); }
    };
  }

  var charts = typeof WeakMap === "function" ? new WeakMap() : null;

  function build(box) {
    var source = document.getElementById(box.dataset.chart);
    if (!source || !window.uPlot) return;
    var spec = JSON.parse(source.textContent);
    var numeric = Array.isArray(spec.x);  // a number line (steps) rather than labelled categories
    var xs = numeric ? spec.x : spec.labels.map(function (_, i) { return i; });
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
      value: numeric ? function (u, v) { return v == null ? "—" : number.format(v); }
                     : function (u, i) { return i == null ? "—" : spec.labels[i]; }
    }];
    var how = { bars: bars, bar: bar, numeric: numeric, count: xs.length, yText: yText };
    spec.series.forEach(function (s, i) { series.push(seriesOptions(s, i, how)); });

    var axisStroke = "#4b5563", grid = { stroke: "#e5e7eb", width: 1 };
    var categoryAxis = {
      stroke: axisStroke, grid: grid, ticks: grid,
      // one label in every `step`, so that labels never overlap however narrow the chart
      values: function (u, splits) {
        var step = Math.max(1, Math.ceil(xs.length * 70 / Math.max(u.bbox.width / devicePixelRatio, 1)));
        return splits.map(function (i) {
          var text = spec.labels[i];
          if (text == null || i % step) return "";
          return text.length > 14 ? text.slice(0, 13) + "…" : text;
        });
      },
      splits: function () { return xs; }
    };
    var numberAxis = {
      stroke: axisStroke, grid: grid, ticks: grid, label: spec.x_label, labelSize: 18, gap: 4, space: 60,
      incrs: [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1e3, 2e3, 2500, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6],
      values: function (u, splits) { return splits.map(function (v) { return number.format(v); }); }
    };
    var yRange = spec.y_zero === false
      ? function (u, min, max) {
          if (min == null || max == null) return [0, 1];
          var pad = Math.max((max - min) * 0.08, Math.abs(max) * 0.02, 1e-6);
          return [min - pad, max + pad];
        }
      : function (u, min, max) { return [Math.min(0, min), max > 0 ? max * 1.1 : 1]; };
    var opts = {
      width: Math.max(box.clientWidth, 200), height: Number(box.dataset.height || 240),
      scales: { x: { time: false, range: numeric
                  ? function (u, min, max) { return [0, Math.max(spec.x_max || 1, max || 0, 1)]; }
                  : [-0.5, xs.length - 0.5] },
                y: { range: yRange } },
      axes: [
        numeric ? numberAxis : categoryAxis,
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
    if (charts) {
      charts.set(box, { plot: plot, spec: spec, add: function (s, i) { plot.addSeries(seriesOptions(s, i, how)); } });
    }
    if (window.ResizeObserver) {
      new ResizeObserver(function () {
        if (box.clientWidth && Math.abs(box.clientWidth - plot.width) > 4) {
          plot.setSize({ width: box.clientWidth, height: plot.height });
        }
      }).observe(box);
    }
    return plot;
  }

  // New points for a number-line chart: x, the series as in the JSON ({"label", "values", "dash"}, values null
  // where a series has none at that x) and the x axis' least extent. False when the box holds no chart (no uPlot).
  function update(box, x, series, xMax) {
    var chart = charts && charts.get(box);
    if (!chart) return false;
    chart.spec.x_max = xMax;
    for (var i = chart.plot.series.length - 1; i < series.length; i++) chart.add(series[i], i);
    chart.plot.setData([x].concat(series.map(function (s) { return s.values; })));
    return true;
  }

  build.update = update;
  window.vajraChart = build;
  document.querySelectorAll("[data-chart]").forEach(build);
})();
