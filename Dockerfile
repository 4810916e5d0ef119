# Production image: granian (cds-service serve), non-root, health check, the PostgreSQL driver.
# Build: docker build -t tacrolimus-cds .
# Without the sandbox and the fixture patients (.dockerignore): they serve `serve --dev` in a source checkout.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    CDS_CONFIG_DIR=/app/hooks \
    CDS_HOST=0.0.0.0 \
    CDS_PORT=8080 \
    CDS_WORKERS=4

WORKDIR /app
COPY pyproject.toml README.md ./
COPY docs ./docs
COPY bench/README.md ./bench/README.md
COPY cds_service ./cds_service
RUN pip install --no-compile '.[postgres]' && rm -rf /root/.cache

COPY hooks ./hooks

RUN useradd --system --uid 10001 --home /app cds \
    && mkdir -p /app/var && chown cds /app/var
USER cds

EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"

# Mount a production configuration over /app/hooks (trusted callers); give the deployment-specific values in
# the environment: CDS_DATABASE_URL, CDS_PUBLIC_BASE_URL, CDS_ADMIN_TOKEN (and CDS_PORT, CDS_WORKERS).
# `serve` brings the database schema up to date before it starts the workers (`cds-service db upgrade`).
CMD ["cds-service", "serve"]
