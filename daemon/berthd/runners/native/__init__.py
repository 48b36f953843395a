"""Native processes: the spawner (the one place processes start), the reaper, and the runner."""
