# Slim image running the same gunicorn command as the Procfile.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PORT=8080 ENVIRONMENT=production
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY app.py gunicorn.conf.py ./
COPY core/ core/
COPY proxy/ proxy/
COPY destinations/ destinations/
# data/, spool/ and the write-ahead buffer (BUFFER_DIR): mount volumes here to keep them across containers.
RUN useradd --create-home proxy && mkdir -p /app/data /app/spool /app/buffer && chown proxy /app/data /app/spool /app/buffer
USER proxy
EXPOSE 8080
CMD ["gunicorn", "-c", "gunicorn.conf.py", "app:app"]
