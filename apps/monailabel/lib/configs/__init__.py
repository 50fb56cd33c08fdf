"""Task configs of the app, one per model (``--conf models <name>``)."""
