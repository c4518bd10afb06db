// The OpenAPI description for /docs and /redoc. It is public by default; when the server
// keeps it private (GRADWATCH_DOCS_PUBLIC=false) ask for a key once, keep it for the tab in
// sessionStorage (shared with the dashboard) and send it as a header, never in a URL.
const GRADWATCH_KEY = "gradwatch.apiKey";

async function loadOpenApi() {
  let key = sessionStorage.getItem(GRADWATCH_KEY);
  for (;;) {
    const resp = await fetch("/openapi.json", { headers: key ? { "X-API-Key": key } : {} });
    if (resp.status !== 401) return resp.json();
    key = window.prompt("This server keeps its API description private: enter an API key");
    if (!key) throw new Error("an API key is needed to read the API description");
    key = key.trim();
    sessionStorage.setItem(GRADWATCH_KEY, key);
  }
}
