"""Kubernetes manifests for Keel against an existing Temporal cluster (deploy/README.md).

`python -m deploy.render` writes them from a values file; `python -m deploy.validate` checks
them offline against the Kubernetes and KEDA schemas.
"""
