// The Jobs page's own behaviour (the rest is htmx attributes): when the stream inserts the first row into an
// empty list, show the table and hide the "no jobs" message the server rendered for the empty page; mark a row
// the stream just inserted so it can be told apart for a moment (jobs.css; not by colour alone: "new" badge).
(function () {
  "use strict";
  document.addEventListener("htmx:sseMessage", function (event) {
    var target = event.target;
    if (!target || target.id !== "jobs-rows") { return; }
    var table = document.getElementById("jobs-table");
    var empty = document.getElementById("jobs-empty");
    if (table) { table.hidden = false; }
    if (empty) { empty.hidden = true; }
    var row = target.firstElementChild;
    if (row && row.tagName === "TR") { row.classList.add("just-added"); }
  });
})();
