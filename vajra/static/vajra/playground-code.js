// The playground's "View code": the current settings (model, temperature, max tokens, and any setting marked
// data-param) and the message being written, as curl, Python and OpenAI SDK calls. Reads the settings panel,
// never changes it.
(function () {
  "use strict";

  var button = document.getElementById("pg-view-code");
  var panel = document.getElementById("pg-code");
  if (!button || !panel) return;
  var origin = window.location.origin;

  function settings() {
    var out = { model: (document.getElementById("pg-model") || {}).value || "", parameters: {} };
    var temperature = document.getElementById("pg-temperature");
    var maxTokens = document.getElementById("pg-max-tokens");
    if (temperature && temperature.value !== "") out.parameters.temperature = Number(temperature.value);
    if (maxTokens && maxTokens.value !== "") out.parameters.max_tokens = Number(maxTokens.value);
    document.querySelectorAll(".pg-settings [data-param]").forEach(function (input) {
      if (input.value === "" || (input.type === "checkbox" && !input.checked)) return;
      var value = input.type === "checkbox" ? true : (input.type === "number" ? Number(input.value) : input.value);
      out.parameters[input.dataset.param] = value;
    });
    var message = (document.getElementById("pg-input") || {}).value || "";
    out.message = message.trim() || "Hello";
    return out;
  }

  function py(value) {
    if (value === true) return "True";
    if (value === false) return "False";
    if (value === null) return "None";
    return JSON.stringify(value);
  }

  function snippets(s) {
    var body = { model: s.model, messages: [{ role: "user", content: s.message }] };
    Object.keys(s.parameters).forEach(function (name) { body[name] = s.parameters[name]; });
    var json = JSON.stringify(body, null, 2);
    var curl = "curl " + origin + "/v1/chat/completions \\\n" +
      "  -H \"Authorization: Bearer $VAJRA_API_KEY\" \\\n" +
      "  -H \"Content-Type: application/json\" \\\n" +
      "  -d '" + json.replace(/'/g, "'\\''") + "'";
    var python = "import os\nimport requests\n\nresponse = requests.post(\n    \"" + origin +
      "/v1/chat/completions\",\n    headers={\"Authorization\": f\"Bearer {os.environ['VAJRA_API_KEY']}\"},\n" +
      "    json=" + json.replace(/\n/g, "\n    ").replace(/\btrue\b/g, "True").replace(/\bfalse\b/g, "False")
        .replace(/\bnull\b/g, "None") + ",\n    timeout=60,\n)\nresponse.raise_for_status()\n" +
      "print(response.json()[\"choices\"][0][\"message\"][\"content\"])";
    var args = ["    model=" + py(s.model), "    messages=[{\"role\": \"user\", \"content\": " + py(s.message) + "}]"];
    Object.keys(s.parameters).forEach(function (name) { args.push("    " + name + "=" + py(s.parameters[name])); });
    var sdk = "import os\nfrom openai import OpenAI\n\nclient = OpenAI(base_url=\"" + origin +
      "/v1\", api_key=os.environ[\"VAJRA_API_KEY\"])\nreply = client.chat.completions.create(\n" +
      args.join(",\n") + ",\n)\nprint(reply.choices[0].message.content)";
    return { curl: curl, python: python, openai: sdk };
  }

  function render() {
    var code = snippets(settings());
    Object.keys(code).forEach(function (name) {
      panel.querySelector("[data-code=" + name + "] code").textContent = code[name];
    });
  }

  button.addEventListener("click", function () {
    var open = panel.hidden;
    panel.hidden = !open;
    button.setAttribute("aria-expanded", open ? "true" : "false");
    button.textContent = open ? "Hide code" : "View code";
    if (open) render();
  });
  // Open code follows the settings as they change.
  document.addEventListener("input", function () { if (!panel.hidden) render(); });
  document.addEventListener("change", function () { if (!panel.hidden) render(); });
})();
