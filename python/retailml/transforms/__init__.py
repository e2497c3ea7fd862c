"""dbt transforms, run programmatically."""
