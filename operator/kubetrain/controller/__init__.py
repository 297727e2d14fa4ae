"""The controller room: the kopf operator. Pure builders and reconcile decide; handlers do I/O."""
