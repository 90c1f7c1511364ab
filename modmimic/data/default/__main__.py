"""``python -m modmimic.data.default [PATH]``: (re)write the embedded default dataset (needs the ``sim`` extra)."""
import sys

from modmimic.data.default import regenerate

s = regenerate(sys.argv[1] if len(sys.argv) > 1 else None)
print(f"wrote {s['demos']} {s['task']} demos ({s['samples']} samples) to {s['path']} ({s['bytes'] / 1e6:.1f} MB) "
      f"in {s['wall_seconds']:.0f} s")
