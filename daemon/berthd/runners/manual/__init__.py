"""manual-install ExApps: started by someone else, watched by their heartbeat."""
