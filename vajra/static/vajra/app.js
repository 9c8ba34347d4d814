// Small conveniences only: every page works without this file.
(function () {
  "use strict";

  // A page showing a secret once (an API key, an invite link) is a POST response; replacing its history
  // entry makes a reload fetch the page with GET instead of posting the form again.
  if (document.querySelector("[data-shown-once]") && window.history.replaceState) {
    window.history.replaceState(null, "", window.location.href);
  }

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
    // Plain HTTP (a local `make up` on another host) has no clipboard API: copy through a selected textarea.
    return new Promise(function (resolve, reject) {
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "visually-hidden";
      document.body.appendChild(area);
      area.select();
      var done = document.execCommand("copy");
      area.remove();
      if (done) resolve(); else reject(new Error("copy refused"));
    });
  }

  function copied(button, ok) {
    var label = button.dataset.label || button.textContent;
    button.dataset.label = label;
    button.textContent = ok ? "Copied" : "Select and copy";
    setTimeout(function () { button.textContent = label; }, 2000);
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) return;
    var source = button.dataset.copy ? document.getElementById(button.dataset.copy)
      : button.closest(".code-block").querySelector("pre");
    copyText(source.textContent.trim()).then(function () { copied(button, true); },
      function () { copied(button, false); });
  });

  // Every code block gets a Copy button (a page's own copy buttons, e.g. a new key's, are left as they are).
  function addCopyButtons(root) {
    root.querySelectorAll("pre:not([data-no-copy])").forEach(function (pre) {
      if (pre.parentElement.classList.contains("code-block")) return;
      var box = document.createElement("div");
      box.className = "code-block";
      pre.parentNode.insertBefore(box, pre);
      box.appendChild(pre);
      var button = document.createElement("button");
      button.type = "button";
      button.className = "btn btn-small btn-copy";
      button.dataset.copy = "";
      button.textContent = "Copy";
      button.setAttribute("aria-label", "Copy this code");
      box.appendChild(button);
    });
  }
  addCopyButtons(document);
  window.vajraCopyButtons = addCopyButtons;

  // Tabs: [data-tabs] holds buttons [role=tab] with aria-controls naming their panels.
  function selectTab(tab) {
    var list = tab.closest("[role=tablist]");
    list.querySelectorAll("[role=tab]").forEach(function (other) {
      var selected = other === tab;
      other.setAttribute("aria-selected", selected ? "true" : "false");
      other.tabIndex = selected ? 0 : -1;
      document.getElementById(other.getAttribute("aria-controls")).hidden = !selected;
    });
  }
  document.addEventListener("click", function (event) {
    var tab = event.target.closest("[role=tab]");
    if (tab) selectTab(tab);
  });
  document.addEventListener("keydown", function (event) {
    var tab = event.target.closest && event.target.closest("[role=tab]");
    if (!tab || (event.key !== "ArrowRight" && event.key !== "ArrowLeft")) return;
    var tabs = Array.prototype.slice.call(tab.closest("[role=tablist]").querySelectorAll("[role=tab]"));
    var next = tabs[(tabs.indexOf(tab) + (event.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
    selectTab(next);
    next.focus();
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
