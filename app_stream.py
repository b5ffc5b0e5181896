"""chat2audio, streamed: each sentence's audio is sent the moment it is synthesized, while the
LLM writes the next. `python app_stream.py` serves on 127.0.0.1:8000."""

from chat2audio.http.app import create_app, serve

app = create_app(streaming=True)

if __name__ == "__main__":
    serve(app)
