// The search page: upload or pick a face, see its nearest images; the gold plots beside them.
// Plain JavaScript, no build step, nothing loaded from elsewhere. With an API key configured, the key
// typed into #apikey is kept in sessionStorage, sent as the api-key header, and set as a session cookie
// for the <img> elements (which cannot send a header).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const KEY = "fer-api-key";
  let authNeeded = false;
  let source = null; // what the last search started from: "file" or "pick"
  let latest = 0; // the newest search: an older answer arriving late is dropped
  let queryUrl = null; // object URL of an uploaded query

  const storedKey = () => sessionStorage.getItem(KEY) || "";

  function setCookie(value) {
    document.cookie = `${KEY}=${encodeURIComponent(value)}; path=/; SameSite=Strict`;
  }

  async function api(path, options = {}) {
    const headers = {};
    if (authNeeded && storedKey()) headers["api-key"] = storedKey();
    const response = await fetch(path, { ...options, headers });
    let body = null;
    try {
      body = await response.json();
    } catch (_ignored) {
      body = null;
    }
    if (!response.ok) {
      throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
    }
    return body;
  }

  function showError(message) {
    $("error").textContent = message || "";
  }

  function element(tag, className, text) {
    const el = document.createElement(tag);
    if (className) el.className = className;
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function showQuery(src, emotion) {
    const img = element("img");
    img.src = src;
    img.alt = "query";
    $("query").replaceChildren(img, element("span", "query-emotion", emotion));
  }

  function showHits(result) {
    const figures = result.hits.map((hit) => {
      const figure = element("figure", "hit");
      figure.dataset.imageId = hit.image_id;
      const img = element("img");
      img.src = hit.url;
      img.alt = `${hit.emotion}, distance ${hit.distance.toFixed(4)}`;
      const caption = element("figcaption");
      caption.append(
        element("span", "rank", `#${hit.rank} `),
        element("span", "emotion", hit.emotion),
        " ",
        element("span", "distance", hit.distance.toFixed(4)),
      );
      figure.append(img, caption);
      return figure;
    });
    $("results").replaceChildren(...figures);
    const same = result.same_emotion === null ? "" : `, ${result.same_emotion} share the query's emotion`;
    $("summary").textContent =
      `${result.hits.length} images, ${result.backend}, ${result.took_ms} ms in the service${same}`;
  }

  async function search() {
    const file = $("file").files[0];
    const picked = $("pick").value;
    const useFile = file && (source === "file" || !picked);
    if (!useFile && !picked) {
      showError("upload a face or pick a stored image first");
      return;
    }
    const params = new URLSearchParams({ backend: $("backend").value });
    if ($("k").value) params.set("k", $("k").value);
    if ($("emotion").value) params.set("emotion", $("emotion").value);
    const mine = ++latest;
    $("results").replaceChildren();
    $("results").setAttribute("aria-busy", "true");
    $("summary").textContent = "searching...";
    let result;
    try {
      if (useFile) {
        const form = new FormData();
        form.append("file", file);
        result = await api(`/search?${params}`, { method: "POST", body: form });
      } else {
        result = await api(`/images/${encodeURIComponent(picked)}/similar?${params}`);
      }
    } catch (err) {
      if (mine === latest) {
        showError(err.message);
        $("summary").textContent = "";
        $("results").removeAttribute("aria-busy");
      }
      return;
    }
    if (mine !== latest) return;
    showError("");
    const emotion = result.query.emotion || "not a stored image";
    if (useFile) {
      if (queryUrl) URL.revokeObjectURL(queryUrl);
      queryUrl = URL.createObjectURL(file);
      showQuery(queryUrl, emotion);
    } else {
      showQuery(result.query.url, emotion);
    }
    showHits(result);
    $("results").removeAttribute("aria-busy");
  }

  async function loadPicks() {
    let answer = await api("/images?split=test&limit=70");
    if (!answer.images.length) answer = await api("/images?limit=70");
    const options = answer.images.map((row) => {
      const name = row.filepath.split("/").pop();
      const option = element("option", null, `${row.emotion} - ${name}`);
      option.value = row.image_id;
      return option;
    });
    $("pick").replaceChildren(element("option", null, "(choose)"), ...options);
    $("pick").options[0].value = "";
  }

  async function loadPlots() {
    const answer = await api("/plots");
    const images = answer.plots.map((plot) => {
      const img = element("img");
      img.src = plot.url;
      img.alt = plot.title;
      img.title = plot.title;
      return img;
    });
    $("plots").replaceChildren(...images);
  }

  async function loadLists() {
    try {
      await Promise.all([loadPicks(), loadPlots()]);
    } catch (err) {
      showError(err.message);
    }
  }

  async function start() {
    let health;
    try {
      health = await (await fetch("/health")).json();
    } catch (_ignored) {
      showError("the search service does not answer");
      return;
    }
    authNeeded = health.auth === "api-key";
    $("k").max = String(health.max_k);
    if (!health.pgvector) $("backend").querySelector("option[value=pgvector]").remove();
    if (health.status !== "ok") showError(health.index.problem || "no search index yet");
    if (authNeeded) {
      $("auth").hidden = false;
      $("apikey").value = storedKey();
      setCookie(storedKey());
      if (!storedKey()) {
        showError("this service needs its API key: type it above");
        return;
      }
    }
    await loadLists();
  }

  $("apikey").addEventListener("change", () => {
    sessionStorage.setItem(KEY, $("apikey").value);
    setCookie($("apikey").value);
    showError("");
    loadLists();
  });
  $("file").addEventListener("change", () => {
    source = "file";
    if ($("file").files.length) search();
  });
  $("pick").addEventListener("change", () => {
    source = "pick";
    if ($("pick").value) search();
  });
  for (const id of ["emotion", "backend"]) {
    $(id).addEventListener("change", () => {
      if (source) search();
    });
  }
  $("form").addEventListener("submit", (event) => {
    event.preventDefault();
    search();
  });
  start();
})();
