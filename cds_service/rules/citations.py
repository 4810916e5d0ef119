"""The sources a finding can cite: key → (label, absolute URL).

Labels, DOIs and identifiers come from the project knowledge base ``clinical.md`` (§2, §3, §6.5, §6.7; a copy
is in ``tests/data/knowledge/``), each checked against a published record before it was written here. A link
goes to the source itself (rules.md § Card contract): a DOI, a PubMed record, the label on DailyMed (its
``setid`` page) or Drugs@FDA, or the guideline's own page; never a search page. A secondary page is used only
where no primary source can be linked, and its label then says "(secondary)". Every host is on the list in
``citation_hosts.json`` beside this file (``tests/test_citations.py`` checks it).
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

CITATION_HOSTS_FILE = Path(__file__).with_name("citation_hosts.json")

CITATIONS: dict[str, tuple[str, str]] = {
    "kdigo-2024": (
        "KDIGO 2024 Clinical Practice Guideline for the Management of Lupus Nephritis. Kidney Int "
        "2024;105(1S):S1–S69",
        "https://doi.org/10.1016/j.kint.2023.09.002",
    ),
    "acr-2024-ln": (
        "Sammaritano LR, et al. 2024 American College of Rheumatology Guideline for the Screening, "
        "Treatment, and Management of Lupus Nephritis. Arthritis Care Res 2025;77(9):1045–1065",
        "https://doi.org/10.1002/acr.25528",
    ),
    "acr-2020-reproductive": (
        "Sammaritano LR, et al. 2020 American College of Rheumatology Guideline for the Management of "
        "Reproductive Health in Rheumatic and Musculoskeletal Diseases. Arthritis Rheumatol "
        "2020;72(4):529–556",
        "https://doi.org/10.1002/art.41191",
    ),
    "bsr-2022": (
        "Russell MD, et al. BSR 2022 guideline on drugs in pregnancy and breastfeeding (Table 1). "
        "Rheumatology 2023",
        "https://www.ncbi.nlm.nih.gov/pmc/articles/PMC10070073/",
    ),
    "eular-2023": (
        "Fanouriakis A, et al. EULAR recommendations for the management of systemic lupus erythematosus: "
        "2023 update. Ann Rheum Dis 2024;83(1):15–29",
        "https://doi.org/10.1136/ard-2023-224762",
    ),
    "fomin-roberts-2016": (
        "Fomin A, Roberts WN. Tacrolimus Use for Lupus Nephritis Raises Debate over Role in North American "
        "Population. The Rheumatologist, 10 Oct 2016",
        "https://www.the-rheumatologist.org/article/tacrolimus-use-lupus-nephritis-raises-debate-role-north-american-population",
    ),
    "prograf-label": (
        "Prograf (tacrolimus) US prescribing information, DailyMed: warnings and monitoring",
        "https://dailymed.nlm.nih.gov/dailymed/drugInfo.cfm?setid=7f667de1-9dfa-4bd6-8ba0-15ee2d78873b",
    ),
    "lupkynis-label": (
        "LUPKYNIS (voclosporin) prescribing information, revised 10/2025 (NDA 213716 S-008): eGFR, blood "
        "pressure and CYP3A4 rules. Drugs@FDA",
        "https://www.accessdata.fda.gov/drugsatfda_docs/label/2025/213716s008lbl.pdf",
    ),
    "liu-2015": (
        "Liu Z, et al. Multitarget therapy for induction treatment of lupus nephritis: a randomized trial. "
        "Ann Intern Med 2015;162(1):18–26 (NCT00876616)",
        "https://doi.org/10.7326/M14-1030",
    ),
    "mok-2016": (
        "Mok CC, et al. Tacrolimus versus mycophenolate mofetil for induction therapy of lupus nephritis: a "
        "randomised controlled trial and long-term follow-up. Ann Rheum Dis 2016;75(1):30–36",
        "https://doi.org/10.1136/annrheumdis-2014-206456",
    ),
    "hebert-2013": (
        "Hebert MF, et al. Interpreting tacrolimus concentrations during pregnancy and postpartum. "
        "Transplantation 2013;95(7):908–915 (unbound exposure; breast-milk transfer)",
        "https://doi.org/10.1097/TP.0b013e318278d367",
    ),
    "pregnancy-dose-cohort": (
        "Tacrolimus dose needs in pregnancy: Japanese kidney-transplant cohort (PMID 25560652)",
        "https://pubmed.ncbi.nlm.nih.gov/25560652/",
    ),
    "livertox-rituximab": (
        "LiverTox: Rituximab (hepatitis B reactivation, hypogammaglobulinaemia). NCBI Bookshelf NBK548249",
        "https://www.ncbi.nlm.nih.gov/books/NBK548249/",
    ),
    "cni-electrolytes": (
        "Review of calcineurin-inhibitor electrolyte effects: hyperkalaemia and hypomagnesaemia (PMC7080294)",
        "https://www.ncbi.nlm.nih.gov/pmc/articles/PMC7080294/",
    ),
    "naesens-2009": (
        "Naesens M, Kuypers DR, Sarwal M. Calcineurin inhibitor nephrotoxicity. Clin J Am Soc Nephrol "
        "2009;4(2):481–508",
        "https://doi.org/10.2215/CJN.04800908",
    ),
    "ln-trial-regimens": (
        "Tacrolimus regimens used in lupus nephritis trials (systematic review, Lupus Sci Med, Table 3 on "
        "the journal's site): trough 5–10 ng/mL (Chen), 6–8 ng/mL (Li), 5–7 ng/mL with mycophenolate 1 g "
        "(Bao)",
        "https://lupus.bmj.com/highwire/markup/136217/expansion",
    ),
    "ckd-epi-2021": (
        "Inker LA, et al. New Creatinine- and Cystatin C-Based Equations to Estimate GFR without Race. "
        "N Engl J Med 2021;385:1737–49",
        "https://doi.org/10.1056/NEJMoa2102953",
    ),
    "kdigo-aki-2012": (
        "KDIGO Clinical Practice Guideline for Acute Kidney Injury. Kidney Int Suppl 2012;2(1):1–138 "
        "(creatinine rise of 0.3 mg/dL, 26.5 µmol/L)",
        "https://kdigo.org/guidelines/acute-kidney-injury/",
    ),
    "schwartz-2009": (
        "Schwartz GJ, et al. New equations to estimate GFR in children with CKD. J Am Soc Nephrol "
        "2009;20(3):629–637 (bedside Schwartz equation)",
        "https://doi.org/10.1681/ASN.2008030287",
    ),
    "regency-2025": (
        "Furie RA, et al. Efficacy and Safety of Obinutuzumab in Active Lupus Nephritis (REGENCY). N Engl J "
        "Med 2025;392:1471–1483",
        "https://doi.org/10.1056/NEJMoa2410965",
    ),
    "envarsus-label": (
        "ENVARSUS XR (tacrolimus extended-release tablets) US prescribing information §2: once daily, in the "
        "morning; conversion from immediate release. DailyMed",
        "https://dailymed.nlm.nih.gov/dailymed/drugInfo.cfm?setid=de2315b0-6344-43ac-9aea-3e3b68d828e7",
    ),
    "advagraf-conversion-2013": (
        "Significant reduction of tacrolimus trough level after conversion from twice daily Prograf to once "
        "daily Advagraf in Chinese renal transplant recipients. Ren Fail 2013;35(7):942–945 (same-mg "
        "conversion; 127% of the immediate-release dose needed at week 12)",
        "https://pubmed.ncbi.nlm.nih.gov/23815459/",
    ),
    "versluis-2023": (
        "Versluis J, et al. Pharmacokinetics of tacrolimus in pregnant solid organ transplant recipients: a "
        "retrospective study (46 pregnancies; dose-corrected levels −48% in month 7 of pregnancy, recovered "
        "within 3 months post-partum). PubMed",
        "https://pubmed.ncbi.nlm.nih.gov/38084781/",
    ),
    "wang-2022-paxlovid": (
        "Wang AX, et al. Am J Transplant 2022, on nirmatrelvir/ritonavir with tacrolimus: hold tacrolimus "
        "for the course, levels on days 3 and 6–7",
        "https://doi.org/10.1111/ajt.16997",
    ),
    "idsa-2013-vaccination": (
        "Rubin LG, et al. 2013 IDSA Clinical Practice Guideline for Vaccination of the Immunocompromised "
        "Host: live vaccines at least 4 weeks before immunosuppression, not within 2 weeks of starting "
        "it. Clin Infect Dis 2014;58(3):e44–e100",
        "https://doi.org/10.1093/cid/cit684",
    ),
    "acr-2022-vaccination": (
        "Bass AR, et al. 2022 American College of Rheumatology Guideline for Vaccinations in Patients With "
        "Rheumatic and Musculoskeletal Diseases. Arthritis Care Res 2023;75(3):449–464",
        "https://doi.org/10.1002/acr.25045",
    ),
    "cellcept-label": (
        "CellCept (mycophenolate mofetil) US prescribing information: embryofetal toxicity, pregnancy "
        "testing and contraception (mycophenolate REMS). DailyMed",
        "https://dailymed.nlm.nih.gov/dailymed/drugInfo.cfm?setid=37241e87-4af4-4dc3-a1aa-ea6f20d8dc40",
    ),
}


def citation_hosts() -> frozenset[str]:
    """The hosts a card's citation links may go to (``citation_hosts.json``, kept as data)."""
    return frozenset(json.loads(CITATION_HOSTS_FILE.read_text(encoding="utf-8"))["hosts"])


def link_problem(url: str, hosts: frozenset[str]) -> str | None:
    """Why ``url`` may not be a card's citation link (None when it may): https, an allowed host, no search."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "https":
        return "not https"
    if host.replace(".", "").isdigit() or ":" in host:
        return "an IP address, not a named host"
    if host not in hosts:
        return f"host {host!r} is not in {CITATION_HOSTS_FILE.name}"
    lowered = url.lower()
    if any(mark in lowered for mark in ("?term=", "/search", "query=", "search.cfm", "?q=")):
        return "a search page, not the source itself"
    return None
