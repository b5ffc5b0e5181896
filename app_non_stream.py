"""chat2audio, one complete WAV per request: `python app_non_stream.py` serves on 127.0.0.1:8000."""

from chat2audio.http.app import create_app, serve

app = create_app(streaming=False)

if __name__ == "__main__":
    serve(app)
