"""Where every command looks for its settings unless told otherwise: in the directory it runs in.

That is the party's own working directory (the templates are the repository's
configs/; relative paths in each file resolve against the file's own directory).
"""

from pathlib import Path

TENANT_CONFIG = Path("tenant.toml")
HQ_CONFIG = Path("hq.toml")
FEDERATION_SETTINGS = Path("federation.toml")
