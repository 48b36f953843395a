"""What an app is made of: its settings, and what it runs with (process types, environment, folders)."""
