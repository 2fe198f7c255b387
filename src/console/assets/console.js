// smlocal's console: the pages are whole without this script; it keeps them live (Server-
// Sent Events), filters logs as you type, copies the request and points at a refused field.
"use strict";

(function () {
  function live(url, handlers) {
    if (!window.EventSource) return null;
    var source = new EventSource(url);
    Object.keys(handlers).forEach(function (kind) {
      source.addEventListener(kind, function (e) { handlers[kind](JSON.parse(e.data), source); });
    });
    return source;
  }

  // The jobs table: its rows again whenever they change.
  var table = document.querySelector("table.jobs[data-live]");
  if (table) {
    live(table.getAttribute("data-live"), {
      rows: function (data) {
        document.getElementById("rows").innerHTML = data.html;
      }
    });
  }

  // A job's logs: the host selector and the search filter the lines shown.
  var log = document.getElementById("log");
  var hostSelect = document.getElementById("host");
  var search = document.getElementById("log-search");
  var count = document.getElementById("log-count");
  function shows(line) {
    var host = hostSelect ? hostSelect.value : "";
    var needle = search ? search.value.toLowerCase() : "";
    if (host && line.getAttribute("data-host") !== host) return false;
    return !needle || line.textContent.toLowerCase().indexOf(needle) >= 0;
  }
  function filter(lines) {
    lines.forEach(function (line) { line.hidden = !shows(line); });
    if (count && log) {
      var all = log.querySelectorAll(".line");
      var shown = log.querySelectorAll(".line:not([hidden])");
      count.textContent = shown.length + " of " + all.length + " lines";
    }
  }
  if (log) {
    [hostSelect, search].forEach(function (input) {
      if (!input) return;
      input.addEventListener("input", function () { filter(Array.from(log.querySelectorAll(".line"))); });
    });
    if (search && search.form) {
      search.form.addEventListener("submit", function (e) {
        e.preventDefault();
        filter(Array.from(log.querySelectorAll(".line")));
      });
    }
    filter(Array.from(log.querySelectorAll(".line")));
  }

  // A running job: new lines, the chart and the status as they change.
  if (log && log.getAttribute("data-live")) {
    live(log.getAttribute("data-live"), {
      log: function (data) {
        var atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
        var empty = log.querySelector(".empty-log");
        if (empty) empty.remove();
        var holder = document.createElement("div");
        holder.innerHTML = data.html;
        var added = Array.from(holder.children);
        added.forEach(function (line) { log.appendChild(line); });
        filter(added);
        if (atBottom) log.scrollTop = log.scrollHeight;
        if (hostSelect) {
          added.forEach(function (line) {
            var host = line.getAttribute("data-host");
            var known = Array.from(hostSelect.options).some(function (o) { return o.value === host; });
            if (!known) hostSelect.add(new Option(host, host));
          });
        }
      },
      chart: function (data) { document.getElementById("chart").innerHTML = data.html; },
      status: function (data) {
        document.getElementById("status-block").innerHTML = data.html;
        var stop = document.getElementById("stop");
        if (data.terminal && stop) stop.remove();
      },
      end: function (data, source) { source.close(); }
    });
  }

  // Copy buttons.
  Array.from(document.querySelectorAll("button[data-copy]")).forEach(function (button) {
    button.addEventListener("click", function () {
      var text = document.getElementById(button.getAttribute("data-copy")).textContent;
      var said = button.parentNode.querySelector(".copied");
      var done = function (message) { if (said) said.textContent = message; };
      if (navigator.clipboard) {
        navigator.clipboard.writeText(text).then(function () { done("Copied"); }, function () { done("Select the text and copy it"); });
      } else {
        done("Select the text and copy it");
      }
    });
  });

  // A refused request: select the field the message names.
  var editor = document.querySelector("textarea[data-select-start]");
  if (editor) {
    var start = parseInt(editor.getAttribute("data-select-start"), 10);
    var end = parseInt(editor.getAttribute("data-select-end"), 10);
    editor.focus();
    editor.setSelectionRange(start, end);
    var before = editor.value.slice(0, start).split("\n").length - 1;
    var lineHeight = editor.scrollHeight / Math.max(1, editor.value.split("\n").length);
    editor.scrollTop = Math.max(0, (before - 3) * lineHeight);
  }
})();
