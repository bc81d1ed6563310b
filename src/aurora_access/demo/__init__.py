"""The e-commerce workload used by the demo, the benchmarks and the integration tests."""
