"""Text from a patient's record, made safe to put in a card: data, never Markdown or HTML (issue 25).

Rules write plain text and quote FHIR strings (drug names, condition displays, units, resource ids) inside it;
they never write Markdown. The card builder is the one place that writes Markdown, and it passes every piece
of rule text through ``markdown`` (for ``detail``) or ``plain`` (for ``summary``, suggestion labels and action
descriptions, which CDS Hooks defines as plain text but some EHRs render as Markdown anyway). A rule author
therefore cannot forget to escape: there is nothing to call.

Both strip C0/C1 control characters and the invisible bidi and format characters that can reorder or hide
what a clinician reads, and turn line breaks into spaces, so no FHIR string can start a heading or a list.
``markdown`` backslash-escapes what CommonMark would act on, so ``tacrolimus *Prograf* 1_mg`` still reads as
typed once rendered; ``plain`` escapes only what could make a link, an image or HTML in an EHR that renders
it as Markdown (``<``, ``[``, ``]`` and the backslash), so it reads as typed in an EHR that shows it as text.
"""

from __future__ import annotations

import re

FHIR_TEXT_LIMIT = 200
"""A name from the record is cut to this many characters (no drug or condition name comes near it)."""

_LINE_BREAKS = re.compile("[\t\n\v\f\r\x85\u2028\u2029]+")
_INVISIBLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
)
"""C0 and C1 controls (line breaks are turned into spaces first), bidi marks, embeddings, overrides and
isolates, and zero-width spaces: none belongs in a card, and the bidi ones can make text read backwards."""
_MARKDOWN_ANYWHERE = re.compile(r"([\\`*_\[\]<~]|&(?=#?\w+;))")
_MARKDOWN_LINE_START = re.compile(r"^(\s*)(#{1,6}(?=\s|$)|>|[+-](?=\s|$)|\d{1,9}[.)](?=\s|$))")
"""What starts a heading, quote or list when it opens a line (an evidence line's label does): ``# x``,
``> x``, ``- x``, ``1. x``; ``0.9 mg/dL`` or ``-5`` start none."""
_PLAIN_MARKUP = re.compile(r"([\\<\[\]])")


def clean(text: str) -> str:
    """No control, bidi or zero-width character; line breaks and tabs become one space."""
    return _INVISIBLE.sub("", _LINE_BREAKS.sub(" ", text))


def shorten(text: str, limit: int = FHIR_TEXT_LIMIT) -> str:
    """At most ``limit`` characters: a longer text is cut at a word where it can be and ends with "…"."""
    text = clean(text)
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:") + "…"


def markdown(text: str) -> str:
    """Plain text as inline CommonMark that renders as the same text: never a link, image, HTML or block."""
    escaped = _MARKDOWN_ANYWHERE.sub(r"\\\1", clean(text))
    return _MARKDOWN_LINE_START.sub(_escape_line_start, escaped, count=1)


def _escape_line_start(match: re.Match[str]) -> str:
    """``\\# x``, ``\\> x``, ``\\- x``; ``1\\. x`` (a backslash before a digit is no escape)."""
    lead, marker = match[1], match[2]
    if marker[0].isdigit():
        return lead + marker[:-1] + "\\" + marker[-1]
    return lead + "\\" + marker


def plain(text: str) -> str:
    """Plain text for a plain-text field that some EHRs render as Markdown: no link, image or HTML there."""
    return _PLAIN_MARKUP.sub(r"\\\1", clean(text))
