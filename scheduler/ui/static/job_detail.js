// The job page's own behaviour: the Cancel confirm dialog, and the live log viewer (an EventSource on
// /ui/jobs/{id}/logs/stream appending the server's escaped lines; follow that never forces scrolling; line
// anchors #log-<n>; at most data-max-lines lines kept). The rest of the page is updated by htmx's SSE extension.
(function () {
  "use strict";

  function setupDialog() {
    document.addEventListener("click", function (event) {
      var opener = event.target.closest("[data-open-dialog]");
      if (opener) {
        var dialog = document.getElementById(opener.getAttribute("data-open-dialog"));
        if (dialog && typeof dialog.showModal === "function") {
          dialog.showModal(); // moves focus into the dialog; Escape closes it
          var first = dialog.querySelector("[autofocus]");
          if (first) { first.focus(); }
        }
        return;
      }
      var closer = event.target.closest("[data-close-dialog]");
      if (closer) {
        var open = closer.closest("dialog");
        if (open) { open.close(); }
      }
    });
    document.addEventListener("submit", function (event) {
      var dialog = event.target.closest("dialog");
      if (dialog && dialog.open) { window.setTimeout(function () { dialog.close(); }, 0); }
    });
    document.addEventListener("close", function (event) {
      if (event.target.id === "cancel-dialog") {
        var opener = document.getElementById("cancel-open");
        if (opener) { opener.focus(); }
      }
    }, true);
  }

  function setupLog() {
    var box = document.getElementById("log");
    if (!box || !box.dataset.stream) { return; }
    var status = document.getElementById("log-status");
    var dropped = document.getElementById("log-dropped");
    var follow = document.getElementById("log-follow");
    var maxLines = parseInt(box.dataset.maxLines || "5000", 10);
    var droppedCount = 0;
    var anchorDone = false;
    var programmatic = false;

    function atBottom() { return box.scrollHeight - box.scrollTop - box.clientHeight < 4; }
    function following() { return follow.getAttribute("aria-pressed") === "true"; }
    function setFollow(on) {
      follow.setAttribute("aria-pressed", on ? "true" : "false");
      follow.textContent = on ? "Follow" : "Follow (off)";
    }
    follow.addEventListener("click", function () {
      var on = !following();
      setFollow(on);
      if (on) { programmatic = true; box.scrollTop = box.scrollHeight; }
    });
    box.addEventListener("scroll", function () {
      if (programmatic) { programmatic = false; return; }
      if (following() && !atBottom()) { setFollow(false); }
    });

    function showAnchor() {
      var hash = window.location.hash;
      if (anchorDone || !/^#log-\d+$/.test(hash)) { return; }
      var line = document.getElementById(hash.slice(1));
      if (!line) { return; }
      anchorDone = true;
      setFollow(false);
      var old = box.querySelector(".line.selected");
      if (old) { old.classList.remove("selected"); }
      line.classList.add("selected");
      programmatic = true;
      box.scrollTop = line.offsetTop - box.offsetTop - box.clientHeight / 3;
    }
    window.addEventListener("hashchange", function () { anchorDone = false; showAnchor(); });

    function append(html) {
      var stick = following() && atBottom();
      box.insertAdjacentHTML("beforeend", html);
      var extra = box.childElementCount - maxLines;
      if (extra > 0) {
        for (var i = 0; i < extra; i++) { box.removeChild(box.firstElementChild); }
        droppedCount += extra;
        dropped.hidden = false;
        dropped.textContent = droppedCount.toLocaleString() + " earlier lines are no longer shown (at most " +
          maxLines.toLocaleString() + " are kept here): download the log for all of them.";
      }
      if (stick) { programmatic = true; box.scrollTop = box.scrollHeight; }
      showAnchor();
    }

    // paused while the tab is hidden (static/streams.js): closed, then reopened after the last line it has
    var source = null;
    var lastId = "";
    var over = false;
    function connect() {
      var url = box.dataset.stream;
      if (/^\d+$/.test(lastId)) { url += (url.indexOf("?") < 0 ? "?" : "&") + "after=" + lastId; }
      var opened = new EventSource(url, { withCredentials: true });
      source = opened;
      function remember(event) { if (event.lastEventId) { lastId = event.lastEventId; } }
      opened.addEventListener("open", function () { status.textContent = "Following the log live."; });
      opened.addEventListener("lines", function (event) { remember(event); append(event.data); });
      opened.addEventListener("stream-error", function (event) {
        var div = document.createElement("div");
        div.className = "line note";
        div.textContent = event.data;
        box.appendChild(div);
      });
      opened.addEventListener("end", function (event) {
        remember(event);
        over = true;
        opened.close();
        status.textContent = "End of the log: the job has ended.";
        if (!box.childElementCount) { box.insertAdjacentHTML("beforeend", '<div class="line note">No lines.</div>'); }
      });
      opened.addEventListener("error", function () {
        if (opened !== source) { return; }
        if (opened.readyState === EventSource.CLOSED) { status.textContent = "The log stream was refused or lost: reload the page."; }
        else { status.textContent = "Reconnecting…"; }
      });
    }
    document.addEventListener("modelops:streams-pause", function () {
      if (over || source === null) { return; }
      source.close();
      source = null;
      status.textContent = "Paused while this tab is hidden.";
    });
    document.addEventListener("modelops:streams-resume", function () {
      if (!over && source === null) { connect(); }
    });
    connect();
  }

  function setup() { setupDialog(); setupLog(); }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", setup); }
  else { setup(); }
})();
