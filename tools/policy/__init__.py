"""The validator's rules: what a schema cannot say about a rendered overlay, and the facts they rest on.

tools/validate.py renders every kustomization and runs these; tools/pin.py applies the pin gate and
the local-disk rule before it writes a pin. Each check takes rendered objects (dicts, as kustomize
printed them) and returns problems that name the object and what to change.

  serving.py      a serving Deployment as a whole: GPU, requests, probes, security, Ingress, NetworkPolicy,
                  HPA, node pools, the pin; runs the modules below for it
  capacity.py     Spot, disruption budgets, single replicas, node pools and their disks, ComputeClasses
                  and flex-start recycling, build Jobs (gke_facts.toml)
  cold_start.py   sync waves and prunes, Argo CD health, the model fetch, the startup windows, local disk
                  (upstream_facts.toml)
  access.py       Argo CD projects, credentials in env, installs and network of Jobs
  gateway.py      the OpenAI gateway container, its image, port, probes and route
  monitoring.py   alert rules and the Cloud Monitoring dashboard
  images.py       every image by digest from this project's Artifact Registry (or the policy's names), the
                  Binary Authorization policy, attestor and note agreeing, the template's placeholders
  pin_gate.py     can a published build run where an overlay pins it
  kubeschema.py   strict schema validation: built-in kinds and the CRDs in crds/
  k8s_objects.py  lookups on rendered objects that every module shares

  gke_facts.toml, upstream_facts.toml, image_facts.toml   the GKE, Argo CD, Kubernetes, Triton, Artifact
                                        Registry and Binary Authorization behaviour the rules rely on,
                                        each with its upstream file and line or doc URL
  crds/                                 vendored CustomResourceDefinitions (crds/sources.toml, tools/update_crds.py)
  checkov-requirements.txt, checkov-skips.yaml   checkov's pin and the checks it skips, with reasons

The rules read the GPU catalog and runtimes from build/, which the commands put on sys.path.
"""
