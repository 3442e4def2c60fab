// sbir drawing page: a canvas (Pointer Events: mouse, touch, pen), brush size, undo, clear,
// upload, and a results grid refreshed after every stroke (debounced) through POST /api/search.
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

  // Strokes in canvas CSS pixels: {xs: [...], ys: [...], width: brush px}.
  let strokes = [];
  let current = null;
  let activePointer = null;
  let baseImage = null; // an uploaded sketch drawn under the strokes
  let baseFile = null;
  let timer = null;
  let seq = 0; // request sequence number; only the newest response is shown
  let inflight = null;

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
    statusEl.textContent = "Draw something: results appear after each stroke.";
    statusEl.classList.remove("error");
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
    const s = cssSize();
    const scale = RASTER / Math.max(s.w, s.h);
    const widths = strokes.map((st) => st.width);
    const meanWidth = widths.reduce((a, b) => a + b, 0) / widths.length;
    const payload = {
      strokes: strokes.map((st) => [st.xs, st.ys]),
      k: k,
      stroke_width: Math.min(32, Math.max(0.5, Math.round(meanWidth * scale * 10) / 10)),
    };
    if (!fit.checked) payload.canvas = { width: Math.round(s.w), height: Math.round(s.h) };
    return Promise.resolve({ body: JSON.stringify(payload), headers: { "Content-Type": "application/json" } });
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
      const resp = await fetch("/api/search", { method: "POST", signal: controller.signal, ...req });
      const data = await resp.json().catch(() => ({ detail: `HTTP ${resp.status}` }));
      if (my !== seq) return; // a newer search was started
      if (!resp.ok) throw new Error(data.detail || `HTTP ${resp.status}`);
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

  function render(data, roundTripMs) {
    const items = data.results.map((r) => {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = r.image_url;
      a.target = "_blank";
      a.rel = "noopener";
      a.className = "result";
      a.dataset.rank = String(r.rank);
      a.dataset.path = r.path;
      a.dataset.id = String(r.id);
      a.title = `${r.path} (score ${r.score.toFixed(3)})`;
      const img = document.createElement("img");
      img.src = r.thumbnail_url;
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
      li.appendChild(a);
      return li;
    });
    resultsEl.replaceChildren(...items);
    const t = data.timings_ms;
    statusEl.textContent =
      `${data.results.length} results in ${Math.round(roundTripMs)} ms ` +
      `(server ${t.total.toFixed(0)} ms: embed ${t.embed.toFixed(0)}, search ${t.search.toFixed(1)})`;
  }

  // ------------------------------------------------------------ start

  fetch("/api/info")
    .then((r) => r.json())
    .then((info) => {
      infoEl.textContent = `${info.images} images · model ${info.model_id} · ${info.kind === "none" ? "exact" : info.kind} search`;
      const opt = Array.from(kSelect.options).find((o) => o.value === String(info.default_k));
      if (opt) kSelect.value = opt.value;
    })
    .catch(() => { infoEl.textContent = "Index information unavailable."; });

  window.addEventListener("resize", resizeCanvas);
  resizeCanvas();
  // Exposed for tests and debugging.
  window.sbir = { strokes: () => strokes, search };
})();
