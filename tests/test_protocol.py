"""CDS Hooks 2.0 wire-format checks: official examples, real-world requests and targeted mistakes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from cds_service import protocol
from cds_service.protocol import (
    ProtocolError,
    check_discovery,
    check_feedback,
    check_response,
    feedback_item_errors,
    validate_feedback,
    validate_request,
)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"  # see tests/data/SOURCES.md
EXAMPLES = DATA / "cds-hooks" / "examples"
LIBRARY = "HL7-cds-hooks-library@5d04c4d"
SPEC = EXAMPLES / "HL7-cds-hooks@c4667a4_v2.0.1_index.md"
BALLOT = EXAMPLES / "HL7-cds-hooks@fb10ca7_v3.0.0-ballot_index.md"
CORPUS = DATA / "corpora" / "cds-hooks"

HOOK_INSTANCE = "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"
SECRET = "s3cr3t-access-token-do-not-echo"


def load(path: Path) -> object:
    return json.loads(path.read_text(encoding="utf-8"))


def spec_example(line_range_and_name: str) -> object:
    return load(SPEC / f"HL7-cds-hooks_v2.0.1_index.md_{line_range_and_name}.json")


def library_examples(hook: str) -> list[Path]:
    return sorted((EXAMPLES / f"{LIBRARY}_{hook}.md").glob("*.json"))


def as_request(hook: str, example: dict) -> dict:
    """The library examples hold only ``context``; a client adds the envelope around it."""
    return {"hook": hook, "hookInstance": HOOK_INSTANCE, **example}


def r4_request(hook: str) -> dict:
    (path,) = [path for path in library_examples(hook) if path.name.endswith("_example-r4.json")]
    return as_request(hook, load(path))


def order_select_request() -> dict:
    return r4_request("order-select")


def order_sign_request() -> dict:
    return r4_request("order-sign")


def rejection(body: object, hook: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        validate_request(body, hook)
    assert caught.value.status == 400
    return caught.value


def one_card_response(**card_fields) -> dict:
    card = {
        "summary": "Check pregnancy status",
        "indicator": "warning",
        "source": {"label": "Tacrolimus CDS"},
    }
    card.update(card_fields)
    return {"cards": [card]}


# --- the schemas themselves --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", sorted((REPO / "cds_service" / "schemas").glob("*.json")), ids=lambda p: p.name
)
def test_each_schema_is_valid_draft_2020_12_with_id_and_title(path):
    schema = load(path)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith("/" + path.name)
    assert schema["title"]


# --- official examples pass --------------------------------------------------------------------------------


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_official_library_examples_pass_once_wrapped_in_an_envelope(hook):
    examples = library_examples(hook)
    assert any("example-r4" in path.name for path in examples)
    for path in examples:  # R4, STU3 and (order-select) DSTU2: same context shape
        example = load(path)
        assert set(example) == {"context"}, "the library examples carry no envelope"
        validate_request(as_request(hook, example), hook)


def test_ballot_order_sign_request_with_paginated_prefetch_passes():
    body = load(
        BALLOT
        / "HL7-cds-hooks_v3.0.0-ballot_index.md_L0307-0369_order-sign-request-with-paginated-prefetch.json"
    )
    validate_request(body, "order-sign")


@pytest.mark.parametrize(
    "name",
    [
        "L0554-0556_http-response",
        "L0736-0787_example-response",
        "L0716-0728_system-action",
    ],
)
def test_spec_example_responses_pass(name):
    assert check_response(spec_example(name)) == []


def test_spec_response_fragments_assemble_into_a_valid_card():
    card = {
        "uuid": "4e0a3a1e-3283-4575-ab82-028d55fe2719",
        "summary": "Assembled from the spec's fragments",
        "indicator": "critical",
        **spec_example("L0593-0604_source"),
        **spec_example("L0677-0690_reasons-for-rejecting-a-card"),
        "selectionBehavior": "at-most-one",
        "suggestions": [
            {
                "label": "Apply all three",
                "uuid": "e56e1945-20b3-4393-8503-a1a20fd73152",
                "isRecommended": True,
                "actions": [
                    spec_example("L0634-0642_action-create"),
                    spec_example("L0648-0656_action-update"),
                    spec_example("L0662-0666_action-delete"),
                ],
            }
        ],
    }
    assert check_response({"cards": [card]}) == []


def test_spec_autolaunchable_example_is_caught_missing_its_indicator():
    # The 2.0.1 example card has no indicator although the Card table makes it REQUIRED.
    assert check_response(spec_example("L0794-0815_example-response-autolaunchable")) == [
        "cards[0].indicator: is required"
    ]


@pytest.mark.parametrize("name", ["L0131-0160_discovery-example", "L1137-1152_extensions"])
def test_spec_discovery_examples_pass(name):
    assert check_discovery(spec_example(name)) == []


def test_this_projects_service_definitions_form_a_valid_discovery_document():
    services = [
        yaml.safe_load(path.read_text()) for path in sorted((REPO / "hooks" / "services").glob("*.yaml"))
    ]
    assert {service["hook"] for service in services} == {"order-select", "order-sign", "patient-view"}
    assert check_discovery({"services": services}) == []


@pytest.mark.parametrize(
    "name",
    [
        "L0863-0877_example-suggestion-accepted",
        "L0895-0903_example-overridden-guidance-without-overridereason",
        "L0927-0942_example-overridden-guidance-with-overridereason",
    ],
)
def test_spec_feedback_examples_pass(name):
    body = spec_example(name)
    assert check_feedback(body) == []
    validate_feedback(body)
    assert [feedback_item_errors(item, index=i) for i, item in enumerate(body["feedback"])] == [None]


# --- real-world requests -----------------------------------------------------------------------------------


def corpus_bodies() -> list[tuple[str, object]]:
    bodies = []
    for path in sorted(CORPUS.rglob("*.json")):
        text = path.read_text(encoding="utf-8")
        try:
            body = json.loads(text)
        except ValueError:
            body = text  # curl command lines and fragments: what a broken client might POST
        bodies.append((str(path.relative_to(CORPUS)), body))
    return bodies


@pytest.mark.parametrize(("name", "body"), corpus_bodies(), ids=[name for name, _ in corpus_bodies()])
def test_every_corpus_request_is_accepted_or_rejected_with_a_protocol_error(name, body):
    hook = body.get("hook") if isinstance(body, dict) else None
    expected_hook = hook if hook in protocol.SUPPORTED_HOOKS else "order-select"
    try:
        validate_request(body, expected_hook)
    except ProtocolError as error:
        assert error.status == 400
        assert error.field is None or isinstance(error.field, str)
        assert error.message


def test_crd_request_with_nulls_untyped_bundle_and_no_context_user_id_is_served():
    # Da Vinci CRD test request: "fhirAuthorization": null, "encounterId": null, "services": null, top-level
    # "user" (pre-1.0 style) instead of context.userId, draftOrders Bundle without "type". The service does
    # not use userId, so its absence is tolerated (a deliberate leniency: real EHR payloads are messy).
    body = load(CORPUS / "davinci-crd" / "deviceRequestEmptyPrefetch_r4.json")
    validate_request(body, "order-sign")


def test_pddi_order_select_with_extension_stu3_prefetch_and_no_context_user_id_is_served():
    body = load(CORPUS / "pddi-cds" / "warfarin-nsaids-order-select-coordination.json")
    validate_request(body, "order-select")


def test_nulls_on_optional_fields_are_treated_as_absent():
    body = order_select_request()
    body.update(fhirServer=None, fhirAuthorization=None, prefetch=None, extension=None)
    body["context"]["encounterId"] = None
    body["context"]["draftOrders"]["type"] = None
    validate_request(body, "order-select")


def test_unknown_fields_are_tolerated_everywhere():
    body = order_sign_request()
    body["applyCql"] = "true"
    body["context"]["com.example.flag"] = {"anything": [1, 2]}
    body["context"]["selections"] = [
        "MedicationRequest/smart-MedicationRequest-103"
    ]  # not an order-sign field
    body["prefetch"] = {"patient": {"resourceType": "Patient", "id": "1288992", "x": 1}, "meds": None}
    validate_request(body, "order-sign")


def test_prefetch_may_carry_an_operation_outcome():
    body = order_sign_request()
    body["prefetch"] = {"labs": {"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}}
    validate_request(body, "order-sign")


# --- targeted request failures -----------------------------------------------------------------------------


def test_missing_hook():
    body = order_select_request()
    del body["hook"]
    assert rejection(body, "order-select").message == "hook is required"


def test_hook_instance_must_be_a_string():
    body = order_select_request()
    body["hookInstance"] = 42
    error = rejection(body, "order-select")
    assert (error.field, error.message) == ("hookInstance", "hookInstance must be a string")


def test_required_field_sent_as_null_is_a_type_error_not_absence():
    body = order_select_request()
    body["hookInstance"] = None
    assert rejection(body, "order-select").message == "hookInstance must be a string"


def test_body_that_is_not_an_object():
    error = rejection(["not", "an", "object"], "order-select")
    assert (error.field, error.to_json()) == (
        None,
        {"error": "request body must be a JSON object", "field": None},
    )


def test_wrong_hook_for_the_service():
    error = rejection(order_sign_request(), "order-select")
    assert error.field == "hook"
    assert '"order-select"' in error.message and '"order-sign"' in error.message


def test_unsupported_expected_hook_is_a_programming_error_not_a_client_error():
    with pytest.raises(ValueError, match="encounter-start"):
        validate_request(order_select_request(), "encounter-start")


def fhir_authorization(**overrides) -> dict:
    auth = {
        "access_token": SECRET,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "tacrolimus-cds",
        "patient": "1288992",
    }
    auth.update(overrides)
    return auth


def test_fhir_authorization_is_accepted_with_fhir_server():
    body = order_select_request()
    body.update(fhirServer="https://ehr.example.org/fhir", fhirAuthorization=fhir_authorization())
    validate_request(body, "order-select")


@pytest.mark.parametrize("fhir_server", ["absent", None])
def test_fhir_authorization_without_fhir_server(fhir_server):
    body = order_select_request()
    body["fhirAuthorization"] = fhir_authorization()
    if fhir_server is not None:
        body.pop("fhirServer", None)
    else:
        body["fhirServer"] = None
    error = rejection(body, "order-select")
    assert (error.field, error.message) == (
        "fhirServer",
        "fhirServer is required when fhirAuthorization is present",
    )


@pytest.mark.parametrize("fhir_server", ["localhost:8080/fhir", "ftp://ehr.example.org/fhir", "https://"])
def test_fhir_server_must_be_an_http_url(fhir_server):
    body = order_select_request()
    body["fhirServer"] = fhir_server
    assert rejection(body, "order-select").field == "fhirServer"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"token_type": "MAC"}, "fhirAuthorization.token_type"),
        ({"expires_in": "300"}, "fhirAuthorization.expires_in"),
        ({"scope": None}, "fhirAuthorization.scope"),
        ({"patient": "Patient/1288992"}, "fhirAuthorization.patient"),
        ({"access_token": 12345}, "fhirAuthorization.access_token"),
        ({"access_token": ""}, "fhirAuthorization.access_token"),
    ],
)
def test_fhir_authorization_fields_are_checked_and_the_token_is_never_echoed(overrides, field):
    body = order_select_request()
    body.update(fhirServer="https://ehr.example.org/fhir", fhirAuthorization=fhir_authorization(**overrides))
    error = rejection(body, "order-select")
    assert error.field == field
    for rendering in (str(error), json.dumps(error.to_json()), json.dumps(error.to_operation_outcome())):
        assert SECRET not in rendering


def test_missing_subject_names_the_field_without_the_token():
    body = order_select_request()
    auth = fhir_authorization()
    del auth["subject"]
    body.update(fhirServer="https://ehr.example.org/fhir", fhirAuthorization=auth)
    error = rejection(body, "order-select")
    assert error.message == "fhirAuthorization.subject is required"
    assert SECRET not in repr(error.args)


def test_prefetch_value_must_be_a_resource_or_null():
    body = order_select_request()
    body["prefetch"] = {"com.example.user": "123"}
    error = rejection(body, "order-select")
    assert (error.field, error.message) == (
        'prefetch["com.example.user"]',
        'prefetch["com.example.user"] must be an object',
    )


def test_selections_missing_on_order_select():
    body = order_select_request()
    del body["context"]["selections"]
    error = rejection(body, "order-select")
    assert (error.field, error.message) == ("context.selections", "context.selections is required")


def test_selections_must_not_be_empty():
    body = order_select_request()
    body["context"]["selections"] = []
    assert rejection(body, "order-select").message == "context.selections must not be empty"


def test_selection_must_be_a_type_slash_id_reference():
    body = order_select_request()
    body["context"]["selections"] = ["MedicationRequest/ok-1", "103"]
    error = rejection(body, "order-select")
    assert error.field == "context.selections[1]"
    assert "ResourceType/id" in error.message


def test_patient_id_must_be_an_id_not_a_reference():
    body = order_sign_request()
    body["context"]["patientId"] = "Patient/1288992"  # as the PDDI medication-prescribe requests send it
    error = rejection(body, "order-sign")
    assert error.field == "context.patientId"
    assert "FHIR id" in error.message


def test_user_id_must_be_a_reference():
    body = order_sign_request()
    body["context"]["userId"] = "123"
    assert rejection(body, "order-sign").field == "context.userId"


def test_draft_orders_must_be_a_bundle():
    body = order_sign_request()
    body["context"]["draftOrders"] = {"resourceType": "MedicationRequest", "id": "x"}
    error = rejection(body, "order-sign")
    assert (error.field, error.message) == (
        "context.draftOrders.resourceType",
        'context.draftOrders.resourceType must be "Bundle"',
    )


def test_draft_order_entry_resource_needs_a_resource_type():
    body = order_sign_request()
    del body["context"]["draftOrders"]["entry"][1]["resource"]["resourceType"]
    assert rejection(body, "order-sign").field == "context.draftOrders.entry[1].resource.resourceType"


def test_draft_orders_bundle_type_is_not_required():
    body = order_sign_request()
    del body["context"]["draftOrders"]["type"]
    validate_request(body, "order-sign")


def test_envelope_errors_come_before_the_hook_check_and_context():
    body = order_sign_request()
    del body["context"]["draftOrders"]
    body["hookInstance"] = ""
    assert rejection(body, "order-select").field == "hookInstance"


# --- targeted response / discovery failures -----------------------------------------------------------------


def test_a_minimal_card_passes():
    assert check_response(one_card_response()) == []


def test_summary_of_140_characters_is_too_long_and_139_is_fine():
    assert check_response(one_card_response(summary="x" * 139)) == []
    assert check_response(one_card_response(summary="x" * 140)) == [
        "cards[0].summary: must be 1 to 139 characters (the spec requires fewer than 140)"
    ]


def test_suggestions_without_selection_behavior():
    response = one_card_response(suggestions=[{"label": "Order hCG"}])
    assert check_response(response) == ["cards[0].selectionBehavior: is required when suggestions is present"]


def test_override_reason_without_display():
    response = one_card_response(
        overrideReasons=[{"code": "not-pregnant", "system": "https://example.org/reasons"}]
    )
    assert check_response(response) == ["cards[0].overrideReasons[0].display: is required"]


def test_source_topic_display_is_optional():
    topic = {"code": "pregnancy", "system": "https://example.org/topics"}
    assert check_response(one_card_response(source={"label": "Tacrolimus CDS", "topic": topic})) == []


def test_bad_indicator_and_missing_source():
    card = {"summary": "s", "indicator": "hard-stop"}  # a pre-1.0 indicator value
    assert check_response({"cards": [card]}) == [
        "cards[0].source: is required",
        "cards[0].indicator: must be one of: info, warning, critical",
    ]


def test_app_context_only_on_smart_links():
    smart = {"label": "App", "url": "https://app.example.org/launch", "type": "smart", "appContext": "{}"}
    absolute = {**smart, "type": "absolute"}
    assert check_response(one_card_response(links=[smart])) == []
    assert check_response(one_card_response(links=[absolute])) == [
        "cards[0].links[0].appContext: is only allowed on links of type 'smart'"
    ]


def test_link_url_must_be_absolute():
    link = {"label": "Guideline", "url": "/guidelines/tacrolimus", "type": "absolute"}
    assert check_response(one_card_response(links=[link])) == [
        "cards[0].links[0].url: must be an absolute URL"
    ]


def suggestion_with(action: dict) -> dict:
    return one_card_response(selectionBehavior="any", suggestions=[{"label": "Do it", "actions": [action]}])


def test_create_action_needs_a_resource():
    response = suggestion_with({"type": "create", "description": "Order hCG"})
    assert check_response(response) == [
        "cards[0].suggestions[0].actions[0].resource: is required for create and update actions"
    ]


def test_delete_action_needs_resource_id_or_the_deprecated_resource():
    base = {"type": "delete", "description": "Remove the draft"}
    assert check_response(suggestion_with({**base, "resourceId": "MedicationRequest/tac-draft"})) == []
    assert check_response(suggestion_with({**base, "resource": {"resourceType": "MedicationRequest"}})) == []
    assert check_response(suggestion_with(base)) == [
        "cards[0].suggestions[0].actions[0].resourceId: is required for a delete action"
    ]


def test_suggestion_actions_need_a_description_but_system_actions_do_not():
    action = {"type": "delete", "resourceId": "MedicationRequest/tac-draft"}
    assert check_response(suggestion_with(action)) == [
        "cards[0].suggestions[0].actions[0].description: is required"
    ]
    assert check_response({"cards": [], "systemActions": [action]}) == []


def test_at_most_one_allows_only_one_recommended_suggestion():
    two = [{"label": "A", "isRecommended": True}, {"label": "B", "isRecommended": True}]
    assert check_response(one_card_response(selectionBehavior="any", suggestions=two)) == []
    problems = check_response(one_card_response(selectionBehavior="at-most-one", suggestions=two))
    assert problems == [
        "cards[0].suggestions: may have at most one suggestion with isRecommended true"
        " when selectionBehavior is 'at-most-one'"
    ]


def test_response_nulls_are_rejected_because_the_service_must_not_send_them():
    assert check_response(one_card_response(detail=None)) == ["cards[0].detail: must be a string"]


def test_discovery_service_needs_hook_description_and_id():
    assert check_discovery({"services": [{"title": "No essentials"}]}) == [
        "services[0].hook: is required",
        "services[0].description: is required",
        "services[0].id: is required",
    ]


def test_discovery_prefetch_templates_are_strings():
    service = {"hook": "order-sign", "description": "d", "id": "tac", "prefetch": {"patient": {"q": 1}}}
    assert check_discovery({"services": [service]}) == ["services[0].prefetch.patient: must be a string"]


# --- targeted feedback failures ----------------------------------------------------------------------------


def feedback_item(**overrides) -> dict:
    item = {
        "card": "4e0a3a1e-3283-4575-ab82-028d55fe2719",
        "outcome": "overridden",
        "outcomeTimestamp": "2021-12-11T10:05:31Z",
    }
    item.update(overrides)
    return item


def test_bad_outcome_names_the_item_index():
    assert feedback_item_errors(feedback_item(outcome="rejected"), index=2) == (
        "feedback[2].outcome: must be one of: accepted, overridden"
    )


def test_accepted_without_accepted_suggestions():
    assert feedback_item_errors(feedback_item(outcome="accepted")) == (
        "acceptedSuggestions: is required when outcome is 'accepted'"
    )
    assert feedback_item_errors(feedback_item(outcome="accepted", acceptedSuggestions=None), index=0) == (
        "feedback[0].acceptedSuggestions: is required when outcome is 'accepted'"
    )
    assert feedback_item_errors(feedback_item(outcome="accepted", acceptedSuggestions=[]), index=0) == (
        "feedback[0].acceptedSuggestions: must not be empty"
    )


def test_override_reason_as_the_sandbox_sends_it_is_accepted():
    reason = {"reason": {"code": "d7ecf885", "system": "https://example.com/reasons"}, "userComment": None}
    assert feedback_item_errors(feedback_item(overrideReason=reason)) is None
    assert feedback_item_errors(feedback_item(overrideReason=None, acceptedSuggestions=None)) is None


def test_override_reason_coding_needs_code_and_system():
    reason = {"reason": {"code": "d7ecf885"}}
    assert feedback_item_errors(feedback_item(overrideReason=reason), index=1) == (
        "feedback[1].overrideReason.reason.system: is required"
    )


@pytest.mark.parametrize(
    ("timestamp", "valid"),
    [
        ("2021-12-11T10:05:31Z", True),
        ("2021-12-11T10:05:31.52+01:00", True),
        ("2016-12-31T23:59:60Z", True),
        ("2021-12-11T10:05:31", False),
        ("2021-12-11", False),
        ("2021-02-30T00:00:00Z", False),
        ("11/12/2021 10:05", False),
    ],
)
def test_outcome_timestamp_is_rfc_3339(timestamp, valid):
    problem = feedback_item_errors(feedback_item(outcomeTimestamp=timestamp))
    if valid:
        assert problem is None
    else:
        assert (
            problem
            == "outcomeTimestamp: must be an RFC 3339 date-time with a time zone, e.g. 2021-12-11T10:05:31Z"
        )


def test_feedback_item_that_is_not_an_object():
    assert feedback_item_errors("accepted", index=3) == "feedback[3]: must be an object"
    assert feedback_item_errors(None) == "feedback item: must be an object"


def test_feedback_envelope_is_checked_separately_from_its_items():
    validate_feedback(
        {"feedback": [feedback_item(), {"outcome": "bogus"}]}
    )  # items are not the envelope's job
    for body, field in [({}, "feedback"), ({"feedback": {"card": "x"}}, "feedback"), ([], None)]:
        with pytest.raises(ProtocolError) as caught:
            validate_feedback(body)
        assert (caught.value.status, caught.value.field) == (400, field)


def test_check_feedback_lists_every_bad_item():
    body = {"feedback": [feedback_item(), feedback_item(outcome="bad"), feedback_item(card=None)]}
    assert check_feedback(body) == [
        "feedback[1].outcome: must be one of: accepted, overridden",
        "feedback[2].card: must be a string",
    ]


# --- error object -------------------------------------------------------------------------------------------


def test_protocol_error_renders_as_json_and_operation_outcome():
    body = copy.deepcopy(order_select_request())
    body["context"]["selections"] = ["103"]
    error = rejection(body, "order-select")
    assert error.to_json() == {"error": error.message, "field": "context.selections[0]"}
    outcome = error.to_operation_outcome()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"] == [
        {
            "severity": "error",
            "code": "invalid",
            "diagnostics": error.message,
            "expression": ["context.selections[0]"],
        }
    ]
