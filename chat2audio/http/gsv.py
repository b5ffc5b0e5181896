"""GPT-SoVITS api_v2 compatibility under `/gsv` (being written)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/gsv")
