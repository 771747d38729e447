"""A pickle that writes a marker file when it is unpickled: what a tamperer would plant."""

from pathlib import Path


class WritesMarker:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        # exec is a builtin, so any unpickler that resolves globals freely will call it.
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))
