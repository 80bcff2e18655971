// Grace's web UI: countdowns to expiry, a notification for a new request while the tab is hidden,
// the voice recorder and transcript player, and the dashboard's charts (dashboard.js).
// No inline script anywhere: the Content-Security-Policy allows only files served by Grace.
(function () {
  "use strict";

  function pad(n) {
    return n < 10 ? "0" + n : String(n);
  }

  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-expires]").forEach(function (el) {
      var left = Math.round((Date.parse(el.getAttribute("data-expires")) - now) / 1000);
      var card = el.closest("article");
      if (left <= 0) {
        el.textContent = "expired (no answer means no)";
        if (card && !card.classList.contains("expired")) {
          card.classList.add("expired");
          card.querySelectorAll("button, input").forEach(function (b) { b.disabled = true; });
        }
      } else {
        el.textContent = "in " + Math.floor(left / 60) + ":" + pad(left % 60);
      }
    });
  }

  var ASKED = "grace.notifications.asked";

  function offerNotifications() {
    var button = document.getElementById("notify");
    if (!button || !("Notification" in window)) return;
    if (Notification.permission !== "default" || window.localStorage.getItem(ASKED)) return;
    button.hidden = false;
    button.addEventListener("click", function () {
      // Asked once: whatever the answer, the button does not come back.
      window.localStorage.setItem(ASKED, "yes");
      button.hidden = true;
      Notification.requestPermission();
    });
  }

  // A request the person has not seen yet: one the stream sends as it arrives ("consent"), or one in
  // the whole list the stream sends when it opens or reopens ("reset") that the page did not show yet,
  // since a request can arrive between drawing the page and opening the stream, or while it reconnects.
  function announce(event) {
    var type = event.detail.type;
    if (type !== "consent" && type !== "reset") return;
    if (!document.hidden || !("Notification" in window) || Notification.permission !== "granted") return;
    var doc = new DOMParser().parseFromString(event.detail.data, "text/html");
    doc.querySelectorAll("article").forEach(function (card) {
      if (type === "reset" && card.id && document.getElementById(card.id)) return;
      var question = card.querySelector(".prompt");
      if (question) question.querySelectorAll("[aria-hidden]").forEach(function (n) { n.remove(); });
      var note = new Notification("Grace asks", {
        body: question ? question.textContent.replace(/\s+/g, " ").trim() : "A request is waiting for you.",
        tag: card.id || "grace-consent",
      });
      note.onclick = function () {
        window.focus();
        note.close();
      };
    });
  }

  // A card drawn again (the stream's "reset" when it opens or reopens, or an "update") keeps what
  // the person had typed into it: reasons are kept by input id across the swap.
  var typed = {};

  function keepTyped(event) {
    if (event.detail.type !== "reset" && event.detail.type !== "update") return;
    typed = {};
    document.querySelectorAll("#pending-list input[name=reason]").forEach(function (input) {
      if (input.value) typed[input.id] = input.value;
    });
  }

  function restoreTyped(event) {
    if (event.detail.type !== "reset" && event.detail.type !== "update") return;
    Object.keys(typed).forEach(function (id) {
      var input = document.getElementById(id);
      if (input && !input.value) input.value = typed[id];
    });
    typed = {};
    tick();
  }

  // Voice notes: record with the microphone into the form's file input, so the same form (and its
  // CSRF token) sends a recording or a chosen file.
  function recorder() {
    var box = document.getElementById("recorder");
    var input = document.getElementById("v-file");
    if (!box || !input || !window.MediaRecorder || !navigator.mediaDevices || !window.DataTransfer) return;
    var start = document.getElementById("rec-start");
    var stop = document.getElementById("rec-stop");
    var status = document.getElementById("rec-status");
    var clock = document.getElementById("rec-time");
    var media = null;
    var timer = null;
    var began = 0;
    box.hidden = false;

    function shown(seconds) {
      return Math.floor(seconds / 60) + ":" + pad(Math.floor(seconds % 60));
    }

    start.addEventListener("click", function () {
      navigator.mediaDevices.getUserMedia({ audio: true }).then(function (stream) {
        var chunks = [];
        media = new MediaRecorder(stream);
        media.addEventListener("dataavailable", function (e) {
          if (e.data && e.data.size) chunks.push(e.data);
        });
        media.addEventListener("stop", function () {
          stream.getTracks().forEach(function (t) { t.stop(); });
          window.clearInterval(timer);
          var type = (media.mimeType || "audio/webm").split(";")[0];
          var ext = type.indexOf("ogg") >= 0 ? "ogg" : type.indexOf("mp4") >= 0 ? "m4a" : "webm";
          var file = new File(chunks, "recording." + ext, { type: type });
          var files = new DataTransfer();
          files.items.add(file);
          input.files = files.files;
          status.textContent = "Recorded, ready to save:";
          start.disabled = false;
          stop.disabled = true;
          box.setAttribute("data-recorded", "true");
        });
        media.start(1000);
        began = Date.now();
        clock.textContent = "0:00";
        status.textContent = "Recording";
        box.removeAttribute("data-recorded");
        start.disabled = true;
        stop.disabled = false;
        timer = window.setInterval(function () {
          clock.textContent = shown((Date.now() - began) / 1000);
        }, 250);
        stop.focus();
      }).catch(function (err) {
        status.textContent = "The microphone is not available (" + err.name + "); choose a file instead.";
      });
    });
    stop.addEventListener("click", function () {
      if (media && media.state !== "inactive") media.stop();
    });
  }

  // A note's transcript: a line plays the recording from its start; ?t= (a search hit) seeks on load.
  function player() {
    var audio = document.getElementById("player");
    if (!audio) return;
    function seek(seconds, play) {
      var go = function () {
        audio.currentTime = seconds;
        if (play) audio.play().catch(function () { /* the person presses play */ });
      };
      if (audio.readyState >= 1) go();
      else audio.addEventListener("loadedmetadata", go, { once: true });
    }
    document.querySelectorAll("button.line[data-start]").forEach(function (line) {
      line.addEventListener("click", function () {
        document.querySelectorAll("button.line.playing").forEach(function (b) { b.classList.remove("playing"); });
        line.classList.add("playing");
        seek(parseFloat(line.getAttribute("data-start")), true);
      });
    });
    var wanted = audio.getAttribute("data-seek");
    if (wanted !== null) {
      var lines = Array.prototype.slice.call(document.querySelectorAll("button.line[data-start]"));
      var at = parseFloat(wanted);
      var current = lines.filter(function (b) { return parseFloat(b.getAttribute("data-start")) <= at + 0.01; }).pop();
      if (current) {
        current.classList.add("playing");
        current.scrollIntoView({ block: "center" });
      }
      seek(at, true);
    }
  }

  // A note's progress stream says "done" when the note is completed or failed: show what it became.
  function reloadWhenDone(event) {
    if (event.detail && event.detail.type === "message") window.location.reload();
  }

  document.addEventListener("DOMContentLoaded", function () {
    recorder();
    player();
    document.body.addEventListener("htmx:sseClose", reloadWhenDone);
    tick();
    window.setInterval(tick, 1000);
    offerNotifications();
    document.body.addEventListener("htmx:sseBeforeMessage", announce);
    document.body.addEventListener("htmx:sseBeforeMessage", keepTyped);
    document.body.addEventListener("htmx:sseMessage", restoreTyped);
    document.body.addEventListener("htmx:afterSwap", tick);
    document.body.addEventListener("htmx:oobAfterSwap", tick);
  });
})();
