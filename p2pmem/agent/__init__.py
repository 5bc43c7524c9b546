"""The Agent (one home, the one writer), ranking of results, Maildir export."""
