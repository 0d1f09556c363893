// The clipqueue page: a client of /api/v1 like any other, in plain JavaScript.
//
// One event stream for the whole page (GET /api/v1/events, every clip's job
// changes) rather than one per card: browsers open about six HTTP/1.1
// connections per host, and a page of cards would use them all. It is read
// with fetch() so that it can carry the API token (an EventSource cannot send
// headers), and resumed after a drop with Last-Event-ID.
"use strict";

(() => {
  const API = "/api/v1";
  const TOKEN_KEY = "clipqueue.apiToken";
  const CLIP_IDS_KEY = "clipqueue.clipIds";
  const REMEMBERED_CLIPS = 50;
  const LISTED_CLIPS = 24;
  const FINAL_JOB_STATUSES = new Set(["completed", "failed", "canceled"]);
  const RECONNECT_FIRST_MS = 1000;
  const RECONNECT_MAX_MS = 15000;

  const $ = (selector, root = document) => root.querySelector(selector);
  const page = document.body;
  const cardsBox = $("#cards");
  const cardTemplate = $("#card-template");
  const clipForm = $("#clip-form");
  const tokenPanel = $("#token-panel");

  // clip_id -> {element, clip, job}
  const cards = new Map();
  const clipsBeingLoaded = new Set();
  // Whether GET /api/v1/clips lists the service's clips; without it, the page shows this browser's own.
  let listsAllClips = false;
  let lastEventId = null;
  let streamController = null;

  // ---- the API -------------------------------------------------------------

  function savedToken() {
    return localStorage.getItem(TOKEN_KEY) || "";
  }

  function authHeaders() {
    const token = savedToken();
    return token ? {Authorization: `Bearer ${token}`} : {};
  }

  async function api(method, path, payload) {
    const headers = {Accept: "application/json", ...authHeaders()};
    if (payload !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(API + path, {
        method, headers, cache: "no-store",
        body: payload === undefined ? undefined : JSON.stringify(payload),
      });
    } catch (error) {
      return {status: 0, data: {error: {code: "unreachable", message: "The service did not answer; try again.", field: null}}};
    }
    let data = null;
    try {
      data = await response.json();
    } catch (error) {
      data = null;
    }
    if (response.status === 401 || response.status === 403) askForToken(errorMessage(data));
    return {status: response.status, data};
  }

  function errorMessage(data, fallback = "Something went wrong.") {
    return (data && data.error && data.error.message) || fallback;
  }

  // ---- times ---------------------------------------------------------------

  // "90", "90.5", "1:30", "1:02:03", "1:02:03.5": seconds, or NaN.
  function parseTime(text) {
    const value = String(text).trim();
    if (!/^\d+(?::[0-5]\d){0,2}(?:\.\d+)?$/.test(value)) return NaN;
    return value.split(":").reduce((total, part) => total * 60 + Number(part), 0);
  }

  // 3723.25 -> "1:02:03.25", 12.5 -> "0:12.5".
  function formatTime(seconds) {
    const hundredths = Math.round(Math.max(0, seconds) * 100);
    const whole = Math.floor(hundredths / 100);
    const rest = hundredths % 100;
    const hours = Math.floor(whole / 3600);
    const minutes = Math.floor((whole % 3600) / 60);
    const secs = String(whole % 60).padStart(2, "0");
    let text = hours ? `${hours}:${String(minutes).padStart(2, "0")}:${secs}` : `${minutes}:${secs}`;
    if (rest) text += "." + String(rest).padStart(2, "0").replace(/0$/, "");
    return text;
  }

  function formatBytes(bytes) {
    if (bytes == null) return "";
    if (bytes < 1024 * 1024) return `${Math.max(1, Math.round(bytes / 1024))} KB`;
    return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
  }

  // ---- the token -----------------------------------------------------------

  function askForToken(message) {
    tokenPanel.hidden = false;
    $("#token-status").textContent = message || "This service needs an API token.";
    $("#token-status").classList.add("error-text");
  }

  $("#api_token").value = savedToken();
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("#api_token").value.trim();
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
    $("#token-status").textContent = token ? "Saved in this browser." : "Forgotten.";
    $("#token-status").classList.remove("error-text");
    tokenChanged();
  });
  $("#token-forget").addEventListener("click", () => {
    localStorage.removeItem(TOKEN_KEY);
    $("#api_token").value = "";
    $("#token-status").textContent = "Forgotten.";
    tokenChanged();
  });

  function tokenChanged() {
    // The stream starts again with the new header; what the token may read is read again.
    if (streamController) streamController.abort();
    loadClips();
    loadDeadLetters();
  }

  // ---- the form ------------------------------------------------------------

  function clearErrors() {
    clipForm.querySelectorAll("[data-error-for]").forEach((element) => { element.textContent = ""; });
    clipForm.querySelectorAll("[aria-invalid]").forEach((element) => element.removeAttribute("aria-invalid"));
  }

  function showError(field, message) {
    const slot = field && clipForm.querySelector(`[data-error-for="${CSS.escape(field)}"]`);
    (slot || $("#form-error")).textContent = slot || !field ? message : `${field}: ${message}`;
    const input = field && clipForm.elements.namedItem(field);
    if (input && input.setAttribute) {
      input.setAttribute("aria-invalid", "true");
      input.focus();
    }
  }

  function clipRequest() {
    const form = clipForm.elements;
    const body = {
      vod_url: form.vod_url.value.trim(),
      start_time: parseTime(form.start_time.value),
      end_time: parseTime(form.end_time.value),
      quality: form.quality.value,
      mode: form.mode.value,
      priority: form.priority.value,
    };
    const title = form.title.value.trim();
    if (title) body.title = title;
    if (clipForm.querySelector('input[name="outputs"]:checked')) body.outputs = ["portrait"];
    return body;
  }

  clipForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    const body = clipRequest();
    for (const field of ["start_time", "end_time"]) {
      if (Number.isNaN(body[field])) {
        showError(field, "Seconds (90, 90.5) or m:ss / h:mm:ss (1:30, 1:02:03).");
        return;
      }
    }
    const button = $("#create-button");
    button.disabled = true;
    try {
      const {status, data} = await api("POST", "/clips", body);
      if (status === 200 || status === 201) {
        rememberClip(data.clip_id);
        showClip(data, {first: true});
        loadJob(data.clip_id);
        clipForm.elements.title.value = "";
      } else {
        const detail = (data && data.error) || {};
        showError(detail.field, errorMessage(data, `The service answered ${status}.`));
      }
    } finally {
      button.disabled = false;
    }
  });

  // ---- scrubbing the source ------------------------------------------------

  const player = $("#source-player");
  const scrubber = $("#scrubber");
  const scrubberNote = $("#scrubber-note");
  let hls = null;
  let loadedSource = null;

  function sourceKind(url) {
    let parsed;
    try {
      parsed = new URL(url);
    } catch (error) {
      return "none";
    }
    if (/(^|\.)twitch\.tv$/i.test(parsed.hostname)) return "twitch";
    const path = parsed.pathname.toLowerCase();
    if (path.endsWith(".m3u8")) return "hls";
    if (/\.(mp4|m4v|webm)$/.test(path)) return "file";
    return "none";
  }

  function loadSource() {
    const url = clipForm.elements.vod_url.value.trim();
    if (url === loadedSource) return;
    loadedSource = url;
    if (hls) {
      hls.destroy();
      hls = null;
    }
    player.removeAttribute("src");
    player.load();
    const kind = sourceKind(url);
    scrubber.hidden = !(kind === "hls" || kind === "file");
    if (kind === "twitch") {
      scrubberNote.textContent = "No player for Twitch links: type the start and end (seconds or h:mm:ss into the VOD).";
      return;
    }
    if (kind === "none") {
      scrubberNote.textContent = "";
      return;
    }
    scrubberNote.textContent = "Scrub to the moment, then Set start and Set end.";
    if (kind === "file" || (!(window.Hls && window.Hls.isSupported()) && player.canPlayType("application/vnd.apple.mpegurl"))) {
      player.src = url;
    } else if (window.Hls && window.Hls.isSupported()) {
      hls = new window.Hls({enableWorker: true});
      hls.on(window.Hls.Events.ERROR, (_name, data) => {
        if (data.fatal) scrubberNote.textContent = `The player could not load this source (${data.details}); type the times instead.`;
      });
      hls.loadSource(url);
      hls.attachMedia(player);
    } else {
      scrubber.hidden = true;
      scrubberNote.textContent = "This browser cannot play HLS: type the times.";
    }
  }

  let sourceTimer = null;
  clipForm.elements.vod_url.addEventListener("input", () => {
    clearTimeout(sourceTimer);
    sourceTimer = setTimeout(loadSource, 600);
  });
  clipForm.elements.vod_url.addEventListener("change", loadSource);
  player.addEventListener("timeupdate", () => { $("#source-time").textContent = formatTime(player.currentTime); });
  for (const [button, field] of [["#set-start", "start_time"], ["#set-end", "end_time"]]) {
    $(button).addEventListener("click", () => {
      clipForm.elements[field].value = formatTime(player.currentTime);
      clipForm.querySelector(`[data-error-for="${field}"]`).textContent = "";
    });
  }

  // ---- clip cards ----------------------------------------------------------

  function rememberClip(clipId) {
    const ids = rememberedClips().filter((id) => id !== clipId);
    ids.unshift(clipId);
    localStorage.setItem(CLIP_IDS_KEY, JSON.stringify(ids.slice(0, REMEMBERED_CLIPS)));
  }

  function forgetClip(clipId) {
    localStorage.setItem(CLIP_IDS_KEY, JSON.stringify(rememberedClips().filter((id) => id !== clipId)));
  }

  function rememberedClips() {
    try {
      const ids = JSON.parse(localStorage.getItem(CLIP_IDS_KEY) || "[]");
      return Array.isArray(ids) ? ids.filter((id) => typeof id === "string") : [];
    } catch (error) {
      return [];
    }
  }

  // Add or update the card of ``clip``; ``first`` puts a new card before the others.
  function showClip(clip, {first = false} = {}) {
    let entry = cards.get(clip.clip_id);
    if (!entry) {
      const element = cardTemplate.content.firstElementChild.cloneNode(true);
      element.dataset.clipId = clip.clip_id;
      entry = {element, clip, job: null};
      cards.set(clip.clip_id, entry);
      wireCard(entry);
      if (first) cardsBox.prepend(element);
      else cardsBox.append(element);
      $("#no-clips").hidden = true;
    }
    entry.clip = clip;
    renderCard(entry);
    return entry;
  }

  function wireCard(entry) {
    const element = entry.element;
    const media = $(".media", element);
    media.addEventListener("mouseenter", () => showPreview(entry, true));
    media.addEventListener("mouseleave", () => showPreview(entry, false));
    $(".play", element).addEventListener("click", () => {
      const video = $(".clip-video", element);
      element.classList.add("playing");
      showPreview(entry, false);
      video.hidden = false;
      video.play().catch(() => {});
    });
    $(".copy", element).addEventListener("click", async (event) => {
      const button = event.currentTarget;
      const copied = await copyText(entry.clip.video_url);
      button.textContent = copied ? "Copied" : "Copy failed";
      setTimeout(() => { button.textContent = "Copy link"; }, 1500);
    });
    $(".cancel", element).addEventListener("click", async () => {
      const {status, data} = await api("POST", `/clips/${entry.clip.clip_id}/cancel`);
      if (status === 202) showClip(data);
      else if (status === 409) refreshClip(entry.clip.clip_id);
      else showReason(entry, errorMessage(data));
    });
  }

  function showPreview(entry, on) {
    const slot = $(".preview-slot", entry.element);
    const url = entry.clip.preview_url;
    if (!url || entry.element.classList.contains("playing")) on = false;
    if (on && !slot.firstChild) {
      const isImage = /\.(webp|gif|png|jpe?g)(\?|$)/i.test(url);
      const preview = document.createElement(isImage ? "img" : "video");
      preview.className = "preview";
      preview.src = url;
      if (!isImage) Object.assign(preview, {muted: true, loop: true, playsInline: true, autoplay: true});
      preview.alt = "";
      slot.append(preview);
    }
    slot.classList.toggle("on", on);
    const preview = slot.firstChild;
    if (preview && preview.tagName === "VIDEO") {
      if (on) preview.play().catch(() => {});
      else preview.pause();
    }
  }

  function showReason(entry, text) {
    const reason = $(".reason", entry.element);
    reason.hidden = !text;
    reason.textContent = text || "";
  }

  function clipLabel(clip) {
    if (clip.title) return clip.title;
    try {
      const url = new URL(clip.vod_url);
      return url.hostname + url.pathname.replace(/.*(\/[^/]+\/[^/]+)$/, "$1");
    } catch (error) {
      return clip.vod_url;
    }
  }

  function renderCard(entry) {
    const {element, clip, job} = entry;
    element.dataset.status = clip.status;
    $(".title", element).textContent = clipLabel(clip);
    $(".title", element).title = clip.vod_url;
    const details = [`${formatTime(clip.start_time)}–${formatTime(clip.end_time)}`, clip.quality_used || clip.quality, clip.mode];
    if (clip.status === "ready") {
      if (clip.duration != null) details.push(`${clip.duration.toFixed(1)} s`);
      if (clip.width && clip.height) details.push(`${clip.width}×${clip.height}`);
      if (clip.size_bytes != null) details.push(formatBytes(clip.size_bytes));
    }
    $(".meta", element).textContent = details.filter(Boolean).join(" · ");

    const processing = clip.status === "processing";
    const badge = $(".badge", element);
    const jobStatus = processing && job ? job.status : clip.status;
    badge.textContent = jobStatus;
    badge.dataset.status = jobStatus;
    $(".progress-row", element).hidden = !processing;
    $(".cancel", element).hidden = !processing;
    if (processing) {
      const progress = job && job.progress != null ? job.progress : 0;
      $("progress", element).value = progress;
      const stage = job && job.stage && job.status === "running" ? job.stage : (job ? job.status : "queued");
      const attempt = job && job.attempts > 1 ? ` · attempt ${job.attempts}` : "";
      $(".stage", element).textContent = `${stage} ${progress}%${attempt}`;
      element.dataset.progress = String(progress);
      showReason(entry, job && job.status === "retrying" && job.error ? `Retrying: ${job.error}` : "");
    } else if (clip.status === "failed") {
      const code = clip.failure_code ? ` (${clip.failure_code})` : "";
      showReason(entry, `${clip.error || (job && job.error) || "Failed."}${code}`);
    } else if (clip.status === "canceled") {
      showReason(entry, "Canceled.");
    } else {
      showReason(entry, "");
    }
    renderMedia(entry);
  }

  function renderMedia(entry) {
    const {element, clip} = entry;
    const ready = clip.status === "ready";
    const thumb = $(".thumb", element);
    const video = $(".clip-video", element);
    const thumbUrl = clip.thumbnail_url || (clip.thumbnails && (clip.thumbnails.medium || clip.thumbnails.small));
    thumb.hidden = !ready || !thumbUrl;
    if (ready && thumbUrl && thumb.getAttribute("src") !== thumbUrl) {
      const sizes = clip.thumbnails || {};
      // A size the clip is too small for shares the next smaller one's file (never upscaled): list each file once.
      const seen = new Set();
      const candidates = [["small", 320], ["medium", 640], ["large", 1280]]
        .filter(([size]) => sizes[size] && !seen.has(sizes[size]) && seen.add(sizes[size]))
        .map(([size, width]) => `${sizes[size]} ${width}w`);
      if (candidates.length) {
        thumb.srcset = candidates.join(", ");
        thumb.sizes = "(max-width: 600px) 100vw, 360px";
      }
      thumb.src = thumbUrl;
    }
    if (ready && clip.video_url && video.getAttribute("src") !== clip.video_url) {
      video.src = clip.video_url;
      if (thumbUrl) video.poster = thumbUrl;
    }
    if (!ready) {
      element.classList.remove("playing");
      video.hidden = true;
    }
    $(".play", element).hidden = !ready || !clip.video_url;
    $(".copy", element).hidden = !ready || !clip.video_url;
    const portrait = $(".portrait", element);
    portrait.hidden = !(ready && clip.portrait_url);
    if (ready && clip.portrait_url) portrait.href = clip.portrait_url;
    $(".placeholder", element).hidden = ready;
  }

  async function copyText(text) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (error) {
      // Without the Clipboard API (an insecure origin, an old browser): a selected textarea.
      const area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "offscreen";
      document.body.append(area);
      area.select();
      let copied = false;
      try {
        copied = document.execCommand("copy");
      } catch (ignored) {
        copied = false;
      }
      area.remove();
      if (!copied) window.prompt("Copy the clip's link:", text);
      return copied;
    }
  }

  async function refreshClip(clipId, {first = false} = {}) {
    const {status, data} = await api("GET", `/clips/${clipId}`);
    if (status === 200) return showClip(data, {first});
    if (status === 404) {
      forgetClip(clipId);
      const entry = cards.get(clipId);
      if (entry) {
        entry.element.remove();
        cards.delete(clipId);
      }
    }
    return null;
  }

  async function loadJob(clipId) {
    const {status, data} = await api("GET", `/clips/${clipId}/job`);
    if (status === 200) onJobEvent(data);
  }

  async function loadClips() {
    const {status, data} = await api("GET", `/clips?limit=${LISTED_CLIPS}`);
    let clips = [];
    listsAllClips = Boolean(status === 200 && data && Array.isArray(data.clips));
    $("#clips-note").hidden = listsAllClips;
    if (listsAllClips) {
      clips = data.clips;
    } else {
      // No listing on this service (yet): the clips this browser made.
      $("#clips-note").textContent = "Showing the clips made from this browser.";
      const ids = rememberedClips();
      const answers = await Promise.all(ids.map((id) => api("GET", `/clips/${id}`)));
      answers.forEach((answer, index) => {
        if (answer.status === 200) clips.push(answer.data);
        else if (answer.status === 404) forgetClip(ids[index]);
      });
    }
    clips.forEach((clip) => showClip(clip));
    $("#no-clips").hidden = cards.size > 0;
    clips.filter((clip) => clip.status === "processing").forEach((clip) => loadJob(clip.clip_id));
  }

  // ---- the event stream ----------------------------------------------------

  function onJobEvent(job) {
    const clipId = job.clip_id;
    const entry = cards.get(clipId);
    if (!entry) {
      // A clip made elsewhere (another tab, the API): shown when the page lists every clip.
      if (listsAllClips && !clipsBeingLoaded.has(clipId)) {
        clipsBeingLoaded.add(clipId);
        refreshClip(clipId, {first: true}).finally(() => clipsBeingLoaded.delete(clipId));
      }
      return;
    }
    entry.job = job;
    if (FINAL_JOB_STATUSES.has(job.status)) {
      // The record holds what the job does not: URLs, sizes, the failure's code.
      refreshClip(clipId);
      if (job.status === "failed") loadDeadLetters();
      return;
    }
    if (entry.clip.status !== "processing") {
      // Replayed from the dead-letter queue: it is being made again.
      entry.clip = {...entry.clip, status: "processing", error: null, failure_code: null};
    }
    renderCard(entry);
  }

  function setStreamState(state, text) {
    const label = $("#stream-state");
    label.dataset.state = state;
    label.textContent = text;
  }

  async function readEvents(body, handle) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = [];
        for (const line of frame.split("\n")) {
          if (!line || line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "id") lastEventId = text;
          else if (field === "data") data.push(text);
        }
        if (!data.length) continue;
        try {
          handle(JSON.parse(data.join("\n")));
        } catch (error) {
          console.error("clipqueue: an event could not be shown", error);
        }
      }
    }
  }

  async function watchEvents() {
    let delay = RECONNECT_FIRST_MS;
    for (;;) {
      streamController = new AbortController();
      const headers = {Accept: "text/event-stream", ...authHeaders()};
      if (lastEventId) headers["Last-Event-ID"] = lastEventId;
      try {
        const response = await fetch(`${API}/events`, {headers, cache: "no-store", signal: streamController.signal});
        if (response.status === 401 || response.status === 403) {
          const data = await response.json().catch(() => null);
          askForToken(errorMessage(data));
          setStreamState("needs-token", "live updates need the API token");
          await new Promise((resolve) => streamController.signal.addEventListener("abort", resolve));
          continue;
        }
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        setStreamState("live", "live");
        delay = RECONNECT_FIRST_MS;
        // Whatever finished before this stream began (or while it was away without an id) is read once.
        cards.forEach((entry, clipId) => { if (entry.clip.status === "processing") loadJob(clipId); });
        await readEvents(response.body, onJobEvent);
      } catch (error) {
        if (streamController.signal.aborted) continue;
      }
      setStreamState("reconnecting", "reconnecting…");
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, RECONNECT_MAX_MS);
    }
  }

  // ---- the dead-letter queue -----------------------------------------------

  const deadLetterList = $("#dead-letter-list");

  async function loadDeadLetters() {
    const note = $("#dead-letter-note");
    const {status, data} = await api("GET", "/dead-letter?limit=50");
    if (status !== 200) {
      note.textContent = status === 401 || status === 403
        ? "Reading the dead-letter queue needs the API token."
        : errorMessage(data, "The dead-letter queue could not be read.");
      deadLetterList.replaceChildren();
      return;
    }
    note.textContent = data.count
      ? `${data.count} job${data.count === 1 ? "" : "s"} failed for good. Replay one once its cause is fixed.`
      : "Empty: no job failed for good.";
    deadLetterList.replaceChildren(...data.jobs.map(deadLetterItem));
  }

  function deadLetterItem(job) {
    const item = document.createElement("li");
    item.dataset.deadLetterId = job.clip_id;
    const payload = job.payload || {};
    const head = document.createElement("div");
    head.className = "dl-head";
    const name = document.createElement("strong");
    name.textContent = payload.title || job.clip_id;
    const when = document.createElement("span");
    when.className = "hint";
    when.textContent = `${job.attempts} attempt${job.attempts === 1 ? "" : "s"}${job.failed_at ? " · " + new Date(job.failed_at).toLocaleString() : ""}`;
    head.append(name, when);
    const error = document.createElement("p");
    error.className = "reason";
    error.textContent = job.error;
    const source = document.createElement("p");
    source.className = "hint source";
    source.textContent = payload.vod_url || "";
    const replay = document.createElement("button");
    replay.type = "button";
    replay.className = "replay";
    replay.textContent = "Replay";
    replay.addEventListener("click", () => replayDeadLetter(job.clip_id, item, replay));
    item.append(head, error, source, replay);
    return item;
  }

  async function replayDeadLetter(clipId, item, button) {
    button.disabled = true;
    const {status, data} = await api("POST", `/dead-letter/${clipId}/replay`);
    if (status === 202 || status === 200) {
      item.remove();
      rememberClip(clipId);
      const entry = await refreshClip(clipId, {first: true});
      if (entry) entry.element.scrollIntoView({block: "nearest", behavior: "smooth"});
      loadJob(clipId);
      loadDeadLetters();
    } else {
      button.disabled = false;
      $(".reason", item).textContent = errorMessage(data);
    }
  }

  $("#dead-letter-refresh").addEventListener("click", loadDeadLetters);

  // ---- start ---------------------------------------------------------------

  if (page.dataset.needsToken === "true" && !savedToken()) askForToken("This service needs an API token: paste one of API_TOKENS.");
  loadClips().finally(watchEvents);
  loadDeadLetters();
})();
