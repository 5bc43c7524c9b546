"""What people and programs use: the CLI, output formatting, the MCP server,
the demo."""
