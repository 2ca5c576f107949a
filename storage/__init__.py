"""Data layer: models, sealed columns, engines and units of work, migrations."""
