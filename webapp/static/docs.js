"use strict";
// The browsable API page (/docs): Swagger UI, served by this service from the swagger-ui-bundle
// package (no CDN), reading this service's own /openapi.json. "Try it out" calls this service;
// with U2NET_API_TOKEN set, "Authorize" takes the token.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null, // never send the description to swagger.io
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
