"""The capacity simulator: a request trace replayed through the plan's engine model, a load balancer, and
(with the control plane) the HPA and the cluster autoscaler. tools/simulate.py is its command."""
