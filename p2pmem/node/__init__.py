"""The trio shell around NodeCore (shell.py) and its control socket."""
