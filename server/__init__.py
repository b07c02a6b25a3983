"""HTTP, orchestration, persistence: knows the contract, never imports torch directly."""
