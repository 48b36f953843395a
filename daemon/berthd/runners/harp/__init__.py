"""ExApps through HaRP (Nextcloud's AppAPI proxy): its control API client and the runners on Docker, Kubernetes and manual-install."""
