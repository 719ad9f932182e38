// outlast dashboard: progressive enhancement only. Every page works without this
// script; with it, times read in local time, lists and runs refresh themselves, and a
// few forms submit on change or ask before they act.
(function () {
  "use strict";

  function pad(n) { return String(n).padStart(2, "0"); }

  function localTime(d) {
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  function relative(d) {
    var s = (Date.now() - d.getTime()) / 1000;
    var future = s < 0;
    s = Math.abs(s);
    var text;
    if (s < 5) return future ? "in a moment" : "just now";
    if (s < 60) text = Math.round(s) + " s";
    else if (s < 3600) text = Math.round(s / 60) + " min";
    else if (s < 86400) text = Math.round(s / 3600) + " h";
    else text = Math.round(s / 86400) + " d";
    return future ? "in " + text : text + " ago";
  }

  // <time datetime=…>: local time; with data-rel, "3 min ago" (local time on hover).
  function enhanceTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (isNaN(d.getTime())) return;
      if (el.hasAttribute("data-rel")) {
        el.textContent = relative(d);
        el.title = localTime(d);
      } else {
        el.textContent = localTime(d);
        el.title = d.toISOString();
      }
    });
  }

  function enhance(root) {
    enhanceTimes(root);
  }

  // Swap a fragment, keeping what the reader was doing in it: open <details>, and
  // inputs they typed into (by id). A fragment holding the focused element is left
  // alone until focus moves away.
  function swap(el, html) {
    if (el.contains(document.activeElement) && document.activeElement !== document.body) return false;
    var open = {};
    el.querySelectorAll("details[id]").forEach(function (d) { open[d.id] = d.open; });
    var typed = {};
    el.querySelectorAll("input[id], textarea[id]").forEach(function (i) {
      if (i.value !== i.defaultValue) typed[i.id] = i.value;
    });
    el.innerHTML = html;
    Object.keys(open).forEach(function (id) {
      var d = document.getElementById(id);
      if (d) d.open = open[id];
    });
    Object.keys(typed).forEach(function (id) {
      var i = document.getElementById(id);
      if (i) i.value = typed[id];
    });
    enhance(el);
    return true;
  }

  function startLive(main) {
    var url = main.getAttribute("data-live-url");
    var every = parseInt(main.getAttribute("data-live-every") || "0", 10) ||
      (url.indexOf("/dashboard-api/runs/") === 0 ? 1000 : 2000);
    var last = {};
    var failures = 0;
    var stopped = false;
    var timer = null;

    function indicators(state) {
      document.querySelectorAll(".live").forEach(function (el) {
        el.classList.toggle("paused", state !== "live");
        el.textContent = state === "live" ? "Live" : (state === "done" ? "Ended" : "Paused");
      });
    }

    function schedule(ms) {
      clearTimeout(timer);
      if (!stopped) timer = setTimeout(poll, ms);
    }

    function poll() {
      if (document.hidden) { indicators("paused"); return; }
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) {
          if (r.status === 401) { stopped = true; indicators("paused"); return null; }
          if (!r.ok) throw new Error("HTTP " + r.status);
          return r.json();
        })
        .then(function (data) {
          if (!data) return;
          failures = 0;
          var frags = data.fragments || {};
          Object.keys(frags).forEach(function (id) {
            var el = document.getElementById(id);
            if (!el || last[id] === frags[id]) return;
            if (swap(el, frags[id])) last[id] = frags[id];
          });
          if (data.done) { stopped = true; indicators("done"); return; }
          indicators("live");
          schedule(every);
        })
        .catch(function () {
          failures += 1;
          indicators("paused");
          schedule(Math.min(30000, every * Math.pow(2, failures)));
        });
    }

    document.addEventListener("visibilitychange", function () {
      if (!document.hidden && !stopped) { indicators("live"); schedule(0); }
    });
    schedule(every);
  }

  document.addEventListener("DOMContentLoaded", function () {
    enhance(document);

    // A select that applies itself (environment, the Test page's task).
    document.querySelectorAll("select[data-autosubmit]").forEach(function (s) {
      s.addEventListener("change", function () { s.form.submit(); });
    });

    // Forms that ask first.
    document.addEventListener("submit", function (e) {
      var form = e.target;
      var question = form.getAttribute && form.getAttribute("data-confirm");
      if (question && !window.confirm(question)) e.preventDefault();
    }, true);

    // Whole table rows open their run; links and buttons inside keep their own target.
    document.addEventListener("click", function (e) {
      var t = e.target;
      if (t.closest("a, button, input, select, textarea, summary, label")) return;
      var row = t.closest("tr[data-href]");
      if (row && !window.getSelection().toString()) window.location.href = row.getAttribute("data-href");
    });

    // Buttons that fill a field (recent payloads on the Test page); "Back" links.
    document.addEventListener("click", function (e) {
      var b = e.target.closest("[data-fill]");
      if (b) {
        var field = document.getElementById(b.getAttribute("data-fill"));
        if (field) { field.value = b.getAttribute("data-value"); field.focus(); }
        return;
      }
      var back = e.target.closest("[data-back]");
      if (back && window.history.length > 1) { e.preventDefault(); window.history.back(); }
    });

    // The runs filter's From/To fields show when "Between…" is chosen.
    var range = document.getElementById("range-select");
    if (range) {
      range.addEventListener("change", function () {
        document.querySelectorAll(".custom-range").forEach(function (el) {
          el.classList.toggle("is-hidden", range.value !== "custom");
        });
      });
    }

    var main = document.querySelector("main[data-live-url]");
    if (main) startLive(main);
  });
})();
