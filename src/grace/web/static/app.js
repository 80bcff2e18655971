// Grace's web UI: countdowns to expiry, and a notification for a new request while the tab is hidden.
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

  function announce(event) {
    if (event.detail.type !== "consent") return;
    if (!document.hidden || !("Notification" in window) || Notification.permission !== "granted") return;
    var doc = new DOMParser().parseFromString(event.detail.data, "text/html");
    var question = doc.querySelector(".prompt");
    if (question) question.querySelectorAll("[aria-hidden]").forEach(function (n) { n.remove(); });
    var card = doc.querySelector("article");
    var note = new Notification("Grace asks", {
      body: question ? question.textContent.replace(/\s+/g, " ").trim() : "A request is waiting for you.",
      tag: card ? card.id : "grace-consent",
    });
    note.onclick = function () {
      window.focus();
      note.close();
    };
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

  document.addEventListener("DOMContentLoaded", function () {
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
