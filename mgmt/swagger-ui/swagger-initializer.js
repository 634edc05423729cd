// Swagger UI on the sidecar's own document; "Authorize" takes an admin user for "Try it out".
'use strict';
window.onload = () => {
  window.ui = SwaggerUIBundle({
    url: '/api-docs/openapi.json',
    dom_id: '#swagger-ui',
    deepLinking: true,
    validatorUrl: null,
  });
};
