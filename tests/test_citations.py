"""Every citation link goes to the source itself, on a host listed as data (rules.md § Card contract).

A DOI, a PubMed record, the label on DailyMed or Drugs@FDA, or the guideline's own page: never a search page,
never an IP address, never plain http. The host list is ``cds_service/rules/citation_hosts.json``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from cds_service.rules.citations import CITATIONS, citation_hosts, link_problem

HOSTS = citation_hosts()


@pytest.mark.parametrize("key", sorted(CITATIONS))
def test_each_citation_links_to_the_source_on_a_listed_host(key):
    label, url = CITATIONS[key]
    assert label.strip(), key
    assert link_problem(url, HOSTS) is None, (key, url, link_problem(url, HOSTS))
    parts = urlsplit(url)
    assert parts.scheme == "https" and parts.hostname in HOSTS
    assert "?term=" not in url and "/search" not in url and "query=" not in url


def test_a_secondary_page_says_so_in_its_label():
    """Only the DOI resolver, NLM/NCBI, FDA and the guideline bodies' and journals' own sites are primary."""
    for key, (label, url) in CITATIONS.items():
        if urlsplit(url).hostname not in HOSTS:
            assert "(secondary)" in label, key


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://doi.org/10.1056/NEJMoa2102953", "not https"),
        ("https://47.251.13.51:8081/41107121", "an IP address, not a named host"),
        ("https://[2001:db8::1]/x", "an IP address, not a named host"),
        ("https://pubmed.ncbi.nlm.nih.gov/?term=Hebert+tacrolimus", "a search page, not the source itself"),
        (
            "https://dailymed.nlm.nih.gov/dailymed/search.cfm?query=prograf",
            "a search page, not the source itself",
        ),
        ("https://www.droracle.ai/articles/275658/", "host 'www.droracle.ai' is not in citation_hosts.json"),
    ],
)
def test_the_check_refuses_what_a_card_must_never_link(url, why):
    assert link_problem(url, HOSTS) == why


def test_the_host_list_gives_a_reason_for_every_host():
    import json

    from cds_service.rules.citations import CITATION_HOSTS_FILE

    data = json.loads(CITATION_HOSTS_FILE.read_text(encoding="utf-8"))
    assert set(data["hosts"]) == set(data["why"])
