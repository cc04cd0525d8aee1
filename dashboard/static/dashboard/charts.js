// A page's time charts behave as one, as the panels of a dashboard under one time picker.
//
// The charts drawn over the page's range (the range picker, #range, carries it in data-start
// and data-end; the server draws every time axis over exactly that range) are linked:
//
// - zoom: a drag on one sets the same x-range on the others; a double-click (or Plotly's
//   autoscale button) puts every one back on the page's range. While zoomed, the range bar
//   offers to load the zoomed range from the server (range=custom, finer rollups) and its
//   from/to fields hold the zoomed range, so "Show" loads it too.
// - hover: hovering one shows the same instant's hover labels and spike line on the others.
// - refresh: with refresh=30s|1m|5m in the URL (the picker, #refresh, carries the seconds) the
//   page is rendered anew and swapped in by live.js every period, not while a pointer is down
//   or over a chart; a zoom is kept across it.
// - the URL: while zoomed, the address bar holds the zoomed range as the picker's custom range
//   (range=custom&start=...&end=..., UTC to the second), so a reload or a shared link shows the
//   same span, drawn by the server; a reset puts the page's own URL back. The refresh picker's
//   links and the page's filter forms carry the zoomed range too. Timed refreshes still render
//   the page's own URL (source()), so a reset finds the whole range drawn.
//
// A zoom is told from the range the server drew by its strings: the server writes ranges
// with a zone (...Z), Plotly writes a hand zoom without one (UTC by its convention). live.js
// calls attach() for every chart it draws and swapped() after a refresh.
"use strict";

(function () {
  const ZONED = /(Z|[+-]\d\d:?\d\d)$/;
  const SAME_WITHIN_MS = 1000; // a chart's range against the page's (both server-written)
  const linked = [];
  let zoom = null; // [from, to] as Plotly wrote them, while zoomed
  let pointerDown = false;
  let pointerOnChart = false;
  const source = location.href; // the URL the page's range came from

  function ms(value) {
    if (typeof value === "number") return value;
    let text = String(value).trim().replace(" ", "T");
    if (ZONED.test(text)) return Date.parse(text);
    if (!text.includes("T")) text += "T00:00";
    return Date.parse(`${text}Z`);
  }

  function iso(at) {
    return new Date(at).toISOString();
  }

  // An instant as the custom range's start and end take it: UTC, to the second.
  function stamp(at) {
    return new Date(Math.round(ms(at) / 1000) * 1000).toISOString().replace(".000Z", "Z");
  }

  // ``href`` with the zoomed range as its custom range, or ``href`` itself when not zoomed.
  function withZoom(href) {
    const url = new URL(href, location.href);
    if (zoom) {
      url.searchParams.set("range", "custom");
      url.searchParams.set("start", stamp(zoom[0]));
      url.searchParams.set("end", stamp(zoom[1]));
      url.searchParams.delete("before");
    }
    return url.origin === location.origin ? url.pathname + url.search + url.hash : url.href;
  }

  function pageRange() {
    const picker = document.getElementById("range");
    if (!picker || !picker.dataset.start || !picker.dataset.end) return null;
    return [Date.parse(picker.dataset.start), Date.parse(picker.dataset.end)];
  }

  function xRange(div) {
    const axis = div.layout && div.layout.xaxis;
    return axis && axis.type === "date" && Array.isArray(axis.range) ? axis.range : null;
  }

  function same(a, b, within) {
    return Math.abs(ms(a[0]) - ms(b[0])) <= within && Math.abs(ms(a[1]) - ms(b[1])) <= within;
  }

  function others(div) {
    for (let i = linked.length - 1; i >= 0; i -= 1) {
      if (!linked[i].isConnected || !linked[i]._fullLayout) linked.splice(i, 1);
    }
    return linked.filter((other) => other !== div);
  }

  function setRange(div, range) {
    const now = xRange(div);
    if (now && now[0] === range[0] && now[1] === range[1]) return; // already there: no echo, no loop
    Plotly.relayout(div, { "xaxis.range": range.slice() });
  }

  function reset() {
    const page = pageRange();
    if (!page) return;
    zoom = null;
    const range = [iso(page[0]), iso(page[1])];
    others(null).forEach((div) => setRange(div, range));
    zoomShown();
  }

  function relayouted(div, update) {
    const keys = Object.keys(update || {});
    if (keys.includes("xaxis.autorange")) {
      reset();
      return;
    }
    if (!keys.some((key) => key.startsWith("xaxis.range"))) return;
    const range = xRange(div);
    if (!range) return;
    // A range with a zone is the server's or live.js sliding it with new readings; one without is a hand zoom.
    zoom = ZONED.test(String(range[1])) ? null : range.slice();
    others(div).forEach((other) => setRange(other, range));
    zoomShown();
  }

  function subplots(div) {
    return Object.keys((div._fullLayout && div._fullLayout._plots) || { xy: null });
  }

  function hovered(div, event) {
    // The pointer's instant as the event gives it (a date string), in milliseconds as Fx.hover takes it.
    const at = event && event.xvals && event.xvals.length ? ms(event.xvals[0]) : NaN;
    if (Number.isNaN(at)) return;
    others(div).forEach((other) => {
      try {
        Plotly.Fx.hover(other, { xval: at }, subplots(other), true);
      } catch (error) {
        // A chart with nothing at that instant shows nothing.
      }
    });
  }

  function unhovered(div) {
    others(div).forEach((other) => Plotly.Fx.unhover(other));
  }

  // The zoom shown outside the charts: in the address bar (replaced, not a new history entry), the
  // refresh picker's links, and the range bar: a link that loads the zoomed range, its from/to fields set to it.
  function zoomShown() {
    const target = withZoom(source);
    if (new URL(target, location.href).href !== location.href) history.replaceState(history.state, "", target);
    document.querySelectorAll("#refresh a[href]").forEach((link) => {
      if (link.dataset.href === undefined) link.dataset.href = link.getAttribute("href");
      link.setAttribute("href", withZoom(link.dataset.href));
    });
    const bar = document.getElementById("range-zoom");
    if (bar) bar.hidden = !zoom;
    if (!zoom) return;
    const [from, to] = zoom.map((value) => iso(ms(value)));
    const load = document.getElementById("range-zoom-load");
    if (load) {
      load.href = withZoom(source);
      load.textContent = `${from.slice(0, 16).replace("T", " ")} – ${to.slice(0, 16).replace("T", " ")} UTC`;
    }
    const fields = document.querySelectorAll("#range input[type=datetime-local]");
    if (fields.length === 2) {
      fields[0].value = from.slice(0, 16);
      fields[1].value = to.slice(0, 16);
    }
  }

  function attach(div) {
    const range = xRange(div);
    const page = pageRange();
    if (!range || !page || !same(range, page, SAME_WITHIN_MS)) return; // not over the page's range: on its own
    others(null); // drops the charts a refresh swapped out
    linked.push(div);
    div.dataset.linked = "time";
    div.on("plotly_relayout", (update) => relayouted(div, update));
    div.on("plotly_hover", (event) => hovered(div, event));
    div.on("plotly_unhover", () => unhovered(div));
    div.on("plotly_doubleclick", () => reset());
    if (zoom) setRange(div, zoom);
  }

  function swapped() {
    zoomShown();
  }

  function interacting() {
    return pointerDown || pointerOnChart;
  }

  function refreshEvery(main) {
    const picker = document.getElementById("refresh");
    const seconds = Number((picker && picker.dataset.seconds) || 0);
    if (!(seconds > 0)) return;
    let due = Date.now() + seconds * 1000;
    let running = false;
    main.dataset.refreshDue = iso(due);
    setInterval(async () => {
      if (running || Date.now() < due || interacting() || document.hidden || !window.fleetCharts) return;
      running = true;
      try {
        if (await window.fleetCharts.refresh(main)) {
          main.dataset.timedRefreshes = String(Number(main.dataset.timedRefreshes || 0) + 1);
        }
      } catch (error) {
        // The next period tries again.
      } finally {
        due = Date.now() + seconds * 1000;
        main.dataset.refreshDue = iso(due);
        running = false;
      }
    }, 1000);
  }

  document.addEventListener("pointerdown", (event) => {
    if (event.target.closest && event.target.closest(".chart")) pointerDown = true;
  });
  document.addEventListener("pointerup", () => {
    pointerDown = false;
  });
  // Where the pointer is, from every move: hover events can arrive after the pointer left a chart.
  document.addEventListener("pointermove", (event) => {
    pointerOnChart = Boolean(event.target.closest && event.target.closest(".chart"));
  });
  document.documentElement.addEventListener("pointerleave", () => {
    pointerOnChart = false;
  });
  document.addEventListener("click", (event) => {
    if (event.target.id === "range-zoom-reset") {
      event.preventDefault();
      reset();
    }
  });
  // A filter form that carries the page's range (the requests page's) submits the zoomed range instead.
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (!zoom || !(form instanceof HTMLFormElement) || form.closest("#range")) return;
    const range = form.querySelector("input[name=range]");
    if (!range) return;
    range.value = "custom";
    [
      ["start", zoom[0]],
      ["end", zoom[1]],
    ].forEach(([name, at]) => {
      let field = form.querySelector(`input[name=${name}]`);
      if (!field) {
        field = document.createElement("input");
        field.type = "hidden";
        field.name = name;
        form.append(field);
      }
      field.value = stamp(at);
    });
  });
  document.addEventListener("DOMContentLoaded", () => {
    const main = document.querySelector("main");
    if (main) refreshEvery(main);
  });

  window.fleetTime = { attach, swapped, reset, interacting, linked, zoomed: () => zoom, source: () => source };
})();
