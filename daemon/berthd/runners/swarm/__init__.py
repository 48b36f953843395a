"""Apps as Docker Swarm services, through a swarm manager registered as a `swarm-install` daemon."""
