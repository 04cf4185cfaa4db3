"""CRI's image service in front of containerd's: imaged's policy on the kubelet's pulls, and
containerd's CRI plugin doing the transfer of pulls into k8s.io."""
