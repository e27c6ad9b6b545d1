"""Tools SREs run on the mesh policy and the Kubernetes manifests: check, explain, canary."""
