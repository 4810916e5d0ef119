"""The sources a finding can cite: key → (label, absolute URL).

Labels, DOIs and identifiers come from the project knowledge base ``clinical.md`` (§2, §3; a copy is in
``tests/data/knowledge/``). Where clinical.md names a source without a DOI or URL, the link is a search on
the official index (PubMed, DailyMed) built from the identifiers clinical.md gives, so a reader lands on the
source without us inventing a DOI.
"""

from __future__ import annotations

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
        "Prograf (tacrolimus) US prescribing information: warnings and monitoring",
        "https://dailymed.nlm.nih.gov/dailymed/search.cfm?labeltype=all&query=prograf",
    ),
    "lupkynis-label": (
        "LUPKYNIS (voclosporin) prescribing information: eGFR, blood pressure and CYP3A4 rules",
        "https://www.renalandurologynews.com/drug/lupkynis/",
    ),
    "liu-2015": (
        "Liu Z, et al. Multitarget therapy for induction treatment of lupus nephritis: a randomized trial. "
        "Ann Intern Med 2015;162(1):18–26 (NCT00876616)",
        "https://clinicaltrials.gov/study/NCT00876616",
    ),
    "mok-2016": (
        "Mok CC, et al. Tacrolimus versus mycophenolate mofetil for induction therapy of lupus nephritis: a "
        "randomised controlled trial and long-term follow-up. Ann Rheum Dis 2016;75(1):30–36",
        "https://doi.org/10.1136/annrheumdis-2014-206456",
    ),
    "hebert-2013": (
        "Hebert et al. Transplantation 2013;95:908 (tacrolimus in pregnancy: unbound exposure; breast-milk "
        "transfer)",
        "https://pubmed.ncbi.nlm.nih.gov/?term=Hebert+tacrolimus+Transplantation+2013%3B95%3A908",
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
        "Naesens et al. CJASN 2009 (review of calcineurin-inhibitor nephrotoxicity and its amplifiers)",
        "https://pubmed.ncbi.nlm.nih.gov/?term=Naesens+calcineurin+inhibitor+nephrotoxicity+2009",
    ),
    "ln-trial-regimens": (
        "Tacrolimus regimens used in lupus nephritis trials (systematic review table, Lupus Sci Med): "
        "trough 5–10 ng/mL (Chen), 6–8 ng/mL (Li), 5–7 ng/mL with mycophenolate 1 g (Bao)",
        "https://pubmed.ncbi.nlm.nih.gov/?term=tacrolimus+lupus+nephritis+systematic+review+Lupus+Sci+Med",
    ),
    "ckd-epi-2021": (
        "Inker LA, et al. New Creatinine- and Cystatin C-Based Equations to Estimate GFR without Race. "
        "N Engl J Med 2021;385:1737–49",
        "https://doi.org/10.1056/NEJMoa2102953",
    ),
}
