"""Ready links that open the official CDS Hooks Sandbox (github.com/cds-hooks/sandbox) on a fixture patient.

The Sandbox reads its set-up from its URL: ``fhirServiceUrl`` (an open FHIR server: the fixture server),
``patientId``, ``serviceDiscoveryURL`` (this service's discovery), ``hook``/``screen`` (Rx View,
order-select, or Patient View for the patients already on tacrolimus) and ``prescribedMedication`` (an RxNorm
code from its own medication list, for Rx View).
"""

from __future__ import annotations

from urllib.parse import quote

from cds_service.fixtures import load_bundle, manifest
from cds_service.hook_names import PATIENT_VIEW, opens_chart

HOSTED_SANDBOX = "https://sandbox.cds-hooks.org/"
LOCAL_FHIR = "http://localhost:8080/sandbox/fhir"  # `make run`: the fixtures under the dev service
LOCAL_DISCOVERY = "http://localhost:8080/cds-services"
# "Tacrolimus 0.5 MG Oral Capsule" in the Sandbox's medication list and in our tacrolimus value set.
SANDBOX_TACROLIMUS = "313190"
# "Clarithromycin 500 MG Oral Tablet [Biaxin]" in the Sandbox's list: what a co-prescribing fixture's patient
# (already on tacrolimus) is given by another clinician, recognised by its name (issue 24).
SANDBOX_CLARITHROMYCIN = "205866"


def patient_id(fixture: str) -> str:
    """The id of the fixture's Patient, as the fixture FHIR server serves it."""
    bundle = load_bundle(fixture)
    return next(
        e["resource"]["id"] for e in bundle.get("entry", []) if e["resource"]["resourceType"] == "Patient"
    )


def screen(fixture: str) -> str:
    """The Sandbox tab a fixture opens: Patient View for the patient-view fixtures, else Rx View."""
    return "Patient View" if opens_chart(manifest()[fixture].get("hook")) else "Rx View"


def sandbox_link(
    fixture: str,
    sandbox: str = HOSTED_SANDBOX,
    fhir: str = LOCAL_FHIR,
    discovery: str = LOCAL_DISCOVERY,
) -> str:
    """The Sandbox's Rx View on this fixture's patient, with a tacrolimus draft (a clarithromycin draft for a
    co-prescribing fixture) and our services added; for a patient-view fixture (on tacrolimus for months) its
    Patient View, which calls tacrolimus-monitoring."""
    params = {
        "fhirServiceUrl": fhir,
        "patientId": patient_id(fixture),
        "serviceDiscoveryURL": discovery,
    }
    if screen(fixture) == "Patient View":
        params |= {"hook": PATIENT_VIEW, "screen": PATIENT_VIEW}
    else:
        drug = SANDBOX_CLARITHROMYCIN if manifest()[fixture].get("services") else SANDBOX_TACROLIMUS
        params |= {"hook": "order-select", "screen": "rx-view", "prescribedMedication": drug}
    query = "&".join(f"{name}={quote(value, safe='')}" for name, value in params.items())
    return f"{sandbox.rstrip('/')}/?{query}"


def links(sandbox: str = HOSTED_SANDBOX, fhir: str = LOCAL_FHIR, discovery: str = LOCAL_DISCOVERY):
    """(fixture, patient id, link) for every fixture, in name order."""
    return [
        (name, patient_id(name), sandbox_link(name, sandbox, fhir, discovery)) for name in sorted(manifest())
    ]
