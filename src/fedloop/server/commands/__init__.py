"""HQ's commands, one module per group (`hq` with `run`, `versions`); HQ's `status|audit|report` in views.py."""
