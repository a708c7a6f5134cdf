import os

# Nothing in these tests may reach the Hugging Face hub: models are built from configs.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
