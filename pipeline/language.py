"""The language an email is written in, as a BCP 47 tag (RFC 5646): ``en``, ``en-GB``,
``pt-BR``, ``zh-Hant``. It fills ``lang`` and ``xml:lang`` on the email's ``<html>``,
which screen readers use to pick a voice and pronunciation."""

from __future__ import annotations

import re

DEFAULT_LANGUAGE = "en"
# RFC 5646 §2.1: subtags of 1-8 letters or digits, joined by hyphens. langcodes
# accepts more (an underscore, as in a POSIX locale "en_US"), which HTML does not.
_SHAPE = re.compile(r"[A-Za-z0-9]{1,8}(?:-[A-Za-z0-9]{1,8})*")
_MAX_LENGTH = 64


def language_problem(value: object) -> str | None:
    """Why ``value`` is not a BCP 47 language tag whose subtags are registered with
    IANA (checked by the ``langcodes`` package) and name a language (not ``und``,
    ``zxx``, ``mul`` or ``mis``), or None when it is one.
    The message is one line naming the value and an example of a good tag."""
    import langcodes  # only when a workspace names a language

    good = "a BCP 47 language tag such as en, en-GB, de or pt-BR"
    if not isinstance(value, str):
        return f"must be {good}"
    shown = repr(value[:_MAX_LENGTH])
    if "_" in value and _SHAPE.fullmatch(value.replace("_", "-")):
        hyphens = value.replace("_", "-")
        return f"must be {good}, got {shown} (write {hyphens!r}: hyphens, not underscores)"
    if len(value) > _MAX_LENGTH or not _SHAPE.fullmatch(value):
        return f"must be {good}, got {shown}"
    try:
        parsed = langcodes.get(value, normalize=False)
        valid = langcodes.tag_is_valid(value)
    except Exception:  # the library's parse errors have no common base of their own
        return (
            f"must be {good}, got {shown} "
            "(not a valid BCP 47 tag: a subtag is repeated or out of place)"
        )
    language = parsed.language
    if language in _SAYS_NOTHING or language is None:
        meaning = _SAYS_NOTHING.get(language or "und", "no language")
        return (
            f"must be {good}, got {shown} ({language or 'und'!r} means {meaning}, which tells "
            "a screen reader nothing: write the language the emails are written in)"
        )
    if not valid:
        if not langcodes.tag_is_valid(language):
            return f"must be {good}, got {shown} ({language!r} is not a registered language)"
        return f"must be {good}, got {shown} (not a valid BCP 47 tag: a subtag is not registered)"
    return None


# Special language subtags of ISO 639-2 (RFC 5646 §4.1): valid tags, but no language
# a reader's screen reader can speak the email in.
_SAYS_NOTHING = {
    "und": "an undetermined language",
    "zxx": "no linguistic content",
    "mul": "several languages",
    "mis": "an uncoded language",
}
