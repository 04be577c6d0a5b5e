// The organisation menu is a <details>: Escape closes it and returns focus to its summary,
// and a click elsewhere closes it, as a menu button's popup would.
document.addEventListener("keydown", function (event) {
  if (event.key !== "Escape") return;
  var menu = document.querySelector("details.org-menu[open]");
  if (!menu) return;
  menu.open = false;
  menu.querySelector("summary").focus();
});
document.addEventListener("click", function (event) {
  var menu = document.querySelector("details.org-menu[open]");
  if (menu && !menu.contains(event.target)) menu.open = false;
});
