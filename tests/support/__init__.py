"""Real services the tests start that are not part of the product: the GCS emulator and Prometheus."""
