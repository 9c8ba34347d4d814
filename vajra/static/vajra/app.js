// Small conveniences only: every page works without this file.
(function () {
  "use strict";

  // A page showing a secret once (an API key, an invite link) is a POST response; replacing its history
  // entry makes a reload fetch the page with GET instead of posting the form again.
  if (document.querySelector("[data-shown-once]") && window.history.replaceState) {
    window.history.replaceState(null, "", window.location.href);
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button || !navigator.clipboard) return;
    var source = document.getElementById(button.dataset.copy);
    navigator.clipboard.writeText(source.textContent.trim()).then(function () {
      var label = button.textContent;
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = label; }, 2000);
    });
  });

  document.addEventListener("submit", function (event) {
    var message = event.target.dataset.confirm;
    if (message && !window.confirm(message)) event.preventDefault();
  });

  // Suggest a tenant slug from the organisation name until the person edits the slug themselves.
  document.querySelectorAll("[data-slug-from]").forEach(function (slug) {
    var source = document.getElementById(slug.dataset.slugFrom);
    if (!source) return;
    var edited = slug.value !== "";
    slug.addEventListener("input", function () { edited = slug.value !== ""; });
    source.addEventListener("input", function () {
      if (edited) return;
      slug.value = source.value.toLowerCase().normalize("NFKD").replace(/[^a-z0-9]+/g, "-")
        .replace(/^-+|-+$/g, "").slice(0, 40).replace(/-+$/, "");
    });
  });
})();
