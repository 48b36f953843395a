"""Where an app's code comes from: uploads, git repositories, source archives (and Docker images)."""
