"""livekit-history-plugin: safe chat-context replay and caller history for
LiveKit agents on the OpenAI / Azure OpenAI Realtime API."""
