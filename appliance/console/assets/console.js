// Hangar console: the little script live pages use. Every page works without
// it; with it, run logs stream in, and parts of a page marked data-live-part
// are refreshed when the server says something changed. Text from the server
// is only ever inserted as text nodes, never as HTML.
(function () {
  "use strict";

  // ---- ANSI colours to styled spans (text nodes only) ----
  var ESC = /\u001b\[([0-9;]*)m/g;
  function Ansi() { this.cls = []; this.rest = ""; }
  Ansi.prototype.apply = function (codes) {
    var parts = codes === "" ? ["0"] : codes.split(";");
    for (var i = 0; i < parts.length; i++) {
      var n = parseInt(parts[i], 10) || 0;
      if (n === 0) this.cls = [];
      else if (n === 1) this.add("a-b");
      else if (n === 2) this.add("a-d");
      else if (n === 3) this.add("a-i");
      else if (n === 4) this.add("a-u");
      else if (n === 22 || n === 23 || n === 24) this.cls = this.cls.filter(function (c) { return c.indexOf("a-f") === 0; });
      else if (n === 39) this.cls = this.cls.filter(function (c) { return c.indexOf("a-f") !== 0; });
      else if ((n >= 30 && n <= 37) || (n >= 90 && n <= 97)) {
        this.cls = this.cls.filter(function (c) { return c.indexOf("a-f") !== 0; });
        this.cls.push("a-f" + (n % 10));
      }
    }
  };
  Ansi.prototype.add = function (c) { if (this.cls.indexOf(c) < 0) this.cls.push(c); };
  Ansi.prototype.write = function (pre, text) {
    text = this.rest + text;
    this.rest = "";
    // An escape sequence cut at the end of a chunk waits for the next one.
    var cut = text.lastIndexOf("\u001b");
    if (cut >= 0 && !/^\u001b\[[0-9;]*m/.test(text.slice(cut)) && text.length - cut < 16) {
      this.rest = text.slice(cut);
      text = text.slice(0, cut);
    }
    var last = 0, m;
    ESC.lastIndex = 0;
    while ((m = ESC.exec(text)) !== null) {
      this.emit(pre, text.slice(last, m.index));
      this.apply(m[1]);
      last = ESC.lastIndex;
    }
    this.emit(pre, text.slice(last));
  };
  Ansi.prototype.emit = function (pre, s) {
    // Other control sequences (cursor moves) are dropped, as the server does.
    s = s.replace(/\u001b\[[0-9;?]*[A-Za-z]/g, "").replace(/\r(?!\n)/g, "");
    if (!s) return;
    if (this.cls.length === 0) { pre.appendChild(document.createTextNode(s)); return; }
    var span = document.createElement("span");
    span.className = this.cls.join(" ");
    span.textContent = s;
    pre.appendChild(span);
  };

  function atBottom(el) { return el.scrollHeight - el.scrollTop - el.clientHeight < 40; }

  // ---- refreshing live parts of the page ----
  var refreshing = false, again = false;
  function refreshParts() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live-part]").forEach(function (el) {
          var fresh = doc.getElementById(el.id);
          if (fresh && fresh.innerHTML !== el.innerHTML) el.replaceWith(document.importNode(fresh, true));
        });
      })
      .catch(function () {})
      .then(function () {
        refreshing = false;
        if (again) { again = false; setTimeout(refreshParts, 300); }
      });
  }
  var timer = null;
  function soon() { if (timer) clearTimeout(timer); timer = setTimeout(refreshParts, 250); }

  // ---- a run's log ----
  function followLog(box) {
    var url = box.getAttribute("data-log-follow");
    var phases = {};
    box.querySelectorAll("pre[data-phase]").forEach(function (pre) {
      phases[pre.getAttribute("data-phase")] = { pre: pre, next: parseInt(pre.getAttribute("data-next"), 10) || 0, ansi: new Ansi() };
    });
    var status = box.querySelector("[data-log-status]");
    var es = new EventSource(url, { withCredentials: true });
    if (status) status.textContent = "Live";
    es.addEventListener("chunk", function (e) {
      var c = JSON.parse(e.data);
      var p = phases[c.phase];
      if (!p || c.seq < p.next) return;
      p.next = c.seq + 1;
      var none = document.getElementById("no-logs");
      if (none) none.hidden = true;
      var section = p.pre.closest("[data-phase-section]");
      if (section) section.hidden = false;
      var follow = atBottom(p.pre);
      p.ansi.write(p.pre, c.text);
      if (follow) p.pre.scrollTop = p.pre.scrollHeight;
    });
    es.addEventListener("state", soon);
    es.addEventListener("end", function () {
      es.close();
      if (status) status.textContent = "";
      soon();
    });
    es.onerror = function () { if (status) status.textContent = "Reconnecting…"; };
    es.onopen = function () { if (status) status.textContent = "Live"; };
  }

  // ---- pages that follow state changes ----
  function followChanges(url) {
    var es = new EventSource(url, { withCredentials: true });
    es.addEventListener("change", soon);
  }

  function copyButtons() {
    document.querySelectorAll("button[data-copy]").forEach(function (b) {
      b.hidden = false;
      b.addEventListener("click", function () {
        var src = document.getElementById(b.getAttribute("data-copy"));
        if (!src || !navigator.clipboard) return;
        navigator.clipboard.writeText(src.textContent.trim()).then(function () { b.textContent = "Copied"; });
      });
    });
  }

  // ---- bundle uploads from the System page ----
  // The API's resumable upload, with the page's session and CSRF token: the
  // file goes in chunks; the upload's id is remembered for this file (name,
  // size, date) so that choosing it again after a dropped connection or a
  // closed tab sends only what the appliance does not have.
  function mib(n) { return (n / 1048576).toFixed(1) + " MiB"; }
  function uploads(form) {
    form.hidden = false;
    var input = form.querySelector("input[type=file]");
    var bar = form.querySelector("progress");
    var status = form.querySelector("[data-upload-status]");
    var button = form.querySelector("button");
    var csrf = form.getAttribute("data-csrf");
    var chunk = parseInt(form.getAttribute("data-chunk"), 10) || 8388608;
    function say(text) { status.textContent = text; }
    function call(method, path, body, offset) {
      return new Promise(function (resolve, reject) {
        var x = new XMLHttpRequest();
        x.open(method, path);
        x.setRequestHeader("X-Hangar-CSRF", csrf);
        if (offset !== undefined) x.setRequestHeader("Upload-Offset", String(offset));
        if (typeof body === "string") x.setRequestHeader("Content-Type", "application/json");
        x.onload = function () {
          var v = null;
          try { v = JSON.parse(x.responseText); } catch (e) { v = null; }
          resolve({ status: x.status, body: v });
        };
        x.onerror = function () { reject(new Error("the connection dropped")); };
        if (x.upload && offset !== undefined) {
          x.upload.onprogress = function (e) { form.dispatchEvent(new CustomEvent("sent", { detail: offset + e.loaded })); };
        }
        x.send(body === undefined ? null : body);
      });
    }
    function message(r) { return r.body && r.body.error ? r.body.error.message : "the appliance answered " + r.status; }
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var file = input.files && input.files[0];
      if (!file) { say("Choose a bundle file first."); return; }
      var key = "hangar-upload:" + file.name + ":" + file.size + ":" + file.lastModified;
      var id = null, started = Date.now(), from = 0, tries = 0;
      button.disabled = true;
      bar.hidden = false;
      bar.max = file.size;
      form.addEventListener("sent", function (e) {
        bar.value = e.detail;
        var secs = (Date.now() - started) / 1000;
        say("Uploading " + file.name + ": " + mib(e.detail) + " of " + mib(file.size) + (secs > 1 ? ", " + mib((e.detail - from) / secs) + "/s" : ""));
      });
      function fail(text) {
        button.disabled = false;
        bar.hidden = true;
        say(text);
      }
      function begin() {
        var known = null;
        try { known = localStorage.getItem(key); } catch (e) { known = null; }
        if (known) {
          return call("GET", "/api/v1/bundles/uploads/" + encodeURIComponent(known)).then(function (r) {
            if (r.status === 200 && r.body) { id = known; from = r.body.offset; return r.body.offset; }
            return create();
          });
        }
        return create();
      }
      function create() {
        return call("POST", "/api/v1/bundles/uploads", JSON.stringify({ name: file.name, size: file.size })).then(function (r) {
          if (r.status !== 201) throw new Error(message(r));
          id = r.body.id;
          try { localStorage.setItem(key, id); } catch (e) { /* no resume then */ }
          return 0;
        });
      }
      function send(offset) {
        if (offset > 0) say("Resuming " + file.name + " at " + mib(offset));
        var end = Math.min(offset + chunk, file.size);
        return call("PATCH", "/api/v1/bundles/uploads/" + encodeURIComponent(id), file.slice(offset, end), offset).then(function (r) {
          tries = 0;
          if (r.status === 200 && r.body && r.body.bundle) return r.body.bundle;
          if (r.status === 200) { bar.value = r.body.offset; return send(r.body.offset); }
          if (r.status === 409) {
            return call("GET", "/api/v1/bundles/uploads/" + encodeURIComponent(id)).then(function (g) {
              if (g.status !== 200) throw new Error(message(r));
              return send(g.body.offset);
            });
          }
          try { localStorage.removeItem(key); } catch (e) { /* nothing kept */ }
          throw new Error(message(r));
        }, function (err) {
          // A dropped connection: ask where the appliance stands and go on.
          tries += 1;
          if (tries > 5) throw new Error(err.message + ": choose the same file and upload again to resume");
          say("The connection dropped; retrying (" + tries + " of 5)");
          return new Promise(function (ok) { setTimeout(ok, 1000 * tries); }).then(function () {
            return call("GET", "/api/v1/bundles/uploads/" + encodeURIComponent(id)).then(function (g) { return send(g.body.offset); });
          });
        });
      }
      say("Starting the upload of " + file.name);
      begin().then(send).then(function (b) {
        try { localStorage.removeItem(key); } catch (e) { /* nothing kept */ }
        bar.value = file.size;
        say("Staged " + b.kind + " " + b.version + " as " + b.id + ". Reloading the list…");
        setTimeout(function () { location.hash = "bundles"; location.reload(); }, 800);
      }).catch(function (e) { fail("Not uploaded: " + e.message); });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("form[data-upload]").forEach(uploads);
    document.querySelectorAll("[data-log-follow]").forEach(followLog);
    var live = document.querySelector("[data-changes]");
    if (live) followChanges(live.getAttribute("data-changes"));
    document.querySelectorAll("pre.log").forEach(function (pre) { pre.scrollTop = pre.scrollHeight; });
    copyButtons();
  });
})();
