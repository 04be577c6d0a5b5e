// Confirm payment: the bank's 3-D Secure challenge runs in Stripe.js with the PaymentIntent's
// client secret. Whatever the outcome, the form is then posted: the server asks Stripe how the
// payment stands and records it (the browser's word is never taken for it).
(function () {
  "use strict";
  var form = document.querySelector("[data-confirm-form]");
  if (!form || typeof Stripe === "undefined") { return; }
  var stripe = Stripe(form.dataset.publishableKey);
  var button = form.querySelector("button[type=submit]");
  var errors = document.getElementById("confirm-errors");
  var done = false;

  function authenticate() {
    var secret = form.dataset.clientSecret;
    // handleNextAction in current Stripe.js; confirmCardPayment where it is missing.
    if (typeof stripe.handleNextAction === "function") {
      return stripe.handleNextAction({ clientSecret: secret });
    }
    return stripe.confirmCardPayment(secret);
  }

  function run() {
    button.disabled = true;
    errors.hidden = true;
    authenticate().then(function (result) {
      if (result && result.error && result.error.message) {
        errors.textContent = result.error.message;
        errors.hidden = false;
      }
      done = true;
      form.submit();
    });
  }

  form.addEventListener("submit", function (event) {
    if (done) { return; }
    event.preventDefault();
    run();
  });
  if (form.hasAttribute("data-autostart")) { run(); }
})();
