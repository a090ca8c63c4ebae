"""
Personal data in text (ROOTS 02_pii/bigscience_pii_detect_redact.py: KEY, EMAIL, USER, IP_ADDRESS; its ID and
phone patterns were disabled for false positives, so PHONE here is off by default): the patterns, the checks a
regex cannot make, where each pattern is run, and redaction by span. curate.py redacts every kept document;
safety.py redacts generated text as it streams.
"""

import ipaddress
import re
from collections import Counter

IPV4_PART = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# ROOTS' second KEY form: >= 3 groups of 3+ digits or upper-case/digit mixes, each optionally followed by a space or
# dash; it catches card, account and phone numbers
NUMBER_GROUP = r"(?:\d{3,}|[A-Z]+\d+[A-Z]*|\d+[A-Z]+\d*)"
PII_PATTERNS = {  # on overlapping matches the earlier start wins, then the longer, then the earlier kind here
    "EMAIL": re.compile(r"(?<![\w.%+-])[\w.%+-]+@(?:[^\W_](?:[\w-]*[^\W_])?\.)+[^\W\d_]{2,}(?![\w-])"),  # any script
    "IP_ADDRESS": re.compile(rf"(?<![\w.])(?:{IPV4_PART}\.){{3}}{IPV4_PART}(?!\w|\.\d)"
                             r"|(?<![\w.:])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])"),
    "PHONE": re.compile(r"(?<![\w+])(?<!\d[ .-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)|\d{2,4})[ .-]\d{3,4}[ .-]\d{3,4}(?!\w|[ .-]\d)"),
    "KEY": re.compile(rf"(?<![\w+/=-])(?:(?P<code>[A-Za-z0-9_+/=-]{{20,}})|(?P<number>{NUMBER_GROUP}(?:[ -]?{NUMBER_GROUP}){{2,}}))(?![\w+/=-])"),
    "USER": re.compile(r"(?<![\w@.+-])@(\w(?:[\w.-]*\w)?)(?![\w@])"),
}
PII_KINDS = ("EMAIL", "IP_ADDRESS", "KEY", "USER")  # ROOTS' four; PHONE is opt-in
# Where find_pii runs each pattern. A match consists of its kind's SOFT characters, so it lies in one stretch of them
# and its look-ahead reads no further than the hard character ending the stretch (one character past the match, two
# after a soft '.', ' ' or '-'); only stretches holding an ANCHOR are searched. Anchors are read off the patterns (a
# numeric KEY has a capital next to a digit, or else is 3 groups of 3+ digits), but for KEY's code form, which is
# read off _is_pii: 4+ letter/digit switches mean a digit, then a letter after nothing but _+/=-, then a digit; a
# code without one is no key, and it hides no other match. Keep these in step with the patterns and _is_pii
# (test_find_pii_scans_every_stretch_a_match_can_lie_in fails otherwise).
PII_SCAN = {  # kind: (anchor, soft characters as a class body)
    "EMAIL": ("@", r"\w.%+@-"),
    "IP_ADDRESS": (r"\.(?<=\d\.)(?=\d{1,3}\.\d)|:(?=[0-9A-Fa-f]{0,4}:)", r"\dA-Fa-f.:"),
    "PHONE": (r"\d(?=\)?[ .-]\d{3,4}[ .-]\d{3})", r"\d+() .-"),
    "KEY": (r"\d(?:(?<=[A-Z]\d)|(?=[A-Z]|\d{2,}[ -]?\d{3,}[ -]?\d{3}|[_+/=-]*[A-Za-z][A-Za-z_+/=-]*[0-9]))",
            r"A-Za-z\d_+/= -"),
    "USER": ("@", r"\w.@-"),
}
PII_SCAN = {kind: (re.compile(anchor), re.compile(f"[^{soft}]"), re.compile(f".*[^{soft}]", re.S))
            for kind, (anchor, soft) in PII_SCAN.items()}
# `@word` that is code, not a handle: CSS at-rules, decorators, doc-comment and BibTeX tags (ROOTS redacted these)
CODE_AT_WORDS = {"media", "import", "font", "keyframes", "charset", "supports", "page", "namespace", "layer",
                 "property", "container", "document", "viewport", "counter", "staticmethod", "classmethod",
                 "dataclass", "override", "param", "return", "returns", "throws", "author", "see", "since",
                 "deprecated", "link", "article", "book", "inproceedings", "misc", "interface", "end"}
VERSION_BEFORE = re.compile(r"(?i)\b(?:version|ver\.?|release|build|v)[\s:]*$")
PII_LOOKBEHIND = 12  # characters before an IP address that VERSION_BEFORE reads; the patterns' own look-behinds read 1 or 2
YEARS = re.compile(r"(?:1\d{3}|20\d\d)(?:[ -](?:1\d{3}|20\d\d))*")  # "1999 2000 2001": a list of years, not a key


def is_numbering_or_isbn(found):
    """Numbers the numeric KEY form takes that identify no one (seen in the crawl sample): counting runs
    ("315 316 317 318") and ISBN-13s (978/979 prefix, valid check digit)."""
    groups = re.split("[ -]", found)
    if all(g.isdigit() for g in groups) and all(int(b) == int(a) + 1 for a, b in zip(groups, groups[1:])):
        return True
    digits = found.replace("-", "")
    return (len(digits) == 13 and digits.isdigit() and digits[:3] in ("978", "979")
            and sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(digits)) % 10 == 0)


def _is_pii(kind, match, text):
    """The checks a regex cannot make: valid IPv6, not a version number, a key with letter/digit mixing."""
    found = match.group()
    if kind == "IP_ADDRESS":
        if VERSION_BEFORE.search(text[max(0, match.start() - PII_LOOKBEHIND):match.start()]):
            return False
        if ":" in found:
            try:
                ipaddress.IPv6Address(found)
            except ValueError:
                return False
        return any(c.isdigit() for c in found)
    if kind == "KEY":
        if match.group("number"):
            return not (YEARS.fullmatch(found) or is_numbering_or_isbn(found.strip(" -")))
        kinds = [c.isdigit() for c in found if c.isalnum()]  # hashes, API keys, UUIDs switch between letters and
        return sum(a != b for a, b in zip(kinds, kinds[1:])) >= 4  # digits many times; words do not
    if kind == "USER":  # ROOTS: 3 or more characters after the @
        return len(match.group(1)) >= 3 and match.group(1).split(".")[0].lower() not in CODE_AT_WORDS
    return True


def pii_matches(kind, text):
    """PII_PATTERNS[kind].finditer(text) in the stretches of soft characters that hold an anchor (PII_SCAN), each
    searched whole: endpos just past its hard character lets look-aheads read what they read in the whole text,
    and look-behinds read before pos anyway. A regex that begins with a look-behind is tried at every position,
    a cost the anchors, which begin with a rare character, avoid."""
    anchor, hard, last_hard = PII_SCAN[kind]
    done = 0
    while found := anchor.search(text, done):
        head, tail = last_hard.match(text, done, found.start()), hard.search(text, found.start())
        start, done = head.end() if head else done, tail.end() if tail else len(text)
        yield from PII_PATTERNS[kind].finditer(text, start, done)


def find_pii(text, kinds=PII_KINDS, matches=pii_matches):
    """Non-overlapping (start, end, kind) spans of personal data, in text order. `matches(kind, text)` gives a
    pattern's matches (the tests pass each pattern's finditer over the whole text, the reference for PII_SCAN)."""
    kinds = [k for k in PII_PATTERNS if k in kinds]
    spans = sorted((m.start(), -m.end(), priority, kind) for priority, kind in enumerate(kinds)
                   for m in matches(kind, text) if _is_pii(kind, m, text))
    chosen, end = [], 0
    for start, neg_end, _, kind in spans:
        if start >= end:
            chosen.append((start, -neg_end, kind))
            end = -neg_end
    return chosen


def redact_pii(text, kinds=PII_KINDS):
    """(text with each span replaced by PI:<KIND>, Counter of kinds). Spans are replaced right to left, so
    earlier offsets stay valid; ROOTS' global str.replace also hit every other occurrence of the string."""
    found = Counter()
    for start, end, kind in reversed(find_pii(text, kinds)):
        text = f"{text[:start]}PI:{kind}{text[end:]}"
        found[kind] += 1
    return text, found
