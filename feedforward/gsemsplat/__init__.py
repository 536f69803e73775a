"""GSemSplat (Wang et al.): two unposed views -> semantic Gaussians; see docs/methods/gsemsplat.md."""
