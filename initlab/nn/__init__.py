"""Layer knowledge shared by models, inits, telemetry and theory: one table each."""
