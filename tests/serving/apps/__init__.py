"""Apps that the serving tests load into real HTTP servers (gunicorn, uvicorn, uWSGI)."""
