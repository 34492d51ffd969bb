"""``protocol.EDIT_FIELDS`` names every field ``parse_edit_fields`` reads: an async job stores
only those (``jobs/model.py``, ``edit_fields``), so a field read but not listed would be lost
when the job runs. Checked by parsing a form that records each name looked up."""

from __future__ import annotations

from server.jobs.model import edit_fields
from server.protocol import EDIT_FIELDS, parse_edit_fields


class Recording(dict):
    """A form whose lookups are recorded (``get``, ``[]``, ``in``)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


def test_every_field_the_protocol_reads_is_listed():
    form = Recording({"prompt": "a bench", "seed": "3"})
    parse_edit_fields(form)
    assert form.read and form.read <= set(EDIT_FIELDS), sorted(form.read - set(EDIT_FIELDS))


def test_a_job_keeps_the_listed_fields_only():
    fields = {"prompt": "p", "n": "2", "webhook_url": "https://h/", "junk": "x" * 9999}
    assert edit_fields(fields) == {"prompt": "p", "n": "2"}
