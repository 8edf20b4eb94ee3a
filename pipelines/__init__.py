"""Orchestration: config models, the stage plan, engine adapters and the CLI."""
