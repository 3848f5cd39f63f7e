"""Concept-level explanations of a whole model: TCAV (does a class depend on a concept?)
and network dissection (which channels detect which concepts?)."""
