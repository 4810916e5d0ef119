"""Rebuild the drug-class value sets of cds_service/valuesets/ from the published sources they cite.

Run by hand when a source is refreshed; the service never runs it. ``--sources`` is a folder holding copies
of the published files (layout below, each from the public repository and commit named in SOURCES); every
code written carries the key of each source that lists it, and each source's URL/OID, version and origin are
written into the ValueSet (see cds_service/valuesets/README.md, "Drug classes").

    vs25/valueset-<OID>.json   cqframework/ecqm-content-qicore-2025 input/vocabulary/valueset/external
    vs24/valueset-<OID>.json   cqframework/ecqm-content-qicore-2024 (same path)
    pddi/valueset-<drug>.xml   HL7/PDDI-CDS input/vocabulary
    ersd/valueset-hiv-arv-booster-example.fsh   HL7/case-reporting input/fsh/valuesets
    ped/drugs/rx_<name>.csv    PEDSnet/Variable-Dictionary drugs (CR line endings converted to LF)
    cpic/drug.sql              cpicpgx/cpic-schema drug.sql (tab-separated COPY rows)

Codes already in a drug-class file whose source is the knowledge base (clinical.md, key ``KB``) are kept.
Classes, their ingredient words (which pick a source's rows) and their names (ingredients and brands, used
for recognition by name) are the CLASSES table below.

    python scripts/build_drug_valuesets.py --sources /path/to/sources [--only NAME ...]

``--only`` rebuilds just the named classes (a new class needs only its own sources).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cds_service.terminology import (  # noqa: E402
    NAME_EXTENSION,
    RXNORM,
    SOURCE_EXTENSION,
    SOURCE_KEY_EXTENSION,
)

OUT = REPO / "cds_service" / "valuesets"
VERSION = "2026.12.01"
DATE = "2026-12-01"
ECQM25 = "cqframework/ecqm-content-qicore-2025@db5a7e143304b19b70cbf6a89e5ebeab9e40df61"
ECQM24 = "cqframework/ecqm-content-qicore-2024@9ebd48ffebf2ed2489f3904cc8393ebf8979bfc9"
PDDI = "HL7/PDDI-CDS@018be88010175fa37e818c27c2925a6767273870"
ERSD = "HL7/case-reporting@66c0bcb6798e4417721ad6b8d854a96c5df0ff24"
PED = "PEDSnet/Variable-Dictionary@009e8ba179c84d844a0c5b898132efb33acdef9e"
CPIC = "cpicpgx/cpic-schema@05f9b09c5fcdf674efe3289411994b54f979aedb"
VSAC = "http://cts.nlm.nih.gov/fhir/ValueSet/"

# key: (kind, file, reference URL/OID, version, title, origin)
VSAC_SOURCES = {
    "VS25-1248.364": (
        "vs25",
        "2.16.840.1.113762.1.4.1248.364",
        "20250312",
        "Immunosuppressive Drugs for Urology Care",
        ECQM25,
    ),
    "VS25-1248.355": (
        "vs25",
        "2.16.840.1.113762.1.4.1248.355",
        "20250312",
        "Chemotherapy Agents for Advanced Cancer",
        ECQM25,
    ),
    "VS25-196.11.1001": (
        "vs25",
        "2.16.840.1.113883.3.464.1003.196.11.1001",
        "20250114",
        "Antibiotic Medications for Pharyngitis",
        ECQM25,
    ),
    "VS25-600.1476": (
        "vs25",
        "2.16.840.1.113883.3.600.1476",
        "20250206",
        "Pharmacologic Therapy for Hypertension",
        ECQM25,
    ),
    "VS25-196.11.1530": (
        "vs25",
        "2.16.840.1.113883.3.464.1003.196.11.1530",
        "20240210",
        "Antidepressant Medication",
        ECQM25,
    ),
    "VS24-1003.1190": (
        "vs24",
        "2.16.840.1.113883.3.464.1003.1190",
        "20240210",
        "Antibiotic Medications for Upper Respiratory Infection",
        ECQM24,
    ),
    "VS24-1248.134": (
        "vs24",
        "2.16.840.1.113762.1.4.1248.134",
        "20240119",
        "Central Nervous System Depressants",
        ECQM24,
    ),
    "VS24-1248.164": ("vs24", "2.16.840.1.113762.1.4.1248.164", "20240120", "Antihypertensives", ECQM24),
    "VS24-1003.1063": (
        "vs24",
        "2.16.840.1.113883.3.464.1003.1063",
        "20240123",
        "Potentially Harmful Pain Medications for Older Adults",
        ECQM24,
    ),
    "VS24-1003.1055": (
        "vs24",
        "2.16.840.1.113883.3.464.1003.1055",
        "20240123",
        "Potentially Harmful Barbiturates for Older Adults",
        ECQM24,
    ),
    "VS25-526.3.1139": (
        "vs25",
        "2.16.840.1.113883.3.526.3.1139",
        "20210218",
        "ACE Inhibitor or ARB or ARNI",
        ECQM25,
    ),
    "VS25-526.3.1489": (
        "vs25",
        "2.16.840.1.113883.3.526.3.1489",
        "20230217",
        "ACE Inhibitor or ARB or ARNI Ingredient",
        ECQM25,
    ),
    "VS24-1248.170": ("vs24", "2.16.840.1.113762.1.4.1248.170", "20240118", "Diuretics", ECQM24),
    "VS24-196.12.1266": (
        "vs24",
        "2.16.840.1.113883.3.464.1003.196.12.1266",
        "20180310",
        "Glucocorticoids (oral only)",
        ECQM24,
    ),
}

NSAIDS = [
    "ibuprofen", "naproxen", "diclofenac", "celecoxib", "indomethacin", "ketorolac", "meloxicam", "etodolac",
    "nabumetone", "piroxicam", "sulindac", "oxaprozin", "flurbiprofen", "ketoprofen", "fenoprofen",
    "diflunisal", "mefenamate", "tolmetin",
]  # fmt: skip
PED_FILES = {
    "tacrolimus": "rx_tacrolimus_cyclosporine",
    "other-calcineurin-inhibitors": "rx_tacrolimus_cyclosporine",
    "mycophenolate": "rx_mycophenolate",
    "cyclophosphamide": "rx_cyclophosphamide",
    "rituximab": "rx_rituximab",
    "ras-inhibitors": "raas_codes",
    "glucocorticoids-systemic": "rx_steroids",
}
CPIC_FOR = {
    "potassium-sparing-diuretics": ["9997"],  # spironolactone
    "trimethoprim": ["10831"],  # sulfamethoxazole / trimethoprim
    "pjp-prophylaxis": ["10831", "3108"],  # and dapsone
}
"""Ingredient codes CPIC's drug table lists, taken for the classes that need them (clinical.md §6.6)."""

# name: (title, ingredient words that select source rows, extra names (brands, synonyms), PDDI drug files)
CLASSES: dict[str, tuple[str, list[str], list[str], list[str]]] = {
    "tacrolimus": (
        "Systemic tacrolimus",
        ["tacrolimus"],
        ["Prograf", "Envarsus", "Astagraf", "Hecoria", "Advagraf", "Modigraf"],
        [],
    ),
    "mycophenolate": (
        "Mycophenolate",
        ["mycophenolate", "mycophenolic acid"],
        ["CellCept", "Myfortic", "Myhibbin"],
        [],
    ),
    "cyclophosphamide": (
        "Cyclophosphamide",
        ["cyclophosphamide"],
        ["Cytoxan", "Neosar", "Endoxan", "Endoxana", "Procytox", "Frindovyx"],
        [],
    ),
    "methotrexate": (
        "Methotrexate",
        ["methotrexate"],
        ["Trexall", "Otrexup", "Rasuvo", "Xatmep", "Jylamvo", "RediTrex", "Rheumatrex"],
        [],
    ),
    "leflunomide": ("Leflunomide", ["leflunomide"], ["Arava"], []),
    "other-calcineurin-inhibitors": (
        "Other calcineurin inhibitors (duplicate CNI)",
        ["cyclosporine", "voclosporin"],
        ["ciclosporin", "cyclosporin", "Neoral", "Sandimmune", "Gengraf", "Lupkynis"],
        [],
    ),
    "rituximab": (
        "Rituximab",
        ["rituximab"],
        ["rituximab-abbs", "rituximab-pvvr", "rituximab-arrx", "Rituxan", "Truxima", "Ruxience", "Riabni"],
        [],
    ),
    "cyp3a4-strong-inhibitors": (
        "Strong CYP3A4 inhibitors",
        [
            "ketoconazole",
            "itraconazole",
            "posaconazole",
            "voriconazole",
            "clarithromycin",
            "ritonavir",
            "cobicistat",
            "atazanavir",
            "darunavir",
            "lopinavir",
            "indinavir",
            "nelfinavir",
            "saquinavir",
            "nefazodone",
        ],
        [
            "Sporanox",
            "Tolsura",
            "Onmel",
            "Noxafil",
            "Vfend",
            "Biaxin",
            "Norvir",
            "Tybost",
            "Kaletra",
            "Reyataz",
            "Evotaz",
            "Prezista",
            "Prezcobix",
            "Crixivan",
            "Viracept",
            "Invirase",
            "Paxlovid",
        ],
        [],
    ),
    "cyp3a4-moderate-inhibitors": (
        "Moderate CYP3A4 inhibitors",
        ["diltiazem", "verapamil", "erythromycin", "fluconazole"],
        [
            "Cardizem",
            "Tiazac",
            "Cartia",
            "Taztia",
            "Calan",
            "Verelan",
            "Isoptin",
            "Diflucan",
            "Ery-Tab",
            "EryPed",
            "Erythrocin",
        ],
        [],
    ),
    "cyp3a4-strong-inducers": (
        "Strong CYP3A4 inducers",
        ["rifampin", "rifabutin", "carbamazepine", "phenytoin", "phenobarbital", "St. John's wort"],
        [
            "rifampicin",
            "St John's wort",
            "hypericum",
            "Rifadin",
            "Rimactane",
            "Mycobutin",
            "Tegretol",
            "Carbatrol",
            "Epitol",
            "Equetro",
            "Dilantin",
            "Phenytek",
        ],
        [],
    ),
    "nephrotoxins": (
        "Additive nephrotoxins (NSAIDs, aminoglycosides, amphotericin B, vancomycin)",
        [
            *NSAIDS,
            *[
                "mefenamic acid",
                "gentamicin",
                "tobramycin",
                "amikacin",
                "streptomycin",
                "neomycin",
                "plazomicin",
            ],
            *["amphotericin B", "vancomycin"],
        ],
        [
            "Advil",
            "Motrin",
            "Aleve",
            "Naprosyn",
            "Anaprox",
            "Voltaren",
            "Cataflam",
            "Zipsor",
            "Zorvolex",
            "Cambia",
            "Celebrex",
            "Indocin",
            "Tivorbex",
            "Toradol",
            "Sprix",
            "Mobic",
            "Vivlodex",
            "Qmiiz",
            "Relafen",
            "Feldene",
            "Daypro",
            "Ansaid",
            "Nalfon",
            "Ponstel",
            "Clinoril",
            "Duexis",
            "Vimovo",
            "Arthrotec",
            "Vicoprofen",
            "Arikayce",
            "Vancocin",
            "Firvanq",
            "AmBisome",
            "Abelcet",
            "Fungizone",
            # Brand names (BN) whose published displays are in this class's sources, systemic forms only
            # (ophthalmic/topical-only brands such as Acular, Flector or Pennsaid are left out on purpose):
            "Caldolor",
            "Dyloject",
            "Neoprofen",
            "Naprelan",
            "Lodine",
            "Nuprin",
            "Treximet",
            "Reprexain",
            "Ibudone",
            "Genpril",
            "Addaprin",
            "Ultraprin",
            "Ibutab",
            "Proprinal",
            "Menstridol",
            "Fenortho",
            "Ibuprohm",
            "Wal-Profen",
            "Wal-Proxen",
            "Counteract IB",
        ],
        NSAIDS,
    ),
    # --- rule catalog version 3 (clinical.md §6.2 N16, N20; §6.6) ---
    "ras-inhibitors": (
        "ACE inhibitors, ARBs, ARNI and aliskiren (N16 hyperkalaemia co-drugs)",
        [
            *["captopril", "enalapril", "enalaprilat", "benazepril", "lisinopril", "moexipril", "quinapril"],
            *[
                "ramipril",
                "trandolapril",
                "fosinopril",
                "perindopril",
                "cilazapril",
                "imidapril",
                "spirapril",
            ],
            *[
                "zofenopril",
                "losartan",
                "valsartan",
                "eprosartan",
                "irbesartan",
                "telmisartan",
                "candesartan",
            ],
            *["olmesartan", "azilsartan", "sacubitril", "aliskiren"],
        ],
        [
            *[
                "Accupril",
                "Accuretic",
                "Aceon",
                "Altace",
                "Amturnide",
                "Atacand",
                "Avalide",
                "Avapro",
                "Azor",
            ],
            *["Benicar", "Byvalson", "Capoten", "Capozide", "Cozaar", "Diovan", "Edarbi", "Edarbyclor"],
            *["Entresto", "Epaned", "Exforge", "Hyzaar", "Lexxel", "Lotensin", "Lotrel", "Mavik", "Micardis"],
            *["Monopril", "Prestalia", "Prinivil", "Prinzide", "Qbrelis", "Tarka", "Tekamlo", "Tekturna"],
            *["Teveten", "Tribenzor", "Twynsta", "Uniretic", "Univasc", "Valturna", "Vaseretic", "Vasotec"],
            *["Zestoretic", "Zestril"],
        ],
        [],
    ),
    "potassium-sparing-diuretics": (
        "Mineralocorticoid antagonists and potassium-sparing diuretics (N16 hyperkalaemia co-drugs)",
        ["spironolactone", "eplerenone", "finerenone", "amiloride", "triamterene"],
        ["Aldactone", "CaroSpir", "Aldactazide", "Inspra", "Kerendia", "Midamor", "Moduretic", "Dyrenium"],
        [],
    ),
    "trimethoprim": (
        "Trimethoprim, alone or with sulfamethoxazole (N16 hyperkalaemia co-drugs)",
        ["trimethoprim"],
        [
            "co-trimoxazole",
            "cotrimoxazole",
            "Bactrim",
            "Septra",
            "Sulfatrim",
            "Primsol",
            "Proloprim",
            "Trimpex",
        ],
        [],
    ),
    # --- rule catalog version 3, N20 (clinical.md §6.1 item 3, §6.2 N20, §6.6) ---
    "glucocorticoids-systemic": (
        "Systemic glucocorticoids with a prednisone equivalence (N20)",
        ["prednisone", "prednisolone", "methylprednisolone", "dexamethasone", "hydrocortisone"],
        [
            *["Deltasone", "Rayos", "Orapred", "Millipred", "Pediapred", "Veripred", "Flo-Pred", "Prelone"],
            *["Medrol", "Solu-Medrol", "Depo-Medrol", "A-Methapred", "Decadron", "Hemady"],
            *["Cortef", "Solu-Cortef", "Alkindi"],
        ],
        [],
    ),
    "pjp-prophylaxis": (
        "Pneumocystis prophylaxis: sulfamethoxazole/trimethoprim, dapsone, atovaquone, pentamidine (N20)",
        ["sulfamethoxazole", "dapsone", "atovaquone", "pentamidine"],
        ["co-trimoxazole", "cotrimoxazole", "Bactrim", "Septra", "Sulfatrim", "Mepron", "NebuPent", "Pentam"],
        [],
    ),
}
VSAC_FOR = {
    "tacrolimus": ["VS25-1248.364"],
    "mycophenolate": ["VS25-1248.364"],
    "leflunomide": ["VS25-1248.364"],
    "other-calcineurin-inhibitors": ["VS25-1248.364"],
    "rituximab": ["VS25-1248.364"],
    "methotrexate": ["VS25-1248.355"],
    "cyclophosphamide": ["VS25-1248.355"],
    "cyp3a4-strong-inhibitors": ["VS25-196.11.1001", "VS24-1003.1190", "VS25-196.11.1530"],
    "cyp3a4-moderate-inhibitors": ["VS25-196.11.1001", "VS24-1003.1190", "VS25-600.1476", "VS24-1248.164"],
    "cyp3a4-strong-inducers": ["VS24-1003.1190", "VS24-1248.134", "VS24-1003.1055"],
    "nephrotoxins": ["VS24-1003.1190", "VS24-1003.1063"],
    "ras-inhibitors": ["VS25-526.3.1139", "VS25-526.3.1489", "VS25-600.1476", "VS24-1248.164"],
    "potassium-sparing-diuretics": ["VS25-600.1476", "VS24-1248.164", "VS24-1248.170"],
    "trimethoprim": ["VS25-196.11.1001", "VS24-1003.1190"],
    "glucocorticoids-systemic": ["VS24-196.12.1266"],
    "pjp-prophylaxis": ["VS25-196.11.1001", "VS24-1003.1190"],
}
TERATOGEN_MEMBERS = ("mycophenolate", "cyclophosphamide", "methotrexate", "leflunomide")


def words_pattern(words: list[str]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in words)
    return re.compile(rf"\b({alternatives})\b", re.I)


def vsac_rows(root: Path, key: str) -> list[tuple[str, str]]:
    folder, oid, _, _, _ = VSAC_SOURCES[key]
    resource = json.loads((root / folder / f"valueset-{oid}.json").read_text())
    return [
        (c["code"], c["display"])
        for c in resource["expansion"]["contains"]
        if c.get("system") == RXNORM and c.get("display")
    ]


def pddi_rows(root: Path, drug: str) -> tuple[list[tuple[str, str]], set[str], str, str]:
    """Codes of the PDDI per-drug value set, the codes of its '-exclude' set, its version and date."""
    ns = {"f": "http://hl7.org/fhir"}

    def read(path: Path) -> tuple[list[tuple[str, str]], str, str]:
        tree = ET.parse(path).getroot()
        rows = [
            (c.find("f:code", ns).get("value"), c.find("f:display", ns).get("value"))  # type: ignore[union-attr]
            for c in tree.iterfind(".//f:concept", ns)
        ]
        version = tree.find("f:version", ns)
        date = tree.find("f:date", ns)
        return (
            rows,
            version.get("value") if version is not None else "",
            date.get("value") if date is not None else "",
        )

    rows, version, date = read(root / "pddi" / f"valueset-{drug}.xml")
    exclude = root / "pddi" / f"valueset-{drug}-exclude.xml"
    excluded = {code for code, _ in read(exclude)[0]} if exclude.is_file() else set()
    return rows, excluded, version, date


def ersd_rows(root: Path) -> list[tuple[str, str]]:
    text = (root / "ersd" / "valueset-hiv-arv-booster-example.fsh").read_text()
    return re.findall(r'^\* \$rxnorm#(\d+) "([^"]+)"', text, re.M)


def ped_rows(root: Path, name: str) -> list[tuple[str, str]]:
    with (root / "ped" / "drugs" / f"{PED_FILES[name]}.csv").open(newline="") as handle:
        return [
            (row["concept_code"], row["concept_name"])
            for row in csv.DictReader(handle)
            if row.get("vocabulary_id") == "RxNorm"
        ]


def cpic_rows(root: Path, codes: list[str]) -> list[tuple[str, str]]:
    """CPIC drug table rows (``RxNorm:<code>\\t<name>\\t...``) for these ingredient codes."""
    found = re.findall(r"^RxNorm:(\d+)\t([^\t]+)\t", (root / "cpic" / "drug.sql").read_text(), re.M)
    return [(code, name) for code, name in found if code in codes]


def source_extension(key: str, reference: str, version: str, title: str, origin: str) -> dict:
    return {
        "url": SOURCE_EXTENSION,
        "extension": [
            {"url": "key", "valueString": key},
            {"url": "reference", "valueUri": reference},
            {"url": "version", "valueString": version},
            {"url": "title", "valueString": title},
            {"url": "origin", "valueString": origin},
        ],
    }


def kb_rows(name: str) -> list[tuple[str, str]]:
    """Codes the file already holds from the knowledge base (clinical.md), kept as they are."""
    path = OUT / f"{name}.json"
    if not path.is_file():
        return []
    resource = json.loads(path.read_text())
    rows = []
    for entry in resource.get("expansion", {}).get("contains", []):
        keys = [
            e.get("valueString") for e in entry.get("extension", []) if e.get("url") == SOURCE_KEY_EXTENSION
        ]
        if not keys or "KB" in keys:
            rows.append((entry["code"], entry["display"]))
    return rows


def build(root: Path, name: str) -> dict:
    title, ingredients, brands, pddi_drugs = CLASSES[name]
    pattern = words_pattern(ingredients)
    sources: dict[str, dict] = {}
    found: dict[str, tuple[str, list[str]]] = {}  # code -> (display, source keys)

    def add(key: str, rows: list[tuple[str, str]], every: bool = False, skip: set[str] = frozenset()) -> None:
        for code, display in rows:
            if code in skip or not (every or pattern.search(display)):
                continue
            entry = found.setdefault(code, (display, []))
            if key not in entry[1]:
                entry[1].append(key)

    kb = kb_rows(name)
    sources["KB"] = source_extension(
        "KB",
        "https://example.org/tacrolimus-cds/knowledge/clinical.md",
        "2026-11-25",
        "Project knowledge base clinical.md §1.1-1.3: codes verified there against the sources of its §0 "
        "(CPIC "
        "cpicpgx/cpic-schema drug.sql @05f9b09c5fcd, OHDSI PhenotypeLibrary @40106e4e2892, PDDI, VS25, "
        "NLM Technical Bulletin Oct 2023 RxNorm release for the BX-rated tacrolimus SCDs, ndclist.com)",
        "clinical.md (project knowledge base, 2026-11-25)",
    )
    for key in VSAC_FOR.get(name, []):
        _, oid, version, vs_title, origin = VSAC_SOURCES[key]
        add(key, vsac_rows(root, key))
        sources[key] = source_extension(key, VSAC + oid, version, vs_title, origin)
    for drug in pddi_drugs:
        rows, excluded, version, date = pddi_rows(root, drug)
        key = f"PDDI-{drug}"
        add(key, rows, every=True, skip=excluded)
        sources[key] = source_extension(
            key,
            f"http://hl7.org/fhir/uv/pddi/ValueSet/valueset-{drug}",
            f"{version} ({date})",
            f"PDDI CDS IG: {drug} medications",
            f"{PDDI} input/vocabulary/valueset-{drug}.xml",
        )
    if name == "cyp3a4-strong-inhibitors":
        add("ERSD-1146.1601", ersd_rows(root))
        sources["ERSD-1146.1601"] = source_extension(
            "ERSD-1146.1601",
            VSAC + "2.16.840.1.113762.1.4.1146.1601",
            "RxNorm 2022-01 (expansion 2022-04-05)",
            "HIV Infection (ARV Boosters [CYP3A4 Inhibitor]) (RXNORM), eCR IG example",
            f"{ERSD} input/fsh/valuesets/valueset-hiv-arv-booster-example.fsh",
        )
    if name in PED_FILES:
        key = f"PED-{PED_FILES[name]}"
        add(key, ped_rows(root, name))
        sources[key] = source_extension(
            key,
            f"https://github.com/PEDSnet/Variable-Dictionary/blob/009e8ba179c8/drugs/{PED_FILES[name]}.csv",
            "2024-05-06",
            "PEDSnet Variable-Dictionary OMOP concept set (RxNorm rows)",
            f"{PED} drugs/{PED_FILES[name]}.csv",
        )
    if name in CPIC_FOR:
        add("CPIC-drug", cpic_rows(root, CPIC_FOR[name]), every=True)
        sources["CPIC-drug"] = source_extension(
            "CPIC-drug",
            "https://github.com/cpicpgx/cpic-schema/blob/05f9b09c5fcdf674efe3289411994b54f979aedb/drug.sql",
            "2018-02-14",
            "CPIC database drug table (RxNorm ingredient codes)",
            f"{CPIC} drug.sql",
        )
    add("KB", kb, every=True)  # last: a published display wins over the knowledge base's wording
    used = {key for _, keys in found.values() for key in keys}
    sources = {key: ext for key, ext in sources.items() if key in used}
    return resource(name, title, ingredients + brands, sources, found)


def resource(name: str, title: str, names: list[str], sources: dict[str, dict], found: dict) -> dict:
    contains = [
        {
            "extension": [{"url": SOURCE_KEY_EXTENSION, "valueString": key} for key in keys],
            "system": RXNORM,
            "code": code,
            "display": display,
        }
        for code, (display, keys) in sorted(found.items(), key=lambda item: int(item[0]))
    ]
    includes = [
        {
            "extension": [ext],
            "system": RXNORM,
            "concept": [
                {"code": c["code"], "display": c["display"]}
                for c in contains
                if key in [e["valueString"] for e in c["extension"]]
            ],
        }
        for key, ext in sources.items()
    ]
    counts = ", ".join(
        f"{key} {sum(1 for c in contains if key in [e['valueString'] for e in c['extension']])}"
        for key in sources
    )
    return {
        "resourceType": "ValueSet",
        "id": name,
        "extension": [{"url": NAME_EXTENSION, "valueString": n} for n in names],
        "url": f"https://example.org/tacrolimus-cds/ValueSet/{name}",
        "version": VERSION,
        "name": "".join(part.capitalize() for part in re.split(r"[^a-z0-9]+", name)),
        "title": title,
        "status": "active",
        "experimental": False,
        "date": DATE,
        "publisher": "tacrolimus-cds project",
        "description": (
            f"Drug class {name} (rules.md § Drug recognition): its RxNorm ingredients and every product "
            "concept "
            "that contains them, as listed by the published sources named in compose.include "
            f"(codes per source: {counts}). Each code names its sources in its extension; forms for skin, "
            "eye, "
            "ear or mucosa are kept here with their published display and never count (terminology.py). "
            "The names extension lists the ingredients and brands recognised by name."
        ),
        "compose": {"include": includes},
        "expansion": {"timestamp": f"{DATE}T00:00:00Z", "total": len(contains), "contains": contains},
    }


def teratogens(built: dict[str, dict]) -> dict:
    found: dict[str, tuple[str, list[str]]] = {}
    sources: dict[str, dict] = {}
    names: list[str] = []
    for member in TERATOGEN_MEMBERS:
        res = built[member]
        names += [e["valueString"] for e in res["extension"]]
        for include in res["compose"]["include"]:
            key = next(e["valueString"] for e in include["extension"][0]["extension"] if e["url"] == "key")
            sources.setdefault(key, include["extension"][0])
        for c in res["expansion"]["contains"]:
            entry = found.setdefault(c["code"], (c["display"], []))
            for e in c["extension"]:
                if e["valueString"] not in entry[1]:
                    entry[1].append(e["valueString"])
    out = resource("teratogens", "Teratogens (P2, P7)", names, sources, found)
    out["description"] = (
        "Union of the mycophenolate, cyclophosphamide, methotrexate and leflunomide drug classes (P2 known "
        "teratogen in pregnancy, P7 not compatible with breastfeeding; ACR 2020). Same sources and codes as "
        "its "
        "members; the loader also adds any extension or local codes of those four sets."
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=Path, required=True)
    parser.add_argument("--only", nargs="+", choices=sorted(CLASSES), help="rebuild only these classes")
    args = parser.parse_args()
    built = {name: build(args.sources, name) for name in args.only or CLASSES}
    if all(member in built for member in TERATOGEN_MEMBERS):
        built["teratogens"] = teratogens(built)
    for name, res in built.items():
        (OUT / f"{name}.json").write_text(
            json.dumps(res, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        print(f"{name}: {res['expansion']['total']} codes")
    prune_unverified(built)


def prune_unverified(built: dict[str, dict]) -> None:
    """Codes now verified leave unverified/; an extension left empty is removed."""
    for name, res in built.items():
        path = OUT / "unverified" / f"{name}.json"
        if not path.is_file():
            continue
        verified = {c["code"] for c in res["expansion"]["contains"]}
        extra = json.loads(path.read_text())
        left = [c for c in extra["expansion"]["contains"] if c["code"] not in verified]
        if not left:
            path.unlink()
            print(f"unverified/{name}.json: every code verified, removed")
            continue
        extra["expansion"]["contains"] = left
        extra["expansion"]["total"] = len(left)
        for include in extra.get("compose", {}).get("include", []):
            include["concept"] = [c for c in include.get("concept", []) if c["code"] not in verified]
        path.write_text(json.dumps(extra, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"unverified/{name}.json: {len(left)} codes left")


if __name__ == "__main__":
    main()
