"""Concept-level explanations of a whole model: TCAV (does a class depend on a concept?),
SpRAy (which groups of images is a class's score explained alike in?) and network
dissection (which channels detect which concepts?)."""
