"""Data contracts of paradistill: table schemas, the recipe model and the user-error types."""
