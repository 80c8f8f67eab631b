"""The embedded demo model: procedural scenes, a tiny SD-style pipeline, its trainer, checker and benchmark."""
