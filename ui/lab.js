// D²Pruner lab — the page script: linked tokens across every panel, the token inspector, the stale-results marker,
// and the ground-truth box drawn on the input image. Reads only what the figures carry (d2pruner.viz puts the grid
// of every heatmap trace in its `meta` and the panel's kind in `layout.meta`); sends nothing to the server.
(function () {
  "use strict";
  if (window.d2lab) return;
  const state = { version: 0, pending: 0, computed: null, pinned: null, hovered: null, gt: null };
  const attached = new WeakMap(); // graph div -> the _fullLayout its listeners were attached for
  const rankCache = new WeakMap(); // relative-attention layout -> ranks

  const fmt = (v) => (v === null || v === undefined || !isFinite(v) ? "–" : Number(v).toPrecision(3));

  function plots(selector) {
    return Array.from(document.querySelectorAll(selector || ".linked .js-plotly-plot"));
  }

  function axis(gd, name) {
    const key = name === "x" || name === "y" ? name + "axis" : name[0] + "axis" + name.slice(1);
    return gd._fullLayout && gd._fullLayout[key];
  }

  function zAt(z, row, col, cols) {
    if (!z) return undefined;
    const line = z[row];
    if (line !== undefined && typeof line === "object") return line[col];
    return z[row * cols + col];
  }

  function gridTraces(gd) {
    const out = [];
    (gd.data || []).forEach((trace, i) => {
      const meta = trace.meta;
      if (meta && typeof meta === "object" && meta.offset !== undefined && meta.cols !== undefined) {
        out.push({ trace, i, meta, full: gd._fullData ? gd._fullData[i] : trace });
      }
    });
    return out;
  }

  function tokenOf(point) {
    const meta = point.data && point.data.meta;
    const pn = point.pointNumber;
    if (meta && meta.offset !== undefined && Array.isArray(pn)) return meta.offset + pn[0] * meta.cols + pn[1];
    const cd = point.customdata;
    if (cd === undefined || cd === null) return null;
    return Array.isArray(cd) ? Number(cd[0]) : Number(cd);
  }

  function locate(gd, token) {
    // [{row, col, grid, x0, x1, y0, y1, xaxis, yaxis, visible, trace}] for every grid trace holding the token
    const found = [];
    for (const g of gridTraces(gd)) {
      const { meta, full, trace } = g;
      if (token < meta.offset || token >= meta.offset + meta.rows * meta.cols) continue;
      const local = token - meta.offset;
      const row = Math.floor(local / meta.cols);
      const col = local % meta.cols;
      const xs = full.x || trace.x;
      const ys = full.y || trace.y;
      if (!xs || !ys) continue;
      found.push({ row, col, grid: meta.grid, x0: xs[col], x1: xs[col + 1], y0: ys[row], y1: ys[row + 1],
                   xaxis: full.xaxis || "x", yaxis: full.yaxis || "y", visible: full.visible === true, trace,
                   z: full._z || full.z || trace.z });
    }
    return found;
  }

  function overlay(gd) {
    const container = gd.querySelector(".svg-container");
    if (!container) return null;
    let svg = container.querySelector("svg.d2-overlay");
    if (!svg) {
      svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
      svg.setAttribute("class", "d2-overlay");
      svg.setAttribute("aria-hidden", "true");
      container.appendChild(svg);
    }
    svg.setAttribute("width", container.clientWidth);
    svg.setAttribute("height", container.clientHeight);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    return svg;
  }

  function mark(svg, kind, attrs) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", kind);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    svg.appendChild(el);
  }

  function highlight(token) {
    for (const gd of plots()) {
      const svg = overlay(gd);
      if (!svg || token === null || token === undefined) continue;
      for (const hit of locate(gd, token)) {
        if (!hit.visible) continue;
        const xa = axis(gd, hit.xaxis);
        const ya = axis(gd, hit.yaxis);
        if (!xa || !ya || !xa.l2p || !ya.l2p) continue;
        const xs = [xa._offset + xa.l2p(hit.x0), xa._offset + xa.l2p(hit.x1)];
        const ys = [ya._offset + ya.l2p(hit.y0), ya._offset + ya.l2p(hit.y1)];
        const x = Math.min(...xs), y = Math.min(...ys);
        const w = Math.max(3, Math.abs(xs[1] - xs[0])), h = Math.max(3, Math.abs(ys[1] - ys[0]));
        mark(svg, "rect", { x: x - 2, y: y - 2, width: w + 4, height: h + 4, class: "d2-mark-outer" });
        mark(svg, "rect", { x, y, width: w, height: h, class: "d2-mark" });
      }
      (gd.data || []).forEach((trace, i) => {
        if (!(trace.meta && trace.meta.nodes)) return;
        const full = gd._fullData ? gd._fullData[i] : trace;
        if (full.visible !== true) return;
        const cd = full.customdata || trace.customdata || [];
        for (let k = 0; k < cd.length; k++) {
          if (Number(Array.isArray(cd[k]) ? cd[k][0] : cd[k]) !== token) continue;
          const xa = axis(gd, full.xaxis || "x"), ya = axis(gd, full.yaxis || "y");
          if (!xa || !ya) continue;
          mark(svg, "circle", { cx: xa._offset + xa.l2p(full.x[k]), cy: ya._offset + ya.l2p(full.y[k]), r: 9,
                                class: "d2-mark" });
        }
      });
    }
    inspect(token);
  }

  function valueOf(panel, token) {
    for (const gd of plots(".js-plotly-plot")) {
      const meta = gd.layout && gd.layout.meta;
      if (!meta || meta.panel !== panel) continue;
      for (const hit of locate(gd, token)) {
        const z = zAt(hit.z, hit.row, hit.col, hit.trace.meta.cols);
        if (z === undefined || z === null) continue;
        const raw = meta.log ? Math.pow(10, z) : z;
        return { value: raw / (meta.scale || 1), hit, gd };
      }
    }
    return null;
  }

  function rankOf(token) {
    for (const gd of plots(".js-plotly-plot")) {
      const meta = gd.layout && gd.layout.meta;
      if (!meta || meta.panel !== "relative") continue;
      let ranks = rankCache.get(gd._fullLayout);
      if (!ranks) {
        const values = [];
        for (const g of gridTraces(gd)) {
          for (let r = 0; r < g.meta.rows; r++) {
            for (let c = 0; c < g.meta.cols; c++) {
              const z = g.full._z || g.full.z || g.trace.z;
              values.push([g.meta.offset + r * g.meta.cols + c, Number(zAt(z, r, c, g.meta.cols))]);
            }
          }
        }
        values.sort((a, b) => b[1] - a[1] || a[0] - b[0]);
        ranks = new Map(values.map(([t], i) => [t, i + 1]));
        ranks.total = values.length;
        rankCache.set(gd._fullLayout, ranks);
      }
      return { rank: ranks.get(token), total: ranks.total };
    }
    return null;
  }

  function keptBy(token) {
    const kept = [], pruned = [];
    for (const gd of plots(".js-plotly-plot")) {
      const meta = gd.layout && gd.layout.meta;
      if (!meta || meta.panel !== "facet" || meta.method === "vanilla") continue;
      const hit = locate(gd, token)[0];
      if (!hit) continue;
      const z = zAt(hit.z, hit.row, hit.col, hit.trace.meta.cols);
      if (z === undefined || z === null) continue;
      (Number(z) === 0 ? kept : pruned).push(meta.label || meta.method);
    }
    return { kept, pruned };
  }

  function inspect(token) {
    const box = document.getElementById("token-inspector");
    if (!box) return;
    if (token === null || token === undefined) {
      box.innerHTML = "Hover or click a token in any panel to follow it everywhere.";
      box.removeAttribute("data-token");
      return;
    }
    const att = valueOf("attention", token), prior = valueOf("prior", token), rel = valueOf("relative", token);
    const where = att || prior || rel;
    const rank = rankOf(token);
    const methods = keptBy(token);
    const pos = where ? `${where.hit.grid} grid, row ${where.hit.row}, col ${where.hit.col}` : "";
    const esc = (s) => String(s).replace(/[&<>]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;" }[c]));
    box.setAttribute("data-token", String(token));
    box.innerHTML =
      `<b>Token #${token}</b>${pos ? " · " + esc(pos) : ""}` +
      ` · attention ${fmt(att && att.value)} · prior ${fmt(prior && prior.value)}` +
      ` · relative attention ${fmt(rel && rel.value)}` +
      (rank && rank.rank ? ` (rank ${rank.rank} of ${rank.total})` : "") +
      `<br>kept by: <b>${methods.kept.length ? methods.kept.map(esc).join(", ") : "none"}</b>` +
      (methods.pruned.length ? ` · pruned by: ${methods.pruned.map(esc).join(", ")}` : "") +
      `<span class="inspector-hint">${state.pinned !== null ? " · pinned — click it again or press Esc to release"
                                                              : " · click to pin"}</span>`;
  }

  const handlers = new WeakMap(); // graph div -> our listeners (removed before re-attaching; Gradio's stay)

  function attach(gd) {
    if (!gd.on || !gd._fullLayout || attached.get(gd) === gd._fullLayout) return;
    attached.set(gd, gd._fullLayout);
    const old = handlers.get(gd);
    if (old && gd.removeListener) for (const [name, fn] of Object.entries(old)) gd.removeListener(name, fn);
    const mine = {
      plotly_hover(ev) {
        const token = ev && ev.points && ev.points.length ? tokenOf(ev.points[0]) : null;
        if (token === null || Number.isNaN(token)) return;
        state.hovered = token;
        if (state.pinned === null) highlight(token);
      },
      plotly_unhover() {
        state.hovered = null;
        if (state.pinned === null) highlight(null);
      },
      plotly_click(ev) {
        const token = ev && ev.points && ev.points.length ? tokenOf(ev.points[0]) : null;
        if (token === null || Number.isNaN(token)) return;
        state.pinned = state.pinned === token ? null : token;
        highlight(state.pinned === null ? token : state.pinned);
      },
    };
    for (const [name, fn] of Object.entries(mine)) gd.on(name, fn);
    handlers.set(gd, mine);
    if (state.pinned !== null) highlight(state.pinned);
  }

  function attachAll() {
    plots().forEach(attach);
    redrawGroundTruth();
  }

  // ---- stale results
  function updateStale() {
    const stale = state.computed !== null && state.version !== state.computed;
    document.body.classList.toggle("d2-stale", stale);
    const marker = document.getElementById("stale-marker");
    if (marker) marker.style.setProperty("display", stale ? "block" : "none", "important");
  }

  // ---- the ground-truth box on the input image
  function parseBox(text) {
    const nums = String(text || "").match(/[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?/g);
    if (!nums || nums.length !== 4) return null;
    const [x1, y1, x2, y2] = nums.map(Number);
    return x2 > x1 && y2 > y1 ? [x1, y1, x2, y2] : null;
  }

  function redrawGroundTruth() {
    const img = document.querySelector("#input-image img");
    const old = document.querySelector("#input-image .d2-gt");
    if (!img || !state.gt || !img.naturalWidth) {
      if (old) old.remove();
      return;
    }
    const parent = img.parentElement;
    if (getComputedStyle(parent).position === "static") parent.style.position = "relative";
    const box = old || document.createElement("div");
    box.className = "d2-gt";
    box.setAttribute("aria-hidden", "true");
    const r = img.getBoundingClientRect(), p = parent.getBoundingClientRect();
    const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
    const ox = r.left - p.left + (r.width - img.naturalWidth * s) / 2;
    const oy = r.top - p.top + (r.height - img.naturalHeight * s) / 2;
    const [x1, y1, x2, y2] = state.gt;
    Object.assign(box.style, { left: `${ox + x1 * s}px`, top: `${oy + y1 * s}px`, width: `${(x2 - x1) * s}px`,
                               height: `${(y2 - y1) * s}px` });
    if (!old) parent.appendChild(box);
  }

  window.d2lab = {
    state,
    inputsChanged() { state.version += 1; updateStale(); },
    started() { state.pending = state.version; },
    resultsArrived() { state.computed = state.pending; updateStale(); state.pinned = null; highlight(null); },
    drawGroundTruth(text) { state.gt = parseBox(text); redrawGroundTruth(); },
    highlight,
    tokenOf,
  };
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && state.pinned !== null) { state.pinned = null; highlight(state.hovered); }
  });
  window.addEventListener("resize", () => { redrawGroundTruth(); if (state.pinned !== null) highlight(state.pinned); });
  setInterval(attachAll, 500);
})();
