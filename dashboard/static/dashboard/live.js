// Draws the figures the server built, then keeps them moving from the panel's WebSocket.
//
// Each chart is a <div class="chart" data-figure="..."> with its Plotly JSON in a
// <script type="application/json">. <main data-live-groups="fleet,pool.3"> names the groups
// this page subscribes to. Events extend traces with Plotly.extendTraces, keeping a rolling
// window of MAX_POINTS; the socket reconnects with backoff after a server restart, and the
// page says "stale" when no event arrived for data-stale-after seconds.
//
// What no event extends (spend cards, tables, rollup charts) is fetched again every
// data-refresh-every seconds while the page is live and visible: the page's own URL is
// rendered anew and swapped in, the live-extended charts kept as they are, so everything a
// live page shows moves. main.dataset.refreshedAt says when that last happened. One refresh
// runs at a time, and the next waits at least as long as the last one took
// (REFRESH_IDLE_FACTOR): a page slow to render (a month of costs over many allocations) would
// otherwise keep the panel rendering it back to back for one viewer, the requests piling up
// behind each other; a page that renders fast still moves every data-refresh-every seconds.
// charts.js links the time charts (zoom, hover) and refreshes pages on the period the
// URL asks for, through the same swap.
"use strict";

(function () {
  const MAX_POINTS = 720;
  const charts = [];

  function draw(root) {
    root.querySelectorAll(".chart[data-figure]:not(.js-plotly-plot)").forEach((div) => {
      const figure = JSON.parse(document.getElementById(div.dataset.figure).textContent);
      Plotly.newPlot(div, figure.data, figure.layout, { responsive: true, displaylogo: false });
      charts.push(div);
      if (window.fleetTime) window.fleetTime.attach(div);
    });
  }

  function extended(div) {
    return div.dataset.live !== "" && div.classList.contains("js-plotly-plot");
  }

  // The page rendered anew, swapped in; charts that events extend stay, with their points.
  function swap(main, fresh) {
    const kept = new Map();
    main.querySelectorAll(".chart[data-figure]").forEach((div) => {
      if (extended(div)) kept.set(div.id, div);
      else Plotly.purge(div);
    });
    charts.splice(0, charts.length, ...kept.values());
    main.replaceChildren(...Array.from(fresh.childNodes, (node) => document.importNode(node, true)));
    kept.forEach((div, id) => {
      const placeholder = document.getElementById(id);
      if (placeholder) {
        placeholder.replaceWith(div);
        Plotly.Plots.resize(div);
      } else {
        charts.splice(charts.indexOf(div), 1);
      }
    });
    draw(main);
    if (window.fleetTime) window.fleetTime.swapped();
    main.dataset.refreshedAt = new Date().toISOString();
  }

  const REFRESH_IDLE_FACTOR = 1;
  let refreshing = false;
  let refreshAllowedAt = 0;

  // True once the page was rendered anew and swapped in.
  async function refresh(main) {
    const busy = main.contains(document.activeElement) && document.activeElement !== document.body;
    const handling = window.fleetTime && window.fleetTime.interacting();
    if (document.hidden || busy || handling || refreshing || Date.now() < refreshAllowedAt) return false; // not while someone types, drags or hovers
    refreshing = true;
    const started = Date.now();
    try {
      // The page's own URL, not a zoom charts.js put in the address bar: the zoom is kept on the charts.
      const url = window.fleetTime ? window.fleetTime.source() : location.href;
      const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (!response.ok || response.redirected) return false;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.querySelector("main");
      if (!fresh) return false;
      swap(main, fresh);
      return true;
    } finally {
      refreshing = false;
      refreshAllowedAt = Date.now() + REFRESH_IDLE_FACTOR * (Date.now() - started);
    }
  }

  function pointCount(div) {
    return div.data.reduce((total, trace) => total + (trace.x ? trace.x.length : 0), 0);
  }

  function traceIndex(div, test) {
    return div.data.findIndex((trace) => trace.meta && test(trace.meta));
  }

  // A chart drawn over a range that ends now keeps its span and slides with each reading. One
  // drawn over a past range stays put, and so does one zoomed by hand (Plotly writes no zone).
  const ZONED = /(Z|[+-]\d\d:?\d\d)$/;
  const FOLLOW_WITHIN_MS = 5 * 60 * 1000;

  function follow(div, time) {
    const range = div.layout.xaxis && div.layout.xaxis.range;
    if (!range || !ZONED.test(range[1])) return;
    const end = Date.parse(range[1]);
    if (div.dataset.follows === undefined) div.dataset.follows = String(time - end < FOLLOW_WITHIN_MS);
    if (div.dataset.follows !== "true" || !(time > end)) return;
    const span = end - Date.parse(range[0]);
    Plotly.relayout(div, { "xaxis.range": [new Date(time - span).toISOString(), new Date(time).toISOString()] });
  }

  function extendGpus(kind, readings) {
    charts
      .filter((div) => div.dataset.live === kind)
      .forEach((div) => {
        const field = div.dataset.field;
        const scale = Number(div.dataset.scale || 1);
        readings.forEach((reading) => {
          let index = traceIndex(div, (meta) => meta.gpu === reading.gpu);
          if (index < 0) {
            Plotly.addTraces(div, { x: [], y: [], mode: "lines", name: reading.label, meta: { gpu: reading.gpu, field, scale } });
            index = div.data.length - 1;
          }
          const value = reading[field];
          Plotly.extendTraces(div, { x: [[reading.at]], y: [[value == null ? null : value / scale]] }, [index], MAX_POINTS);
        });
        if (readings.length) follow(div, Math.max(...readings.map((reading) => Date.parse(reading.at))));
      });
  }

  function poolName(id) {
    const option = document.querySelector(`#pool-filter option[value="${id}"]`);
    return option ? option.textContent : id ? `pool ${id}` : "fleet";
  }

  function addDecision(event) {
    charts
      .filter((div) => div.dataset.live === "decision")
      .forEach((div) => {
        let index = traceIndex(div, (meta) => meta.policy_kind === event.policy_kind);
        if (index < 0) {
          Plotly.addTraces(div, { x: [], y: [], mode: "markers", name: event.policy_kind, meta: { policy_kind: event.policy_kind }, marker: { size: 10, symbol: "diamond" } });
          index = div.data.length - 1;
        }
        Plotly.extendTraces(div, { x: [[event.at]], y: [[event.policy_kind]] }, [index], MAX_POINTS);
        follow(div, Date.parse(event.at));
      });
    const table = document.querySelector("#decisions tbody");
    if (!table || table.querySelector(`tr[data-decision="${event.decision}"]`)) return;
    table.querySelector("tr.none")?.remove();
    const row = table.insertRow(0);
    row.dataset.decision = event.decision;
    // The effect column ("–") fills in on the next load: it is priced on the server.
    [event.at.replace("T", " ").slice(0, 19), event.policy_kind, event.action, poolName(event.pool), event.instance || "–", "–", event.reason || ""].forEach((text) => {
      row.insertCell().textContent = text;
    });
  }

  function handle(event) {
    if (event.kind === "fleet") extendGpus("fleet", event.gpus || []);
    else if (event.kind === "gpus") extendGpus("gpus", event.gpus || []);
    else if (event.kind === "decision") addDecision(event);
  }

  function connect(main) {
    let open = false;
    const every = Number(main.dataset.refreshEvery || 0) * 1000;
    if (every > 0) setInterval(() => open && refresh(main).catch(() => {}), every);
    const state = document.getElementById("live-state");
    const groups = main.dataset.liveGroups.split(",").filter(Boolean);
    let delay = 1000;
    let lastEvent = Date.now();

    function show(text, kind) {
      if (!state) return;
      state.textContent = text;
      state.className = kind;
    }

    setInterval(() => {
      if (!open) return;
      const quiet = Date.now() - lastEvent;
      if (quiet > Number(main.dataset.staleAfter || 30) * 1000) show(`stale: no update for ${Math.round(quiet / 1000)} s`, "stale");
    }, 1000);

    function start() {
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      const socket = new WebSocket(`${scheme}://${location.host}/ws/fleet/`);
      socket.onopen = () => {
        open = true;
        delay = 1000;
        lastEvent = Date.now();
        socket.send(JSON.stringify({ subscribe: groups }));
        show("live", "live");
      };
      socket.onmessage = (message) => {
        const event = JSON.parse(message.data);
        if (event.kind === "subscribed" || event.kind === "error") return;
        lastEvent = Date.now();
        show("live", "live");
        handle(event);
      };
      socket.onclose = (close) => {
        open = false;
        if (close.code === 4401) {
          show("signed out: reload to sign in", "down");
          return;
        }
        show(`disconnected; reconnecting in ${Math.round(delay / 1000)} s`, "down");
        setTimeout(start, delay + Math.random() * 250);
        delay = Math.min(delay * 2, 30000);
      };
    }
    start();
  }

  document.addEventListener("DOMContentLoaded", () => {
    draw(document);
    window.fleetCharts = { charts, pointCount, refresh };
    const main = document.querySelector("main[data-live-groups]");
    if (main) connect(main);
  });
})();
