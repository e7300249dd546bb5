import logging

# One named logger for the whole plugin, as every livekit plugin does
# (livekit.plugins.openai, livekit.plugins.deepgram, ...), so users can
# tune it with a single `logging.getLogger("livekit.plugins.history")`.
logger = logging.getLogger("livekit.plugins.history")
