"""HIS Mesh: a hospital information system as gRPC microservices."""
