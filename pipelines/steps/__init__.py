"""Steps of the plan: each wires one stage module to the task machinery in base.py."""
