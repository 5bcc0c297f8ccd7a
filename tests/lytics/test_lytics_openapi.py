"""The Lytics contract check: every test here validates its hooks' exchanges against the excerpt of
Lytics' v2 document where it covers the operation (``lytics_spec``, see conftest)."""

from __future__ import annotations


def test_the_check_catches_an_answer_that_breaks_the_document(hook, lytics, lytics_spec):
    hook.get_segment("all_users")
    (answer,) = lytics_spec.exchanges
    answer._content = answer.content.replace(b'"tags":[]', b'"tags":"none"')
    assert any(p.startswith("response 200 to GET /v2/segment/all_users") for p in lytics_spec.problems())
    lytics_spec.enabled = False


def test_paths_the_document_lacks_are_not_checked(hook, lytics, lytics_spec):
    seg = hook.get_segment("all_users")
    hook.get_segment_jobs(seg["id"])
    hook.list_segment_groups()
    hook.reevaluate_segment(seg["id"])
    hook.get_segment_sizes([seg["id"]])
    assert lytics_spec.checked() == 1 and lytics_spec.problems() == []
