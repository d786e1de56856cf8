"""Using trained models for search: `trained` (`mscross.load`, what eval.py does), `index`
(galleries searched in blocks, top-k files) and `report` (curves, per-class AP, pages of top-10
results)."""
