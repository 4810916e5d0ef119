"""``cds-service valuesets report``: what each drug class ships, and its problems (exit 1 on any)."""

from __future__ import annotations

import json
import shutil

from click.testing import CliRunner

from cds_service.cli import main
from cds_service.terminology import DEFAULT_DIR, SOURCE_KEY_EXTENSION
from cds_service.valueset_report import term_type

DRUG_FILES = (
    "tacrolimus", "mycophenolate", "cyclophosphamide", "methotrexate", "leflunomide", "teratogens",
    "rituximab", "other-calcineurin-inhibitors", "cyp3a4-strong-inhibitors", "cyp3a4-moderate-inhibitors",
    "cyp3a4-strong-inducers", "nephrotoxins", "ras-inhibitors", "potassium-sparing-diuretics", "trimethoprim",
)  # fmt: skip


def run(*args: str):
    return CliRunner().invoke(main, ["valuesets", "report", *args])


def test_the_shipped_value_sets_have_no_problem_and_every_class_is_reported():
    result = run()
    assert result.exit_code == 0, result.output
    for name in DRUG_FILES:
        assert f"\n{name}: " in "\n" + result.output
    assert "problems: none" in result.output
    assert "VS25-1248.355:" in result.output  # methotrexate's VSAC expansion, with its OID and version
    assert "2.16.840.1.113762.1.4.1248.355, version 20250312" in result.output
    assert "names: methotrexate, Trexall" in result.output
    assert "forms for skin, eye, ear or mucosa (never count): 34" in result.output  # the NSAID gels and drops


def copy_sets(tmp_path):
    target = tmp_path / "valuesets"
    target.mkdir()
    for name in DRUG_FILES:
        shutil.copy(DEFAULT_DIR / f"{name}.json", target / f"{name}.json")
    return target


def edit(path, change) -> None:
    resource = json.loads(path.read_text())
    change(resource)
    path.write_text(json.dumps(resource))


def test_a_code_without_a_source_a_shared_code_and_an_empty_class_are_problems(tmp_path):
    target = copy_sets(tmp_path)

    def strip_source(resource):
        resource["expansion"]["contains"][0]["extension"] = []

    def add_tacrolimus_code(resource):  # 198377 is tacrolimus 1 MG Oral Capsule: never a cyclosporine
        resource["expansion"]["contains"].append(
            {
                "extension": [{"url": SOURCE_KEY_EXTENSION, "valueString": "KB"}],
                "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                "code": "198377",
                "display": "tacrolimus 1 MG Oral Capsule",
            }
        )

    def empty(resource):
        resource["expansion"]["contains"] = []

    edit(target / "rituximab.json", strip_source)
    edit(target / "other-calcineurin-inhibitors.json", add_tacrolimus_code)
    edit(target / "leflunomide.json", empty)
    result = run("--directory", str(target))
    assert result.exit_code == 1
    assert "has no source" in result.output
    assert "also in tacrolimus: 198377" in result.output
    assert "leflunomide: 0 codes" in result.output and "the class is empty" in result.output


def test_a_union_may_share_its_members_codes(tmp_path):
    result = run("--directory", str(copy_sets(tmp_path)))
    assert result.exit_code == 0, result.output


def test_a_combination_product_naming_both_classes_may_be_in_both(tmp_path):
    """Trandolapril/verapamil (Tarka) is a RAS blocker (N16) and a moderate CYP3A4 inhibitor (N9)."""
    target = copy_sets(tmp_path)
    codes = {
        name: {c["code"] for c in json.loads((target / f"{name}.json").read_text())["expansion"]["contains"]}
        for name in ("ras-inhibitors", "cyp3a4-moderate-inhibitors")
    }
    assert "897781" in codes["ras-inhibitors"] & codes["cyp3a4-moderate-inhibitors"]
    result = run("--directory", str(target))
    assert result.exit_code == 0, result.output


def test_term_types_are_read_from_rxnorm_display_conventions():
    names = {"tacrolimus"}
    assert term_type("tacrolimus", names) == "IN"
    assert term_type("tacrolimus 1 MG Oral Capsule", names) == "SCD"
    assert term_type("tacrolimus 1 MG Oral Capsule [Prograf]", names) == "SBD"
    assert term_type("tacrolimus Oral Capsule", names) == "SCDF"
    assert term_type("tacrolimus Oral Capsule [Prograf]", names) == "SBDF"
    assert term_type("{8 (tobramycin 28 MG Inhalation Powder) } Pack", names) == "GPCK"
    assert term_type("Advil", names) == "BN"
    assert term_type("sulfamethoxazole / trimethoprim", {"trimethoprim"}) == "IN"  # a MIN
