# Slim image running the same gunicorn command as the Procfile.
# What it copies is checked against what the app imports (tests/test_container.py), and
# scripts/image-replay.sh replays these steps without a Docker engine.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PORT=8080 ENVIRONMENT=production
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY app.py gunicorn.conf.py ./
COPY core/ core/
COPY proxy/ proxy/
COPY destinations/ destinations/
# TRANSFORM=examples/strip_pii.py:transform works out of the box.
COPY examples/ examples/
# A numeric user, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
# data/, spool/ and the write-ahead buffer (BUFFER_DIR): mount volumes here to keep them across containers.
RUN useradd --uid 10001 --create-home proxy && mkdir -p /app/data /app/spool /app/buffer && chown 10001 /app/data /app/spool /app/buffer
USER 10001
# Platforms set PORT (Cloud Run, Render, Heroku); gunicorn.conf.py binds 0.0.0.0:$PORT.
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 CMD ["python", "-m", "proxy.healthcheck"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "app:app"]
