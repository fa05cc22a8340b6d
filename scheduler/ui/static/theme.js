// Runs before the page paints: apply the theme the user chose (localStorage), else follow the OS.
(function () {
  var chosen = null;
  try { chosen = localStorage.getItem("modelops-theme"); } catch (e) { /* storage disabled */ }
  if (chosen === "light" || chosen === "dark") { document.documentElement.dataset.theme = chosen; }
})();
