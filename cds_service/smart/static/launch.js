/* The SMART launch URL: fhirclient reads iss and launch from this page's URL, discovers the EHR's
 * authorization server (.well-known/smart-configuration) and sends the browser there with a PKCE challenge.
 * Client id and scopes come from the service (terminology.json), so this file holds no configuration. */
"use strict";
(async function launch() {
  const status = document.getElementById("status");
  try {
    const response = await fetch("terminology.json", { credentials: "same-origin" });
    if (!response.ok) throw new Error("the app's settings could not be read (HTTP " + response.status + ")");
    const settings = await response.json();
    await FHIR.oauth2.authorize({
      clientId: settings.clientId,
      scope: settings.scopes,
      redirectUri: "app",
      pkceMode: "required",
    });
  } catch (error) {
    status.textContent = "The launch failed: " + (error && error.message ? error.message : error);
    status.classList.add("error");
  }
})();
