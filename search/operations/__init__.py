"""What follows a study: finalize chosen candidates, export them, and the report's data from the model."""
