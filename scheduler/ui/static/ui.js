// The UI's own behaviour, small on purpose: the theme toggle, and the CSRF header on every htmx request
// (also set on <body hx-headers>, repeated here for requests htmx makes from elements outside body's reach).
(function () {
  "use strict";
  var ORDER = ["auto", "light", "dark"];
  var LABEL = { auto: "Auto", light: "Light", dark: "Dark" };

  function currentTheme() {
    var t = document.documentElement.dataset.theme;
    return t === "light" || t === "dark" ? t : "auto";
  }
  function showTheme(button) {
    var t = currentTheme();
    button.querySelector(".theme-label").textContent = LABEL[t];
    button.setAttribute("aria-label", "Colour theme: " + (t === "auto" ? "follows the system" : LABEL[t]) +
      " (click to change)");
  }
  function setup() {
    var button = document.getElementById("theme-toggle");
    if (button) {
      showTheme(button);
      button.addEventListener("click", function () {
        var next = ORDER[(ORDER.indexOf(currentTheme()) + 1) % ORDER.length];
        try {
          if (next === "auto") { localStorage.removeItem("modelops-theme"); }
          else { localStorage.setItem("modelops-theme", next); }
        } catch (e) { /* storage disabled: the choice lasts this page */ }
        if (next === "auto") { delete document.documentElement.dataset.theme; }
        else { document.documentElement.dataset.theme = next; }
        showTheme(button);
      });
    }
    var meta = document.querySelector('meta[name="csrf-token"]');
    document.body.addEventListener("htmx:configRequest", function (event) {
      if (meta && meta.content) { event.detail.headers["X-CSRF-Token"] = meta.content; }
    });
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", setup); }
  else { setup(); }
})();
