"""Input data: TFDS data sources read through grain, and the bundled demo set."""
