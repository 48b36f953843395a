"""Who may do what: the access rules and the audit log."""
