// Change Plan review: how many flows are chosen against the new limit (the server checks it
// either way; the page works without this).
(function () {
  "use strict";
  var box = document.querySelector(".keep-flows");
  if (!box) { return; }
  var limit = parseInt(box.dataset.limit, 10);
  var line = box.querySelector(".keep-count");
  var count = box.querySelector("[data-keep-count]");
  function update() {
    var n = box.querySelectorAll("input[name=keep]:checked").length;
    count.textContent = n;
    line.classList.toggle("alert", n > limit);
    line.classList.toggle("alert--error", n > limit);
  }
  line.hidden = false;
  box.addEventListener("change", update);
  update();
})();
