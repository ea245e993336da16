// wsl prediction service: the web page's behaviour. No libraries, no external requests:
// everything talks to this server's /v1 API. Uploads use XHR for a real progress bar.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const cards = new Map(); // predictor name -> card (from GET /v1/predictors)
  let busy = false;

  const pct = (v, digits = 1) => (100 * v).toFixed(digits) + "%";

  function el(tag, attrs = {}, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ---------------------------------------------------------------- state of the page
  function setBusy(on, label) {
    busy = on;
    $("predict-button").disabled = on;
    $("progress").hidden = !on;
    if (label) $("progress-label").textContent = label;
  }

  function setProgress(fraction, label) {
    const bar = $("upload-progress");
    if (fraction === null) bar.removeAttribute("value"); // indeterminate while the server predicts
    else bar.value = Math.round(100 * fraction);
    $("progress-label").textContent = label;
  }

  function showError(code, message) {
    $("result").hidden = true;
    $("error-code").textContent = code;
    $("error-message").textContent = message;
    $("error").hidden = false;
  }

  function handleResponse(status, text) {
    let body;
    try {
      body = JSON.parse(text);
    } catch (e) {
      showError("http_" + status, "the server answered something that is not JSON");
      return;
    }
    if (status === 200) showResult(body);
    else if (body && body.error) showError(body.error.code, body.error.message);
    else showError("http_" + status, text.slice(0, 300));
  }

  // ---------------------------------------------------------------- requests
  function upload(file) {
    if (busy) return;
    const form = new FormData();
    form.append("file", file, file.name);
    const predictor = $("predictor-select").value;
    const arch = $("arch-input").value.trim();
    if (predictor) form.append("predictor", predictor);
    if (arch) form.append("arch", arch);
    $("error").hidden = true;
    setBusy(true, "Uploading " + file.name + "…");
    setProgress(0, "Uploading " + file.name + "… 0%");
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/predict");
    xhr.responseType = "text";
    xhr.upload.addEventListener("progress", (ev) => {
      if (ev.lengthComputable) setProgress(ev.loaded / ev.total, "Uploading " + file.name + "… " + pct(ev.loaded / ev.total, 0));
    });
    xhr.upload.addEventListener("load", () => setProgress(null, "Predicting…"));
    xhr.addEventListener("load", () => {
      setBusy(false);
      handleResponse(xhr.status, xhr.responseText);
    });
    xhr.addEventListener("error", () => {
      setBusy(false);
      showError("network_error", "the upload failed (connection closed; a file over the size limit is cut off)");
    });
    xhr.send(form);
  }

  async function predictHub(uri) {
    if (busy) return;
    const body = { uri };
    const predictor = $("predictor-select").value;
    const arch = $("arch-input").value.trim();
    if (predictor) body.predictor = predictor;
    if (arch) body.arch = arch;
    $("error").hidden = true;
    setBusy(true);
    setProgress(null, "Fetching " + uri + " and predicting…");
    try {
      const r = await fetch("/v1/predict/hub", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      handleResponse(r.status, await r.text());
    } catch (e) {
      showError("network_error", String(e));
    } finally {
      setBusy(false);
    }
  }

  async function runExample(name) {
    if (busy) return;
    try {
      const r = await fetch("/v1/examples/" + encodeURIComponent(name));
      if (!r.ok) throw new Error("HTTP " + r.status);
      upload(new File([await r.blob()], name));
    } catch (e) {
      showError("network_error", "could not fetch the example: " + e);
    }
  }

  // ---------------------------------------------------------------- the result
  function showResult(p) {
    $("error").hidden = true;
    $("result-source").textContent = p.source;
    const acc = $("result-accuracy");
    acc.textContent = pct(p.predicted_test_accuracy);
    acc.dataset.value = String(p.predicted_test_accuracy);
    const measured = p.interval_coverage != null ? ` (held for ${pct(p.interval_coverage, 1)} of test networks)` : "";
    $("result-interval").textContent = p.interval
      ? `${p.interval_level ? pct(p.interval_level, 0) + " interval" : "Interval"}: ${pct(p.interval[0])} – ${pct(p.interval[1])}${measured}`
      : "No calibrated interval for this predictor.";
    $("result-predictor").textContent = p.predictor;
    const warn = $("result-warnings");
    warn.replaceChildren(...(p.warnings || []).map((w) => el("li", {}, w)));
    const a = p.architecture || {};
    const rows = [
      ["Parameters", (a.num_parameters ?? 0).toLocaleString("en")],
      ["Weight tensors", a.num_tensors],
      ["Parameter-graph nodes", (a.num_nodes ?? 0).toLocaleString("en")],
      ["Parameter-graph edges", (a.num_edges ?? 0).toLocaleString("en")],
      ["Activations", (a.activations || []).join(", ") || "none seen"],
      ["Weight-space signature", a.signature],
    ];
    $("arch-table").replaceChildren(...rows.map(([k, v]) => {
      const tr = el("tr");
      tr.append(el("th", { scope: "row" }, k), el("td", {}, v === undefined ? "" : String(v)));
      return tr;
    }));
    drawHistogram(cards.get(p.predictor), p);
    $("result").hidden = false;
    $("result").scrollIntoView({ block: "nearest" });
  }

  function drawHistogram(card, p) {
    const fig = $("histogram-figure");
    const h = card && card.histogram;
    if (!h || !h.counts || !h.counts.length) {
      fig.hidden = true;
      return;
    }
    const W = 560, H = 180, L = 50, R = 20, T = 12, B = 34;
    const lo = h.edges[0], hi = h.edges[h.edges.length - 1];
    const x = (v) => L + ((Math.min(Math.max(v, lo), hi) - lo) / (hi - lo || 1)) * (W - L - R);
    const maxCount = Math.max(...h.counts, 1);
    const y = (c) => H - B - (c / maxCount) * (H - B - T);
    const value = p.predicted_test_accuracy;
    let below = 0;
    h.counts.forEach((c, i) => {
      const a = h.edges[i], b = h.edges[i + 1];
      below += value >= b ? c : value > a ? (c * (value - a)) / (b - a) : 0;
    });
    const share = below / (h.n || h.counts.reduce((s, c) => s + c, 0) || 1);
    const label = `Histogram of ${h.target || "test accuracy"} over ${h.n} models of the training zoo; ` +
      `the prediction ${pct(value)} is above about ${pct(share, 0)} of them.`;
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label, class: "hist" });
    root.append(svg("title", {}, label));
    let band = null, narrow = false;
    if (p.interval) { // a degenerate interval (one value) is widened to MIN_BAND px and drawn over the bars
      const MIN_BAND = 14, a = x(p.interval[0]), b = x(p.interval[1]);
      const width = Math.max(MIN_BAND, b - a);
      const left = Math.min(Math.max((a + b - width) / 2, L), W - R - width);
      narrow = b - a < MIN_BAND;
      band = svg("rect", { x: left, y: T, width, height: H - B - T, class: "band" + (narrow ? " narrow" : "") });
      if (!narrow) root.append(band);
    }
    h.counts.forEach((c, i) => {
      const x0 = x(h.edges[i]) + 1, x1 = x(h.edges[i + 1]) - 1;
      root.append(svg("rect", { x: x0, y: y(c), width: Math.max(1, x1 - x0), height: H - B - y(c), class: "bar" }));
    });
    if (narrow) root.append(band);
    root.append(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
    for (let i = 0; i <= 4; i++) {
      const v = lo + (i / 4) * (hi - lo);
      root.append(svg("line", { x1: x(v), x2: x(v), y1: H - B, y2: H - B + 5, class: "axis" }));
      root.append(svg("text", { x: x(v), y: H - B + 18, class: "tick" }, h.target && !h.target.endsWith("accuracy") ? v.toFixed(2) : pct(v, 0)));
    }
    root.append(svg("text", { x: 4, y: T + 10, class: "tick start" }, String(maxCount)));
    root.append(svg("text", { x: 4, y: T + 24, class: "tick start" }, "models"));
    root.append(svg("line", { x1: x(value), x2: x(value), y1: T - 4, y2: H - B, class: "marker" }));
    const edge = x(value) < L + 40 ? " start" : x(value) > W - R - 40 ? " end" : ""; // keep the label inside
    root.append(svg("text", { x: x(value), y: H - 4, class: "tick marker-label" + edge }, "this model"));
    $("histogram").replaceChildren(root);
    const iv = p.interval, single = iv && pct(iv[0]) === pct(iv[1]);
    const shaded = !iv ? "" : single ? ` Shaded: the interval, a single value (${pct(iv[0])}), drawn wider to be seen.`
      : " Shaded: the interval.";
    $("histogram-caption").textContent = `Training zoo${h.zoo ? " " + h.zoo : ""}: ${h.n} models ` +
      `(${h.source || "latest checkpoints"}). The prediction is above about ${pct(share, 0)} of them.${shaded}`;
    fig.hidden = false;
  }

  // ---------------------------------------------------------------- predictors and examples
  function renderCards(list) {
    const box = $("predictor-cards");
    if (!list.length) {
      box.replaceChildren(el("p", {}, "No predictor is loaded."));
      return;
    }
    box.replaceChildren(...list.map((c) => {
      const d = el("details", { class: "pcard" });
      const t = (c.metrics && c.metrics.test) || {};
      const fmt = (v) => (typeof v === "number" ? v.toFixed(3) : "n/a");
      d.append(el("summary", {}, `${c.name} — ${c.model} on zoo ${c.training.zoo_name || "?"}: ` +
        `Kendall τ ${fmt(t.tau)}, R² ${fmt(t.r2)}`));
      const fam = c.family || {};
      const cal = c.calibration || {};
      const facts = [
        ["Training zoo", `${c.training.zoo_name || "?"} (${c.training.num_train ?? "?"} training models)`],
        ["Test metrics", `τ ${fmt(t.tau)}, R² ${fmt(t.r2)}, MAE ${fmt(t.mae)} (n = ${t.n ?? "?"})`],
        ["Interval", cal.abs_residual !== undefined ? `± ${fmt(cal.abs_residual)} (${pct(cal.level || 0.9, 0)} level; ` +
          `test coverage ${cal.test_coverage !== undefined ? pct(cal.test_coverage) : "n/a"})` : "none"],
        ["Reads", c.accepts && c.accepts.type === "any" ? "any traceable architecture in its family" : "only its training architecture"],
        ["Family", fam.input_sizes ? `inputs ${JSON.stringify(fam.input_sizes)}, outputs ${JSON.stringify(fam.output_sizes)}, ` +
          `activations ${(fam.activations || []).join("/")}, depth ≤ ${fam.max_depth}, width ≤ ${fam.max_width}` : "not recorded"],
      ];
      const dl = el("dl");
      facts.forEach(([k, v]) => dl.append(el("dt", {}, k), el("dd", {}, v)));
      d.append(dl);
      return d;
    }));
  }

  async function loadPredictors() {
    try {
      const r = await fetch("/v1/predictors");
      const data = await r.json();
      const sel = $("predictor-select");
      for (const c of data.predictors) {
        cards.set(c.name, c);
        sel.append(el("option", { value: c.name }, c.name));
      }
      renderCards(data.predictors);
    } catch (e) {
      $("predictor-cards").replaceChildren(el("p", {}, "Could not load the predictors: " + e));
    }
  }

  async function loadExamples() {
    try {
      const r = await fetch("/v1/examples");
      const data = await r.json();
      if (!data.examples.length) return;
      $("example-list").replaceChildren(...data.examples.map((e) => {
        const li = el("li");
        const b = el("button", { type: "button", class: "example", "data-file": e.file },
          `${e.model_id} (${e.zoo}, true accuracy ${typeof e.test_accuracy === "number" ? pct(e.test_accuracy) : "?"})`);
        b.addEventListener("click", () => runExample(e.file));
        li.append(b);
        return li;
      }));
      $("examples").hidden = false;
    } catch (e) {
      /* examples are optional */
    }
  }

  // ---------------------------------------------------------------- wiring
  function init() {
    $("predict-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const file = $("file-input").files[0];
      const uri = $("hub-input").value.trim();
      if (file) upload(file);
      else if (uri) predictHub(uri);
      else showError("no_input", "choose a checkpoint file or enter a Hub repository first");
    });
    $("file-input").addEventListener("change", () => {
      if ($("file-input").files.length) $("hub-input").value = "";
    });
    const zone = $("drop-zone");
    zone.addEventListener("dragover", (ev) => { ev.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (ev) => {
      ev.preventDefault();
      zone.classList.remove("over");
      if (ev.dataTransfer && ev.dataTransfer.files.length) upload(ev.dataTransfer.files[0]);
    });
    loadPredictors();
    loadExamples();
    document.body.dataset.ready = "1";
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
