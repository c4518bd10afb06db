// ReDoc, served from this host; system fonts (no web-font download).
loadOpenApi().then((spec) => {
  Redoc.init(spec, {
    hideDownloadButton: false,
    expandResponses: "200,202",
    jsonSampleExpandLevel: 3,
    theme: { typography: { fontFamily: "system-ui, sans-serif", headings: { fontFamily: "system-ui, sans-serif" } } },
  }, document.getElementById("redoc"));
});
