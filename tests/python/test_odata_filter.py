"""The documented OData `filter` language (reference-odata-filter.md) as evaluated by the
emulator for REST sends made with the official Python SDK. Every example filter is sent once;
each subscriber reports which ones reached it."""

from __future__ import annotations

import pytest
from azure.core.exceptions import HttpResponseError

# filter -> subscribers (by label) that must receive the message
CASES = {
    "tolower(userId) eq 'user1'": {"upper"},
    "toupper(userId) eq 'USER1'": {"upper"},
    "trim(userId) eq 'user1'": {"padded"},
    "substring(userId,5,2) eq 'ab'": {"dashed"},
    "endswith(userId,'de')": {"dashed"},
    "startswith(userId,'user')": {"dashed"},
    "contains(userId,'ab')": {"dashed"},
    "indexof(userId,'-ab-') ge 0": {"dashed"},
    "concat(userId,'x') eq 'USER1x'": {"upper"},
    "length(userId) gt 5": {"dashed", "padded"},
    "length(groups) gt 1": {"dashed"},
    "userId eq null": {"anonymous"},
    "userId ne null and not (length(userId) gt 5)": {"upper"},
    "userId in ('USER1', ' user1 ')": {"upper", "padded"},
    "'g2' in groups or userId eq 'USER1'": {"dashed", "upper"},
    "'g1' in groups and not ('g2' in groups)": {"upper"},
    # and binds tighter than or
    "length(userId) gt 0 and length(userId) lt 3 or length(userId) gt 7 and length(userId) lt 11": {"dashed"},
    "true": {"dashed", "upper", "padded", "anonymous"},
    "false": set(),
}


def test_documented_filter_examples(service, subscribe, fence):
    subs = {
        "dashed": subscribe(user_id="user-ab-de", groups=["g1", "g2"]),
        "upper": subscribe(user_id="USER1", groups=["g1"]),
        "padded": subscribe(user_id=" user1 "),
        "anonymous": subscribe(),
    }
    assert subs["anonymous"].user_id is None
    received = {expr: set() for expr in CASES}
    for i, expr in enumerate(CASES):
        # Keep going after a rejected filter so one run reports every unsupported example.
        try:
            service.send_to_all({"case": i}, filter=expr)
        except HttpResponseError as e:
            received[expr] = f"HTTP {e.status_code}: {e.message.splitlines()[0]}"

    labels = list(subs)
    for label, before in zip(labels, fence([subs[label] for label in labels])):
        for m in before:
            received[list(CASES)[m["data"]["case"]]].add(label)
    wrong = {expr: {"got": received[expr], "want": want} for expr, want in CASES.items() if received[expr] != want}
    assert not wrong, "\n".join(f"{expr!r}: {v}" for expr, v in wrong.items())


def test_invalid_filter_is_a_400(service, subscribe):
    subscribe(user_id="someone")
    with pytest.raises(HttpResponseError) as err:
        service.send_to_all({"x": 1}, filter="userId eq")
    assert err.value.status_code == 400
