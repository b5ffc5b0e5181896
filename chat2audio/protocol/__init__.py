"""The wire protocols, one module each: chat2audio's own (`chat`), OpenAI's (`openai`) and
GPT-SoVITS api_v2's (`gsv`) requests, responses, errors and stream events, as pydantic models."""
