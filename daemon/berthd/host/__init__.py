"""This host: what it offers (capabilities, GPUs) and whether an app's requirements are met."""
