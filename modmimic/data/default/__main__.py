"""``python -m modmimic.data.default [PATH]``: (re)write the embedded default dataset."""
import sys

from modmimic.data.default import regenerate

print(regenerate(sys.argv[1] if len(sys.argv) > 1 else None))
