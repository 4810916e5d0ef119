"""Value sets and code membership: what the rules will see as "tacrolimus", "pregnancy", "positive"..."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from fhir.resources.R4B.valueset import ValueSet

from cds_service.terminology import (
    DEFAULT_DIR,
    ICD10CM,
    LOINC,
    RXNORM,
    SNOMED,
    SOURCE_EXTENSION,
    SOURCE_KEY_EXTENSION,
    Terminology,
    default_terminology,
)

DRUG_CLASSES = {
    "tacrolimus", "mycophenolate", "cyclophosphamide", "methotrexate", "leflunomide", "teratogens",
    "rituximab", "other-calcineurin-inhibitors", "cyp3a4-strong-inhibitors", "cyp3a4-moderate-inhibitors",
    "cyp3a4-strong-inducers", "nephrotoxins", "obinutuzumab", "nirmatrelvir-ritonavir", "live-vaccines",
    "combined-hormonal-contraceptives",
}  # fmt: skip
NAME_ONLY_CLASSES = {"obinutuzumab", "nirmatrelvir-ritonavir"}
"""Classes recognised by name until their codes are verified; the codes wait in ``unverified/``."""
V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
REPO = Path(__file__).resolve().parent.parent
CLINICAL_MD = REPO / "tests" / "data" / "knowledge" / "clinical.md"  # see tests/data/SOURCES.md

COMMON_MD_NAMES = {
    # medications
    "tacrolimus", "mycophenolate", "cyclophosphamide", "methotrexate", "leflunomide", "teratogens",
    "rituximab", "other-calcineurin-inhibitors", "cyp3a4-strong-inhibitors", "cyp3a4-moderate-inhibitors",
    "cyp3a4-strong-inducers", "nephrotoxins", "obinutuzumab", "nirmatrelvir-ritonavir", "live-vaccines",
    # conditions
    "lupus", "lupus-nephritis", "lupus-nephritis-class-v", "pregnancy", "pregnancy-hypertension", "lactation",
    "hepatitis-b", "hypogammaglobulinemia",
    # observations
    "creatinine", "egfr", "upcr", "tacrolimus-level", "potassium", "magnesium", "glucose", "glucose-fasting",
    "hba1c", "blood-pressure", "systolic-bp", "diastolic-bp", "hcg-qualitative", "hcg-quantitative",
    "pregnancy-status", "edd", "breastfeeding-status", "igg", "hbsag", "body-height",
    # answers
    "pregnant-answer", "not-pregnant-answer", "qualitative-positive", "qualitative-negative",
    # rule catalog version 2 (clinical.md §5)
    "pregnancy-outcome", "anti-hbc", "yes-answer", "no-answer",
    # rule catalog version 3 (clinical.md §6.6)
    "delivery-procedures", "delivery", "combined-hormonal-contraceptives",
}  # fmt: skip

# clinical.md marks these UNVERIFIED (or, for 284520, topical): never in a default set.
UNVERIFIED_OR_TOPICAL = [
    (LOINC, "74096-9"),  # tacrolimus by immunoassay
    (RXNORM, "284520"),  # Protopic (topical tacrolimus)
    (RXNORM, "28031"),  # itraconazole
    (RXNORM, "282446"),  # posaconazole
    (RXNORM, "4450"),  # fluconazole
    (RXNORM, "6135"),  # ketoconazole ingredient
    (RXNORM, "3443"),  # diltiazem ingredient
    (RXNORM, "11170"),  # verapamil ingredient
    (RXNORM, "732"),  # amphotericin B
    (RXNORM, "27169"),  # leflunomide ingredient
    (LOINC, "16933-4"),  # anti-HBc total (clinical.md §5: UNVERIFIED)
    (LOINC, "13952-7"),  # anti-HBc (clinical.md §5: UNVERIFIED)
]


def coding(system: str, code: str, display: str | None = None) -> dict:
    found = {"system": system, "code": code}
    if display is not None:
        found["display"] = display
    return found


@pytest.fixture(scope="module")
def terms() -> Terminology:
    return Terminology.load()


def value_set_files(directory: Path = DEFAULT_DIR) -> list[Path]:
    return sorted(directory.glob("*.json"))


# ---------------------------------------------------------------- the files


def test_there_is_one_file_per_value_set_named_in_common_md(terms):
    assert {p.stem for p in value_set_files()} == COMMON_MD_NAMES
    assert terms.names == COMMON_MD_NAMES


@pytest.mark.parametrize(
    "path", value_set_files() + sorted((DEFAULT_DIR / "unverified").glob("*.json")), ids=lambda p: p.name
)
def test_each_file_is_a_valid_fhir_r4_value_set_whose_compose_matches_its_expansion(path):
    resource = json.loads(path.read_text())
    ValueSet.model_validate(resource)  # raises on an invalid R4 ValueSet
    unverified = path.parent.name == "unverified"
    assert resource["id"] == (f"{path.stem}-unverified" if unverified else path.stem)
    assert resource["url"].startswith("https://example.org/tacrolimus-cds/ValueSet/")
    assert resource["status"] == "active"
    assert len(resource["description"]) > 60
    contains = resource["expansion"].get("contains", [])
    assert resource["expansion"]["total"] == len(contains)
    assert all(entry["display"] for entry in contains)
    composed = set()
    for include in resource.get("compose", {}).get("include", []):
        for concept in include.get("concept", []):
            composed.add((include["system"], concept["code"]))
        for rule in include.get("filter", []):
            assert include["system"] == ICD10CM
            assert (rule["property"], rule["op"]) == ("concept", "is-a")
            composed.add((include["system"], rule["value"]))
    assert composed == {(e["system"], e["code"]) for e in contains}


def test_unverified_files_only_extend_existing_sets_with_new_codes(terms):
    for path in sorted((DEFAULT_DIR / "unverified").glob("*.json")):
        assert path.stem in terms.names
        core = {(s, c) for s, c, _ in terms.codes(path.stem)}
        extra = {(e["system"], e["code"]) for e in json.loads(path.read_text())["expansion"]["contains"]}
        assert extra and not extra & core, path.name


def test_sources_are_cited_in_every_description():
    keys = re.compile(r"\b(PED|CPIC|OHDSI|PDDI|VS21|VS24|VS25|GER|BHF|ELX|IG|NLM-TB|NDCL|LAB)\b")
    for path in value_set_files():
        if path.stem in DRUG_CLASSES:
            continue  # drug classes: a source per code (test_every_drug_class_code_has_a_published_source)
        description = json.loads(path.read_text())["description"]
        if path.stem in (
            "leflunomide", "qualitative-positive", "qualitative-negative",
            "anti-hbc", "pregnancy-outcome", "yes-answer", "no-answer",  # clinical.md §5 names no source key
            "delivery",  # the delivery part of pregnancy-outcome (clinical.md §5)
        ):  # fmt: skip
            continue  # no verified source in clinical.md; the description says where else they were seen
        assert keys.search(description), path.name


def test_every_default_code_is_written_in_clinical_md():
    """A typo in a code would silently miss patients; every code must appear in the knowledge base."""
    text = CLINICAL_MD.read_text()
    own_sources = {"qualitative-positive", "qualitative-negative"}  # verified elsewhere (descriptions)
    own_sources |= {"pregnancy-outcome"}  # clinical.md §5 writes ICD-10-CM ranges: see the next test
    own_sources |= {"delivery-procedures"}  # clinical.md §6.6 names the VSAC set; see its own test
    for path in value_set_files():
        if path.stem in own_sources or path.stem in DRUG_CLASSES:  # drug classes: a source per code
            continue
        for entry in json.loads(path.read_text())["expansion"].get("contains", []):
            if (path.stem, entry["code"]) in SOURCED_AFTER_CLINICAL_MD:
                assert entry["code"] in json.loads(path.read_text())["description"]
                continue
            written = re.compile(rf"(?<![\w.-]){re.escape(entry['code'])}(?![\w-])")
            assert written.search(text), (path.stem, entry["code"])


SOURCED_AFTER_CLINICAL_MD = {
    # Synthea's blood-pressure panel code (every BP of the SMART Synthea R4 sample data, tests/data/real):
    # without it the Observation query leaves those readings out. Source named in the value set description;
    # clinical.md §1.4 to follow.
    ("blood-pressure", "55284-4"),
    # Body height, for the bedside Schwartz eGFR under 18 (rules.md v3): the FHIR R4 Body Height profile
    # fixes this code; source named in the value set description.
    ("body-height", "8302-2"),
}


def test_pregnancy_outcome_codes_are_the_icd_10_cm_blocks_of_the_catalog():
    """clinical.md §5: O00-O08, O80-O82, Z37.x, Z39.x (ICD-10-CM only until SNOMED is verified)."""
    allowed = {f"O0{i}" for i in range(9)} | {"O80", "O81", "O82", "Z37", "Z39"}
    codes = file_codes("pregnancy-outcome")
    assert {system for system, _ in codes} == {ICD10CM}
    assert {code for _, code in codes} <= allowed
    assert {"O80", "O82", "Z37", "Z39", "O03"} <= {code for _, code in codes}


def test_delivery_procedures_are_the_published_vsac_expansion(terms):
    """clinical.md §6.1 item 5: VSAC 2.16.840.1.113762.1.4.1045.59, 112 SNOMED CT + 10 ICD-10-PCS codes."""
    codes = file_codes("delivery-procedures")
    assert sum(system == SNOMED for system, _ in codes) == 112 and len(codes) == 122
    description = json.loads((DEFAULT_DIR / "delivery-procedures.json").read_text())["description"]
    assert "2.16.840.1.113762.1.4.1045.59" in description
    for code in ("11466000", "177184002", "236973005", "274130007"):  # caesarean, normal, any, emergency CS
        assert "delivery-procedures" in terms.concepts([coding(SNOMED, code)])


def test_reactive_and_loinc_answers_read_as_positive_and_negative(terms):
    positive = ((LOINC, "LA6576-8"), (LOINC, "LA11882-0"), (SNOMED, "11214006"), (SNOMED, "10828004"))
    negative = ((LOINC, "LA6577-6"), (LOINC, "LA11883-8"), (SNOMED, "131194007"), (SNOMED, "260385009"))
    for system, code in positive:
        assert "qualitative-positive" in terms.concepts([coding(system, code)]), code
    for system, code in negative:
        assert "qualitative-negative" in terms.concepts([coding(system, code)]), code


def test_yes_no_answers_read_as_positive_and_negative_sets(terms):
    assert "yes-answer" in terms.concepts([coding(LOINC, "LA33-6")])
    assert "yes-answer" in terms.concepts([coding(SNOMED, "373066001")])
    assert "no-answer" in terms.concepts([coding(LOINC, "LA32-8")])
    assert "no-answer" in terms.concepts([coding(SNOMED, "373067005")])


def test_anti_hbc_ships_only_behind_configuration(terms):
    assert terms.codes("anti-hbc") == []
    extended = Terminology.load(include=["unverified"])
    assert "anti-hbc" in extended.concepts([coding(LOINC, "16933-4")])


def test_no_default_set_holds_an_unverified_or_topical_code(terms):
    for system, code in UNVERIFIED_OR_TOPICAL:
        assert terms.concepts([coding(system, code)]) == frozenset(), code


def file_codes(name: str) -> set[tuple[str, str]]:
    expansion = json.loads((DEFAULT_DIR / f"{name}.json").read_text())["expansion"]
    return {(e["system"], e["code"]) for e in expansion.get("contains", [])}


def test_teratogens_file_is_the_union_of_its_members():
    members = ("mycophenolate", "cyclophosphamide", "methotrexate", "leflunomide")
    assert file_codes("teratogens") == set().union(*(file_codes(m) for m in members))


def test_lupus_file_contains_every_lupus_nephritis_code():
    assert file_codes("lupus-nephritis") < file_codes("lupus")


def test_leflunomide_tablets_come_from_the_published_vsac_expansion(terms):
    assert {code for _, code, _ in terms.codes("leflunomide")} == {"205284", "205285", "205286"}
    keys = source_keys(json.loads((DEFAULT_DIR / "leflunomide.json").read_text()))
    assert keys["205285"] == ["VS25-1248.364"]


def source_keys(resource: dict) -> dict[str, list[str]]:
    """code -> the keys of the sources its expansion entry names."""
    return {
        entry["code"]: [
            e["valueString"] for e in entry.get("extension", []) if e["url"] == SOURCE_KEY_EXTENSION
        ]
        for entry in resource["expansion"].get("contains", [])
    }


def declared_sources(resource: dict) -> dict[str, dict[str, str]]:
    """key -> the source's fields (reference, version, title, origin), from compose.include extensions."""
    found = {}
    for include in resource.get("compose", {}).get("include", []):
        for ext in include.get("extension", []):
            if ext["url"] == SOURCE_EXTENSION:
                fields = {
                    e["url"]: next(v for k, v in e.items() if k.startswith("value")) for e in ext["extension"]
                }
                found[fields["key"]] = fields
    return found


@pytest.mark.parametrize("name", sorted(DRUG_CLASSES))
def test_every_drug_class_code_has_a_published_source(name):
    """Each shipped drug code names a source the ValueSet declares with its URL/OID, version and origin."""
    resource = json.loads((DEFAULT_DIR / f"{name}.json").read_text())
    if name in NAME_ONLY_CLASSES:  # no code by default: its single-source codes ship behind configuration
        assert (
            not resource["expansion"]["contains"] and (DEFAULT_DIR / "unverified" / f"{name}.json").is_file()
        )
        return
    sources = declared_sources(resource)
    assert sources
    for key, fields in sources.items():
        assert fields["reference"].startswith(("http://", "https://")), key
        assert fields["version"] and fields["origin"] and fields["title"], key
    codes = source_keys(resource)
    assert codes
    for code, keys in codes.items():
        assert keys, (name, code)
        assert set(keys) <= set(sources), (name, code, keys)
        for key in keys:  # and the include of that source lists the code
            include = next(
                i
                for i in resource["compose"]["include"]
                if declared_sources({"compose": {"include": [i]}}).get(key)
            )
            assert code in {c["code"] for c in include["concept"]}, (name, code, key)


def test_drug_classes_carry_their_names(terms):
    assert terms.drug_classes == DRUG_CLASSES
    assert "Prograf" in terms.names_of["tacrolimus"]
    assert "Neoral" in terms.names_of["other-calcineurin-inhibitors"]
    assert set(terms.names_of["methotrexate"]) <= set(terms.names_of["teratogens"])


# ---------------------------------------------------------------- medications


@pytest.mark.parametrize(
    "code",
    [
        "42316",  # ingredient
        "198377",  # tacrolimus 1 MG Oral Capsule
        "2665161",  # BX-rated 0.5 mg capsule (Oct 2023)
        "2665163",  # BX-rated 5 mg capsule
        "1664456",  # Envarsus XR generic
        "108515",  # Prograf injection
        "2052605",  # granules
        "1738336",  # SBDF Tacrolimus Injection [Prograf]
    ],
)
def test_systemic_tacrolimus_codes_trigger(terms, code):
    assert "tacrolimus" in terms.concepts([coding(RXNORM, code)])


def test_topical_tacrolimus_does_not_trigger_even_when_its_display_says_tacrolimus(terms):
    protopic = coding(RXNORM, "284520", "tacrolimus 0.1 % Topical Ointment [Protopic]")
    assert terms.concepts([protopic]) == frozenset()


def test_display_is_ignored_only_system_and_code_count(terms):
    assert "tacrolimus" in terms.concepts([coding(RXNORM, "198377", "aspirin 81 MG Oral Tablet")])
    assert terms.concepts([coding(RXNORM, "1191", "tacrolimus")]) == frozenset()


def test_right_code_in_the_wrong_system_does_not_match(terms):
    assert terms.concepts([coding(LOINC, "198377")]) == frozenset()
    assert terms.concepts([coding("http://www.nlm.nih.gov/research/umls/rxnorm/", "198377")]) == frozenset()
    assert terms.concepts([{"code": "198377"}]) == frozenset()


def test_whitespace_around_system_and_code_is_ignored(terms):
    assert "tacrolimus" in terms.concepts([coding(f" {RXNORM}\n", " 2665162 ")])


def test_documented_system_aliases_are_accepted(terms):
    assert "tacrolimus" in terms.concepts([coding("urn:oid:2.16.840.1.113883.6.88", "198377")])
    assert "creatinine" in terms.concepts([coding("urn:oid:2.16.840.1.113883.6.1", "2160-0")])
    assert "pregnancy" in terms.concepts([coding("urn:oid:2.16.840.1.113883.6.96", "77386006")])
    assert "pregnancy" in terms.concepts([coding("http://snomed.info/id", "77386006")])
    assert "pregnancy" in terms.concepts([coding("urn:oid:2.16.840.1.113883.6.90", "O09.511")])


def test_a_medication_can_belong_to_several_sets(terms):
    found = terms.concepts([coding(RXNORM, "199058")])  # mycophenolate mofetil 250 MG Oral Capsule
    assert found == {"mycophenolate", "teratogens"}
    both = terms.concepts([coding(RXNORM, "198377"), coding(RXNORM, "6851")])
    assert both == {"tacrolimus", "methotrexate", "teratogens"}


@pytest.mark.parametrize(
    ("code", "names"),
    [
        ("485020", {"mycophenolate", "teratogens"}),  # EC-MPS 180 mg
        ("1734917", {"cyclophosphamide", "teratogens"}),
        ("2105834", {"rituximab"}),  # rituximab-abbs product
        ("3008", {"other-calcineurin-inhibitors"}),
        ("236077", {"other-calcineurin-inhibitors"}),
        ("197853", {"cyp3a4-strong-inhibitors"}),  # ketoconazole 200 mg tablet
        ("21212", {"cyp3a4-strong-inhibitors"}),  # clarithromycin
        ("831054", {"cyp3a4-moderate-inhibitors"}),  # diltiazem tablet: moderate, not strong
        ("897618", {"cyp3a4-moderate-inhibitors"}),  # verapamil ER: moderate, not strong
        ("9384", {"cyp3a4-strong-inducers"}),
        ("1596450", {"nephrotoxins"}),  # gentamicin (current IN)
        ("5640", {"nephrotoxins"}),  # ibuprofen
        ("11124", {"nephrotoxins"}),  # vancomycin
    ],
)
def test_medication_sets(terms, code, names):
    assert terms.concepts([coding(RXNORM, code)]) == names


# ---------------------------------------------------------------- conditions and ICD-10-CM hierarchy


@pytest.mark.parametrize(
    ("code", "name"),
    [
        ("O09.511", "pregnancy"),  # descendant of entry O09
        ("O09511", "pregnancy"),  # same code written without its dot
        ("o09.90", "pregnancy"),  # lower case
        ("O09", "pregnancy"),  # the entry itself
        ("Z33.1", "pregnancy"),
        ("O14.00", "pregnancy-hypertension"),  # descendant of O14
        ("O13.9", "pregnancy-hypertension"),
        ("B16.9", "hepatitis-b"),  # acute hepatitis B, descendant of B16
        ("D80.1", "hypogammaglobulinemia"),
        ("Z39.1", "lactation"),
    ],
)
def test_icd10cm_entries_match_their_descendants(terms, code, name):
    assert name in terms.concepts([coding(ICD10CM, code)])


@pytest.mark.parametrize(
    ("code", "name"),
    [
        ("Z33", "pregnancy"),  # an ancestor of an entry is not a match
        ("Z33.2", "pregnancy"),  # sibling: encounter for elective termination
        ("O0", "pregnancy"),
        ("B17.1", "hepatitis-b"),  # hepatitis C
        ("D84.821", "hypogammaglobulinemia"),  # drug-induced immunodeficiency: not stated low antibodies
        ("M32.1", "lupus-nephritis"),
        ("M32.10", "lupus-nephritis"),  # SLE, organ involvement unspecified: not nephritis
        ("M32.19", "lupus-nephritis"),  # other organ involvement: not nephritis
    ],
)
def test_icd10cm_matching_is_not_broader_than_the_entries(terms, code, name):
    assert name not in terms.concepts([coding(ICD10CM, code)])


def test_lupus_nephritis_codes_are_lupus_and_lupus_nephritis(terms):
    assert terms.concepts([coding(ICD10CM, "M32.14")]) == {"lupus", "lupus-nephritis"}
    assert terms.concepts([coding(ICD10CM, "M32.10")]) == {"lupus"}
    class_v = terms.concepts([coding(SNOMED, "52042003")])
    assert class_v == {"lupus", "lupus-nephritis", "lupus-nephritis-class-v"}
    assert terms.concepts([coding(SNOMED, "55464009")]) == {"lupus"}


def test_only_icd10cm_is_hierarchical(terms):
    # a longer SNOMED id is another concept, not a child
    assert terms.concepts([coding(SNOMED, "773860061")]) == frozenset()
    assert terms.concepts([coding(SNOMED, "O09.511")]) == frozenset()
    assert terms.concepts([coding(LOINC, "2160-01")]) == frozenset()


def test_codeable_concepts(terms):
    assert terms.concepts_of_concept(None) == frozenset()
    assert terms.concepts_of_concept({"text": "Pregnant"}) == frozenset()  # text alone is not a code
    concept = {"coding": [coding(SNOMED, "999999"), coding(ICD10CM, "O09.211")], "text": "whatever"}
    assert terms.concepts_of_concept(concept) == {"pregnancy"}
    assert terms.concepts_of_concept({"coding": "not a list"}) == frozenset()


# ---------------------------------------------------------------- observations and answers


@pytest.mark.parametrize(
    ("system", "code", "names"),
    [
        (LOINC, "14682-9", {"creatinine"}),
        (LOINC, "98979-8", {"egfr"}),
        (LOINC, "34366-5", {"upcr"}),
        (LOINC, "33929-1", {"tacrolimus-level"}),
        (LOINC, "1558-6", {"glucose", "glucose-fasting"}),
        (LOINC, "2345-7", {"glucose"}),
        (LOINC, "85354-9", {"blood-pressure"}),
        (LOINC, "8480-6", {"systolic-bp"}),
        (LOINC, "2106-3", {"hcg-qualitative"}),
        (LOINC, "19080-1", {"hcg-quantitative"}),
        (LOINC, "82810-3", {"pregnancy-status"}),
        (SNOMED, "77386006", {"pregnancy", "pregnant-answer"}),
        (SNOMED, "60001007", {"not-pregnant-answer"}),
        (SNOMED, "10828004", {"qualitative-positive"}),
        (SNOMED, "260373001", {"qualitative-positive"}),
        (V3_INTERPRETATION, "POS", {"qualitative-positive"}),
        (V3_INTERPRETATION, "DET", {"qualitative-positive"}),
        (SNOMED, "260385009", {"qualitative-negative"}),
        (SNOMED, "260415000", {"qualitative-negative"}),
        (V3_INTERPRETATION, "NEG", {"qualitative-negative"}),
        (V3_INTERPRETATION, "ND", {"qualitative-negative"}),
        (SNOMED, "261665006", set()),  # "Unknown" pregnancy status is neither answer
        (LOINC, "2889-4", set()),  # 24-hour protein is not a ratio
    ],
)
def test_observation_and_answer_sets(terms, system, code, names):
    assert terms.concepts([coding(system, code)]) == names


def test_contains_and_codes(terms):
    assert terms.contains("tacrolimus", RXNORM, "2665161")
    assert not terms.contains("tacrolimus", RXNORM, "284520")
    assert terms.contains("pregnancy", ICD10CM, "O09.A0")
    rows = terms.codes("tacrolimus-level")
    assert (LOINC, "11253-2", "Tacrolimus [Mass/volume] in Blood") in rows
    assert len(rows) == 3
    with pytest.raises(ValueError, match="'no-such-set'"):
        terms.codes("no-such-set")
    with pytest.raises(ValueError, match="'no-such-set'"):
        terms.contains("no-such-set", RXNORM, "1")


# ---------------------------------------------------------------- configuration


def test_unverified_codes_are_off_by_default_and_on_when_included(terms):
    extended = Terminology.load(include=["unverified"])
    assert "tacrolimus-level" not in terms.concepts([coding(LOINC, "74096-9")])
    assert "tacrolimus-level" in extended.concepts([coding(LOINC, "74096-9")])
    assert "lupus" in extended.concepts([coding(ICD10CM, "M32.13")])
    # an extension of a member set also extends the union (leflunomide ingredient: no published source yet)
    assert extended.concepts([coding(RXNORM, "27169")]) == {"leflunomide", "teratogens"}
    assert terms.concepts([coding(RXNORM, "27169")]) == frozenset()


def test_local_codes_join_their_set_and_unions(terms):
    drugs = "http://hospital.example/drugs"
    local = Terminology.load(
        local_codes={
            "creatinine": [{"system": "urn:oid:1.2.3", "code": "CREA"}],
            "mycophenolate": [{"system": drugs, "code": "MMF-500", "display": "MMF"}],
        }
    )
    assert local.concepts([coding("urn:oid:1.2.3", "CREA")]) == {"creatinine"}
    assert local.concepts([coding(drugs, "MMF-500")]) == {"mycophenolate", "teratogens"}
    assert ("urn:oid:1.2.3", "CREA", "") in local.codes("creatinine")
    assert terms.concepts([coding("urn:oid:1.2.3", "CREA")]) == frozenset()


def test_configuration_mistakes_are_reported_by_name():
    with pytest.raises(ValueError, match="'verified-by-me'"):
        Terminology.load(include=["verified-by-me"])
    with pytest.raises(ValueError, match=re.escape("'../valuesets'")):
        Terminology.load(include=["../valuesets"])
    with pytest.raises(ValueError, match="'kreatinine'"):
        Terminology.load(local_codes={"kreatinine": [{"system": "urn:oid:1.2.3", "code": "CREA"}]})
    with pytest.raises(ValueError, match="creatinine"):
        Terminology.load(local_codes={"creatinine": [{"code": "CREA"}]})


def test_an_extension_file_for_an_unknown_set_is_rejected(tmp_path):
    (tmp_path / "creatinine.json").write_text((DEFAULT_DIR / "creatinine.json").read_text())
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "kreatinine.json").write_text((DEFAULT_DIR / "creatinine.json").read_text())
    assert Terminology.load(directory=tmp_path).names == {"creatinine"}
    with pytest.raises(ValueError, match="'kreatinine'"):
        Terminology.load(include=["extra"], directory=tmp_path)


def test_the_shipped_settings_load_and_can_switch_the_extension_on():
    settings = yaml.safe_load((REPO / "hooks" / "settings.yaml").read_text())
    shipped = Terminology.from_settings(settings["valuesets"])
    assert not shipped.contains("tacrolimus-level", LOINC, "74096-9")
    switched = Terminology.from_settings({**settings["valuesets"], "include": ["unverified"]})
    assert switched.contains("tacrolimus-level", LOINC, "74096-9")


def test_default_terminology_is_loaded_once():
    assert default_terminology() is default_terminology()
    assert default_terminology().contains("tacrolimus", RXNORM, "2665161")


# ---------------------------------------------------------------- drug recognition (rules.md)


def test_recognition_by_product_code_without_any_text(terms):
    found = terms.recognise([coding(RXNORM, "105585")])  # methotrexate 2.5 MG Oral Tablet (VSAC)
    assert found.classes == {"methotrexate", "teratogens"} and found.by_name == frozenset()


def test_recognition_by_ingredient_code(terms):
    found = terms.recognise([], ingredients=[coding(RXNORM, "3008")])  # cyclosporine
    assert found.classes == {"other-calcineurin-inhibitors"} and not found.by_name


@pytest.mark.parametrize(
    ("text", "classes"),
    [
        ("METHOTREXATE 2.5 mg tab", {"methotrexate", "teratogens"}),
        ("Neoral 100 mg", {"other-calcineurin-inhibitors"}),
        ("Lupkynis 7.9 mg capsule", {"other-calcineurin-inhibitors"}),  # voclosporin: a name, no code yet
        ("St. John's Wort 300 mg", {"cyp3a4-strong-inducers"}),
        ("AmBisome 50 mg IV", {"nephrotoxins"}),
        ("rituximab-abbs 500 mg", {"rituximab"}),
    ],
)
def test_recognition_by_a_whole_word_name_in_any_case(terms, text, classes):
    found = terms.recognise([coding("http://hospital.example/drugs", "X1", text)], texts=[text])
    assert found.classes == classes and found.by_name == classes


def test_a_name_inside_another_word_is_not_a_name(terms):
    assert terms.recognise(texts=["antimethotrexatea 5 mg", "Ibuprofenol"]).classes == frozenset()


def test_a_name_adds_only_the_classes_no_code_gave(terms):
    found = terms.recognise(
        [coding(RXNORM, "197806")], texts=["ibuprofen 600 MG Oral Tablet with methotrexate"]
    )
    assert found.classes == {"nephrotoxins", "methotrexate", "teratogens"}
    assert found.by_name == {"methotrexate", "teratogens"}


@pytest.mark.parametrize(
    ("codings", "texts"),
    [
        (
            [coding(RXNORM, "855635")],
            ["Voltaren"],
        ),  # known from its published display: Topical Gel [Voltaren]
        ([coding(RXNORM, "6135")], ["ketoconazole 2 % shampoo"]),
        ([coding(RXNORM, "42316")], ["tacrolimus 0.1 % ointment"]),
        ([], ["cyclosporine ophthalmic emulsion"]),
        ([], ["gentamicin 0.3 % eye drops"]),
    ],
)
def test_forms_for_skin_eye_ear_or_mucosa_never_count(terms, codings, texts):
    found = terms.recognise(codings, texts=texts)
    assert found.classes == frozenset() and found.local_form


def test_topical_products_of_the_sources_are_kept_aside_not_dropped(terms):
    assert terms.local_forms[(RXNORM, "855635")] == (
        "nephrotoxins",
        "Diclofenac Sodium 0.01 MG/MG Topical Gel [Voltaren]",
    )
    assert not any(code == "855635" for _, code, _ in terms.codes("nephrotoxins"))


# Brands whose every product is for the eye or skin (a name alone must not count as systemic), veterinary
# brands, and names too short or generic to match as a word in free text.
NOT_NAMED_ON_PURPOSE = {
    "Acular", "Acuvail", "Ocufen", "Omidria", "Flector", "Pennsaid", "Solaraze", "Surpass",
    "EloxiOral", "Eloxiject", "Ketofen", "Loxicom", "Meloxidyl", "Metacam", "Ostilox", "Xylon",
    "Ibu", "Samson",
}  # fmt: skip


def test_every_published_display_of_a_class_code_is_recognised_by_its_name_too():
    """A text-only order copies a product's published name ("Caldolor 800 mg IV"): the names must cover
    every brand in the class's own sources, or such an order is missed (found: Caldolor, Lodine, Treximet)."""
    terms = Terminology.load()
    unnamed = set()
    for name in sorted(terms.drug_classes):
        for system, code, display in terms.codes(name):
            by_code = terms.concepts([{"system": system, "code": code}]) & terms.drug_classes
            by_name = terms.recognise(texts=[display]).classes & terms.drug_classes
            if display and by_code - by_name:
                unnamed.add(display.split(" ")[0])
    assert unnamed <= NOT_NAMED_ON_PURPOSE


def test_an_edited_value_set_file_is_read_again(tmp_path):
    """The parsed files are kept between loads (each reload builds a new Terminology); an edit is not lost."""
    directory = tmp_path / "valuesets"
    directory.mkdir()
    path = directory / "tacrolimus.json"
    original = json.loads((DEFAULT_DIR / "tacrolimus.json").read_text())
    path.write_text(json.dumps(original))
    code = original["expansion"]["contains"][0]
    concept = [{"system": code["system"], "code": code["code"]}]
    assert "tacrolimus" in Terminology.load(directory=directory).concepts(concept)
    edited = {
        **original,
        "expansion": {**original["expansion"], "contains": original["expansion"]["contains"][1:]},
    }
    edited["compose"] = {"include": []}
    path.write_text(json.dumps(edited, indent=1))  # another size: a new version even within one mtime tick
    assert "tacrolimus" not in Terminology.load(directory=directory).concepts(concept)
