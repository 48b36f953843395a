"""AppAPI's vocabulary: deploy daemons (DaemonConfigs), the ExApp contract, heartbeats, placement."""
