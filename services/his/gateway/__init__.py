"""The local mobile gateway: Envoy generated from mesh/istio/gateway, and the web app behind it."""
