// Many tabs: the server-sent event streams of a tab hidden for more than PAUSE_AFTER_MS are closed, and opened
// again when it is shown. Over HTTP/1.1 the browser allows 6 connections per host (per profile): four job pages
// (two streams each) would otherwise stall every further page of the server.
//
// - The htmx SSE extension's streams (`sse-connect`): every EventSource it creates goes through
//   htmx.createEventSource, wrapped here to know them. Paused: closed (the extension reconnects only after an
//   error, which close() never fires). Resumed: an element with `data-stream-resume="<url>"` (the Jobs list,
//   whose stream only sends what changes from now on) is replaced by that URL's fragment, which opens its own
//   stream; any other (the job page, whose stream first sends every part as it is now) gets a new EventSource in
//   place: the element and its `sse-swap` / `hx-trigger="sse:…"` children are marked with a new
//   `data-stream-epoch` so htmx.process initialises them again. A stream that ended by its `sse-close` message
//   (the job is over) stays closed.
// - Other streams (the job page's log) listen for the document events `modelops:streams-pause` and
//   `modelops:streams-resume` (static/job_detail.js resumes after the last line it has).
(function () {
  "use strict";
  var PAUSE_AFTER_MS = 2000;
  var sources = []; // EventSources the SSE extension opened, open or connecting
  var ended = new WeakSet(); // sse-connect elements whose stream ended with its sse-close message
  var paused = false;
  var timer = null;
  var epoch = 0;
  var resuming = 0; // fragment requests of resume() in flight

  function live() {
    sources = sources.filter(function (s) { return s.readyState !== EventSource.CLOSED; });
    return sources;
  }

  function wrapCreate() {
    var create = window.htmx && htmx.createEventSource;
    if (typeof create !== "function") { return; }
    htmx.createEventSource = function (url) {
      var source = create(url);
      if (paused) { source.close(); } // the extension retrying while the tab is hidden: reopened on resume
      else { live().push(source); }
      return source;
    };
  }

  function pause() {
    paused = true;
    live().forEach(function (source) { source.close(); });
    sources = [];
    document.documentElement.dataset.streams = "paused";
    document.dispatchEvent(new CustomEvent("modelops:streams-pause"));
  }

  function reconnect(root) {
    epoch += 1;
    var nodes = [root];
    root.querySelectorAll("[sse-swap], [data-sse-swap], [hx-trigger*='sse:'], [data-hx-trigger*='sse:']")
      .forEach(function (node) { nodes.push(node); });
    nodes.forEach(function (node) { node.setAttribute("data-stream-epoch", String(epoch)); });
    htmx.process(root); // the root first (a new EventSource), then its children (their listeners on it)
  }

  function reload(root, url) {
    resuming += 1;
    var done = function () {
      resuming -= 1;
      if (document.body.contains(root) && !paused) { reconnect(root); } // the fragment did not come: at least live
    };
    htmx.ajax("GET", url, { target: root, swap: "outerHTML" }).then(done, done);
  }

  function resume() {
    paused = false;
    delete document.documentElement.dataset.streams;
    document.querySelectorAll("[sse-connect], [data-sse-connect]").forEach(function (root) {
      if (ended.has(root)) { return; }
      var url = root.getAttribute("data-stream-resume");
      if (url) { reload(root, url); } else { reconnect(root); }
    });
    document.dispatchEvent(new CustomEvent("modelops:streams-resume"));
  }

  function onVisibility() {
    if (document.visibilityState === "hidden") {
      if (!paused && timer === null) {
        timer = window.setTimeout(function () {
          timer = null;
          if (document.visibilityState === "hidden" && !paused) { pause(); }
        }, PAUSE_AFTER_MS);
      }
      return;
    }
    if (timer !== null) { window.clearTimeout(timer); timer = null; }
    if (paused) { resume(); }
  }

  function setup() {
    wrapCreate();
    document.addEventListener("htmx:sseClose", function (event) {
      if (event.detail && event.detail.type === "message") { ended.add(event.target); }
    });
    // the resumed fragment is what the address bar already shows: no second history entry for it
    document.addEventListener("htmx:beforeHistoryUpdate", function (event) {
      var history = event.detail && event.detail.history;
      if (resuming > 0 && history && history.path === window.location.pathname + window.location.search) {
        history.type = "replace";
      }
    });
    document.addEventListener("visibilitychange", onVisibility);
    onVisibility(); // opened in a background tab
  }

  // at once (a deferred script, after htmx and its SSE extension): htmx opens the streams on DOMContentLoaded
  setup();
})();
