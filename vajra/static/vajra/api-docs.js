// The API reference's endpoint list: Swagger UI (served from drf-spectacular-sidecar's static files) over
// /api/schema/, inside the dashboard's page.
(function () {
  "use strict";

  var root = document.getElementById("swagger-ui");
  if (!root || !window.SwaggerUIBundle) return;
  root.replaceChildren();
  window.SwaggerUIBundle({
    url: root.dataset.schemaUrl,
    domNode: root,
    deepLinking: true,
    docExpansion: "list",
    defaultModelsExpandDepth: 0,
    displayRequestDuration: true,
    filter: true,
    persistAuthorization: false,
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    requestInterceptor: function (request) {
      request.headers["X-CSRFToken"] = (document.cookie.match(/(?:^|; )csrftoken=([^;]*)/) || [])[1] || "";
      return request;
    }
  });
})();
