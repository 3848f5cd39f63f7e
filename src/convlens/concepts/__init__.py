"""Concept-level explanations of a whole model: TCAV (does a class depend on a concept?),
SpRAy (which groups of images is a class's score explained alike in?), CRAFT (which
concepts does a layer hold for a class, and how much does each count?) and network
dissection (which channels detect which concepts?)."""
