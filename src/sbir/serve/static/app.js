// sbir drawing page: a canvas (Pointer Events: mouse, touch, pen), brush size, undo, clear,
// upload, and a results grid refreshed after every stroke (debounced) through POST /api/search;
// "more like this" on each result (GET /api/search/similar/{id}), example sketches
// (static/examples.json, Quick, Draw! CC BY 4.0), a preview of the raster the model sees
// (POST /api/raster: the server's own rasteriser) and an optional API key (X-API-Key).
// Plain JavaScript, no build step, no external resources.
"use strict";

(function () {
  const DEBOUNCE_MS = 300;
  const RASTER = 256; // the server rasterises strokes at 256 px

  const canvas = document.getElementById("sketch");
  const ctx = canvas.getContext("2d");
  const brush = document.getElementById("brush");
  const brushValue = document.getElementById("brush-value");
  const undoBtn = document.getElementById("undo");
  const clearBtn = document.getElementById("clear");
  const upload = document.getElementById("upload");
  const kSelect = document.getElementById("k");
  const fit = document.getElementById("fit");
  const statusEl = document.getElementById("status");
  const resultsEl = document.getElementById("results");
  const infoEl = document.getElementById("info");
  const examplesEl = document.getElementById("examples");
  const authEl = document.getElementById("auth");
  const keyInput = document.getElementById("apikey");
  const keyBtn = document.getElementById("apikey-set");
  const previewBox = document.getElementById("preview-box");
  const previewImg = document.getElementById("preview");

  // Strokes in canvas CSS pixels: {xs: [...], ys: [...], width: brush px}.
  let strokes = [];
  let current = null;
  let activePointer = null;
  let baseImage = null; // an uploaded sketch drawn under the strokes
  let baseFile = null;
  let timer = null;
  let seq = 0; // request sequence number; only the newest response is shown
  let inflight = null;
  let apiKey = "";
  let previewUrl = null;
  let blobUrls = []; // thumbnails fetched with the API key

  // ------------------------------------------------------------ API calls

  function api(url, options) {
    const opts = Object.assign({}, options || {});
    const headers = Object.assign({}, opts.headers || {});
    if (apiKey) headers["X-API-Key"] = apiKey;
    opts.headers = headers;
    return fetch(url, opts);
  }

  async function apiJson(url, options) {
    const resp = await api(url, options);
    const data = await resp.json().catch(() => ({ detail: `HTTP ${resp.status}` }));
    if (!resp.ok) {
      const wait = resp.headers.get("Retry-After");
      const more = resp.status === 503 && wait ? ` (retry in ${wait} s)` : "";
      throw new Error((data.detail || `HTTP ${resp.status}`) + more);
    }
    return data;
  }

  // An image of the API: a plain URL, or (with an API key) a blob fetched with the key.
  function setImage(img, url) {
    if (!apiKey) {
      img.src = url;
      return;
    }
    api(url)
      .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(`HTTP ${r.status}`))))
      .then((b) => {
        const u = URL.createObjectURL(b);
        blobUrls.push(u);
        img.src = u;
      })
      .catch(() => { img.alt = "(image unavailable)"; });
  }

  // ------------------------------------------------------------ canvas geometry

  // The drawing surface in CSS pixels (inside the border) and its position in the viewport.
  function cssSize() {
    const r = canvas.getBoundingClientRect();
    return { w: canvas.clientWidth, h: canvas.clientHeight, left: r.left + canvas.clientLeft, top: r.top + canvas.clientTop };
  }

  function resizeCanvas() {
    const s = cssSize();
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.max(1, Math.round(s.w * dpr));
    canvas.height = Math.max(1, Math.round(s.h * dpr));
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    redraw();
  }

  function point(e) {
    const s = cssSize();
    return [Math.round((e.clientX - s.left) * 10) / 10, Math.round((e.clientY - s.top) * 10) / 10];
  }

  // ------------------------------------------------------------ drawing

  function drawStroke(st) {
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.strokeStyle = "#000";
    ctx.fillStyle = "#000";
    ctx.lineWidth = st.width;
    if (st.xs.length === 1) {
      ctx.beginPath();
      ctx.arc(st.xs[0], st.ys[0], st.width / 2, 0, 2 * Math.PI);
      ctx.fill();
      return;
    }
    ctx.beginPath();
    ctx.moveTo(st.xs[0], st.ys[0]);
    for (let i = 1; i < st.xs.length; i++) ctx.lineTo(st.xs[i], st.ys[i]);
    ctx.stroke();
  }

  function redraw() {
    const s = cssSize();
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, s.w, s.h);
    if (baseImage) {
      const scale = Math.min(s.w / baseImage.width, s.h / baseImage.height);
      const w = baseImage.width * scale;
      const h = baseImage.height * scale;
      ctx.drawImage(baseImage, (s.w - w) / 2, (s.h - h) / 2, w, h);
    }
    for (const st of strokes) drawStroke(st);
    if (current) drawStroke(current);
    undoBtn.disabled = strokes.length === 0;
  }

  function addPoint(e) {
    const [x, y] = point(e);
    const n = current.xs.length;
    const dx = x - current.xs[n - 1];
    const dy = y - current.ys[n - 1];
    if (dx * dx + dy * dy < 1) return; // skip sub-pixel moves
    current.xs.push(x);
    current.ys.push(y);
    // Draw only the new segment while the stroke is in progress.
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.strokeStyle = "#000";
    ctx.lineWidth = current.width;
    ctx.beginPath();
    ctx.moveTo(current.xs[n - 1], current.ys[n - 1]);
    ctx.lineTo(x, y);
    ctx.stroke();
  }

  canvas.addEventListener("pointerdown", (e) => {
    if (e.pointerType === "mouse" && e.button !== 0) return;
    if (activePointer !== null) return; // one stroke at a time (ignore a second finger)
    e.preventDefault();
    activePointer = e.pointerId;
    try {
      canvas.setPointerCapture(e.pointerId); // keep receiving moves when the pointer leaves the canvas
    } catch (_) {
      /* not an active pointer (synthetic event): capture is only a convenience */
    }
    const [x, y] = point(e);
    current = { xs: [x], ys: [y], width: Number(brush.value) };
    drawStroke(current);
    clearTimeout(timer); // the user is drawing: wait for the stroke to end
  });

  canvas.addEventListener("pointermove", (e) => {
    if (e.pointerId !== activePointer || !current) return;
    e.preventDefault();
    const events = typeof e.getCoalescedEvents === "function" ? e.getCoalescedEvents() : [];
    if (events.length) events.forEach(addPoint);
    else addPoint(e);
  });

  function endStroke(e) {
    if (e.pointerId !== activePointer) return;
    activePointer = null;
    if (current) {
      strokes.push(current);
      current = null;
      redraw();
      schedule();
    }
  }
  canvas.addEventListener("pointerup", endStroke);
  canvas.addEventListener("pointercancel", endStroke);
  canvas.addEventListener("lostpointercapture", endStroke);

  // ------------------------------------------------------------ tools

  brush.addEventListener("input", () => {
    brushValue.textContent = brush.value;
  });

  function undo() {
    if (!strokes.length) return;
    strokes.pop();
    redraw();
    if (strokes.length || baseImage) schedule();
    else showEmpty();
  }
  undoBtn.addEventListener("click", undo);
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "z") {
      e.preventDefault();
      undo();
    }
  });

  clearBtn.addEventListener("click", () => {
    strokes = [];
    current = null;
    baseImage = null;
    baseFile = null;
    upload.value = "";
    redraw();
    showEmpty();
  });

  upload.addEventListener("change", () => {
    const file = upload.files && upload.files[0];
    if (!file) return;
    const url = URL.createObjectURL(file);
    const img = new Image();
    img.onload = () => {
      baseImage = img;
      baseFile = file;
      strokes = [];
      redraw();
      search();
    };
    img.onerror = () => {
      // Not displayable here; the server still says why it is not usable.
      baseImage = null;
      baseFile = file;
      strokes = [];
      redraw();
      search();
    };
    img.src = url;
  });

  kSelect.addEventListener("change", () => { if (strokes.length || baseFile) search(); });
  fit.addEventListener("change", () => { if (strokes.length) search(); });

  // ------------------------------------------------------------ searching

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(search, DEBOUNCE_MS);
  }

  function showEmpty() {
    clearTimeout(timer);
    if (inflight) inflight.abort();
    resultsEl.replaceChildren();
    previewBox.hidden = true;
    statusEl.textContent = "Draw something: results appear after each stroke.";
    statusEl.classList.remove("error");
  }

  function strokesPayload() {
    const s = cssSize();
    const scale = RASTER / Math.max(s.w, s.h);
    const widths = strokes.map((st) => st.width);
    const meanWidth = widths.reduce((a, b) => a + b, 0) / widths.length;
    const payload = {
      strokes: strokes.map((st) => [st.xs, st.ys]),
      k: Number(kSelect.value),
      stroke_width: Math.min(32, Math.max(0.5, Math.round(meanWidth * scale * 10) / 10)),
    };
    if (!fit.checked) payload.canvas = { width: Math.round(s.w), height: Math.round(s.h) };
    return payload;
  }

  // The raster the model sees, from the server's rasteriser (identical by construction).
  async function updatePreview(payload, my) {
    try {
      const resp = await api("/api/raster", {
        method: "POST",
        body: JSON.stringify(payload),
        headers: { "Content-Type": "application/json" },
      });
      if (!resp.ok || my !== seq) return;
      const blob = await resp.blob();
      if (my !== seq) return;
      if (previewUrl) URL.revokeObjectURL(previewUrl);
      previewUrl = URL.createObjectURL(blob);
      previewImg.src = previewUrl;
      previewBox.hidden = false;
    } catch (_) {
      /* the preview is a convenience; the search reports errors */
    }
  }

  function requestBody() {
    const k = Number(kSelect.value);
    if (baseFile && !strokes.length) {
      const fd = new FormData();
      fd.append("file", baseFile, baseFile.name || "sketch.png");
      fd.append("k", String(k));
      return Promise.resolve({ body: fd });
    }
    if (baseFile) {
      // Strokes over an uploaded sketch: send what the canvas shows.
      return new Promise((resolve) => canvas.toBlob((blob) => {
        const fd = new FormData();
        fd.append("file", blob, "canvas.png");
        fd.append("k", String(k));
        resolve({ body: fd });
      }, "image/png"));
    }
    const payload = strokesPayload();
    return Promise.resolve({
      body: JSON.stringify(payload),
      headers: { "Content-Type": "application/json" },
      payload: payload,
    });
  }

  async function search() {
    clearTimeout(timer);
    if (!strokes.length && !baseFile) return showEmpty();
    const my = ++seq;
    if (inflight) inflight.abort();
    const controller = new AbortController();
    inflight = controller;
    statusEl.textContent = "Searching…";
    statusEl.classList.remove("error");
    const t0 = performance.now();
    try {
      const req = await requestBody();
      if (req.payload) updatePreview(req.payload, my);
      else previewBox.hidden = true;
      const data = await apiJson("/api/search", {
        method: "POST",
        signal: controller.signal,
        body: req.body,
        headers: req.headers,
      });
      if (my !== seq) return; // a newer search was started
      render(data, performance.now() - t0);
    } catch (err) {
      if (err.name === "AbortError" || my !== seq) return;
      resultsEl.replaceChildren(); // results of an earlier sketch would read as matches of this one
      statusEl.textContent = `Search failed: ${err.message}`;
      statusEl.classList.add("error");
    } finally {
      if (inflight === controller) inflight = null;
    }
  }

  // More like this: photos similar to a result photo (its photo embedding against the gallery).
  async function similar(id, path) {
    clearTimeout(timer);
    const my = ++seq;
    if (inflight) inflight.abort();
    const controller = new AbortController();
    inflight = controller;
    statusEl.textContent = `Finding photos like ${path}…`;
    statusEl.classList.remove("error");
    const t0 = performance.now();
    try {
      const data = await apiJson(`/api/search/similar/${id}?k=${Number(kSelect.value)}`, { signal: controller.signal });
      if (my !== seq) return;
      render(data, performance.now() - t0, `photos like ${path}`);
    } catch (err) {
      if (err.name === "AbortError" || my !== seq) return;
      resultsEl.replaceChildren();
      statusEl.textContent = `Search failed: ${err.message}`;
      statusEl.classList.add("error");
    } finally {
      if (inflight === controller) inflight = null;
    }
  }

  function render(data, roundTripMs, what) {
    blobUrls.forEach((u) => URL.revokeObjectURL(u));
    blobUrls = [];
    const items = data.results.map((r) => {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = r.image_url;
      if (apiKey) {
        a.addEventListener("click", (e) => {
          e.preventDefault();
          api(r.image_url).then((resp) => resp.blob()).then((b) => window.open(URL.createObjectURL(b), "_blank"));
        });
      }
      a.target = "_blank";
      a.rel = "noopener";
      a.className = "result";
      a.dataset.rank = String(r.rank);
      a.dataset.path = r.path;
      a.dataset.id = String(r.id);
      a.title = `${r.path} (score ${r.score.toFixed(3)})`;
      const img = document.createElement("img");
      setImage(img, r.thumbnail_url);
      img.alt = r.path;
      img.loading = "lazy";
      const cap = document.createElement("span");
      cap.className = "caption";
      cap.textContent = `#${r.rank} · ${r.score.toFixed(3)}`;
      const path = document.createElement("span");
      path.className = "path";
      path.textContent = r.path;
      cap.appendChild(path);
      a.append(img, cap);
      const more = document.createElement("button");
      more.type = "button";
      more.className = "similar";
      more.textContent = "More like this";
      more.title = `Photos that look like ${r.path}`;
      more.dataset.id = String(r.id);
      more.addEventListener("click", () => similar(r.id, r.path));
      li.append(a, more);
      return li;
    });
    resultsEl.replaceChildren(...items);
    const t = data.timings_ms;
    const ms = Math.round(roundTripMs);
    if (what) {
      statusEl.textContent = `${data.results.length} results in ${ms} ms: ${what} (search ${t.search.toFixed(1)} ms)`;
    } else {
      statusEl.textContent =
        `${data.results.length} results in ${ms} ms ` +
        `(server ${t.total.toFixed(0)} ms: embed ${t.embed.toFixed(0)}, search ${t.search.toFixed(1)})`;
    }
  }

  // ------------------------------------------------------------ examples

  // Draw an example's strokes (Quick, Draw! simplified: 0..255) centred on the canvas and search.
  function loadExample(ex) {
    const s = cssSize();
    const xs = ex.strokes.flatMap((st) => st[0]);
    const ys = ex.strokes.flatMap((st) => st[1]);
    const x0 = Math.min(...xs);
    const y0 = Math.min(...ys);
    const span = Math.max(Math.max(...xs) - x0, Math.max(...ys) - y0, 1);
    const scale = (0.8 * Math.min(s.w, s.h)) / span;
    const ox = (s.w - (Math.max(...xs) - x0) * scale) / 2;
    const oy = (s.h - (Math.max(...ys) - y0) * scale) / 2;
    const round = (v) => Math.round(v * 10) / 10;
    baseImage = null;
    baseFile = null;
    upload.value = "";
    strokes = ex.strokes.map((st) => ({
      xs: st[0].map((x) => round(ox + (x - x0) * scale)),
      ys: st[1].map((y) => round(oy + (y - y0) * scale)),
      width: Number(brush.value),
    }));
    redraw();
    search();
  }

  fetch("/static/examples.json")
    .then((r) => r.json())
    .then((data) => {
      for (const ex of data.examples) {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "example";
        b.textContent = ex.name;
        b.dataset.name = ex.name;
        b.title = `Draw a Quick, Draw! ${ex.name} (${data.credit})`;
        b.addEventListener("click", () => loadExample(ex));
        examplesEl.appendChild(b);
      }
    })
    .catch(() => { examplesEl.hidden = true; });

  // ------------------------------------------------------------ API key

  function loadInfo() {
    return apiJson("/api/info").then((info) => {
      infoEl.textContent =
        `${info.images} images · model ${info.model_id} · ${info.kind === "none" ? "exact" : info.kind} search` +
        ` · ${info.runtime}, ${info.threads} threads`;
      const opt = Array.from(kSelect.options).find((o) => o.value === String(info.default_k));
      if (opt) kSelect.value = opt.value;
    });
  }

  function useKey() {
    apiKey = keyInput.value.trim();
    try { sessionStorage.setItem("sbir-api-key", apiKey); } catch (_) { /* storage disabled */ }
    loadInfo()
      .then(() => { if (strokes.length || baseFile) search(); })
      .catch((err) => { infoEl.textContent = `API key: ${err.message}`; });
  }
  keyBtn.addEventListener("click", useKey);
  keyInput.addEventListener("keydown", (e) => { if (e.key === "Enter") useKey(); });

  // ------------------------------------------------------------ start

  fetch("/healthz")
    .then((r) => r.json())
    .then((health) => {
      if (health.api_key_required) {
        authEl.hidden = false;
        try { apiKey = sessionStorage.getItem("sbir-api-key") || ""; } catch (_) { apiKey = ""; }
        keyInput.value = apiKey;
        if (!apiKey) {
          infoEl.textContent = `${health.images} images · this server needs an API key: enter it below`;
          return null;
        }
      }
      return loadInfo();
    })
    .catch(() => { infoEl.textContent = "Index information unavailable."; });

  window.addEventListener("resize", resizeCanvas);
  resizeCanvas();
  // Exposed for tests and debugging.
  window.sbir = { strokes: () => strokes, search, similar };
})();
