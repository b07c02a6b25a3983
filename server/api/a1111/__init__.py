"""AUTOMATIC1111's HTTP API (`/sdapi/v1/*`, 1.10), served at the root, so that webuiapi,
Open WebUI, SillyTavern and other A1111 clients can point at Darkroom unchanged. Every
txt2img is an ordinary Darkroom generation (queue, limits, credits, history, vault).

routes.py (the route list), txt2img.py, models.py (the request and its checks), prompts.py
(LoRA tags), progress.py (progress, interrupt), info.py (models, options, lists, png-info),
errors.py (A1111's and FastAPI's error shapes).
"""
