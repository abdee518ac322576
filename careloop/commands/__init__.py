"""CLI command groups. Each module imports only typer/rich/stdlib at top level; heavy work is imported inside
the command bodies so that `careloop --help` stays fast."""
