// Card entry with Stripe.js: the card goes straight to Stripe (a SetupIntent); our server
// only receives the confirmed SetupIntent id. Works with localstripe's Stripe.js mock too.
(function () {
  "use strict";
  var form = document.querySelector("[data-card-form]");
  if (!form || typeof Stripe === "undefined") { return; }
  var stripe = Stripe(form.dataset.publishableKey);
  var card = stripe.elements().create("card", {});
  card.mount("#card-element");
  var errors = document.getElementById("card-errors");
  var button = form.querySelector("button[type=submit]");
  var confirmed = false;
  card.on("change", function (event) {
    errors.textContent = event && event.error ? event.error.message : "";
  });
  form.addEventListener("submit", function (event) {
    if (confirmed) { return; }
    event.preventDefault();
    button.disabled = true;
    errors.textContent = "";
    stripe.confirmCardSetup(form.dataset.clientSecret, { payment_method: { card: card } })
      .then(function (result) {
        if (result.error) {
          errors.textContent = result.error.message || "The card was not accepted.";
          button.disabled = false;
          return;
        }
        form.querySelector("[name=setup_intent_id]").value = result.setupIntent.id;
        confirmed = true;
        form.submit();
      });
  });
})();
