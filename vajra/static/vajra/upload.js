// Adapter upload with drag and drop and a progress bar. Without this file the form posts normally and the page
// answers with a redirect or the form's errors; with it, the same view answers JSON (we ask for it in Accept).
(function () {
  "use strict";

  var form = document.querySelector("form[data-upload]");
  if (!form || !window.FormData || !window.XMLHttpRequest) return;

  var box = form.querySelector("[data-upload-progress]");
  var bar = box.querySelector("progress");
  var status = form.querySelector("[data-upload-status]");
  var errors = form.querySelector("[data-upload-errors]");
  var button = form.querySelector("button[type=submit]");

  // Drag and drop: files dropped on the zone become the file input's files, as if chosen in its dialog.
  var input = form.querySelector("input[type=file]");
  var zone = input && document.createElement("div");
  if (zone) {
    zone.className = "dropzone";
    zone.dataset.dropzone = "";
    var hint = document.createElement("p");
    hint.className = "dropzone-hint";
    hint.textContent = "Drop the adapter's archive, or its two files, here — or choose them:";
    var chosen = document.createElement("ul");
    chosen.className = "dropzone-files";
    chosen.dataset.dropzoneFiles = "";
    input.parentNode.insertBefore(zone, input);
    zone.appendChild(hint);
    zone.appendChild(input);
    zone.appendChild(chosen);

    var showChosen = function () {
      chosen.replaceChildren.apply(chosen, Array.prototype.map.call(input.files, function (file) {
        var item = document.createElement("li");
        item.textContent = file.name + " (" + sizeText(file.size) + ")";
        return item;
      }));
    };
    input.addEventListener("change", showChosen);
    ["dragenter", "dragover"].forEach(function (name) {
      zone.addEventListener(name, function (event) {
        event.preventDefault();
        zone.classList.add("dropzone--over");
      });
    });
    ["dragleave", "drop"].forEach(function (name) {
      zone.addEventListener(name, function () { zone.classList.remove("dropzone--over"); });
    });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      if (!event.dataTransfer || !event.dataTransfer.files.length) return;
      input.files = event.dataTransfer.files;
      showChosen();
    });
  }

  function sizeText(bytes) {
    var units = ["bytes", "KB", "MB", "GB"], i = 0;
    while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i += 1; }
    return (i ? bytes.toFixed(1) : String(bytes)) + " " + units[i];
  }

  function clearErrors() {
    errors.replaceChildren();
    form.querySelectorAll(".field--invalid").forEach(function (field) { field.classList.remove("field--invalid"); });
    form.querySelectorAll(".field-error").forEach(function (p) { p.remove(); });
  }

  // Rendered like the server does: a field's error under the field, with a pointer to it at the top.
  function showError(error) {
    var input = error.param && form.elements.namedItem(error.param);
    var field = input && input.closest && input.closest(".field");
    var panel = document.createElement("div");
    panel.className = "form-errors";
    panel.setAttribute("role", "alert");
    var summary = document.createElement("p");
    summary.textContent = field ? "Please correct the fields marked below." : (error.message || "The upload failed.");
    panel.appendChild(summary);
    errors.appendChild(panel);
    if (field) {
      field.classList.add("field--invalid");
      var note = document.createElement("p");
      note.className = "field-error";
      note.textContent = error.message;
      field.appendChild(note);
    }
    panel.scrollIntoView({ block: "nearest" });
  }

  function finish() {
    button.disabled = false;
    box.hidden = true;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    clearErrors();
    var request = new XMLHttpRequest();
    request.open("POST", form.action);
    request.setRequestHeader("Accept", "application/json");
    request.setRequestHeader("X-Requested-With", "XMLHttpRequest");

    request.upload.addEventListener("progress", function (e) {
      if (!e.lengthComputable) return;
      var percent = Math.floor((e.loaded / e.total) * 100);
      bar.value = percent;
      status.textContent = "Uploading: " + percent + "%";
    });
    request.upload.addEventListener("load", function () {
      bar.value = 100;
      status.textContent = "Uploaded; checking the adapter…";
    });

    request.addEventListener("load", function () {
      var body = null;
      try { body = JSON.parse(request.responseText); } catch (ignored) { body = null; }
      if (request.status >= 200 && request.status < 300 && body) {
        status.textContent = "Done.";
        window.location.assign(body.redirect || window.location.href);
        return;
      }
      finish();
      showError(body && body.error ? body.error
        : { message: "The upload failed (HTTP " + request.status + "). Try again, or upload without JavaScript." });
    });
    request.addEventListener("error", function () {
      finish();
      showError({ message: "The connection failed before the upload finished. Check your network and try again." });
    });

    button.disabled = true;
    bar.value = 0;
    status.textContent = "Starting the upload…";
    box.hidden = false;
    request.send(new FormData(form));
  });
})();
