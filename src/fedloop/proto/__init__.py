"""fedloop's own gRPC API: feedback.proto (the FeedbackService) and its generated code (`make proto`)."""
