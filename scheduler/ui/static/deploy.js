// The Deploy page (scheduler/ui/deploy.py): the editor's line gutter, validation on the server as you type (or
// as you pick files), Deploy enabled only while the last validation of what is shown said valid, the deploy.
// Answers are HTML fragments rendered (and escaped) by the server; this file only places them.
(function () {
  "use strict";
  var IR_FILE = /\.(ya?ml|json)$/i;
  var TARBALL = /\.(tar\.gz|tgz)$/i;
  var DELAY_MS = 600;

  function setup() {
    var form = document.getElementById("deploy-form");
    if (!form) { return; }
    var text = document.getElementById("ir-text");
    var gutter = document.getElementById("ir-gutter");
    var filesInput = document.getElementById("ir-files");
    var folderInput = document.getElementById("ir-folder");
    var chosen = document.getElementById("chosen");
    var clear = document.getElementById("clear-files");
    var validation = document.getElementById("validation");
    var result = document.getElementById("deploy-result");
    var button = document.getElementById("deploy-button");
    var meta = document.querySelector('meta[name="csrf-token"]');
    var csrf = meta ? meta.content : "";
    var editorFile = form.dataset.editorFile || "pasted.yaml";
    var picked = [];        // [{path, file}] while files are chosen instead of the editor's text
    var generation = 0;     // bumped by every edit or pick: an answer for an older one is dropped
    var validGeneration = -1;
    var needed = [];        // listed paths the deploy must send (the IR's model artifacts)
    var badLines = [];
    var timer = null;

    button.disabled = true;

    function renderGutter() {
      var count = text.value.split("\n").length;
      var bad = {};
      badLines.forEach(function (n) { bad[n] = true; });
      var frag = document.createDocumentFragment();
      for (var i = 1; i <= count; i++) {
        var span = document.createElement("span");
        span.textContent = (bad[i] ? "✕ " : "") + i;
        if (bad[i]) { span.className = "bad"; }
        frag.appendChild(span);
      }
      gutter.replaceChildren(frag);
      gutter.scrollTop = text.scrollTop;
    }

    function body(forDeploy) {
      var data = new FormData();
      data.append("csrf_token", csrf);
      if (picked.length) {
        var tarball = picked.length === 1 && TARBALL.test(picked[0].path);
        picked.forEach(function (item) {
          if (tarball || IR_FILE.test(item.path) || (forDeploy && needed.indexOf(item.path) >= 0)) {
            data.append("file", item.file, item.file.name);
            data.append("path", item.path);
          } else {
            data.append("listed", item.path);
          }
        });
      } else {
        data.append("text", text.value);
        data.append("name", editorFile);
      }
      return data;
    }

    function post(url, data) {
      return fetch(url, {
        method: "POST", body: data, credentials: "same-origin",
        headers: { "X-CSRF-Token": csrf, "HX-Request": "true" }
      });
    }

    // Put the answer where it belongs: `target`, or where the server retargets an error (#flash).
    function place(response, target) {
      var redirect = response.headers.get("HX-Redirect");
      if (redirect) { window.location.assign(redirect); return Promise.resolve(null); }
      return response.text().then(function (html) {
        var where = response.headers.get("HX-Retarget");
        var dest = where ? document.querySelector(where) : target;
        dest.innerHTML = html;
        return dest === target ? dest : null;
      });
    }

    function idle(message) {
      var p = document.createElement("p");
      p.className = "muted";
      p.textContent = message;
      validation.replaceChildren(p);
    }

    function invalidate() {
      generation += 1;
      validGeneration = -1;
      button.disabled = true;
      return generation;
    }

    function validate() {
      var mine = invalidate();
      if (!picked.length && !text.value.trim()) {
        badLines = [];
        renderGutter();
        idle("Paste an IR or pick its files: it is validated here.");
        return;
      }
      validation.setAttribute("aria-busy", "true");
      post(form.dataset.validateUrl, body(false)).then(function (response) {
        if (mine !== generation) { return null; }
        return place(response, validation);
      }).then(function (dest) {
        if (!dest || mine !== generation) { return; }
        var box = dest.querySelector("[data-valid]");
        needed = box && box.dataset.needed ? JSON.parse(box.dataset.needed) : [];
        badLines = box && box.dataset.lines && !picked.length ? JSON.parse(box.dataset.lines) : [];
        renderGutter();
        if (box && box.dataset.valid === "true") {
          validGeneration = mine;
          button.disabled = false;
        }
      }).catch(function (error) {
        if (mine === generation) { idle("The server could not be reached: " + error.message); }
      }).finally(function () {
        validation.removeAttribute("aria-busy");
      });
    }

    function schedule() {
      invalidate();
      renderGutter();
      if (timer) { clearTimeout(timer); }
      timer = setTimeout(validate, DELAY_MS);
    }

    function showChosen() {
      chosen.replaceChildren();
      clear.hidden = picked.length === 0;
      text.disabled = picked.length > 0;
      if (!picked.length) { return; }
      var p = document.createElement("p");
      p.textContent = picked.length + " file" + (picked.length === 1 ? "" : "s") +
        " chosen (the editor is not used while files are chosen):";
      var list = document.createElement("ul");
      // the list scrolls (deploy.css): a tab stop lets the keyboard scroll it (axe scrollable-region-focusable)
      list.tabIndex = 0;
      list.setAttribute("aria-label", "Chosen files");
      picked.slice(0, 30).forEach(function (item) {
        var li = document.createElement("li");
        var code = document.createElement("code");
        code.textContent = item.path;
        li.appendChild(code);
        list.appendChild(li);
      });
      if (picked.length > 30) {
        var more = document.createElement("li");
        more.textContent = "and " + (picked.length - 30) + " more";
        list.appendChild(more);
      }
      chosen.append(p, list);
    }

    function pick(input, folder) {
      var files = Array.prototype.slice.call(input.files || []);
      if (!files.length) { return; }
      if (!folder && files.length === 1 && IR_FILE.test(files[0].name)) {
        var single = files[0];
        single.text().then(function (content) {
          picked = [];
          input.value = "";
          editorFile = single.name;
          text.value = content;
          showChosen();
          validate();
        });
        return;
      }
      (folder ? filesInput : folderInput).value = "";
      picked = files.map(function (file) {
        return { path: (folder && file.webkitRelativePath) || file.name, file: file };
      }).filter(function (item) {
        // hidden files and folders (.git, .venv) are never part of a bundle (the IR loader skips them too)
        return !item.path.split("/").some(function (part) { return part.charAt(0) === "."; });
      });
      if (!picked.length) { showChosen(); validate(); return; }
      badLines = [];
      renderGutter();
      showChosen();
      validate();
    }

    function goToLine(line) {
      var lines = text.value.split("\n");
      var start = 0;
      for (var i = 0; i < line - 1 && i < lines.length; i++) { start += lines[i].length + 1; }
      var end = start + (lines[line - 1] || "").length;
      text.focus();
      text.setSelectionRange(start, end);
      var height = parseFloat(getComputedStyle(text).lineHeight) || 20;
      text.scrollTop = Math.max(0, (line - 1) * height - text.clientHeight / 3);
      gutter.scrollTop = text.scrollTop;
    }

    text.addEventListener("input", function () {
      if (editorFile !== form.dataset.editorFile && !text.value) { editorFile = form.dataset.editorFile; }
      schedule();
    });
    text.addEventListener("change", function () { if (validGeneration !== generation) { validate(); } });
    text.addEventListener("scroll", function () { gutter.scrollTop = text.scrollTop; });
    filesInput.addEventListener("change", function () { pick(filesInput, false); });
    folderInput.addEventListener("change", function () { pick(folderInput, true); });
    clear.addEventListener("click", function () {
      picked = [];
      filesInput.value = "";
      folderInput.value = "";
      showChosen();
      validate();
      text.focus();
    });
    validation.addEventListener("click", function (event) {
      var target = event.target.closest("[data-line]");
      if (target) { goToLine(parseInt(target.dataset.line, 10)); }
    });
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      if (validGeneration !== generation) { return; }
      var mine = generation;
      button.disabled = true;
      result.setAttribute("aria-busy", "true");
      post(form.action, body(true)).then(function (response) {
        return place(response, result);
      }).then(function (dest) {
        if (dest && mine === generation) { validate(); }  // now it says "same IR as version N"
      }).catch(function (error) {
        result.textContent = "The server could not be reached: " + error.message;
        button.disabled = false;
      }).finally(function () {
        result.removeAttribute("aria-busy");
      });
    });

    renderGutter();
    if (text.value.trim()) { validate(); }
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", setup); }
  else { setup(); }
})();
