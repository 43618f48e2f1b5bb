// Draws <div class="chart" data-chart='{...}'> elements with the vendored uPlot (templates/_chart.html makes them),
// on page load and in content htmx swaps in. Each chart's words stay beside it; without uPlot nothing is drawn.
(function () {
  "use strict";

  var HEIGHT = 220;
  var COLOURS = ["#2f5bea", "#18794e", "#c0362c", "#b54708"];
  var drawn = [];

  function usd(dollars) {
    var text = dollars.toFixed(6).replace(/0+$/, "");
    var parts = text.split(".");
    return "$" + parts[0] + "." + (parts[1] + "00").slice(0, Math.max(2, parts[1].length));
  }

  function count(v) { return Math.round(v).toLocaleString("en-US"); }

  function compact(v) {
    if (Math.abs(v) >= 1e6) return +(v / 1e6).toPrecision(3) + "M";
    return Math.abs(v) >= 1e4 ? +(v / 1e3).toPrecision(3) + "k" : count(v);
  }

  // Values arrive as the server keeps them (integer micro-USD, tokens per minute); scale turns them into what the
  // axis shows, format into the legend's words, tick into the axis's.
  var UNITS = {
    usd: {scale: 1e-6, format: usd, tick: usd, label: "USD"},
    usd_per_mtok: {scale: 1e-6, format: function (v) { return usd(v) + " per M tokens"; }, tick: usd,
                   label: "USD per million tokens"},
    tokens_per_min: {scale: 1, format: function (v) { return count(v) + " tokens/min"; }, tick: compact,
                     label: "tokens per minute"},
    // A verification check's evidence: the reference's log-probability of a token (0 is certain).
    logprob: {scale: 1, format: function (v) { return v.toFixed(3) + " nats"; },
              tick: function (v) { return v.toFixed(1); }, label: "log-probability (nats)"}
  };

  function unitOf(series) {
    return UNITS[series.unit] || {scale: 1, format: String, tick: String, label: ""};
  }

  function xLabel(kind) {
    return function (u, ts) {
      if (ts == null) return "–";
      if (kind === "token") return "token " + ts;
      var iso = new Date(ts * 1000).toISOString();
      return kind === "day" ? iso.slice(0, 10) : iso.slice(0, 16).replace("T", " ") + " UTC";
    };
  }

  function fromZero(u, min, max) {
    if (max <= 0 && min < 0) return [min * 1.1, 0];  // log-probabilities: all at or below zero
    return [Math.min(0, min), max > 0 ? max * 1.1 : 1];
  }

  function specOf(el) {
    if (el.dataset.chart) return JSON.parse(el.dataset.chart);
    var beside = el.querySelector('script[type="application/json"]');
    return beside ? JSON.parse(beside.textContent) : null;
  }

  function draw(el) {
    if (el.dataset.drawn || !window.uPlot) return;
    var spec = specOf(el);
    if (!spec || !spec.series || !spec.series.length) return;
    el.dataset.drawn = "1";
    var unit = unitOf(spec.series[0]);
    var bars = spec.kind === "bars" ? uPlot.paths.bars({size: [0.6, 40]}) : null;
    // A price holds from one decision to the next: steps, not slopes.
    var paths = bars || (spec.kind === "steps" ? uPlot.paths.stepped({align: 1}) : undefined);
    var timed = spec.xKind !== "token";
    var series = [{label: {day: "Day (UTC)", token: "Token"}[spec.xKind] || "Time (UTC)", value: xLabel(spec.xKind)}];
    var data = [spec.x];
    spec.series.forEach(function (s, i) {
      var own = unitOf(s);
      var colour = COLOURS[i % COLOURS.length];
      series.push({
        // Bars are filled, not outlined, so a day without any draws nothing.
        label: s.label, stroke: colour, width: bars ? 0 : 2, paths: paths,
        fill: bars ? colour + "cc" : undefined, points: {show: !bars && spec.x.length < 40},
        value: function (u, v) { return v == null ? "–" : own.format(v); }
      });
      data.push(s.values.map(function (v) { return v == null ? null : v * own.scale; }));
    });
    var chart = new uPlot({
      width: el.clientWidth || 600,
      height: HEIGHT,
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); },
      scales: {x: {time: timed}, y: {range: fromZero}},
      series: series,
      axes: [{}, {label: unit.label, size: 70, values: function (u, splits) { return splits.map(unit.tick); }}]
    }, data, el);
    drawn.push({el: el, chart: chart});
  }

  function drawWithin(root) {
    if (!root || !root.querySelectorAll) return;
    if (root.matches && root.matches(".chart")) draw(root);
    Array.prototype.forEach.call(root.querySelectorAll(".chart"), draw);
  }

  function fit() {
    drawn = drawn.filter(function (d) {
      if (!d.el.isConnected) { d.chart.destroy(); return false; }
      d.chart.setSize({width: d.el.clientWidth || 600, height: HEIGHT});
      return true;
    });
  }

  document.addEventListener("htmx:load", function (e) { drawWithin(e.detail && e.detail.elt); });
  document.addEventListener("htmx:afterSettle", function (e) { drawWithin((e.detail && e.detail.elt) || e.target); });
  window.addEventListener("resize", fit);
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { drawWithin(document); });
  } else {
    drawWithin(document);
  }
})();
