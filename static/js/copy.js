// Copy buttons: <button data-copy="element-id"> copies that element's text.
document.addEventListener("click", function (event) {
  var button = event.target.closest("[data-copy]");
  if (!button) return;
  var source = document.getElementById(button.getAttribute("data-copy"));
  var status = document.querySelector("[data-copy-status]");
  if (!source || !navigator.clipboard) return;
  navigator.clipboard.writeText(source.textContent.trim()).then(function () {
    button.textContent = "Copied";
    if (status) status.textContent = "Copied to the clipboard.";
    setTimeout(function () { button.textContent = "Copy"; }, 2000);
  });
});
