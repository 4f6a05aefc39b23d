"""gRPC scaffolding shared by every recsys service: interceptors, health, reflection, lifecycle."""
