"""The tenant's commands, one module per group (`tenant`, `release`, `samples`, `vault`, `keys rotate`).

What a command opens is in context.py (the store alone, or the whole runtime, as
context managers); the tenant's answers to `status`, `audit` and `report` are in views.py.
"""
