"""fedloop's own gRPC APIs (.proto files and generated code); the feedback service lands here."""
