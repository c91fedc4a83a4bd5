"""`fedloop demo`, and the simulation's answer to `report --run` (views.py)."""
