// opendance playground: plain JavaScript, no build step, no third-party code.
// Talks to the same /v1 API as every client. Running tasks are followed with the SSE endpoint
// read through fetch() streaming (EventSource cannot send the Authorization header); at most
// MAX_STREAMS at once, so the browser's six connections per host stay free for the rest, and
// the other running tasks are long-polled (`?wait=` with If-None-Match: one request per change,
// or per WAIT_SECONDS while a task stays as it is).
"use strict";

(() => {
  const KEY_STORAGE = "opendance.apiKey";
  const MODEL = "doubao-seedance-1.0-pro-fast";
  const PAGE = 20;
  const MAX_STREAMS = 3;
  // How long the server may hold a read of an unchanged task (it allows up to 60 s).
  const WAIT_SECONDS = 25;
  // After an error, or between reads of a server that answers at once (no long-poll there).
  const POLL_MS = 2000;
  const TERMINAL = new Set(["completed", "failed", "cancelled"]);

  const $ = (id) => document.getElementById(id);
  const els = {
    key: $("api-key"),
    toggleKey: $("toggle-key"),
    credits: $("credits"),
    form: $("create-form"),
    prompt: $("prompt"),
    duration: $("duration"),
    quality: $("quality"),
    ratio: $("aspect-ratio"),
    image: $("image"),
    preview: $("image-preview"),
    clearImage: $("clear-image"),
    submit: $("submit"),
    status: $("form-status"),
    error: $("form-error"),
    player: $("player"),
    caption: $("player-caption"),
    tasks: $("tasks"),
    empty: $("tasks-empty"),
    refresh: $("refresh"),
    more: $("more"),
    template: $("task-template"),
  };

  const state = {
    tasks: new Map(), // id -> task object
    rows: new Map(), // id -> <li>
    streams: new Map(), // id -> AbortController
    polls: new Map(), // id -> AbortController of its polling loop
    lastId: null,
    autoplay: null, // the id of the task submitted here: played when it completes
    playing: null,
    generation: 0, // bumped when the key changes: late answers of the old key are dropped
  };

  // ------------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(status, body) {
      const error = (body && body.error) || {};
      super(error.message || `HTTP ${status}`);
      this.status = status;
      this.code = error.code || null;
      this.param = error.param || null;
    }
  }

  const apiKey = () => els.key.value.trim();

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    headers.set("Authorization", `Bearer ${apiKey()}`);
    headers.set("Accept", options.accept || "application/json");
    const response = await fetch(path, { ...options, headers, cache: "no-store" });
    if (options.raw) {
      return response;
    }
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      throw new ApiError(response.status, body);
    }
    return body;
  }

  // ------------------------------------------------------------------ credits

  async function loadCredits() {
    if (!apiKey()) {
      els.credits.textContent = "Credits: enter your API key";
      return;
    }
    const generation = state.generation;
    try {
      const credits = await api("/v1/credits");
      if (generation !== state.generation) return;
      els.credits.textContent = `Credits: ${credits.balance} (group ${credits.group})`;
    } catch (error) {
      if (generation !== state.generation) return;
      els.credits.textContent =
        error.status === 401 ? "Credits: the key is not valid" : "Credits: unavailable";
    }
  }

  // ------------------------------------------------------------------ task rows

  function formatEta(seconds) {
    if (seconds === null || seconds === undefined) return "";
    const whole = Math.max(0, Math.round(seconds));
    return whole < 60
      ? `about ${whole} s left`
      : `about ${Math.floor(whole / 60)} min ${whole % 60} s left`;
  }

  function part(row, role) {
    return row.querySelector(`[data-role="${role}"]`);
  }

  function rowFor(task, { prepend = false } = {}) {
    let row = state.rows.get(task.id);
    if (!row) {
      row = els.template.content.firstElementChild.cloneNode(true);
      row.id = `task-${task.id}`;
      row.dataset.taskId = task.id;
      part(row, "id").textContent = task.id;
      part(row, "play").addEventListener("click", () => play(task.id, true));
      part(row, "cancel").addEventListener("click", () => cancel(task.id));
      state.rows.set(task.id, row);
      if (prepend) {
        els.tasks.prepend(row);
      } else {
        els.tasks.append(row);
      }
    }
    return row;
  }

  function render(task, options) {
    const previous = state.tasks.get(task.id);
    // Progress never goes down; an older answer arriving late must not undo a newer one.
    if (previous && TERMINAL.has(previous.status) && !TERMINAL.has(task.status)) return;
    state.tasks.set(task.id, task);
    const row = rowFor(task, options);
    row.dataset.status = task.status;
    const info = task.task_info || {};
    const badge = part(row, "status");
    badge.textContent = task.status;
    badge.dataset.status = task.status;
    const meta = [task.model, info.quality, info.video_duration && `${info.video_duration} s`,
      info.aspect_ratio, info.resolution].filter(Boolean);
    part(row, "meta").textContent = meta.join(" · ");
    const progress = task.status === "completed" ? 100 : task.progress || 0;
    const bar = part(row, "bar");
    bar.value = progress;
    bar.setAttribute("aria-label", `Progress of task ${task.id}`);
    bar.setAttribute("aria-valuetext", `${progress}%, ${task.status}`);
    part(row, "percent").textContent = `${progress}%`;
    part(row, "eta").textContent = TERMINAL.has(task.status) ? "" : formatEta(info.estimated_time);
    const error = part(row, "error");
    if (task.error) {
      error.hidden = false;
      error.textContent = `${task.error.code}: ${task.error.message}`;
    } else {
      error.hidden = true;
    }
    const url = task.results && task.results[0];
    const playButton = part(row, "play");
    const download = part(row, "download");
    playButton.hidden = !(task.status === "completed" && url);
    playButton.setAttribute("aria-label", `Play task ${task.id}`);
    download.hidden = playButton.hidden;
    if (url) {
      download.href = url;
      download.setAttribute("download", `${task.id}.mp4`);
    }
    const cancelButton = part(row, "cancel");
    cancelButton.hidden = !info.can_cancel;
    cancelButton.setAttribute("aria-label", `Cancel task ${task.id}`);
    els.empty.hidden = state.rows.size > 0;

    if (TERMINAL.has(task.status)) {
      unfollow(task.id);
      if (previous && !TERMINAL.has(previous.status)) {
        loadCredits();
      }
      if (state.autoplay === task.id) {
        state.autoplay = null;
        if (task.status === "completed") {
          play(task.id, false);
          els.status.textContent = `Task ${task.id} completed.`;
        } else {
          els.status.textContent = `Task ${task.id} ${task.status}.`;
        }
      }
    } else {
      follow(task.id);
    }
  }

  function play(id, focus) {
    const task = state.tasks.get(id);
    const url = task && task.results && task.results[0];
    if (!url) return;
    if (state.playing) {
      const old = state.rows.get(state.playing);
      if (old) old.classList.remove("playing");
    }
    state.playing = id;
    const row = state.rows.get(id);
    if (row) row.classList.add("playing");
    els.player.src = url;
    els.caption.textContent = `Task ${id}` + (task.task_info && task.task_info.resolution
      ? ` · ${task.task_info.resolution}` : "");
    // Muted playback may start by itself in every browser; the controls unmute it.
    els.player.muted = true;
    const started = els.player.play();
    if (started && started.catch) started.catch(() => {});
    if (focus) els.player.focus();
  }

  async function cancel(id) {
    try {
      render(await api(`/v1/tasks/${encodeURIComponent(id)}/cancel`, { method: "POST" }));
      els.status.textContent = `Task ${id} cancelled.`;
      loadCredits();
    } catch (error) {
      showError(error);
    }
  }

  // ------------------------------------------------------------------ live progress

  function follow(id) {
    if (state.streams.has(id) || state.polls.has(id)) return;
    if (state.streams.size < MAX_STREAMS) {
      stream(id);
    } else {
      poll(id, 0);
    }
  }

  function unfollow(id) {
    const controller = state.streams.get(id);
    if (controller) {
      state.streams.delete(id);
      controller.abort();
    }
    const polling = state.polls.get(id);
    if (polling) {
      state.polls.delete(id);
      polling.abort();
    }
  }

  function stopAll() {
    for (const id of [...state.streams.keys(), ...state.polls.keys()]) unfollow(id);
  }

  // Resolves after `ms`, or as soon as `signal` aborts.
  function pause(ms, signal) {
    return new Promise((resolve) => {
      if (signal.aborted) {
        resolve();
        return;
      }
      const timer = setTimeout(resolve, ms);
      signal.addEventListener("abort", () => {
        clearTimeout(timer);
        resolve();
      }, { once: true });
    });
  }

  // Follows a task without a stream: a plain read first (the task now, and its ETag), then
  // long-polls naming that ETag. The server holds each one until the task changes (200, the
  // new task) or WAIT_SECONDS pass (304: unchanged, ask again at once). fetch() with
  // cache "no-store" sends no If-None-Match of its own, so it is set here. A server that
  // answers at once anyway (no ETag, or unchanged before half the wait) is read every POLL_MS;
  // an error waits POLL_MS. The task moves to a stream as soon as one is free.
  async function poll(id, delay) {
    const controller = new AbortController();
    const { signal } = controller;
    state.polls.set(id, controller);
    const generation = state.generation;
    const active = () => !signal.aborted && generation === state.generation;
    const path = `/v1/tasks/${encodeURIComponent(id)}`;
    let etag = null;
    if (delay) await pause(delay, signal);
    while (active()) {
      const started = Date.now();
      let slowDown = false;
      try {
        const response = await api(etag ? `${path}?wait=${WAIT_SECONDS}` : path, {
          raw: true,
          signal,
          headers: etag ? { "If-None-Match": etag } : {},
        });
        const early = etag !== null && Date.now() - started < (WAIT_SECONDS * 1000) / 2;
        if (response.status === 304) {
          slowDown = early;
        } else if (!response.ok) {
          throw new Error(`HTTP ${response.status}`);
        } else {
          const task = await response.json();
          const tag = response.headers.get("ETag");
          slowDown = !tag || (tag === etag && early);
          etag = tag;
          if (!active()) return;
          render(task); // a finished task unfollows itself: the loop ends
          if (active() && state.streams.size < MAX_STREAMS) {
            state.polls.delete(id);
            stream(id);
            return;
          }
        }
      } catch (_) {
        slowDown = true; // aborted on purpose (the loop ends), or it failed: wait a little
      }
      if (slowDown && active()) await pause(POLL_MS, signal);
    }
    if (state.polls.get(id) === controller) state.polls.delete(id);
  }

  // One SSE connection; when it ends before the task does (cut, server restart), the task is
  // read once and followed again a moment later.
  async function stream(id) {
    const controller = new AbortController();
    state.streams.set(id, controller);
    const generation = state.generation;
    let ended = false;
    try {
      const response = await api(`/v1/tasks/${encodeURIComponent(id)}/events`, {
        raw: true,
        accept: "text/event-stream",
        signal: controller.signal,
      });
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let event = "message";
      let data = [];
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        const lines = buffer.split(/\r\n|\r|\n/);
        buffer = lines.pop();
        for (const line of lines) {
          if (line === "") {
            if (event === "task" && data.length) {
              const task = JSON.parse(data.join("\n"));
              if (generation !== state.generation) return;
              render(task);
              if (TERMINAL.has(task.status)) ended = true;
            }
            event = "message";
            data = [];
          } else if (line.startsWith(":")) {
            // a heartbeat comment
          } else {
            const colon = line.indexOf(":");
            const name = colon < 0 ? line : line.slice(0, colon);
            let field = colon < 0 ? "" : line.slice(colon + 1);
            if (field.startsWith(" ")) field = field.slice(1);
            if (name === "event") event = field;
            else if (name === "data") data.push(field);
          }
        }
      }
    } catch (_) {
      // aborted on purpose, or the connection broke: handled below
    }
    if (state.streams.get(id) !== controller) return; // unfollowed meanwhile
    state.streams.delete(id);
    if (!ended && generation === state.generation) poll(id, 1000);
  }

  // ------------------------------------------------------------------ task list

  async function loadTasks(more = false) {
    if (!apiKey()) {
      els.empty.textContent = "Enter your API key to see your tasks.";
      return;
    }
    const generation = state.generation;
    const params = new URLSearchParams({ limit: String(PAGE) });
    if (more && state.lastId) params.set("after", state.lastId);
    try {
      const page = await api(`/v1/tasks?${params}`);
      if (generation !== state.generation) return;
      els.empty.textContent = "No tasks yet.";
      for (const task of page.data) render(task);
      state.lastId = page.last_id || state.lastId;
      els.more.hidden = !page.has_more;
    } catch (error) {
      if (generation !== state.generation) return;
      els.empty.hidden = false;
      els.empty.textContent =
        error.status === 401 ? "The API key is not valid." : `Cannot load tasks: ${error.message}`;
    }
  }

  function resetTasks() {
    state.generation += 1;
    stopAll();
    state.tasks.clear();
    state.rows.clear();
    state.lastId = null;
    els.tasks.replaceChildren();
    els.more.hidden = true;
    els.empty.hidden = false;
  }

  // ------------------------------------------------------------------ the form

  function showError(error) {
    els.error.hidden = false;
    els.error.textContent = error.message || String(error);
    els.error.focus();
  }

  function updateRatios() {
    const hasImage = els.image.files && els.image.files.length > 0;
    for (const option of els.ratio.options) {
      if (option.value === "adaptive" || option.value === "keep_ratio") {
        option.disabled = !hasImage;
      }
    }
    if (hasImage && els.ratio.dataset.touched !== "yes") {
      els.ratio.value = "adaptive";
    }
    if (!hasImage && els.ratio.selectedOptions[0] && els.ratio.selectedOptions[0].disabled) {
      els.ratio.value = "16:9";
    }
    if (els.preview.src) URL.revokeObjectURL(els.preview.src);
    if (hasImage) {
      els.preview.src = URL.createObjectURL(els.image.files[0]);
      els.preview.hidden = false;
      els.clearImage.hidden = false;
    } else {
      els.preview.removeAttribute("src");
      els.preview.hidden = true;
      els.clearImage.hidden = true;
    }
  }

  async function submit(event) {
    event.preventDefault();
    els.error.hidden = true;
    if (!apiKey()) {
      showError(new Error("Enter your API key first."));
      els.key.focus();
      return;
    }
    const prompt = els.prompt.value;
    if (!prompt.trim()) {
      showError(new Error("Write a prompt first."));
      els.prompt.focus();
      return;
    }
    const duration = Number(els.duration.value);
    if (!Number.isInteger(duration) || duration < 2 || duration > 12) {
      showError(new Error("The duration is a whole number of seconds from 2 to 12."));
      els.duration.focus();
      return;
    }
    keyChanged();
    els.submit.disabled = true;
    try {
      const body = {
        model: MODEL,
        prompt,
        duration,
        quality: els.quality.value,
        aspect_ratio: els.ratio.value,
      };
      if (els.image.files && els.image.files.length) {
        els.status.textContent = "Uploading the image…";
        const form = new FormData();
        form.append("file", els.image.files[0]);
        form.append("purpose", "image");
        const file = await api("/v1/files", { method: "POST", body: form });
        body.image_urls = [file.id];
      }
      els.status.textContent = "Creating the task…";
      const task = await api("/v1/videos/generations", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      state.autoplay = task.id;
      const reserved = task.usage ? task.usage.credits_reserved : null;
      els.status.textContent =
        `Task ${task.id} created` + (reserved !== null ? ` (${reserved} credits reserved).` : ".");
      render(task, { prepend: true });
      loadCredits();
    } catch (error) {
      els.status.textContent = "";
      showError(error);
    } finally {
      els.submit.disabled = false;
    }
  }

  // ------------------------------------------------------------------ start

  let loadedKey = null;
  let keyTimer;

  function keyChanged() {
    clearTimeout(keyTimer);
    if (apiKey() === loadedKey) return;
    loadedKey = apiKey();
    try {
      localStorage.setItem(KEY_STORAGE, apiKey());
    } catch (_) {
      // storage disabled: the key lives in the field only
    }
    resetTasks();
    loadCredits();
    loadTasks();
  }

  function start() {
    try {
      els.key.value = localStorage.getItem(KEY_STORAGE) || "";
    } catch (_) {
      els.key.value = "";
    }
    els.key.addEventListener("change", keyChanged);
    els.key.addEventListener("input", () => {
      clearTimeout(keyTimer);
      keyTimer = setTimeout(keyChanged, 400);
    });
    els.toggleKey.addEventListener("click", () => {
      const show = els.key.type === "password";
      els.key.type = show ? "text" : "password";
      els.toggleKey.textContent = show ? "Hide" : "Show";
      els.toggleKey.setAttribute("aria-pressed", String(show));
    });
    els.ratio.addEventListener("change", () => {
      els.ratio.dataset.touched = "yes";
    });
    els.image.addEventListener("change", updateRatios);
    els.clearImage.addEventListener("click", () => {
      els.image.value = "";
      updateRatios();
      els.image.focus();
    });
    els.form.addEventListener("submit", submit);
    els.refresh.addEventListener("click", () => {
      resetTasks();
      loadTasks();
      loadCredits();
    });
    els.more.addEventListener("click", () => loadTasks(true));
    window.addEventListener("pagehide", stopAll);
    updateRatios();
    loadedKey = apiKey();
    loadCredits();
    loadTasks();
  }

  start();
})();
